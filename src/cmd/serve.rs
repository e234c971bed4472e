//! `agent serve`: builds the validated configuration once (secret, TLS
//! material, limits), starts the runner threads, the TLS front and the HTTP
//! workers, and prints where to reach the agent with a ready-to-paste curl
//! line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::api::auth::Authenticator;
use crate::api::routes::App;
use crate::cli::{ServeArgs, TokenArgs};
use crate::config;
use crate::error::Error;
use crate::front::{self, Front, FrontConfig};
use crate::job::callbacks::CallbackPolicy;
use crate::job::runner::{Runner, RunnerConfig};
use crate::job::spec::AgentOptions;
use crate::logging;
use crate::metrics::Metrics;

/// HTTP worker threads. Log downloads stream, so a few workers serve many
/// pollers; slow clients are the front's problem, not the workers'.
const HTTP_WORKERS: usize = 8;

/// Reads the secret from the flag, the environment or a file, in that order.
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
        std::env::var("AGENT_AUTH_TOKEN_SECRET")
            .unwrap_or_default()
            .into_bytes()
    };
    if secret.is_empty() {
        return Err(Error::Config(
            "no JWT secret: give --auth-token-secret, --auth-token-secret-file or AGENT_AUTH_TOKEN_SECRET".into(),
        ));
    }
    Ok(secret)
}

pub fn token(args: TokenArgs) -> Result<String, Error> {
    let secret = load_secret(
        args.auth_token_secret,
        args.auth_token_secret_file.as_deref(),
    )?;
    Ok(Authenticator::new(&secret).mint(Duration::from_secs(args.ttl)))
}

/// The certificate and key: given paths must exist; without flags the
/// default files are used when present, else a self-signed pair is made
/// (and kept in the data dir, so its fingerprint stays the same).
fn tls_material(args: &ServeArgs, data_dir: &Path) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let given = args.tls_cert_path.is_some() || args.tls_key_path.is_some();
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
    let (c, k) = front::self_signed(&["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| Error::Config(format!("cannot make a self-signed certificate: {e}")))?;
    crate::util::write_private(&key, k.as_bytes())
        .map_err(|e| Error::io("cannot write", &key, e))?;
    std::fs::write(&cert, c.as_bytes()).map_err(|e| Error::io("cannot write", &cert, e))?;
    log::info!("made a self-signed certificate {}", cert.display());
    Ok((c.into_bytes(), k.into_bytes()))
}

pub fn serve(args: ServeArgs) -> Result<(), Error> {
    let agent_log = logging::agent_log_path();
    logging::init("info", Some(&agent_log))
        .map_err(|e| Error::io("cannot open the agent log", &agent_log, e))?;
    let secret = load_secret(
        args.auth_token_secret.clone(),
        args.auth_token_secret_file.as_deref(),
    )?;
    if secret.len() < 32 {
        log::warn!(
            "the JWT secret is {} bytes long; 32 or more are recommended",
            secret.len()
        );
    }
    let data_dir = config::data_dir(args.data_dir.clone());
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io("cannot create", &data_dir, e))?;
    let (cert, key) = tls_material(&args, &data_dir)?;
    let tls = front::load_tls_config(&cert, &key)
        .map_err(|e| Error::Config(format!("bad TLS certificate or key: {e}")))?;
    log::info!(
        "TLS certificate SHA-256 fingerprint: {}",
        fingerprint(&cert)
    );

    let addr: SocketAddr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("cannot resolve --host {}", args.host)))?;
    let front_cfg = FrontConfig {
        max_request_bytes: args.max_request_bytes,
        max_connections: args.max_connections,
        ..FrontConfig::default()
    };
    let socket_dir = data_dir.join("run");
    let (front, server) = Front::start(addr, Arc::new(tls), &socket_dir, front_cfg)
        .map_err(|e| Error::Config(e.to_string()))?;

    let metrics = match (&args.statsd_host, args.statsd_port) {
        (Some(host), Some(port)) if !host.is_empty() => {
            match Metrics::new(host, port, &args.statsd_namespace) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    log::error!("{e}; metrics are off");
                    None
                }
            }
        }
        _ => None,
    };
    let grace = Duration::from_secs(args.stop_grace_period);
    let runner_cfg = RunnerConfig {
        jobs: args.jobs.max(1),
        queue_size: args.queue_size,
        data_dir: data_dir.clone(),
        home: config::home_dir(),
        grace,
        archivator_timeout: Duration::from_secs(args.archivator_timeout),
        callbacks: CallbackPolicy {
            attempts: args.callback_retry_attempts,
            ..CallbackPolicy::default()
        },
        options: AgentOptions {
            pre_job_hook: args.pre_job_hook_path.clone(),
            expose_kvm: args.expose_kvm_device,
            host_files: args.files.clone(),
            metrics,
        },
    };
    let (runner, _runner_threads) = Runner::start(runner_cfg);
    let auth = Authenticator::new(&secret);
    let local = front.local_addr();
    let shown_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    let url = format!("https://{shown_host}:{}", local.port());
    println!("agent {} listening on {url}", crate::version::long());
    println!(
        "try: curl -k -H \"Authorization: Bearer {}\" {url}/status",
        auth.mint(Duration::from_secs(3600))
    );
    log::info!(
        "listening on {local} with {} runner(s), queue {}, data in {}",
        args.jobs.max(1),
        args.queue_size,
        data_dir.display()
    );
    let app = Arc::new(App {
        auth,
        runner,
        agent_log,
        max_request_bytes: args.max_request_bytes,
    });
    let runner = Arc::clone(&app.runner);
    let _workers = crate::api::server::start_workers(Arc::new(server), app, HTTP_WORKERS);

    // SIGTERM or SIGINT: stop every job, let them clean up (processes,
    // containers), then exit. A job never outlives the agent.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", "SIGTERM", e))?;
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: stopping every job and shutting down");
        runner.shutdown();
        let deadline = Instant::now() + grace + SHUTDOWN_MARGIN;
        while !runner.is_idle() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            // Jobs accepted meanwhile are stopped too.
            runner.shutdown();
        }
        if !runner.is_idle() {
            log::error!(
                "jobs still tearing down {:?} after the stop; exiting anyway",
                grace + SHUTDOWN_MARGIN
            );
        }
    }
    drop(front);
    Ok(())
}

/// How long shutdown waits for teardown beyond the stop grace period.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(30);

/// SHA-256 of the first certificate's DER, as `AB:CD:...`.
fn fingerprint(cert_pem: &[u8]) -> String {
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
