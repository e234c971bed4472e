//! Validated configuration, built once from the arguments and the
//! environment: where data lives, whose home the jobs use, and for `serve`
//! the JWT secret, the TLS material (checked, or made self-signed) and the
//! address to listen on. The commands take a `ServeConfig` and never read
//! the environment themselves.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::cli::ServeArgs;
use crate::error::Error;
use crate::http;
use crate::job::retention::DiskLimits;

/// What `agent serve` runs with, validated.
pub struct ServeConfig {
    pub secret: Vec<u8>,
    pub data_dir: PathBuf,
    /// The rustls configuration built from `cert_pem` and its key.
    pub tls: rustls::ServerConfig,
    pub cert_pem: Vec<u8>,
    pub addr: SocketAddr,
    /// What jobs may take of the disk (docs/protocol.md §6.7, §13.2).
    pub disk: DiskLimits,
}

impl ServeConfig {
    pub fn from_args(args: &ServeArgs) -> Result<ServeConfig, Error> {
        let secret = load_secret(
            args.auth_token_secret.clone(),
            args.auth_token_secret_file.as_deref(),
        )?;
        let disk = DiskLimits::new(args.max_job_log_bytes, args.keep_jobs, args.max_data_bytes)
            .map_err(|reason| Error::Flag {
                flag: "--max-job-log-bytes",
                value: args.max_job_log_bytes.to_string(),
                reason,
            })?;
        let data_dir = data_dir(args.data_dir.clone());
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io("cannot create", &data_dir, e))?;
        let (cert_pem, key_pem) = tls_material(args, &data_dir)?;
        let tls = http::load_tls_config(&cert_pem, &key_pem)?;
        let addr = (args.host.as_str(), args.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::Resolve {
                host: args.host.clone(),
            })?;
        Ok(ServeConfig {
            secret,
            data_dir,
            tls,
            cert_pem,
            addr,
            disk,
        })
    }
}

/// The agent user's home: jobs start there and `~` in file paths means it.
pub fn home_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from("/"),
    }
}

/// `--data-dir`, else `$AGENT_DATA_DIR`, else `~/.local/state/agent`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    crate::cli::non_empty(flag)
        .or_else(|| crate::cli::non_empty(std::env::var_os("AGENT_DATA_DIR").map(PathBuf::from)))
        .unwrap_or_else(|| home_dir().join(".local/state/agent"))
}

/// Reads the secret from the flag (or `AGENT_AUTH_TOKEN_SECRET`, which
/// `cli` moved there), else the file.
pub fn load_secret(flag: Option<String>, file: Option<&Path>) -> Result<Vec<u8>, Error> {
    let secret = if let Some(s) = flag {
        s.into_bytes()
    } else if let Some(path) = file {
        let mut bytes =
            std::fs::read(path).map_err(|e| Error::io("cannot read the secret file", path, e))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        bytes
    } else {
        Vec::new()
    };
    if secret.is_empty() {
        return Err(Error::NoSecret);
    }
    Ok(secret)
}

/// The certificate and key: both paths or neither; given paths must exist; without flags the
/// default files are used when present, else a self-signed pair is made
/// (and kept in the data dir, so its fingerprint stays the same).
fn tls_material(args: &ServeArgs, data_dir: &Path) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let given = match (&args.tls_cert_path, &args.tls_key_path) {
        (Some(_), None) => {
            return Err(Error::HalfTlsPair {
                given: "--tls-cert-path",
                missing: "--tls-key-path",
            })
        }
        (None, Some(_)) => {
            return Err(Error::HalfTlsPair {
                given: "--tls-key-path",
                missing: "--tls-cert-path",
            })
        }
        (cert, _) => cert.is_some(),
    };
    let cert = args
        .tls_cert_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("server.crt"));
    let key = args
        .tls_key_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("server.key"));
    if given || (cert.exists() && key.exists()) {
        let read = |p: &Path, what: &str| std::fs::read(p).map_err(|e| Error::io(what, p, e));
        return Ok((
            read(&cert, "cannot read the TLS certificate")?,
            read(&key, "cannot read the TLS key")?,
        ));
    }
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    if let (Ok(c), Ok(k)) = (std::fs::read(&cert), std::fs::read(&key)) {
        return Ok((c, k));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("cannot create", &dir, e))?;
    let (c, k) = http::self_signed(&["localhost".to_string(), "127.0.0.1".to_string()])?;
    crate::util::write_private(&key, k.as_bytes())
        .map_err(|e| Error::io("cannot write", &key, e))?;
    std::fs::write(&cert, c.as_bytes()).map_err(|e| Error::io("cannot write", &cert, e))?;
    log::info!("made a self-signed certificate {}", cert.display());
    Ok((c.into_bytes(), k.into_bytes()))
}

/// SHA-256 of the first certificate's DER, as `AB:CD:...`.
pub fn fingerprint(cert_pem: &[u8]) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    match CertificateDer::pem_slice_iter(cert_pem).next() {
        Some(Ok(der)) => hmac_sha256::Hash::hash(der.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::job::retention;

    #[test]
    fn serve_has_the_disk_limits_of_the_docs() {
        let args = <crate::cli::ServeArgs as argh::FromArgs>::from_args(&["serve"], &[])
            .expect("no flags");
        assert_eq!(args.max_job_log_bytes, retention::DEFAULT_MAX_JOB_LOG_BYTES);
        assert_eq!(args.max_data_bytes, retention::DEFAULT_MAX_DATA_BYTES);
        // §13.2: the last 100 finished jobs, as before the limit existed.
        assert_eq!(args.keep_jobs, 100);
    }
}
