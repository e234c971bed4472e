//! What can go wrong while setting up the front or its TLS material.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong while setting up the front or its TLS material.
#[derive(Debug)]
pub(crate) enum FrontError {
    /// The public TCP address could not be bound.
    Bind { addr: SocketAddr, source: io::Error },
    /// The private socket directory could not be created or inspected.
    SocketDir { path: PathBuf, source: io::Error },
    /// The private socket directory exists but others could reach into it.
    InsecureSocketDir { path: PathBuf, reason: &'static str },
    /// The private Unix socket could not be bound.
    UnixBind { path: PathBuf, source: io::Error },
    /// `tiny_http` refused the Unix listener.
    Upstream {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A thread could not be started.
    Spawn {
        what: &'static str,
        source: io::Error,
    },
    /// The certificate PEM could not be parsed.
    CertificatePem {
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate PEM holds no certificate.
    NoCertificate,
    /// The private key PEM holds no usable key.
    KeyPem {
        source: rustls::pki_types::pem::Error,
    },
    /// rustls rejected the certificate and key (e.g. they do not match).
    Tls { source: rustls::Error },
    /// A self-signed certificate could not be generated.
    SelfSigned { source: rcgen::Error },
}

// As in error.rs, the message carries its cause, so `{e}` alone explains it.
impl fmt::Display for FrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            FrontError::SocketDir { path, source } => write!(
                f,
                "cannot prepare socket directory {}: {source}",
                path.display()
            ),
            FrontError::InsecureSocketDir { path, reason } => {
                write!(f, "socket directory {} is unsafe: {reason}", path.display())
            }
            FrontError::UnixBind { path, source } => {
                write!(f, "cannot bind Unix socket {}: {source}", path.display())
            }
            FrontError::Upstream { source } => write!(f, "cannot start the HTTP server: {source}"),
            FrontError::Spawn { what, source } => {
                write!(f, "cannot start the {what} thread: {source}")
            }
            FrontError::CertificatePem { source } => {
                write!(f, "cannot parse the certificate PEM: {source}")
            }
            FrontError::NoCertificate => write!(f, "the certificate PEM holds no certificate"),
            FrontError::KeyPem { source } => {
                write!(f, "cannot find a private key in the key PEM: {source}")
            }
            FrontError::Tls { source } => {
                write!(f, "the certificate and key are not usable: {source}")
            }
            FrontError::SelfSigned { source } => {
                write!(f, "cannot generate a self-signed certificate: {source}")
            }
        }
    }
}

impl std::error::Error for FrontError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrontError::Bind { source, .. }
            | FrontError::SocketDir { source, .. }
            | FrontError::UnixBind { source, .. }
            | FrontError::Spawn { source, .. } => Some(source),
            FrontError::Upstream { source } => Some(&**source),
            FrontError::CertificatePem { source } | FrontError::KeyPem { source } => Some(source),
            FrontError::Tls { source } => Some(source),
            FrontError::SelfSigned { source } => Some(source),
            FrontError::InsecureSocketDir { .. } | FrontError::NoCertificate => None,
        }
    }
}
