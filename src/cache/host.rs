//! The cache's host side: the agent's cache (`agent_cache`), and what a
//! job's session gets from it: the per-job service on a socket
//! in the work directory, the `cache` program on PATH (a link to the agent's
//! own binary for shell jobs; the static binary mounted at `CONTAINER_BIN`
//! in compose jobs), and `AGENT_CACHE_SOCKET`. The script that sets these
//! up also defines `checkout`; it is a file in the job's work dir
//! (`SETUP_FILE`), which the session and the job's SSH jump point
//! (docs/protocol.md §8) both source.
//!
//! Only the socket's path enters the job's environment: never the cache
//! directory, the agent's SFTP key or its path, nor its S3 credentials. A
//! job's own SFTP server or S3 bucket (its `SEMAPHORE_CACHE_*` variables)
//! is reached with the key or credentials the job's `cache` finds in the
//! job.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::Store;
use super::config::{self, BackendConfig, CacheConfig};
use super::handler::JobStore;
use super::service::CacheService;
use super::{SOCKET_ENV, SOCKET_NAME};
use crate::util::shell_quote;

/// Where compose jobs find `cache` (a read-only mount into main).
pub const CONTAINER_BIN: &str = "/opt/agent/bin";
/// The setup script's file in the job's work dir: mode 0600, owned like
/// the env file next to it. It holds no secret (a PATH entry, the socket's
/// path and `checkout`), and it is at the same path inside a compose job's
/// main container, where the work dir is mounted.
pub const SETUP_FILE: &str = "setup.sh";

/// The agent's cache: its configuration and the store jobs share.
pub struct AgentCache {
    pub config: CacheConfig,
    pub store: Arc<Store>,
}

/// A job's cache, served while it lives.
pub struct JobCache {
    service: CacheService,
    bin_dir: PathBuf,
}

/// Where the requests of a job whose env vars are `env` go: the agent's
/// backend, or the job's own SFTP server or S3 bucket (the toolbox's
/// `SEMAPHORE_CACHE_*`). Variables that cannot be used, or a backend this
/// agent does not have, are said to every `cache` command of the job.
fn job_store(agent: &AgentCache, env: &BTreeMap<String, Vec<u8>>, work_dir: &Path) -> JobStore {
    let cfg = match agent.config.for_job(env, work_dir) {
        Ok(cfg) => cfg,
        Err(message) => return JobStore::Refused(message),
    };
    // An S3 bucket keeps each project's keys apart.
    let project = match &cfg.backend {
        BackendConfig::S3(_) => match config::project_of(env) {
            Ok(p) => Some(p),
            Err(message) => return JobStore::Refused(message),
        },
        _ => None,
    };
    if cfg.backend == agent.config.backend {
        return JobStore::Agent {
            store: Arc::clone(&agent.store),
            project,
        };
    }
    let store = match Store::open(&cfg) {
        Ok(store) => store,
        Err(e) => return JobStore::Refused(e.to_string()),
    };
    match (cfg.backend, project) {
        (BackendConfig::S3(_), Some(project)) => JobStore::JobS3 { store, project },
        _ => JobStore::JobSftp {
            store,
            key_dir: work_dir.to_path_buf(),
        },
    }
}

/// Starts the cache of one job. `env` is the job's env vars, which may
/// select another backend (the toolbox's `SEMAPHORE_CACHE_*`). An error is
/// for the job log; the job then runs without a cache.
pub fn serve_job<'a>(
    agent: &AgentCache,
    env: impl Iterator<Item = (&'a str, &'a [u8])>,
    work_dir: &Path,
    in_container: bool,
    owner: Option<(u32, u32)>,
) -> Result<JobCache, String> {
    let env: BTreeMap<String, Vec<u8>> = env.map(|(k, v)| (k.to_string(), v.to_vec())).collect();
    let jobs = job_store(agent, &env, work_dir);
    let bin_dir = if in_container {
        if agent.config.static_binary.is_none() {
            return Err(
                "no statically linked agent binary to mount (--cache-static-binary)".into(),
            );
        }
        PathBuf::from(CONTAINER_BIN)
    } else {
        let dir = work_dir.join("bin");
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the agent's own binary: {e}"))?;
        std::fs::DirBuilder::new()
            // The job's own user (`--job-user`) runs what is in it.
            .mode(if owner.is_some() { 0o755 } else { 0o700 })
            .create(&dir)
            .and_then(|_| std::os::unix::fs::symlink(&exe, dir.join("cache")))
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        dir
    };
    // A job of its own user has a directory of its own (its TMPDIR) for
    // the socket, where `cache` also writes its `cache_log`; the agent
    // never opens a path in it again (the directory goes whole at the end).
    let socket_dir = match owner {
        Some(_) => work_dir.join(crate::job::account::JOB_TMP),
        None => work_dir.to_path_buf(),
    };
    let socket = socket_dir.join(SOCKET_NAME);
    let service = CacheService::start(&socket, jobs)
        .and_then(|service| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&socket, Some(uid), Some(gid))?;
            }
            Ok(service)
        })
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    Ok(JobCache { service, bin_dir })
}

/// The script the session sources before the job's commands: `checkout`,
/// and `cache` when the job has one.
pub fn setup_script(cache: Option<&JobCache>) -> String {
    let mut script = String::from(crate::checkout::FUNCTION);
    if let Some(c) = cache {
        script.push_str(&format!(
            "export PATH={}:\"$PATH\"\nexport {SOCKET_ENV}={}\n",
            shell_quote(&c.bin_dir.to_string_lossy()),
            shell_quote(&c.service.socket().to_string_lossy()),
        ));
    }
    script
}

/// The mount that puts `cache` into a compose job's main container, when
/// the agent has a cache and a static binary to mount.
pub fn container_volume(cache: Option<&AgentCache>) -> Option<String> {
    let binary = cache?.config.static_binary.as_ref()?;
    Some(format!("{}:{CONTAINER_BIN}/cache:ro", binary.display()))
}

/// The agent's binary inside a compose job's main container, when it is
/// mounted there (`container_volume`).
pub fn container_program(cache: Option<&AgentCache>) -> Option<String> {
    container_volume(cache).map(|_| format!("{CONTAINER_BIN}/cache"))
}

/// The agent's cache from its flags: the configuration checked, the
/// backend opened (a local directory is made; an SFTP server or S3 bucket
/// is not contacted until a job asks, but for the look for uploads a crash
/// left, on its own thread).
pub fn agent_cache(
    args: super::config::CacheArgs,
    data_dir: &Path,
) -> Result<Arc<AgentCache>, crate::error::Error> {
    use crate::error::Error;
    let config = args.into_config(data_dir).map_err(Error::CacheConfig)?;
    super::backend::sftp::clear_spool(&config.spool_dir);
    let store = Store::open(&config).map_err(Error::Cache)?;
    if config.static_binary.is_none() {
        log::info!(
            "this agent binary is not statically linked: compose jobs get no `cache` (see --cache-static-binary)"
        );
    }
    let store = Arc::new(store);
    // On its own thread: a server that is slow to answer does not hold
    // the agent's start.
    let sweeper = Arc::clone(&store);
    if let Err(e) = std::thread::Builder::new()
        .name("cache-sweep".into())
        .spawn(move || sweeper.sweep_abandoned())
    {
        log::warn!("cannot look for uploads a crash left in the cache: {e}");
    }
    Ok(Arc::new(AgentCache { config, store }))
}
