//! Listen mode (`agent start --endpoint ... --token ...`): the agent opens no
//! port. It registers with a control plane, syncs with it every few seconds
//! to learn what to do, fetches the jobs it is given, runs them with the
//! same job engine as `agent serve`, and pushes each job's event log to the
//! URL the job names. See docs/listen.md.
//!
//! This module is the entry: configuration, registration, the signal
//! thread, the sync loop, then the disconnect and the shutdown hook.
//! `config` builds the settings, `client` speaks HTTP, `sync` is the state
//! machine, `worker` runs one job, `push` pushes its log, `shutdown` owns the
//! ways out.

pub mod client;
pub mod config;
pub mod error;
mod push;
mod recover;
pub mod shutdown;
mod sync;
mod worker;

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::{StartArgs, LISTEN_ONLY_FLAGS};
use crate::error::Error;
use crate::job::spec::AgentOptions;
pub use client::ShutdownReason;
use client::{retry, Client, RegisterRequest};
use config::ListenConfig;
pub use error::ListenError;
use sync::{Msg, SyncLoop};
use worker::Shared;

/// Whether `agent start <args>` is listen mode: a flag only listen mode
/// has, or a request for help (the help of `start` is listen mode's).
pub fn wants_listen_mode(args: &[&str]) -> bool {
    let help = matches!(args, ["-h" | "--help" | "help"]);
    help || args.iter().any(|a| LISTEN_ONLY_FLAGS.contains(a))
}

pub fn run(args: &StartArgs) -> Result<ShutdownReason, Error> {
    // The agent log lives in the data directory (by default), and the log
    // comes first so that every later error is in it.
    let data_dir = crate::config::data_dir(args.data_dir.clone());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .map_err(|e| Error::io("cannot create", &data_dir, e))?;
    let agent_log = crate::logging::agent_log_path(&data_dir);
    crate::logging::init("info", Some(&agent_log))
        .map_err(|e| Error::io("cannot open the agent log", &agent_log, e))?;
    let cfg = Arc::new(ListenConfig::build(args)?);
    // The jobs' cache, as `serve`'s flags set it: a fleet of listen-mode
    // agents shares one (SFTP, S3). Before any thread of the agent's: the
    // cache takes its credentials out of the agent's environment.
    let cache = crate::cache::host::agent_cache(cfg.cache.clone(), &data_dir)?;
    let job_user =
        crate::job::account::JobUser::from_setting(cfg.job_user.as_deref(), &cfg.data_dir)?;
    let limits = &cfg.limits;
    let mut client = Client::new(cfg.base_url(), cfg.token.clone(), limits.request_timeout)?;
    // Before anything else: clean up after the jobs of an agent that died
    // on this data dir; what the control plane was not told is told once
    // registered (recover.rs).
    let owed =
        recover::recover_earlier(&cfg.data_dir, &crate::config::home_dir(), limits.stop_grace);
    crate::job::retention::warn_if_short(&cfg.data_dir, &cfg.disk);

    log::info!(
        "agent {} registering with {} as {}",
        crate::version::long(),
        cfg.base_url(),
        cfg.name
    );
    let request = register_request(&cfg);
    let registered = retry(
        "POST /register",
        limits.register_attempts,
        limits.register_delay,
        &|| false,
        || client.register(&request),
    )
    .map_err(|source| ListenError::Register {
        endpoint: cfg.endpoint.clone(),
        attempts: limits.register_attempts,
        source,
    })?;
    // The reference's own test control plane answers no name; the name
    // registered with stays.
    let name = registered.name.clone().unwrap_or_else(|| {
        log::warn!(
            "POST /register: the answer has no `name`; keeping {}",
            cfg.name
        );
        cfg.name.clone()
    });
    log::info!("registered as {name}");
    println!(
        "agent {} registered with {} as {name}",
        crate::version::long(),
        cfg.endpoint
    );

    let (tx, rx) = crossbeam_channel::unbounded();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", "SIGTERM", e))?;
    let signals_handle = signals.handle();
    let signal_thread = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if tx.send(Msg::Signal(signal)).is_err() {
                    break;
                }
            }
        })
    };

    let shared = Arc::new(Shared {
        client: client.clone(),
        cfg: Arc::clone(&cfg),
        options: AgentOptions {
            pre_job_hook: cfg.pre_job_hook.clone(),
            pre_job_hook_sourced: cfg.source_pre_job_hook,
            pre_job_hook_fails_job: cfg.fail_on_pre_job_hook_error,
            post_job_hook: cfg.post_job_hook.clone(),
            expose_kvm: false,
            docker_socket: cfg.docker_socket,
            host_files: (!cfg.files.is_empty()).then(|| {
                cfg.files
                    .iter()
                    .map(|(host, dest)| format!("{host}:{dest}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            metrics: None,
            cache: Some(cache),
            job_user: job_user.map(Arc::new),
        },
    });
    for job in &owed {
        recover::push_rest(job, &client, limits.push_interval, limits.log_flush_timeout);
    }
    let reason = SyncLoop::new(shared, tx, rx).with_owed(owed).run();
    signals_handle.close();
    let _ = signal_thread.join();

    shutdown::disconnect(&client, limits, reason);
    if let Some(hook) = &cfg.shutdown_hook {
        shutdown::run_hook(hook, reason, limits.shutdown_hook_timeout);
    }
    log::info!("agent shutting down: {}", reason.hook_value());
    Ok(reason)
}

fn register_request(cfg: &ListenConfig) -> RegisterRequest {
    RegisterRequest {
        name: cfg.name.clone(),
        version: crate::version::VERSION.to_string(),
        pid: std::process::id(),
        os: os_name(),
        arch: arch_name().to_string(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        single_job: cfg.disconnect_after_job,
        idle_timeout: cfg.idle_timeout.as_secs(),
        interruption_grace_period: cfg.interruption_grace.as_secs(),
        job_id: cfg.job_id.clone().unwrap_or_default(),
    }
}

/// `PRETTY_NAME` of /etc/os-release, else the kernel's name.
fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".to_string())
}

/// The architecture as the reference agent names it.
fn arch_name() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "x86",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_mode_needs_a_listen_flag() {
        assert!(wants_listen_mode(&["--endpoint", "x", "--token", "t"]));
        assert!(wants_listen_mode(&["--config-file", "agent.yml"]));
        assert!(wants_listen_mode(&["--help"]));
        assert!(wants_listen_mode(&["-h"]));
        assert!(!wants_listen_mode(&["--statsd-host", "h", "--port", "0"]));
        assert!(!wants_listen_mode(&[]));
        // Shared flags alone keep `serve`.
        assert!(!wants_listen_mode(&["--files", "/a:/b"]));
    }
}
