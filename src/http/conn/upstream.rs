//! The `tiny_http` side of a connection: the Unix connection that carries
//! one request and its response ([`Upstream`]), and the [`Session`] steps
//! that write request bytes to it, read and frame the response, feed it to
//! rustls, and close it once the exchange is over.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{CloseReason, Reading, Session, IO_CHUNK};
use crate::http::admission::Shared;
use crate::process::sys;

/// After this many response bytes a connection counts as a bulk transfer.
const BULK_BYTES: u64 = 1024 * 1024;
/// The nice value of a bulk transfer's thread.
const BULK_NICE: i32 = 10;

/// The `tiny_http` connection that carries one request and its response.
pub(super) struct Upstream<'a> {
    pub(super) stream: UnixStream,
    /// Counts this connection in [`Shared::upstreams`] while it is open.
    shared: &'a Shared,
    /// `tiny_http` closed its side (or reset the connection).
    pub(super) eof: bool,
    /// `poll` reported a hang-up on the socket; it is then only polled when
    /// we mean to read it, or it would wake us forever.
    pub(super) hup: bool,
    /// The request is all out (or the client left mid-body).
    write_shut: bool,
}

impl<'a> Upstream<'a> {
    pub(super) fn connect(shared: &'a Shared) -> io::Result<Upstream<'a>> {
        // A blocking connect: it waits only while `tiny_http`'s accept queue
        // is full, and its accept thread does nothing but accept.
        let stream = UnixStream::connect(&shared.socket_path)?;
        stream.set_nonblocking(true)?;
        shared.upstreams.fetch_add(1, Ordering::AcqRel);
        Ok(Upstream {
            stream,
            shared,
            eof: false,
            hup: false,
            write_shut: false,
        })
    }
}

impl Drop for Upstream<'_> {
    fn drop(&mut self) {
        self.shared.upstreams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Session<'_> {
    /// The request in flight has been forwarded whole (or nothing is in
    /// flight).
    fn request_forwarded(&self) -> bool {
        !matches!(self.reading, Reading::Body { .. }) && self.to_up.is_empty()
    }

    /// Closes the `tiny_http` connection once its request is all forwarded
    /// and its response all read, which makes room for the next request.
    pub(super) fn end_exchange(&mut self) -> bool {
        if self.up.is_some() && self.framer.is_idle() && self.request_forwarded() {
            self.up = None;
            return true;
        }
        false
    }

    /// Moves framed response bytes into rustls, and reads more from
    /// `tiny_http` only when rustls has sent everything it had: that is the
    /// back-pressure that keeps a never-reading client from buffering a whole
    /// download here.
    pub(super) fn pump_upstream(&mut self) -> Result<bool, CloseReason> {
        let mut progress = self.feed_tls()?;
        if !self.out.is_empty() || self.tls.wants_write() {
            return Ok(progress);
        }
        let Some(up) = self.up.as_mut().filter(|up| !up.eof) else {
            return Ok(progress);
        };
        if self.from_up.is_empty() {
            self.from_up = vec![0; IO_CHUNK];
        }
        match (&up.stream).read(&mut self.from_up) {
            Ok(0) => {
                up.eof = true;
                self.framer.on_eof();
                progress = true;
            }
            Ok(n) => {
                // A response that comes before the request's body is all in
                // ends the connection (the rest of the body is not read), so
                // it must tell the client not to send another request on it.
                let body_unread =
                    matches!(self.reading, Reading::Body { remaining, .. } if remaining > 0);
                self.framer.set_close_on_final_head(body_unread);
                self.framer
                    .feed(&self.from_up[..n], &mut self.out)
                    .map_err(CloseReason::Framing)?;
                progress = true;
                self.note_relayed(n);
                self.feed_tls()?;
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // A reset from `tiny_http` ends its output like an EOF would.
            Err(_) => {
                up.eof = true;
                self.framer.on_eof();
                progress = true;
            }
        }
        Ok(progress)
    }

    /// A connection that has carried a lot (a big log download) yields the
    /// CPU to others: its thread gets a lower scheduling priority, so short
    /// requests such as `/is_alive` stay quick while bulk transfers share
    /// what is left.
    fn note_relayed(&mut self, n: usize) {
        if self.relayed >= BULK_BYTES {
            return;
        }
        self.relayed += n as u64;
        if self.relayed >= BULK_BYTES {
            sys::nice_current_thread(BULK_NICE);
        }
    }

    fn feed_tls(&mut self) -> Result<bool, CloseReason> {
        if self.out.is_empty() {
            return Ok(false);
        }
        let n = self
            .tls
            .writer()
            .write(&self.out[self.out_sent..])
            .map_err(CloseReason::Client)?;
        self.out_sent += n;
        if self.out_sent == self.out.len() {
            self.out.clear();
            self.out_sent = 0;
        }
        Ok(n > 0)
    }

    /// Writes pending request bytes to `tiny_http`.
    pub(super) fn flush_upstream(&mut self) -> Result<bool, CloseReason> {
        let Some(up) = self.up.as_mut() else {
            return Ok(false);
        };
        let mut progress = false;
        while self.to_up_sent < self.to_up.len() {
            match (&up.stream).write(&self.to_up[self.to_up_sent..]) {
                Ok(0) => {
                    return Err(CloseReason::Upstream(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.to_up_sent += n;
                    self.up_stall_since = Instant::now();
                    progress = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(CloseReason::Upstream(err)),
            }
        }
        if !self.to_up.is_empty() && self.to_up_sent == self.to_up.len() {
            self.to_up.clear();
            self.to_up_sent = 0;
        }
        // Nothing more will go this way: `Connection: close` already tells
        // `tiny_http` not to wait for another head, and a body the client
        // left unfinished then ends at once instead of at a timeout.
        let sent_all = !matches!(self.reading, Reading::Body { .. }) || self.client_eof;
        if sent_all && self.to_up.is_empty() && !up.write_shut {
            let _ = up.stream.shutdown(Shutdown::Write);
            up.write_shut = true;
        }
        Ok(progress)
    }
}
