//! The TLS-terminating HTTPS front (see conn.rs for now).

mod conn;
mod error;
mod framing;
mod listener;
mod request_head;
mod tls;

pub(crate) use error::FrontError;
pub(crate) use listener::{Front, FrontConfig};
pub(crate) use tls::{load_tls_config, self_signed};

#[cfg(test)]
mod tests;
