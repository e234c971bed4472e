//! The TLS-terminating, hardening front-end of the HTTP server.
//!
//! The agent's HTTP handlers run on a blocking `tiny_http` 0.12 server. That
//! crate's own TLS support pins rustls 0.20 / ring 0.16 (both under RustSec
//! advisories), and it trusts its clients: a request dropped with an unread
//! body allocates a buffer of the whole declared `Content-Length`, nothing has
//! a read or write deadline, and a request head may be of any size. So
//! `tiny_http` listens only on a Unix socket in a directory that only the
//! agent's user can enter, and this module owns the public TCP port: it does
//! the rustls handshake, reads each request head itself (several per
//! connection with keep-alive), enforces the limits of [`FrontConfig`], and
//! pipes plaintext to and from that socket over a fresh Unix connection for
//! every request (see "One request per upstream connection" below).
//! It answers `400`/`411`/`413`/`417`/`431`/`505` itself for requests that
//! must not reach `tiny_http`, and it adds an `X-Agent-Peer: ip:port` header
//! (replacing any the client sent) because `tiny_http` cannot see the peer
//! of a Unix socket.
//!
//! This module knows nothing of routes, authentication or jobs; the server
//! module receives plain `tiny_http::Request`s from the `tiny_http::Server`
//! that [`Front::start`] returns. Each client connection gets one thread with
//! a small stack that multiplexes its two sockets with `poll(2)`; the number
//! of connections is capped, so the number of threads is too.
//!
//! # One request per upstream connection
//!
//! `tiny_http` runs each accepted connection as one task of its task pool,
//! and a task ends only when its connection has no more requests. The pool's
//! `spawn` races: when one worker is waiting and several connections arrive
//! at once, each `spawn` sees a waiting worker, queues its task and notifies
//! one, but only one worker wakes; the other tasks stay queued until some
//! running task ends. Were a task a whole keep-alive client connection, that
//! could be the client's idle timeout (measured: 3 of 65 simultaneous
//! clients answered only after 30 s). So the front opens a Unix connection
//! when it forwards a request head, sends the request with
//! `Connection: close`, relays the response until its framing says it is
//! complete (or `tiny_http` closes a close-delimited one), and closes the
//! connection; the next request on the same client connection gets a new
//! one. With `Connection: close`, `tiny_http` ends the task as soon as it
//! has parsed the head (and read the body, if it is of at most 1 KiB without
//! `Expect: 100-continue`: those it reads itself), or else once the handler
//! has dropped the request. A queued task thus waits for a request in
//! flight, never for an idle client, and an idle client connection holds no
//! upstream connection.
//! Requests a client pipelines are forwarded one after the other: the next
//! head is read only once the previous response is complete.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::framing::{FramingError, ResponseFramer};
use super::listener::{FrontConfig, Shared};
use super::request_head::{find_head_end, plan_request, Rejection};
use crate::process::sys;

use rustls::ServerConnection;

/// The header through which `tiny_http` learns the client's address.
pub(super) const PEER_HEADER: &str = "X-Agent-Peer";

/// Unit of plaintext moved at once in either direction. rustls holds at most
/// about one TLS record (16 KiB) on each side besides this, which keeps a busy
/// connection well under 100 KiB.
const IO_CHUNK: usize = 16 * 1024;
/// After refusing a request we keep reading (and discarding) what the client
/// still sends for this long, so that closing a socket with unread data does
/// not reset the connection before the client has read our answer.
const LINGER: Duration = Duration::from_secs(2);
/// A connection thread returns to its deadline checks after this many rounds
/// of uninterrupted progress, so a fast download cannot starve them.
const MAX_ROUNDS_PER_WAKE: usize = 64;

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

/// Runs one client connection to its end.
pub(super) fn serve(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> CloseReason {
    if let Err(err) = tcp.set_nonblocking(true) {
        return CloseReason::Client(err);
    }
    // Responses leave in several writes; Nagle plus delayed ACKs would add
    // tens of milliseconds to each.
    let _ = tcp.set_nodelay(true);
    let mut tls = match ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(tls) => tls,
        Err(err) => return CloseReason::Tls(err),
    };
    if let Err(reason) = handshake(shared, &tcp, &mut tls) {
        return reason;
    }
    // `tiny_http` sees nothing of the connection until a request head is
    // complete.
    Session::new(shared, peer, tcp, tls).run()
}

fn handshake(
    shared: &Shared,
    tcp: &TcpStream,
    tls: &mut ServerConnection,
) -> Result<(), CloseReason> {
    let deadline = Instant::now() + shared.cfg.handshake_timeout;
    while tls.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(CloseReason::Timeout(Timer::Handshake));
        }
        let mut events = 0;
        if tls.wants_write() {
            match tls.write_tls(&mut &*tcp) {
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => events |= sys::POLLOUT,
                Err(err) => return Err(CloseReason::Client(err)),
            }
        }
        if tls.wants_read() {
            match tls.read_tls(&mut &*tcp) {
                Ok(0) => return Err(CloseReason::ClientGone),
                Ok(_) => {
                    if let Err(err) = tls.process_new_packets() {
                        // Best effort: tell the client why (the alert is queued).
                        let _ = tls.write_tls(&mut &*tcp);
                        return Err(CloseReason::Tls(err));
                    }
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => events |= sys::POLLIN,
                Err(err) => return Err(CloseReason::Client(err)),
            }
        }
        if events == 0 {
            // Neither direction is possible: nothing can ever complete it.
            return Err(CloseReason::ClientGone);
        }
        let mut fds = [
            sys::pollfd(tcp.as_raw_fd(), events),
            sys::pollfd(shared.stop_rx.as_raw_fd(), sys::POLLIN),
        ];
        sys::poll(&mut fds, Some(deadline)).map_err(CloseReason::Poll)?;
        if shared.is_stopping() {
            return Err(CloseReason::Stopped);
        }
        if fds[0].revents & sys::HANGUP != 0 && fds[0].revents & sys::POLLIN == 0 {
            return Err(CloseReason::ClientGone);
        }
    }
    Ok(())
}

/// Where the client-to-`tiny_http` direction stands.
#[derive(Debug)]
enum Reading {
    /// Waiting for (the rest of) a request head; `started` is when its first
    /// byte arrived. While a request is in flight, the next head is not read
    /// (and its clock does not start) until that response is complete.
    Head { started: Option<Instant> },
    /// Forwarding a request body.
    Body {
        remaining: u64,
        deadline: Instant,
        keep_alive: bool,
    },
    /// The client's last request (by its `Connection: close`, or HTTP/1.0)
    /// has been forwarded; anything it sends after is ignored.
    Done,
    /// A request was refused; the answer goes out once the response to the
    /// request before it is complete (pipelined heads are read only then
    /// anyway).
    Refused {
        status: u16,
        answer: Option<Vec<u8>>,
    },
}

/// How a connection ends once there is nothing left to do.
enum Ending {
    /// Flush, send close_notify, half-close; `linger` then drains what the
    /// client still sends for a while before the final close.
    Graceful { linger: bool, reason: CloseReason },
    /// Close at once, without close_notify, so a truncated response cannot be
    /// mistaken for a complete one.
    Abort(CloseReason),
}

/// The `tiny_http` connection that carries one request and its response.
struct Upstream<'a> {
    stream: UnixStream,
    /// Counts this connection in [`Shared::upstreams`] while it is open.
    shared: &'a Shared,
    /// `tiny_http` closed its side (or reset the connection).
    eof: bool,
    /// `poll` reported a hang-up on the socket; it is then only polled when
    /// we mean to read it, or it would wake us forever.
    hup: bool,
    /// The request is all out (or the client left mid-body).
    write_shut: bool,
}

impl<'a> Upstream<'a> {
    fn connect(shared: &'a Shared) -> io::Result<Upstream<'a>> {
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

/// One established TLS connection, and the `tiny_http` connection of the
/// request in flight, if any.
/// After this many response bytes a connection counts as a bulk transfer.
const BULK_BYTES: u64 = 1024 * 1024;
/// The nice value of a bulk transfer's thread.
const BULK_NICE: i32 = 10;

struct Session<'a> {
    shared: &'a Shared,
    cfg: &'a FrontConfig,
    peer: SocketAddr,
    tcp: TcpStream,
    tls: ServerConnection,
    /// Open from the forwarding of a request head until its response is
    /// complete and its body all forwarded.
    up: Option<Upstream<'a>>,

    /// Plaintext from the client not yet forwarded: a partial head, or bytes
    /// that followed a head.
    inbuf: Vec<u8>,
    /// Bytes on their way to `tiny_http`; nothing more is read from the
    /// client until they are gone.
    to_up: Vec<u8>,
    to_up_sent: usize,
    reading: Reading,
    /// The client sent close_notify or closed TCP.
    client_eof: bool,

    /// Read buffer for `tiny_http`'s output; released while idle.
    from_up: Vec<u8>,
    /// Framed response bytes waiting to enter rustls.
    out: Vec<u8>,
    out_sent: usize,
    framer: ResponseFramer,

    /// Response bytes relayed on this connection, until it is marked bulk.
    relayed: u64,
    /// Last time any byte moved in either direction.
    last_progress: Instant,
    /// Since when the client has been taking none of our pending output.
    client_stall_since: Instant,
    /// Since when `tiny_http` has been taking none of our pending input.
    up_stall_since: Instant,
    /// Since when the connection has had no request in progress.
    idle_since: Option<Instant>,
}

impl<'a> Session<'a> {
    fn new(
        shared: &'a Shared,
        peer: SocketAddr,
        tcp: TcpStream,
        tls: ServerConnection,
    ) -> Session<'a> {
        let now = Instant::now();
        Session {
            shared,
            cfg: &shared.cfg,
            peer,
            tcp,
            tls,
            up: None,
            inbuf: Vec::new(),
            to_up: Vec::new(),
            to_up_sent: 0,
            reading: Reading::Head { started: None },
            client_eof: false,
            from_up: Vec::new(),
            out: Vec::new(),
            out_sent: 0,
            framer: ResponseFramer::default(),
            relayed: 0,
            last_progress: now,
            client_stall_since: now,
            up_stall_since: now,
            idle_since: None,
        }
    }

    fn run(mut self) -> CloseReason {
        loop {
            let busy = match self.pump() {
                Ok(busy) => busy,
                Err(reason) => return reason,
            };
            // While busy, buffered input may still hold requests: the
            // connection cannot be over yet.
            if !busy {
                if let Some(ending) = self.ending() {
                    return self.finish(ending);
                }
            }
            let now = Instant::now();
            let deadline = self.next_deadline(now);
            if let Some((at, timer)) = deadline {
                if at <= now {
                    return self.finish(timeout_ending(timer));
                }
            }
            if self.is_idle() {
                self.release_buffers();
            }
            // Work may be left that no socket will announce (bytes already
            // in our buffers or in rustls): then only look, do not sleep.
            let wake_at = if busy {
                Some(now)
            } else {
                deadline.map(|(at, _)| at)
            };
            if let Err(reason) = self.wait(wake_at) {
                return reason;
            }
        }
    }

    /// Moves bytes in every direction until nothing moves, and says whether
    /// it stopped only because a bounded number of rounds passed.
    fn pump(&mut self) -> Result<bool, CloseReason> {
        for _ in 0..MAX_ROUNDS_PER_WAKE {
            let now = Instant::now();
            // Stall clocks run only while output is actually pending.
            if !self.tls.wants_write() {
                self.client_stall_since = now;
            }
            if self.to_up.is_empty() {
                self.up_stall_since = now;
            }
            let mut progress = self.flush_client()?;
            progress |= self.pump_upstream()?;
            progress |= self.flush_upstream()?;
            progress |= self.end_exchange();
            progress |= self.pump_client()?;
            if !progress {
                return Ok(false);
            }
            self.last_progress = Instant::now();
        }
        Ok(true)
    }

    /// The request in flight has been forwarded whole (or nothing is in
    /// flight).
    fn request_forwarded(&self) -> bool {
        !matches!(self.reading, Reading::Body { .. }) && self.to_up.is_empty()
    }

    /// Closes the `tiny_http` connection once its request is all forwarded
    /// and its response all read, which makes room for the next request.
    fn end_exchange(&mut self) -> bool {
        if self.up.is_some() && self.framer.is_idle() && self.request_forwarded() {
            self.up = None;
            return true;
        }
        false
    }

    /// Writes pending TLS records to the client.
    fn flush_client(&mut self) -> Result<bool, CloseReason> {
        let mut progress = false;
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut &self.tcp) {
                Ok(0) => break,
                Ok(_) => {
                    progress = true;
                    self.client_stall_since = Instant::now();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(CloseReason::Client(err)),
            }
        }
        Ok(progress)
    }

    /// Moves framed response bytes into rustls, and reads more from
    /// `tiny_http` only when rustls has sent everything it had: that is the
    /// back-pressure that keeps a never-reading client from buffering a whole
    /// download here.
    fn pump_upstream(&mut self) -> Result<bool, CloseReason> {
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
    fn flush_upstream(&mut self) -> Result<bool, CloseReason> {
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

    /// Reads from the client: first what rustls already decrypted, then (if
    /// the request state wants more) new TLS records from the socket.
    fn pump_client(&mut self) -> Result<bool, CloseReason> {
        if !self.to_up.is_empty() {
            return Ok(false);
        }
        let mut progress = self.take_input()?;
        if !self.to_up.is_empty()
            || !self.wants_request_bytes()
            || self.client_eof
            || !self.tls.wants_read()
        {
            return Ok(progress);
        }
        match self.tls.read_tls(&mut &self.tcp) {
            Ok(0) => {
                self.client_eof = true;
                progress = true;
            }
            Ok(_) => {
                if let Err(err) = self.tls.process_new_packets() {
                    let _ = self.tls.write_tls(&mut &self.tcp);
                    return Err(CloseReason::Tls(err));
                }
                progress = true;
                self.take_input()?;
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => return Err(CloseReason::Client(err)),
        }
        Ok(progress)
    }

    /// Runs decrypted client bytes through the request state machine until
    /// something is ready for `tiny_http`, or input runs out.
    fn take_input(&mut self) -> Result<bool, CloseReason> {
        let mut progress = false;
        while self.to_up.is_empty() {
            match self.reading {
                // The next request waits for the response to this one.
                Reading::Head { .. } if self.up.is_some() => break,
                Reading::Head { started } => {
                    // Empty lines between requests are allowed (RFC 9112 §2.2).
                    while self.inbuf.starts_with(b"\r\n") {
                        self.inbuf.drain(..2);
                    }
                    if started.is_none() && !self.inbuf.is_empty() {
                        self.reading = Reading::Head {
                            started: Some(Instant::now()),
                        };
                    }
                    if let Some(end) = find_head_end(&self.inbuf) {
                        self.on_head(end)?;
                        progress = true;
                        continue;
                    }
                    if self.inbuf.len() >= self.cfg.max_head_bytes {
                        let limit = self.cfg.max_head_bytes;
                        self.refuse(Rejection::head_too_large(limit));
                        progress = true;
                        break;
                    }
                    let old_len = self.inbuf.len();
                    let room = (self.cfg.max_head_bytes - old_len).min(IO_CHUNK);
                    self.inbuf.resize(old_len + room, 0);
                    let got = read_plaintext(
                        &mut self.tls,
                        &mut self.inbuf[old_len..],
                        &mut self.client_eof,
                    );
                    self.inbuf.truncate(old_len + *got.as_ref().unwrap_or(&0));
                    if got? == 0 {
                        break;
                    }
                    progress = true;
                }
                Reading::Body {
                    remaining,
                    deadline,
                    keep_alive,
                } => {
                    let want = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(IO_CHUNK);
                    let got = if self.inbuf.is_empty() {
                        self.to_up.resize(want, 0);
                        let got =
                            read_plaintext(&mut self.tls, &mut self.to_up, &mut self.client_eof);
                        self.to_up.truncate(*got.as_ref().unwrap_or(&0));
                        got?
                    } else {
                        let n = want.min(self.inbuf.len());
                        self.to_up.extend(self.inbuf.drain(..n));
                        n
                    };
                    if got == 0 {
                        break;
                    }
                    progress = true;
                    let remaining = remaining - got as u64;
                    self.reading = if remaining > 0 {
                        Reading::Body {
                            remaining,
                            deadline,
                            keep_alive,
                        }
                    } else if keep_alive {
                        Reading::Head { started: None }
                    } else {
                        Reading::Done
                    };
                }
                Reading::Done | Reading::Refused { .. } => break,
            }
        }
        Ok(progress)
    }

    /// Handles a complete request head occupying `inbuf[..end]`: opens a
    /// `tiny_http` connection for it, or refuses it.
    fn on_head(&mut self, end: usize) -> Result<(), CloseReason> {
        #[cfg(test)]
        if self.inbuf.starts_with(tests::PANIC_REQUEST) {
            panic!("test-triggered panic in a connection thread");
        }
        match plan_request(&self.inbuf[..end], self.peer, self.cfg.max_request_bytes) {
            Ok(plan) => {
                self.up = Some(Upstream::connect(self.shared).map_err(CloseReason::Upstream)?);
                self.inbuf.drain(..end);
                self.to_up.extend_from_slice(&plan.head);
                self.framer.expect(plan.expect);
                let now = Instant::now();
                self.reading = if plan.body_len > 0 {
                    Reading::Body {
                        remaining: plan.body_len,
                        deadline: now + self.body_allowance(plan.body_len),
                        keep_alive: plan.keep_alive,
                    }
                } else if plan.keep_alive {
                    Reading::Head { started: None }
                } else {
                    Reading::Done
                };
            }
            Err(rejection) => self.refuse(rejection),
        }
        Ok(())
    }

    fn body_allowance(&self, body_len: u64) -> Duration {
        // A rate of 0 means the fixed allowance alone.
        let by_rate = body_len
            .saturating_mul(1000)
            .checked_div(self.cfg.body_min_rate)
            .unwrap_or(0);
        self.cfg.body_timeout + Duration::from_millis(by_rate)
    }

    fn refuse(&mut self, rejection: Rejection) {
        log::debug!(
            "front: {}: refusing a request with {}: {}",
            self.peer,
            rejection.status,
            rejection.message
        );
        self.inbuf.clear();
        self.reading = Reading::Refused {
            status: rejection.status,
            answer: Some(rejection.response()),
        };
    }

    /// Decides whether the connection is over.
    fn ending(&mut self) -> Option<Ending> {
        let flushed = self.out.is_empty() && !self.tls.wants_write();
        if !flushed {
            return None;
        }
        if let Some(up) = &self.up {
            // A request is in flight (`end_exchange` closes finished ones).
            if !self.framer.is_idle() {
                return up
                    .eof
                    .then_some(Ending::Abort(CloseReason::UpstreamTruncated));
            }
            // Its response is out but not all of its body went in:
            // `tiny_http` closed early, or the client left mid-body. Either
            // way no request can follow on this connection.
            if up.eof || self.client_eof {
                return Some(Ending::Graceful {
                    linger: true,
                    reason: CloseReason::Done,
                });
            }
            return None;
        }
        if let Reading::Refused { status, answer } = &mut self.reading {
            // Every earlier response is out; now ours, then close.
            let status = *status;
            if let Some(answer) = answer.take() {
                let _ = self.tls.writer().write_all(&answer);
            }
            return Some(Ending::Graceful {
                linger: true,
                reason: CloseReason::Refused(status),
            });
        }
        let client_finished = self.client_eof || matches!(self.reading, Reading::Done);
        if client_finished {
            return Some(Ending::Graceful {
                linger: !self.client_eof,
                reason: CloseReason::Done,
            });
        }
        None
    }

    /// No request is in progress in either direction (and so no `tiny_http`
    /// connection is open).
    fn is_idle(&self) -> bool {
        matches!(self.reading, Reading::Head { started: None })
            && self.up.is_none()
            && self.inbuf.is_empty()
            && self.to_up.is_empty()
            && self.out.is_empty()
            && !self.tls.wants_write()
            && self.framer.is_idle()
    }

    /// Idle connections keep no buffers: with hundreds of them that matters.
    fn release_buffers(&mut self) {
        self.inbuf = Vec::new();
        self.to_up = Vec::new();
        self.out = Vec::new();
        self.from_up = Vec::new();
    }

    fn next_deadline(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let stall = self.cfg.write_stall_timeout;
        let mut earliest: Option<(Instant, Timer)> = None;
        let mut consider = |at: Instant, timer: Timer| {
            if earliest.is_none_or(|(best, _)| at < best) {
                earliest = Some((at, timer));
            }
        };
        if self.is_idle() {
            let since = *self.idle_since.get_or_insert(now);
            consider(since + self.cfg.idle_timeout, Timer::Idle);
        } else {
            self.idle_since = None;
        }
        match self.reading {
            Reading::Head {
                started: Some(started),
            } => consider(started + self.cfg.head_timeout, Timer::Head),
            Reading::Body { deadline, .. } => consider(deadline, Timer::Body),
            Reading::Refused { .. } => consider(self.last_progress + stall, Timer::Drain),
            Reading::Head { started: None } | Reading::Done => {}
        }
        if self.tls.wants_write() {
            consider(self.client_stall_since + stall, Timer::ClientStall);
        }
        if !self.to_up.is_empty() {
            consider(self.up_stall_since + stall, Timer::UpstreamStall);
        }
        if self.client_eof {
            // A client that left cannot be waiting for a response that never
            // moves.
            consider(self.last_progress + stall, Timer::Drain);
        }
        earliest
    }

    /// The request state takes client bytes: a body, or the next head once
    /// no request is in flight.
    fn wants_request_bytes(&self) -> bool {
        match self.reading {
            Reading::Head { .. } => self.up.is_none(),
            Reading::Body { .. } => true,
            Reading::Done | Reading::Refused { .. } => false,
        }
    }

    fn wants_client_read(&self) -> bool {
        self.wants_request_bytes()
            && !self.client_eof
            && self.to_up.is_empty()
            && self.tls.wants_read()
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<(), CloseReason> {
        let mut tcp_events = 0;
        if self.wants_client_read() {
            tcp_events |= sys::POLLIN;
        }
        if self.tls.wants_write() {
            tcp_events |= sys::POLLOUT;
        }
        let mut up_fd = -1;
        let mut up_events = 0;
        if let Some(up) = &self.up {
            let up_read = !up.eof && self.out.is_empty() && !self.tls.wants_write();
            let up_write = !self.to_up.is_empty();
            if up_read {
                up_events |= sys::POLLIN;
            }
            if up_write {
                up_events |= sys::POLLOUT;
            }
            if up_read || (up_write && !up.hup) {
                up_fd = up.stream.as_raw_fd();
            }
        }
        let mut fds = [
            sys::pollfd(self.tcp.as_raw_fd(), tcp_events),
            sys::pollfd(up_fd, up_events),
            sys::pollfd(self.shared.stop_rx.as_raw_fd(), sys::POLLIN),
        ];
        sys::poll(&mut fds, deadline).map_err(CloseReason::Poll)?;
        if self.shared.is_stopping() {
            return Err(CloseReason::Stopped);
        }
        // Without POLLIN there is nothing left to read that could explain the
        // hang-up: the peer reset the connection.
        if fds[0].revents & sys::HANGUP != 0 && fds[0].revents & sys::POLLIN == 0 {
            return Err(CloseReason::ClientGone);
        }
        if let Some(up) = self
            .up
            .as_mut()
            .filter(|_| fds[1].revents & sys::HANGUP != 0)
        {
            up.hup = true;
        }
        Ok(())
    }

    /// Ends the connection as `ending` says. `tiny_http` learns of it when
    /// its socket, if one is open, closes with `self`.
    fn finish(mut self, ending: Ending) -> CloseReason {
        let (linger, reason) = match ending {
            Ending::Abort(reason) => return reason,
            Ending::Graceful { linger, reason } => (linger, reason),
        };
        self.up = None;
        self.tls.send_close_notify();
        loop {
            match self.flush_client() {
                Ok(_) if !self.tls.wants_write() => break,
                Ok(_) => {}
                Err(reason) => return reason,
            }
            let deadline = self.client_stall_since + self.cfg.write_stall_timeout;
            if Instant::now() >= deadline {
                return CloseReason::Timeout(Timer::ClientStall);
            }
            let mut fds = [
                sys::pollfd(self.tcp.as_raw_fd(), sys::POLLOUT),
                sys::pollfd(self.shared.stop_rx.as_raw_fd(), sys::POLLIN),
            ];
            if let Err(err) = sys::poll(&mut fds, Some(deadline)) {
                return CloseReason::Poll(err);
            }
            if self.shared.is_stopping() {
                return CloseReason::Stopped;
            }
            if fds[0].revents & sys::HANGUP != 0 {
                return CloseReason::ClientGone;
            }
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
        if linger && !self.client_eof {
            self.linger();
        }
        reason
    }

    /// Discards client bytes until it closes too, or `LINGER` passes.
    fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 1024];
        while Instant::now() < deadline {
            let mut fds = [
                sys::pollfd(self.tcp.as_raw_fd(), sys::POLLIN),
                sys::pollfd(self.shared.stop_rx.as_raw_fd(), sys::POLLIN),
            ];
            if sys::poll(&mut fds, Some(deadline)).is_err() || self.shared.is_stopping() {
                return;
            }
            match (&self.tcp).read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    }
}

fn timeout_ending(timer: Timer) -> Ending {
    let reason = CloseReason::Timeout(timer);
    match timer {
        // Nothing is half-sent: close politely.
        Timer::Idle => Ending::Graceful {
            linger: false,
            reason,
        },
        _ => Ending::Abort(reason),
    }
}

/// Reads decrypted bytes; 0 means none available now (or the client ended,
/// which sets `client_eof`).
fn read_plaintext(
    tls: &mut ServerConnection,
    buf: &mut [u8],
    client_eof: &mut bool,
) -> Result<usize, CloseReason> {
    if buf.is_empty() {
        return Ok(0);
    }
    match tls.reader().read(buf) {
        Ok(0) => {
            // close_notify
            *client_eof = true;
            Ok(0)
        }
        Ok(n) => Ok(n),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            // TCP closed without close_notify; fine between requests, and
            // a truncated request is `tiny_http`'s to notice.
            *client_eof = true;
            Ok(0)
        }
        Err(err) => Err(CloseReason::Client(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::framing::Expect;
    use crate::http::{load_tls_config, self_signed, Front, FrontError};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::fs;
    use std::io::BufRead;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::mpsc;
    use std::sync::{Mutex, MutexGuard, PoisonError};
    use std::thread::{self, JoinHandle};

    /// A request head that makes the connection thread panic (see `on_head`).
    pub(super) const PANIC_REQUEST: &[u8] = b"GET /__front_test_panic ";

    /// Tests that measure latency or memory, or move a lot of data, run one
    /// at a time so they do not disturb each other on a small machine.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn test_config() -> FrontConfig {
        FrontConfig {
            max_request_bytes: 1024 * 1024,
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(1),
            body_min_rate: 0,
            write_stall_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            max_connections: 256,
        }
    }

    /// Byte `i` of every test download.
    fn pattern_byte(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    /// Produces `len` pattern bytes and counts how many were taken.
    struct Pattern {
        offset: u64,
        len: u64,
        produced: Arc<AtomicU64>,
    }

    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = usize::try_from(self.len - self.offset)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                *byte = pattern_byte(self.offset + i as u64);
            }
            self.offset += n as u64;
            self.produced.store(self.offset, Ordering::Relaxed);
            Ok(n)
        }
    }

    /// Reported by the handler when a `/stream` response ended (completely or
    /// because the front closed the socket under it).
    #[derive(Debug)]
    struct StreamDone {
        produced: u64,
        requested: u64,
    }

    /// A front with a self-signed certificate and four handler threads:
    /// `/hello`, `/peer` (the `X-Agent-Peer` values), `/echo` (the body back,
    /// the peer in `X-Seen-Peer`) and `/stream?bytes=N` (N pattern bytes of
    /// unknown length, i.e. chunked).
    struct Harness {
        front: Front,
        addr: SocketAddr,
        cert_der: CertificateDer<'static>,
        stop: Arc<AtomicBool>,
        handlers: Vec<JoinHandle<()>>,
        streams: mpsc::Receiver<StreamDone>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.front.stop();
            self.stop.store(true, Ordering::Relaxed);
            for handler in self.handlers.drain(..) {
                let _ = handler.join();
            }
        }
    }

    fn harness(cfg: FrontConfig) -> Harness {
        let (cert_pem, key_pem) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let tls = load_tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (front, server) = Front::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(tls),
            &dir.path().join("sock"),
            cfg,
        )
        .unwrap();
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let (stream_tx, streams) = mpsc::channel();
        let handlers = (0..4)
            .map(|_| {
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                let stream_tx = stream_tx.clone();
                thread::spawn(move || handle_requests(&server, &stop, &stream_tx))
            })
            .collect();
        Harness {
            addr: front.local_addr(),
            front,
            cert_der,
            stop,
            handlers,
            streams,
            _dir: dir,
        }
    }

    fn handle_requests(
        server: &tiny_http::Server,
        stop: &AtomicBool,
        streams: &mpsc::Sender<StreamDone>,
    ) {
        use tiny_http::{Header, Response, StatusCode};
        while !stop.load(Ordering::Relaxed) {
            let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            let peers: Vec<String> = request
                .headers()
                .iter()
                .filter(|header| header.field.equiv(PEER_HEADER))
                .map(|header| header.value.to_string())
                .collect();
            let peers = peers.join(",");
            let url = request.url().to_string();
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            let bytes: u64 = query
                .strip_prefix("bytes=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let _ = match path {
                "/hello" => request.respond(Response::from_string("hello")),
                "/peer" => request.respond(Response::from_string(peers)),
                "/echo" => {
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    let seen = Header::from_bytes(&b"X-Seen-Peer"[..], peers.as_bytes()).unwrap();
                    request.respond(Response::from_data(body).with_header(seen))
                }
                "/stream" => {
                    let produced = Arc::new(AtomicU64::new(0));
                    let reader = Pattern {
                        offset: 0,
                        len: bytes,
                        produced: Arc::clone(&produced),
                    };
                    let result =
                        request.respond(Response::new(StatusCode(200), vec![], reader, None, None));
                    let _ = streams.send(StreamDone {
                        produced: produced.load(Ordering::Relaxed),
                        requested: bytes,
                    });
                    result
                }
                _ => request.respond(Response::empty(404)),
            };
        }
    }

    fn client(harness: &Harness) -> ureq::Agent {
        let cert = ureq::tls::Certificate::from_der(harness.cert_der.as_ref()).to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build()
            .new_agent()
    }

    fn url(harness: &Harness, path: &str) -> String {
        format!("https://localhost:{}{path}", harness.addr.port())
    }

    fn get_text(agent: &ureq::Agent, url: &str) -> (u16, String) {
        let mut response = agent.get(url).call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

    /// A TLS client with no HTTP on top, for what ureq would not send.
    fn raw_client(harness: &Harness) -> RawTls {
        try_raw_client(harness).unwrap()
    }

    fn try_raw_client(harness: &Harness) -> io::Result<RawTls> {
        try_raw_tls(harness.addr, &harness.cert_der)
    }

    fn try_raw_tls(addr: SocketAddr, cert_der: &CertificateDer<'static>) -> io::Result<RawTls> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    fn closed_by_peer(result: &io::Result<usize>) -> bool {
        match result {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => !matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Everything the server sends until it closes (bounded by the socket's
    /// read timeout).
    fn read_until_close(stream: &mut RawTls) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let result = stream.read(&mut buf);
            if closed_by_peer(&result) {
                return received;
            }
            match result {
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(err) => panic!("no close within the read timeout: {err}"),
            }
        }
    }

    /// Sends `request` on a fresh connection and returns the status and
    /// JSON message of the front's answer, after which it must close.
    fn exchange(harness: &Harness, request: &[u8]) -> (u16, String) {
        let mut stream = raw_client(harness);
        stream.write_all(request).unwrap();
        stream.flush().unwrap();
        let answer = read_until_close(&mut stream);
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        (status, json["message"].as_str().unwrap().to_string())
    }

    /// Reads one response with a Content-Length body.
    fn read_response<R: BufRead>(reader: &mut R) -> (u16, Vec<u8>) {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line[9..12].parse().unwrap();
        let mut content_length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).unwrap();
        (status, body)
    }

    /// Polls `condition` every 10 ms for at most `limit`.
    fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let give_up = Instant::now() + limit;
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= give_up {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn vm_rss_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Asserts that a fresh client gets `/hello` within 100 ms.
    fn assert_served_quickly(harness: &Harness) {
        let agent = client(harness);
        let started = Instant::now();
        let (status, body) = get_text(&agent, &url(harness, "/hello"));
        let elapsed = started.elapsed();
        assert_eq!((status, body.as_str()), (200, "hello"));
        assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");
    }

    #[test]
    fn keep_alive_get_and_post_share_one_connection() {
        let harness = harness(test_config());
        let agent = client(&harness);
        let (status, peer) = get_text(&agent, &url(&harness, "/peer"));
        assert_eq!(status, 200);
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");

        let mut response = agent
            .post(&url(&harness, "/echo"))
            .header(PEER_HEADER, "6.6.6.6:6")
            .send("ping")
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        // Same port: the same connection; one value: the spoofed one is gone.
        let seen = response.headers()["X-Seen-Peer"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(seen, peer);
        assert_eq!(response.body_mut().read_to_string().unwrap(), "ping");
    }

    #[test]
    fn head_response_keeps_the_connection_usable() {
        let harness = harness(test_config());
        let agent = client(&harness);
        let (_, first) = get_text(&agent, &url(&harness, "/peer"));
        let response = agent
            .head(&url(&harness, "/stream?bytes=1000"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let (_, second) = get_text(&agent, &url(&harness, "/peer"));
        assert_eq!(first, second);
    }

    #[test]
    fn huge_content_length_gets_413_without_allocating() {
        let _serial = serial();
        let harness = harness(test_config());
        let rss_before = vm_rss_kib();
        let (status, message) = exchange(
            &harness,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        );
        let rss_after = vm_rss_kib();
        assert_eq!(status, 413);
        assert_eq!(
            message,
            "request body too large: 99999999999 bytes, limit 1048576"
        );
        assert!(
            rss_after < rss_before + 64 * 1024,
            "RSS grew from {rss_before} KiB to {rss_after} KiB"
        );
        let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
        assert_eq!((status, body.as_str()), (200, "hello"));
    }

    #[test]
    fn refused_heads_get_json_answers() {
        let harness = harness(test_config());
        let cases: [(&[u8], u16, &str); 6] = [
            (
                b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
                "Transfer-Encoding",
            ),
            (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
            (b"GET /\r\n\r\n", 400, "request line"),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "header name"),
            (b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 400, "ASCII"),
            (
                b"POST /echo HTTP/1.1\r\nExpect: magic\r\n\r\n",
                417,
                "magic",
            ),
        ];
        for (request, want_status, want_text) in cases {
            let (status, message) = exchange(&harness, request);
            assert_eq!(status, want_status, "{message}");
            assert!(message.contains(want_text), "{message}");
        }
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        let (status, message) = exchange(&harness, &big);
        assert_eq!(status, 431);
        assert_eq!(message, "request head too large: limit 8192 bytes");
    }

    #[test]
    fn refusal_waits_for_earlier_pipelined_responses() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream
            .write_all(
                b"GET /hello HTTP/1.1\r\n\r\n\
                  POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            )
            .unwrap();
        let answer = read_until_close(&mut stream);
        let mut reader = io::BufReader::new(&answer[..]);
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert_eq!(read_response(&mut reader).0, 413);
    }

    #[test]
    fn idle_tcp_connections_do_not_starve_a_real_client() {
        let _serial = serial();
        let harness = harness(FrontConfig {
            handshake_timeout: Duration::from_secs(3),
            ..test_config()
        });
        let mut idle: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(harness.addr).unwrap())
            .collect();
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_connections()
            >= 200));
        assert_served_quickly(&harness);
        // Each is closed at its handshake deadline.
        for stream in &mut idle {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 16];
            assert!(closed_by_peer(&stream.read(&mut buf)));
        }
    }

    #[test]
    fn dripping_head_is_dropped_at_the_head_deadline() {
        let _serial = serial();
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let dripper = thread::spawn(move || {
            let started = Instant::now();
            let mut buf = [0u8; 64];
            for &byte in b"GET /hello HTTP/1.1\r\nX-Slow: ".iter().cycle().take(100) {
                if stream.write_all(&[byte]).is_err() {
                    return started.elapsed();
                }
                // Doubles as the 200 ms pause between bytes.
                if closed_by_peer(&stream.read(&mut buf)) {
                    return started.elapsed();
                }
            }
            panic!("the dripping client was never dropped");
        });
        thread::sleep(Duration::from_millis(300));
        assert_served_quickly(&harness);
        let dropped_after = dripper.join().unwrap();
        assert!(
            dropped_after >= Duration::from_millis(900) && dropped_after < Duration::from_secs(3),
            "dropped after {dropped_after:?}"
        );
    }

    #[test]
    fn slow_body_is_dropped_at_the_body_deadline() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
            .unwrap();
        let started = Instant::now();
        let _ = read_until_close(&mut stream);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
            "dropped after {elapsed:?}"
        );
    }

    #[test]
    fn idle_keep_alive_connection_is_closed() {
        let harness = harness(FrontConfig {
            idle_timeout: Duration::from_millis(500),
            ..test_config()
        });
        let mut stream = raw_client(&harness);
        stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
        let mut reader = io::BufReader::new(&mut stream);
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        let started = Instant::now();
        let rest = read_until_close(&mut stream);
        let elapsed = started.elapsed();
        assert!(rest.is_empty());
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
            "closed after {elapsed:?}"
        );
    }

    #[test]
    fn stalled_reader_is_cut_off_without_blocking_others() {
        let _serial = serial();
        let harness = harness(test_config());
        let total = 100_000_000;
        let mut stalled = raw_client(&harness);
        stalled
            .write_all(format!("GET /stream?bytes={total} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        stalled.flush().unwrap();
        // Give the kernel buffers time to fill, then check others are served.
        thread::sleep(Duration::from_millis(300));
        assert_served_quickly(&harness);
        let done = harness
            .streams
            .recv_timeout(Duration::from_secs(15))
            .expect("the stalled download was never cut off");
        assert_eq!(done.requested, total);
        assert!(done.produced < total, "{done:?}");
        assert!(wait_until(Duration::from_secs(5), || harness
            .front
            .open_connections()
            == 0));
        drop(stalled);
    }

    #[test]
    fn slow_but_steady_download_completes() {
        let _serial = serial();
        let harness = harness(FrontConfig {
            write_stall_timeout: Duration::from_millis(300),
            ..test_config()
        });
        let total: u64 = 32 * 1024 * 1024;
        let agent = client(&harness);
        let started = Instant::now();
        let response = agent
            .get(&url(&harness, &format!("/stream?bytes={total}")))
            .call()
            .unwrap();
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (i, &byte) in buf[..n].iter().enumerate() {
                assert_eq!(
                    byte,
                    pattern_byte(offset + i as u64),
                    "at {}",
                    offset + i as u64
                );
            }
            offset += n as u64;
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(offset, total);
        // Several stall timeouts long, yet never cut off.
        assert!(started.elapsed() > Duration::from_millis(1200));
        let done = harness
            .streams
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(done.produced, total);
    }

    #[test]
    fn http10_client_gets_a_dechunked_stream() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream
            .write_all(b"GET /stream?bytes=100000 HTTP/1.0\r\n\r\n")
            .unwrap();
        let answer = read_until_close(&mut stream);
        let split = find_head_end(&answer).unwrap();
        let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        let body = &answer[split..];
        assert_eq!(body.len(), 100_000);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, &byte)| byte == pattern_byte(i as u64)));
    }

    #[test]
    fn connections_over_the_cap_are_closed_at_once() {
        let harness = harness(FrontConfig {
            max_connections: 3,
            ..test_config()
        });
        let mut held: Vec<io::BufReader<RawTls>> = (0..3)
            .map(|_| {
                let mut stream = raw_client(&harness);
                stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
                let mut reader = io::BufReader::new(stream);
                assert_eq!(read_response(&mut reader).0, 200);
                reader
            })
            .collect();

        let started = Instant::now();
        let refused = try_raw_client(&harness);
        assert!(refused.is_err(), "a fourth connection was served");
        assert!(started.elapsed() < Duration::from_secs(1));

        // The admitted ones are unaffected.
        held[0]
            .get_mut()
            .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut held[0]), (200, b"hello".to_vec()));

        drop(held.pop());
        assert!(wait_until(Duration::from_secs(5), || harness
            .front
            .open_connections()
            < 3));
        let (status, _) = get_text(&client(&harness), &url(&harness, "/hello"));
        assert_eq!(status, 200);
    }

    #[test]
    fn panic_in_a_connection_thread_is_contained() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream.write_all(PANIC_REQUEST).unwrap();
        stream.write_all(b"HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_until_close(&mut stream).is_empty());
        assert!(wait_until(Duration::from_secs(5), || harness
            .front
            .open_connections()
            == 0));
        let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
        assert_eq!((status, body.as_str()), (200, "hello"));
    }

    #[test]
    fn stop_closes_everything() {
        let mut harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
        let mut reader = io::BufReader::new(&mut stream);
        assert_eq!(read_response(&mut reader).0, 200);
        harness.front.stop();
        assert_eq!(harness.front.open_connections(), 0);
        assert!(read_until_close(&mut stream).is_empty());
        assert!(TcpStream::connect(harness.addr).is_err());
    }

    /// `tiny_http`'s task pool can leave a connection queued until another
    /// of its connections ends; with one request per upstream connection
    /// that is the end of some request, never an idle client's timeout.
    #[test]
    fn burst_of_keep_alive_clients_is_served_at_once() {
        let _serial = serial();
        let harness = harness(test_config());
        let clients = 80;
        let barrier = Arc::new(std::sync::Barrier::new(clients + 1));
        let (done_tx, done_rx) = mpsc::channel();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let done_tx = done_tx.clone();
                let addr = harness.addr;
                let cert_der = harness.cert_der.clone();
                thread::spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let stream = try_raw_tls(addr, &cert_der).unwrap();
                    let mut reader = io::BufReader::new(stream);
                    reader
                        .get_mut()
                        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
                        .unwrap();
                    let answer = read_response(&mut reader);
                    done_tx.send((answer, started.elapsed())).unwrap();
                    // Keep the connection open (idle) until the test ends.
                    barrier.wait();
                })
            })
            .collect();
        barrier.wait();
        let mut slowest = Duration::ZERO;
        for _ in 0..clients {
            let (answer, elapsed) = done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a client was never answered");
            assert_eq!(answer, (200, b"hello".to_vec()));
            slowest = slowest.max(elapsed);
        }
        assert!(slowest < Duration::from_secs(2), "slowest took {slowest:?}");
        // Every client is still connected, and none holds a `tiny_http`
        // connection (or task).
        assert_eq!(harness.front.open_connections(), clients);
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_upstreams()
            == 0));
        barrier.wait();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn idle_keep_alive_client_holds_no_upstream_connection() {
        let _serial = serial();
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        // Over 1 KiB, which `tiny_http` does not read eagerly; under 32 KiB,
        // above which it would answer chunked.
        let body = vec![b'x'; 20_000];
        let mut request = format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).unwrap();
        let mut reader = io::BufReader::new(stream);
        let (status, echoed) = read_response(&mut reader);
        assert!(
            status == 200 && echoed == body,
            "{status}, {} bytes",
            echoed.len()
        );
        reader
            .get_mut()
            .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        // The client stays connected, idle: no `tiny_http` connection left.
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_upstreams()
            == 0));
        assert_eq!(harness.front.open_connections(), 1);
        // A download in flight holds exactly one, and the connection goes on.
        reader
            .get_mut()
            .write_all(b"GET /stream?bytes=10000000 HTTP/1.1\r\n\r\n")
            .unwrap();
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_upstreams()
            == 1));
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        let mut received = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            received += size;
            if size == 0 {
                break;
            }
        }
        assert_eq!(received, 10_000_000);
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_upstreams()
            == 0));
        reader
            .get_mut()
            .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert_eq!(harness.front.open_connections(), 1);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        let big = vec![b'y'; 5000];
        let mut requests = b"GET /hello HTTP/1.1\r\n\r\n\
            POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nping\
            \r\nGET /nowhere HTTP/1.1\r\n\r\n"
            .to_vec();
        requests.extend_from_slice(
            format!(
                "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                big.len()
            )
            .as_bytes(),
        );
        requests.extend_from_slice(&big);
        requests.extend_from_slice(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
        stream.write_all(&requests).unwrap();
        let answer = read_until_close(&mut stream);
        let mut reader = io::BufReader::new(&answer[..]);
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert_eq!(read_response(&mut reader), (200, b"ping".to_vec()));
        assert_eq!(read_response(&mut reader).0, 404);
        let (status, echoed) = read_response(&mut reader);
        assert!(
            status == 200 && echoed == big,
            "{status}, {} bytes",
            echoed.len()
        );
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert!(reader.fill_buf().unwrap().is_empty());
        assert!(wait_until(Duration::from_secs(2), || harness
            .front
            .open_upstreams()
            == 0));
    }

    #[test]
    fn pipelined_requests_before_a_half_close_are_all_answered() {
        let harness = harness(test_config());
        let mut stream = raw_client(&harness);
        stream
            .write_all(
                b"GET /hello HTTP/1.1\r\n\r\n\
                  POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\npong\
                  GET /hello HTTP/1.1\r\n\r\n",
            )
            .unwrap();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        stream.sock.shutdown(Shutdown::Write).unwrap();
        let answer = read_until_close(&mut stream);
        let mut reader = io::BufReader::new(&answer[..]);
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert_eq!(read_response(&mut reader), (200, b"pong".to_vec()));
        assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
        assert!(reader.fill_buf().unwrap().is_empty());
    }

    /// What the front relies on: asked with `Connection: close`, `tiny_http`
    /// frames its response (`Content-Length` or chunked), adds no
    /// `Connection` header of its own (the front passes response heads on,
    /// and one would end the client's keep-alive), and then closes.
    #[test]
    fn tiny_http_answers_connection_close_with_a_framed_response_then_closes() {
        let harness = harness(test_config());
        let exchange = |request: &[u8]| {
            let mut up = UnixStream::connect(harness.front.socket_path()).unwrap();
            up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            up.write_all(request).unwrap();
            // Reads to the end: times out (and fails) unless `tiny_http` closes.
            let mut answer = Vec::new();
            up.read_to_end(&mut answer).unwrap();
            let split = find_head_end(&answer).unwrap();
            let head = String::from_utf8(answer[..split].to_vec()).unwrap();
            assert!(
                !head.to_ascii_lowercase().contains("\r\nconnection:"),
                "{head}"
            );
            (head, answer[split..].to_vec())
        };
        let has = |head: &str, header: &str| head.to_ascii_lowercase().contains(header);
        let (head, body) = exchange(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(has(&head, "\r\ncontent-length: 5\r\n"), "{head}");
        assert_eq!(body, b"hello");

        let mut post =
            b"POST /echo HTTP/1.1\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n".to_vec();
        post.extend(std::iter::repeat_n(b'z', 3000));
        let (head, body) = exchange(&post);
        assert!(has(&head, "\r\ncontent-length: 3000\r\n"), "{head}");
        assert_eq!(body.len(), 3000);

        let (head, body) = exchange(b"GET /stream?bytes=100 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(has(&head, "\r\ntransfer-encoding: chunked\r\n"), "{head}");
        let mut framer = ResponseFramer::default();
        framer.expect(Expect {
            head_request: false,
            dechunk: true,
        });
        let mut out = Vec::new();
        framer.feed(head.as_bytes(), &mut out).unwrap();
        assert!(framer.feed(&body, &mut out).is_ok() && framer.is_idle());
        let dechunked = &out[find_head_end(&out).unwrap()..];
        assert!(dechunked
            .iter()
            .enumerate()
            .all(|(i, &byte)| byte == pattern_byte(i as u64)));
        assert_eq!(dechunked.len(), 100);

        let (head, body) =
            exchange(b"HEAD /stream?bytes=100 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(has(&head, "\r\ntransfer-encoding: chunked\r\n"), "{head}");
        assert!(body.is_empty());
    }

    #[test]
    fn socket_dir_must_be_private() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let tls = Arc::new(load_tls_config(cert.as_bytes(), key.as_bytes()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let open_dir = dir.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let refused = Front::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&tls),
            &open_dir,
            test_config(),
        );
        assert!(matches!(
            refused.err(),
            Some(FrontError::InsecureSocketDir { .. })
        ));
        let private = dir.path().join("a/b");
        let (front, server) =
            Front::start("127.0.0.1:0".parse().unwrap(), tls, &private, test_config()).unwrap();
        let mode = fs::metadata(&private).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(front.socket_path().starts_with(&private));
        drop(front);
        drop(server);
    }
}
