//! Why listen mode cannot start: a bad configuration (file, flags,
//! environment, trust roots) or a registration that never succeeded; and
//! how a request to the control plane fails (`ClientError`, which the
//! client returns). Each message ends with its cause's, and `source()`
//! returns that cause.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ListenError {
    /// The config file is not YAML with our keys (an unknown key included).
    ConfigFile {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    /// A required setting is missing.
    Missing { key: &'static str },
    /// A setting has a value that cannot be used.
    Invalid {
        key: String,
        value: String,
        reason: &'static str,
    },
    /// The token file cannot be read.
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `SSL_CERT_FILE` holds no certificate.
    NoCertificates { path: PathBuf },
    /// Registration failed on every attempt.
    Register {
        endpoint: String,
        attempts: u32,
        source: ClientError,
    },
}

impl ListenError {
    pub fn invalid(key: &str, value: &str, reason: &'static str) -> ListenError {
        ListenError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        }
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::ConfigFile { path, source } => {
                write!(f, "config file {}: {source}", path.display())
            }
            ListenError::Missing { key: "token" } => write!(
                f,
                "no token: give --token-file, `token-file` or `token` in the config file, \
                 $SEMAPHORE_AGENT_TOKEN, or --token"
            ),
            ListenError::Missing { key } => {
                write!(f, "no {key}: give --{key} or `{key}` in the config file")
            }
            ListenError::TokenFile { path, source } => {
                write!(f, "cannot read the token file {}: {source}", path.display())
            }
            ListenError::Invalid { key, value, reason } => {
                write!(f, "{key} '{value}' {reason}")
            }
            ListenError::NoCertificates { path } => {
                write!(
                    f,
                    "SSL_CERT_FILE {} holds no PEM certificate",
                    path.display()
                )
            }
            ListenError::Register {
                endpoint,
                attempts,
                source,
            } => write!(
                f,
                "cannot register with {endpoint} ({attempts} attempts): {}",
                describe(source)
            ),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::ConfigFile { source, .. } => Some(source),
            ListenError::Register { source, .. } => Some(source),
            ListenError::TokenFile { source, .. } => Some(source),
            ListenError::Missing { .. }
            | ListenError::Invalid { .. }
            | ListenError::NoCertificates { .. } => None,
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// No answer: connection refused, TLS failure, the deadline passed.
    Transport {
        route: &'static str,
        source: Box<ureq::Error>,
    },
    /// An answer that is not a success.
    Status {
        route: &'static str,
        status: u16,
        body: String,
    },
    /// A success whose body is not JSON, or not an object.
    Decode {
        route: &'static str,
        source: serde_json::Error,
    },
    /// A field of the answer has a type the agent cannot read.
    Field {
        route: &'static str,
        field: &'static str,
        source: serde_json::Error,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport { route, .. } => write!(f, "{route} failed"),
            ClientError::Status {
                route,
                status,
                body,
            } => {
                write!(f, "{route} answered {status}")?;
                let body = body.trim();
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            ClientError::Decode { route, .. } => write!(f, "{route} answered an unexpected body"),
            ClientError::Field { route, field, .. } => {
                write!(f, "{route} answered an unexpected `{field}`")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Transport { source, .. } => Some(source.as_ref()),
            ClientError::Decode { source, .. } | ClientError::Field { source, .. } => Some(source),
            ClientError::Status { .. } => None,
        }
    }
}

/// `ClientError` with its causes, for log lines.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
