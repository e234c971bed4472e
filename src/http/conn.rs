//! One client connection, from the TCP accept to the close: [`serve`] turns
//! away plain HTTP (`plain.rs`), does the rustls handshake, then a
//! [`Session`] runs the connection's state machine on one thread,
//! multiplexing the client socket and the `tiny_http` connection of the
//! request in flight with `poll(2)`. It reads request heads
//! (several per connection with keep-alive) and hands each to
//! `request_head.rs`, forwards what may pass, answers what may not, enforces
//! the deadlines of [`FrontConfig`], and ends the connection gracefully or
//! by abort. The `tiny_http` side (one Unix connection per request, the
//! response relay through `framing.rs`) is in `conn/upstream.rs`.
//!
//! A request body is held back until `tiny_http` answers `100 Continue`
//! (the front asks for one on every body, see `request_head.rs`), which it
//! does only when a handler starts reading the body. Until then nothing of
//! the body is read from the client beyond what arrived with its head. If
//! the final response comes first (the request was refused, say for want of
//! authentication), the body is never read: the connection closes after the
//! response.

mod upstream;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admitted, FrontConfig, Shared};
use super::close::{CloseReason, Timer};
use super::framing::ResponseFramer;
use super::request_head::{find_head_end, plan_request, Rejection};
use crate::process::sys;
use upstream::Upstream;

use rustls::ServerConnection;

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

/// Runs one client connection to its end.
pub(super) fn serve(shared: &Shared, conn: Arc<Admitted>, peer: SocketAddr) -> CloseReason {
    let tcp = &conn.tcp;
    if let Err(err) = tcp.set_nonblocking(true) {
        return CloseReason::Client(err);
    }
    // Responses leave in several writes; Nagle plus delayed ACKs would add
    // tens of milliseconds to each.
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + shared.cfg.handshake_timeout;
    match super::plain::refused_plain_http(shared, tcp, deadline) {
        Ok(true) => return CloseReason::Refused(400),
        Ok(false) => {}
        Err(reason) => return reason,
    }
    let mut tls = match ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(tls) => tls,
        Err(err) => return CloseReason::Tls(err),
    };
    if let Err(reason) = handshake(shared, tcp, &mut tls, deadline) {
        return reason;
    }
    // `tiny_http` sees nothing of the connection until a request head is
    // complete.
    Session::new(shared, peer, conn, tls).run()
}

fn handshake(
    shared: &Shared,
    tcp: &TcpStream,
    tls: &mut ServerConnection,
    deadline: Instant,
) -> Result<(), CloseReason> {
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
    /// Forwarding a request body; `deadline` is `None` until `tiny_http`
    /// asks for the body (and the body waits, unread).
    Body {
        remaining: u64,
        deadline: Option<Instant>,
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

/// One established TLS connection, and the `tiny_http` connection of the
/// request in flight, if any.
struct Session<'a> {
    shared: &'a Shared,
    cfg: &'a FrontConfig,
    peer: SocketAddr,
    /// The client socket, shared with the accept thread (see `Admitted`).
    conn: Arc<Admitted>,
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
        conn: Arc<Admitted>,
        tls: ServerConnection,
    ) -> Session<'a> {
        let now = Instant::now();
        Session {
            shared,
            cfg: &shared.cfg,
            peer,
            conn,
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
            progress |= self.follow_response();
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

    /// Writes pending TLS records to the client.
    fn flush_client(&mut self) -> Result<bool, CloseReason> {
        let mut progress = false;
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut &self.conn.tcp) {
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
        match self.tls.read_tls(&mut &self.conn.tcp) {
            Ok(0) => {
                self.client_eof = true;
                progress = true;
            }
            Ok(_) => {
                if let Err(err) = self.tls.process_new_packets() {
                    let _ = self.tls.write_tls(&mut &self.conn.tcp);
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
                // The body waits for `tiny_http` to ask for it.
                Reading::Body { deadline: None, .. } => break,
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
        if self.inbuf.starts_with(super::tests::PANIC_REQUEST) {
            panic!("test-triggered panic in a connection thread");
        }
        match plan_request(&self.inbuf[..end], self.peer, self.cfg.max_request_bytes) {
            Ok(plan) => {
                self.up = Some(Upstream::connect(self.shared).map_err(CloseReason::Upstream)?);
                self.conn.mark_serving();
                self.inbuf.drain(..end);
                self.to_up.extend_from_slice(&plan.head);
                self.framer.expect(plan.expect);
                self.reading = if plan.body_len > 0 {
                    Reading::Body {
                        remaining: plan.body_len,
                        deadline: None,
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

    /// Acts on what `tiny_http` said about the body in flight: a `100
    /// Continue` releases it (and starts its deadline); a final response
    /// before the body is all forwarded means the rest is not wanted, so it is
    /// not read, and the connection ends after the response.
    fn follow_response(&mut self) -> bool {
        let Reading::Body {
            remaining,
            deadline,
            keep_alive,
        } = self.reading
        else {
            return false;
        };
        if self.framer.take_continue() && deadline.is_none() {
            self.reading = Reading::Body {
                remaining,
                deadline: Some(Instant::now() + self.body_allowance(remaining)),
                keep_alive,
            };
            return true;
        }
        if self.up.is_some() && !self.framer.awaits_head() {
            log::debug!(
                "front: {}: answered before its body was read; {remaining} bytes left unread",
                self.peer
            );
            self.reading = Reading::Done;
            self.to_up.clear();
            self.to_up_sent = 0;
            self.inbuf.clear();
            return true;
        }
        false
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
            Reading::Body {
                deadline: Some(deadline),
                ..
            } => consider(deadline, Timer::Body),
            Reading::Body { deadline: None, .. } => {}
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
            Reading::Body { deadline, .. } => deadline.is_some(),
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
            sys::pollfd(self.conn.tcp.as_raw_fd(), tcp_events),
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
                sys::pollfd(self.conn.tcp.as_raw_fd(), sys::POLLOUT),
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
        let _ = self.conn.tcp.shutdown(Shutdown::Write);
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
                sys::pollfd(self.conn.tcp.as_raw_fd(), sys::POLLIN),
                sys::pollfd(self.shared.stop_rx.as_raw_fd(), sys::POLLIN),
            ];
            if sys::poll(&mut fds, Some(deadline)).is_err() || self.shared.is_stopping() {
                return;
            }
            match (&self.conn.tcp).read(&mut sink) {
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
