//! The HTTP API: routes as plain functions from a request to a reply
//! (`routes`), JWT authentication (`auth`), and the worker threads that take
//! requests from `tiny_http` (`server`). It knows jobs only through the
//! runner pool's handle; it knows nothing of TLS or sockets.

pub mod auth;
pub mod bodies;
pub mod routes;
pub mod server;
