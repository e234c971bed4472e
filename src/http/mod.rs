//! The TLS-terminating HTTPS front (see conn.rs for now).

mod conn;

pub(crate) use conn::{load_tls_config, self_signed, Front, FrontConfig, FrontError};
