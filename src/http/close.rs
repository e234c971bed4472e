//! Why a client connection ended (`CloseReason`, logged at debug level),
//! below both the connection (`conn`) and the plain-HTTP check (`plain`)
//! that end one.

use std::fmt;
use std::io;

use super::framing::FramingError;

/// Why a connection ended; logged at debug level.
#[derive(Debug)]
pub(super) enum CloseReason {
    /// Orderly end: the client or `tiny_http` ended it after a response.
    Done,
    /// We refused a request with this status and closed.
    Refused(u16),
    Stopped,
    Timeout(Timer),
    /// The client reset or vanished.
    ClientGone,
    Client(io::Error),
    Tls(rustls::Error),
    Upstream(io::Error),
    /// `tiny_http` closed the connection in the middle of a response.
    UpstreamTruncated,
    Framing(FramingError),
    Poll(io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Handshake,
    Head,
    Idle,
    Body,
    /// The client does not take our output.
    ClientStall,
    /// `tiny_http` does not take the request bytes.
    UpstreamStall,
    /// Nothing moves after the client finished or was refused.
    Drain,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => write!(f, "done"),
            CloseReason::Refused(status) => write!(f, "refused a request with {status}"),
            CloseReason::Stopped => write!(f, "front stopped"),
            CloseReason::Timeout(timer) => write!(f, "timeout: {timer:?}"),
            CloseReason::ClientGone => write!(f, "client went away"),
            CloseReason::Client(err) => write!(f, "client I/O: {err}"),
            CloseReason::Tls(err) => write!(f, "TLS: {err}"),
            CloseReason::Upstream(err) => write!(f, "upstream I/O: {err}"),
            CloseReason::UpstreamTruncated => write!(f, "upstream closed mid-response"),
            CloseReason::Framing(err) => write!(f, "upstream response framing: {err:?}"),
            CloseReason::Poll(err) => write!(f, "poll: {err}"),
        }
    }
}
