//! The HTTPS front: the TLS-terminating, hardening front-end of the HTTP
//! server.
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
//! It answers `400`/`411`/`413`/`417`/`431`/`505` itself (and a plain-HTTP
//! `400` to a client that did not start TLS) for requests that
//! must not reach `tiny_http`, and it adds an `X-Agent-Peer: ip:port` header
//! (replacing any the client sent) because `tiny_http` cannot see the peer
//! of a Unix socket.
//!
//! This module knows nothing of routes, authentication or jobs, and must not:
//! the server module receives plain `tiny_http::Request`s from the
//! `tiny_http::Server` that [`Front::start`] returns, and learns the client's
//! address from [`PEER_HEADER`]. Each client connection gets one thread with
//! a small stack that multiplexes its two sockets with `poll(2)`; the number
//! of connections is capped, so the number of threads is too. Raw OS calls
//! (`poll`, the listen backlog, the effective uid, thread niceness) are in
//! `crate::process::sys`.
//!
//! # Where things are
//!
//! - `listener.rs`: [`Front`] and [`FrontConfig`]; binds the TCP port and the
//!   private Unix socket (checking its directory), accepts, and admits
//!   connections (at most `max_connections`, one thread each; pending ones
//!   make room for newer ones, see its "Admission").
//! - `conn.rs`: one connection: the TLS handshake and the `Session` state
//!   machine (request reading, deadlines, refusals, the end of the
//!   connection); `conn/upstream.rs`: its `tiny_http` side.
//! - `plain.rs`: a client speaking plain HTTP to the port gets a plain-HTTP
//!   `400` saying to use https, instead of a TLS alert.
//! - `request_head.rs`: validates a request head against the limits and
//!   what `tiny_http` would mishandle, and rewrites it, or says how to refuse
//!   it.
//! - `framing.rs`: follows `tiny_http`'s responses (`Content-Length`,
//!   chunked, until close) so the connection knows when one is complete.
//! - `tls.rs`: the rustls configuration and self-signed certificates.
//! - `error.rs`: `FrontError`, what can go wrong while starting.
//! - `tests.rs` and `tests/`: end-to-end tests against a real `tiny_http`;
//!   each file above has its own unit tests.
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

mod admission;
mod close;
mod conn;
pub mod error;
mod framing;
mod listener;
mod plain;
mod request_head;
#[cfg(test)]
mod tests;
mod tls;

pub(crate) use admission::FrontConfig;
pub(crate) use error::FrontError;
pub(crate) use listener::Front;
pub(crate) use tls::{load_tls_config, self_signed};

/// The header through which `tiny_http` learns the client's address: the
/// front drops any a client sends and adds the real one.
pub(crate) const PEER_HEADER: &str = "X-Agent-Peer";
