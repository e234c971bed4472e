//! A client that speaks plain HTTP to the HTTPS port (`curl http://...`):
//! its first byte is a letter of a method name where a TLS client sends a
//! handshake record (0x16). Instead of a TLS alert it cannot read, it gets a
//! plain-HTTP `400` that says to use https. This file only looks at the first
//! byte and writes that answer; it knows nothing of TLS beyond that byte.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::admission::Shared;
use super::close::{CloseReason, Timer};
use crate::process::sys;

/// The content type byte of a TLS handshake record, the first byte every
/// TLS client sends.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long the refused client's request is read (and dropped) before and
/// after the answer, so that closing the socket with unread bytes does not
/// reset the connection before the client has read the answer.
const DRAIN: Duration = Duration::from_secs(1);

const BODY: &str = "This port speaks HTTPS, not plain HTTP: use an https:// URL \
(with curl, add -k for the agent's self-signed certificate).\n";

/// Waits (until `deadline`) for the client's first byte. `Ok(true)` when it
/// is plain HTTP, which has then been answered; `Ok(false)` for anything
/// else, left unread for the TLS handshake.
pub(super) fn refused_plain_http(
    shared: &Shared,
    tcp: &TcpStream,
    deadline: Instant,
) -> Result<bool, CloseReason> {
    let mut first = [0u8; 1];
    loop {
        match tcp.peek(&mut first) {
            Ok(0) => return Err(CloseReason::ClientGone),
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(CloseReason::Client(err)),
        }
        if Instant::now() >= deadline {
            return Err(CloseReason::Timeout(Timer::Handshake));
        }
        let mut fds = [
            sys::pollfd(tcp.as_raw_fd(), sys::POLLIN),
            sys::pollfd(shared.stop_rx.as_raw_fd(), sys::POLLIN),
        ];
        sys::poll(&mut fds, Some(deadline)).map_err(CloseReason::Poll)?;
        if shared.is_stopping() {
            return Err(CloseReason::Stopped);
        }
    }
    if first[0] == TLS_HANDSHAKE || !first[0].is_ascii_uppercase() {
        return Ok(false);
    }
    answer(tcp);
    Ok(true)
}

/// The `400`, then a graceful close. Every wait is bounded by `DRAIN`.
fn answer(tcp: &TcpStream) {
    drain(tcp, Instant::now() + DRAIN, true);
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let deadline = Instant::now() + DRAIN;
    let mut rest = response.as_bytes();
    while !rest.is_empty() && Instant::now() < deadline {
        match (&*tcp).write(rest) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [sys::pollfd(tcp.as_raw_fd(), sys::POLLOUT)];
                if sys::poll(&mut fds, Some(deadline)).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = tcp.shutdown(Shutdown::Write);
    drain(tcp, Instant::now() + DRAIN, false);
}

/// Reads and drops what the client sends until `deadline` or end-of-file;
/// with `head_only`, also stops at the end of the request head.
fn drain(tcp: &TcpStream, deadline: Instant, head_only: bool) {
    let mut buf = [0u8; 4096];
    let mut tail: Vec<u8> = Vec::new();
    while Instant::now() < deadline {
        match (&*tcp).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if head_only {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                    let keep = tail.len().saturating_sub(3);
                    tail.drain(..keep);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [sys::pollfd(tcp.as_raw_fd(), sys::POLLIN)];
                if sys::poll(&mut fds, Some(deadline)).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
