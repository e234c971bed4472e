//! `agent serve`: takes the validated configuration (config.rs), starts the runner threads, the TLS front and the HTTP
//! workers, and prints where to reach the agent with a ready-to-paste curl
//! line.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::api::auth::Authenticator;
use crate::api::bodies::BodyTurns;
use crate::api::routes::App;
use crate::cli::ServeArgs;
use crate::config::{self, ServeConfig};
use crate::dockergate::DockerSocket;
use crate::error::Error;
use crate::http::{Front, FrontConfig};
use crate::job::account::JobUser;
use crate::job::callbacks::CallbackPolicy;
use crate::job::runner::{Runner, RunnerConfig};
use crate::job::spec::AgentOptions;
use crate::logging;
use crate::metrics::Metrics;

/// HTTP worker threads. Log downloads stream, so a few workers serve many
/// pollers; slow clients are the front's problem, not the workers'. Large
/// job requests take turns (`api::bodies`), and at most half of the workers
/// wait for one, so the others always serve everyone else.
const HTTP_WORKERS: usize = 16;
/// How long a large job request may wait for its turn before a 503.
const BODY_TURN_WAIT: Duration = Duration::from_secs(60);

pub fn serve(args: ServeArgs) -> Result<(), Error> {
    // Caught from the start: a SIGTERM while the agent starts (systemctl
    // stop right after start) waits here for the loop at the end, instead
    // of killing the agent by its default action after it said it listens.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", "SIGTERM", e))?;
    // The agent log lives in the data directory (by default), and the log
    // comes first so that every later error is in it.
    let early_data_dir = config::data_dir(args.data_dir.clone());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&early_data_dir)
        .map_err(|e| Error::io("cannot create", &early_data_dir, e))?;
    let agent_log = logging::agent_log_path(&early_data_dir);
    logging::init("info", Some(&agent_log))
        .map_err(|e| Error::io("cannot open the agent log", &agent_log, e))?;
    let config = ServeConfig::from_args(&args)?;
    let docker_socket = match args.docker_socket.as_deref() {
        None => DockerSocket::default(),
        Some(value) => DockerSocket::parse(value).ok_or_else(|| Error::DockerSocket {
            value: value.to_string(),
            choices: DockerSocket::CHOICES,
        })?,
    };
    if docker_socket == DockerSocket::Host && args.jobs > 1 {
        log::warn!(
            "--docker-socket host with --jobs {}: every compose job gets the engine's socket, so each can read, stop or exec into the others, and take over the host",
            args.jobs
        );
    }
    // Before any thread: this takes the toolbox's variables out of the
    // environment the jobs inherit.
    let cache = crate::cache::host::agent_cache(cache_args(&args), &config.data_dir)?;
    if config.secret.len() < 32 {
        log::warn!(
            "the JWT secret is {} bytes long; 32 or more are recommended",
            config.secret.len()
        );
    }
    log::info!(
        "TLS certificate SHA-256 fingerprint: {}",
        config::fingerprint(&config.cert_pem)
    );
    let data_dir = config.data_dir.clone();
    let job_user = JobUser::from_setting(args.job_user.as_deref(), &data_dir)?;
    let front_cfg = FrontConfig {
        max_request_bytes: args.max_request_bytes,
        max_connections: args.max_connections,
        // One address may hold half of the connections, so it can never
        // keep the others out.
        max_per_address: args.max_connections.div_ceil(2),
        ..FrontConfig::default()
    };
    let socket_dir = data_dir.join("run");
    let (front, server) = Front::start(config.addr, Arc::new(config.tls), &socket_dir, front_cfg)?;

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
        disk: config.disk,
        callbacks: CallbackPolicy {
            attempts: args.callback_retry_attempts,
            ..CallbackPolicy::default()
        },
        options: AgentOptions {
            pre_job_hook: args.pre_job_hook_path.clone(),
            pre_job_hook_sourced: true,
            pre_job_hook_fails_job: true,
            post_job_hook: None,
            expose_kvm: args.expose_kvm_device,
            docker_socket,
            host_files: args.files.clone(),
            metrics,
            cache: Some(cache),
            job_user: job_user.map(Arc::new),
        },
    };
    let (runner, _runner_threads) = Runner::start(runner_cfg);
    crate::job::retention::warn_if_short(&data_dir, &config.disk);
    let auth = Authenticator::new(&config.secret);
    let local = front.local_addr();
    let shown_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    let url = format!("https://{shown_host}:{}", local.port());
    println!("{} listening on {url}", crate::version::long());
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
        // One body as large as allowed at a time, or several smaller ones.
        bodies: BodyTurns::new(args.max_request_bytes, HTTP_WORKERS / 2, BODY_TURN_WAIT),
    });
    let runner = Arc::clone(&app.runner);
    let _workers = crate::api::server::start_workers(Arc::new(server), app, HTTP_WORKERS);

    // SIGTERM or SIGINT: stop every job, let them clean up (processes,
    // containers), then exit. A job never outlives the agent.
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

/// The `--cache-*` flags.
fn cache_args(args: &ServeArgs) -> crate::cache::config::CacheArgs {
    crate::cache::config::CacheArgs {
        backend: args.cache_backend.clone(),
        dir: args.cache_dir.clone(),
        max_bytes: args.cache_max_bytes,
        cleanup_by: args.cache_cleanup_by.clone(),
        sftp_url: args.cache_sftp_url.clone(),
        sftp_user: args.cache_sftp_user.clone(),
        sftp_key: args.cache_sftp_key.clone(),
        sftp_path: args.cache_sftp_path.clone(),
        static_binary: args.cache_static_binary.clone(),
        archive_format: args.cache_archive_format.clone(),
        s3_bucket: args.cache_s3_bucket.clone(),
        s3_url: args.cache_s3_url.clone(),
        s3_region: args.cache_s3_region.clone(),
        s3_profile: args.cache_s3_profile.clone(),
        s3_instance_profile: args.cache_s3_instance_profile,
    }
}

/// How long shutdown waits for teardown beyond the stop grace period.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(30);
