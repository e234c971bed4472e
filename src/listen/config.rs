//! The validated configuration of `agent start` in listen mode: the YAML
//! config file (unknown keys are errors that name the key), the flags that
//! override it, and the limits (timeouts, retry counts) that tests may
//! shorten through the environment.
//!
//! Nothing here talks to the network or runs a job; it only turns arguments,
//! a file and the environment into a `ListenConfig`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::ListenError;
use crate::cli::StartArgs;
use crate::dockergate::DockerSocket;
use crate::error::Error;
use crate::job::request::is_shell_identifier;
use crate::job::retention::{self, DiskLimits};

/// The config file: the same keys as the flags, in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    endpoint: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    no_https: Option<bool>,
    name: Option<String>,
    env_vars: Option<Vec<String>>,
    files: Option<Vec<String>>,
    fail_on_missing_files: Option<bool>,
    docker_socket: Option<String>,
    disconnect_after_job: Option<bool>,
    disconnect_after_idle_timeout: Option<u64>,
    job_id: Option<String>,
    shutdown_hook_path: Option<PathBuf>,
    pre_job_hook_path: Option<PathBuf>,
    fail_on_pre_job_hook_error: Option<bool>,
    source_pre_job_hook: Option<bool>,
    post_job_hook_path: Option<PathBuf>,
    upload_job_logs: Option<String>,
    interruption_grace_period: Option<u64>,
    job_user: Option<String>,
    max_job_log_bytes: Option<u64>,
    keep_jobs: Option<usize>,
    max_data_bytes: Option<u64>,
    cache_backend: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_max_bytes: Option<u64>,
    cache_cleanup_by: Option<String>,
    cache_sftp_url: Option<String>,
    cache_sftp_user: Option<String>,
    cache_sftp_key: Option<PathBuf>,
    cache_sftp_path: Option<String>,
    cache_static_binary: Option<PathBuf>,
    cache_archive_format: Option<String>,
    cache_s3_bucket: Option<String>,
    cache_s3_url: Option<String>,
    cache_s3_region: Option<String>,
    cache_s3_profile: Option<String>,
    cache_s3_instance_profile: Option<bool>,
}

/// When a job's whole log is uploaded as an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadJobLogs {
    Never,
    Always,
    /// Only when the control plane refused further lines (422).
    WhenTrimmed,
}

/// Timeouts and retry limits. The defaults are the reference agent's;
/// `AGENT_LISTEN_*` variables shorten them for tests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of one request to the control plane.
    pub request_timeout: Duration,
    pub register_attempts: u32,
    pub register_delay: Duration,
    pub get_job_attempts: u32,
    pub get_job_delay: Duration,
    pub disconnect_attempts: u32,
    pub disconnect_delay: Duration,
    /// Without a successful sync for this long, the agent shuts down.
    pub sync_give_up: Duration,
    /// How long a finished job's remaining lines may take to be pushed.
    pub log_flush_timeout: Duration,
    /// Between two pushes of a running job's log.
    pub push_interval: Duration,
    /// How long teardown waits for a job that was asked to stop.
    pub stop_grace: Duration,
    /// Deadline of the shutdown hook.
    pub shutdown_hook_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(30),
            register_attempts: 30,
            register_delay: Duration::from_secs(1),
            get_job_attempts: 10,
            get_job_delay: Duration::from_secs(3),
            disconnect_attempts: 100,
            disconnect_delay: Duration::from_secs(1),
            sync_give_up: Duration::from_secs(600),
            log_flush_timeout: Duration::from_secs(60),
            push_interval: Duration::from_millis(500),
            stop_grace: Duration::from_secs(10),
            shutdown_hook_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// The defaults, with each `AGENT_LISTEN_<NAME>` variable that is set
    /// replacing its limit (milliseconds for durations, a count otherwise).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Limits, ListenError> {
        let mut limits = Limits::default();
        let ms = |name: &str, slot: &mut Duration| -> Result<(), ListenError> {
            let key = format!("AGENT_LISTEN_{name}_MS");
            if let Some(v) = get(&key) {
                *slot = Duration::from_millis(parse_number(&key, &v)?);
            }
            Ok(())
        };
        ms("REQUEST_TIMEOUT", &mut limits.request_timeout)?;
        ms("REGISTER_DELAY", &mut limits.register_delay)?;
        ms("GET_JOB_DELAY", &mut limits.get_job_delay)?;
        ms("DISCONNECT_DELAY", &mut limits.disconnect_delay)?;
        ms("SYNC_GIVE_UP", &mut limits.sync_give_up)?;
        ms("LOG_FLUSH_TIMEOUT", &mut limits.log_flush_timeout)?;
        ms("PUSH_INTERVAL", &mut limits.push_interval)?;
        ms("STOP_GRACE", &mut limits.stop_grace)?;
        let count = |name: &str, slot: &mut u32| -> Result<(), ListenError> {
            let key = format!("AGENT_LISTEN_{name}");
            if let Some(v) = get(&key) {
                *slot = u32::try_from(parse_number(&key, &v)?)
                    .map_err(|_| ListenError::invalid(&key, &v, "is too large"))?
                    .max(1);
            }
            Ok(())
        };
        count("REGISTER_ATTEMPTS", &mut limits.register_attempts)?;
        count("GET_JOB_ATTEMPTS", &mut limits.get_job_attempts)?;
        count("DISCONNECT_ATTEMPTS", &mut limits.disconnect_attempts)?;
        Ok(limits)
    }
}

fn parse_number(key: &str, value: &str) -> Result<u64, ListenError> {
    value
        .trim()
        .parse()
        .map_err(|_| ListenError::invalid(key, value, "is not a number"))
}

/// Everything listen mode needs, checked.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// `host[:port]` of the control plane.
    pub endpoint: String,
    /// The registration token.
    pub token: String,
    pub https: bool,
    /// The name to register with (the control plane may replace it).
    pub name: String,
    /// `(NAME, VALUE)` exported into every job.
    pub env_vars: Vec<(String, String)>,
    /// `host:container` pairs mounted into compose jobs.
    pub files: Vec<(String, String)>,
    pub fail_on_missing_files: bool,
    /// What compose jobs get as `/var/run/docker.sock`.
    pub docker_socket: DockerSocket,
    pub disconnect_after_job: bool,
    /// Zero: never.
    pub idle_timeout: Duration,
    pub job_id: Option<String>,
    pub shutdown_hook: Option<PathBuf>,
    pub pre_job_hook: Option<PathBuf>,
    pub fail_on_pre_job_hook_error: bool,
    pub source_pre_job_hook: bool,
    pub post_job_hook: Option<PathBuf>,
    pub upload_job_logs: UploadJobLogs,
    pub interruption_grace: Duration,
    pub data_dir: PathBuf,
    /// `--job-user`, unchecked (`job::account::JobUser::parse`).
    pub job_user: Option<String>,
    /// The log limit, and which finished jobs' directories are kept.
    pub disk: DiskLimits,
    /// The `--cache-*` settings, as `serve` takes them (checked when the
    /// cache opens).
    pub cache: crate::cache::config::CacheArgs,
    pub limits: Limits,
}

impl ListenConfig {
    /// The base URL of the control plane's agent API.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/api/v1/self_hosted_agents", self.endpoint)
    }

    /// Builds the configuration from the flags, the config file they name
    /// and the environment (`SEMAPHORE_AGENT_NAME`, `AGENT_LISTEN_*`).
    pub fn build(args: &StartArgs) -> Result<ListenConfig, Error> {
        let file = match &args.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(merge(args, file, &env)?)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io("cannot read the config file", path, e))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(FileConfig::default());
    }
    serde_yaml_ng::from_slice(&bytes).map_err(|source| {
        ListenError::ConfigFile {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Flags win over the file; a switch given on the command line turns its
/// option on whatever the file says.
fn merge(
    args: &StartArgs,
    file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ListenConfig, ListenError> {
    let endpoint = args
        .endpoint
        .clone()
        .or(file.endpoint)
        .filter(|e| !e.trim().is_empty())
        .ok_or(ListenError::Missing { key: "endpoint" })?;
    let endpoint = endpoint.trim().trim_end_matches('/').to_string();
    if endpoint.contains("://") {
        return Err(ListenError::invalid(
            "endpoint",
            &endpoint,
            "is not host[:port] (no scheme; no-https chooses http)",
        ));
    }
    // As the reference: a flag, then the environment (which `cli` moved
    // into `--token`), then the file; a token file where a token may be.
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(read_token(path)?),
        (None, None) => match (file.token, crate::cli::non_empty(file.token_file)) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_token(&path)?),
            (None, None) => None,
        },
    }
    .filter(|t| !t.trim().is_empty())
    .ok_or(ListenError::Missing { key: "token" })?;
    let name = match args
        .name
        .clone()
        .or(file.name)
        .filter(|n| !n.is_empty())
        .or_else(|| env("SEMAPHORE_AGENT_NAME"))
    {
        Some(name) => {
            check_name(&name)?;
            name
        }
        None => random_name(),
    };
    let env_vars = if args.env_vars.is_empty() {
        file.env_vars.unwrap_or_default()
    } else {
        args.env_vars.clone()
    }
    .iter()
    .map(|pair| parse_env_var(pair))
    .collect::<Result<Vec<_>, _>>()?;
    let files = if args.files.is_empty() {
        file.files.unwrap_or_default()
    } else {
        args.files
            .iter()
            .flat_map(|f| f.split(','))
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    }
    .iter()
    .map(|pair| parse_file(pair))
    .collect::<Result<Vec<_>, _>>()?;
    let upload = args
        .upload_job_logs
        .clone()
        .or(file.upload_job_logs)
        .unwrap_or_else(|| "never".into());
    let upload_job_logs = match upload.as_str() {
        "never" => UploadJobLogs::Never,
        "always" => UploadJobLogs::Always,
        "when-trimmed" => UploadJobLogs::WhenTrimmed,
        other => {
            return Err(ListenError::invalid(
                "upload-job-logs",
                other,
                "is not one of never, always, when-trimmed",
            ))
        }
    };
    let docker_socket = match args.docker_socket.clone().or(file.docker_socket) {
        None => DockerSocket::default(),
        Some(value) => DockerSocket::parse(&value).ok_or_else(|| {
            ListenError::invalid("docker-socket", &value, "is not one of gate, host, none")
        })?,
    };
    let disconnect_after_job =
        args.disconnect_after_job || file.disconnect_after_job.unwrap_or(false);
    let job_id = args
        .job_id
        .clone()
        .or(file.job_id)
        .filter(|j| !j.is_empty());
    if job_id.is_some() && !disconnect_after_job {
        return Err(ListenError::invalid(
            "job-id",
            job_id.as_deref().unwrap_or_default(),
            "needs disconnect-after-job",
        ));
    }
    let max_job_log_bytes = args
        .max_job_log_bytes
        .or(file.max_job_log_bytes)
        .unwrap_or(retention::DEFAULT_MAX_JOB_LOG_BYTES);
    let disk = DiskLimits::new(
        max_job_log_bytes,
        args.keep_jobs
            .or(file.keep_jobs)
            .unwrap_or(retention::DEFAULT_KEEP_JOBS_LISTEN),
        args.max_data_bytes
            .or(file.max_data_bytes)
            .unwrap_or(retention::DEFAULT_MAX_DATA_BYTES),
    )
    .map_err(|reason| {
        ListenError::invalid("max-job-log-bytes", &max_job_log_bytes.to_string(), reason)
    })?;
    let limits = Limits::from_env(&|name| env(name))?;
    Ok(ListenConfig {
        endpoint,
        token,
        https: !(args.no_https || file.no_https.unwrap_or(false)),
        name,
        env_vars,
        files,
        fail_on_missing_files: args.fail_on_missing_files
            || file.fail_on_missing_files.unwrap_or(false),
        docker_socket,
        disconnect_after_job,
        idle_timeout: Duration::from_secs(
            args.disconnect_after_idle_timeout
                .or(file.disconnect_after_idle_timeout)
                .unwrap_or(0),
        ),
        job_id,
        shutdown_hook: crate::cli::non_empty(
            args.shutdown_hook_path.clone().or(file.shutdown_hook_path),
        ),
        pre_job_hook: crate::cli::non_empty(
            args.pre_job_hook_path.clone().or(file.pre_job_hook_path),
        ),
        fail_on_pre_job_hook_error: args.fail_on_pre_job_hook_error
            || file.fail_on_pre_job_hook_error.unwrap_or(false),
        source_pre_job_hook: args.source_pre_job_hook || file.source_pre_job_hook.unwrap_or(false),
        post_job_hook: crate::cli::non_empty(
            args.post_job_hook_path.clone().or(file.post_job_hook_path),
        ),
        upload_job_logs,
        interruption_grace: Duration::from_secs(
            args.interruption_grace_period
                .or(file.interruption_grace_period)
                .unwrap_or(0),
        ),
        data_dir: crate::config::data_dir(args.data_dir.clone()),
        job_user: args
            .job_user
            .clone()
            .or(file.job_user)
            .filter(|user| !user.is_empty()),
        disk,
        cache: crate::cache::config::CacheArgs {
            backend: args.cache_backend.clone().or(file.cache_backend),
            dir: crate::cli::non_empty(args.cache_dir.clone().or(file.cache_dir)),
            max_bytes: args.cache_max_bytes.or(file.cache_max_bytes),
            cleanup_by: args.cache_cleanup_by.clone().or(file.cache_cleanup_by),
            sftp_url: args.cache_sftp_url.clone().or(file.cache_sftp_url),
            sftp_user: args.cache_sftp_user.clone().or(file.cache_sftp_user),
            sftp_key: crate::cli::non_empty(args.cache_sftp_key.clone().or(file.cache_sftp_key)),
            sftp_path: args.cache_sftp_path.clone().or(file.cache_sftp_path),
            static_binary: crate::cli::non_empty(
                args.cache_static_binary
                    .clone()
                    .or(file.cache_static_binary),
            ),
            archive_format: args
                .cache_archive_format
                .clone()
                .or(file.cache_archive_format),
            s3_bucket: args.cache_s3_bucket.clone().or(file.cache_s3_bucket),
            s3_url: args.cache_s3_url.clone().or(file.cache_s3_url),
            s3_region: args.cache_s3_region.clone().or(file.cache_s3_region),
            s3_profile: args.cache_s3_profile.clone().or(file.cache_s3_profile),
            s3_instance_profile: args.cache_s3_instance_profile
                || file.cache_s3_instance_profile.unwrap_or(false),
        },
        limits,
    })
}

/// A token file's first line, without its line end. An empty one is an
/// error that names the file: `make install` leaves /etc/agent/token empty
/// for the administrator to fill, and "no token" would not say where.
fn read_token(path: &Path) -> Result<String, ListenError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListenError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(ListenError::invalid(
            "token file",
            &path.display().to_string(),
            "is empty: its first line must be the registration token",
        ));
    }
    Ok(token.to_string())
}

fn parse_env_var(pair: &str) -> Result<(String, String), ListenError> {
    match pair.split_once('=') {
        Some((name, value)) if is_shell_identifier(name) => {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(ListenError::invalid(
            "env-vars",
            pair,
            "is not NAME=VALUE with a shell variable name",
        )),
    }
}

fn parse_file(pair: &str) -> Result<(String, String), ListenError> {
    match pair.split_once(':') {
        Some((host, dest)) if !host.is_empty() && !dest.is_empty() => {
            Ok((host.to_string(), dest.to_string()))
        }
        _ => Err(ListenError::invalid(
            "files",
            pair,
            "is not host/path:/container/path",
        )),
    }
}

/// A URL is taken as is; any other name has 8 to 80 characters.
fn check_name(name: &str) -> Result<(), ListenError> {
    if name.starts_with("http://") || name.starts_with("https://") {
        return Ok(());
    }
    let n = name.chars().count();
    if !(8..=80).contains(&n) {
        return Err(ListenError::invalid(
            "name",
            name,
            "needs 8 to 80 characters",
        ));
    }
    Ok(())
}

/// 20 URL-safe characters from the kernel's generator.
fn random_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let hex = crate::util::random_hex(20);
    (0..20)
        .map(|i| {
            let byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap_or(0);
            char::from(ALPHABET[usize::from(byte) % ALPHABET.len()])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> StartArgs {
        <StartArgs as argh::FromArgs>::from_args(&["start"], list).expect("valid flags")
    }

    fn file(text: &str) -> Result<FileConfig, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = file("endpoint: x\ntoken: t\nkubernetes-pod-spec: y\n").unwrap_err();
        assert!(err.contains("kubernetes-pod-spec"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            "endpoint: file.example\ntoken: file-token\nenv-vars: [A=1]\n\
             disconnect-after-idle-timeout: 30\nupload-job-logs: always\n",
        )
        .unwrap();
        let cfg = merge(
            &args(&["--endpoint", "flag.example:8080", "--env-vars", "B=2=3"]),
            f,
            &no_env,
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "flag.example:8080");
        assert_eq!(cfg.token, "file-token");
        assert_eq!(cfg.env_vars, [("B".to_string(), "2=3".to_string())]);
        assert_eq!(cfg.idle_timeout, Duration::from_secs(30));
        assert_eq!(cfg.upload_job_logs, UploadJobLogs::Always);
        assert!(cfg.https);
        assert_eq!(
            cfg.base_url(),
            "https://flag.example:8080/api/v1/self_hosted_agents"
        );
    }

    #[test]
    fn the_docker_socket_is_the_gate_unless_said_otherwise() {
        let base = "endpoint: x\ntoken: t\n";
        let cfg = merge(&args(&[]), file(base).unwrap(), &no_env).unwrap();
        assert_eq!(cfg.docker_socket, DockerSocket::Gate);
        let host = file(&format!("{base}docker-socket: host\n")).unwrap();
        let cfg = merge(&args(&[]), host, &no_env).unwrap();
        assert_eq!(cfg.docker_socket, DockerSocket::Host);
        let host = file(&format!("{base}docker-socket: host\n")).unwrap();
        let cfg = merge(&args(&["--docker-socket", "none"]), host, &no_env).unwrap();
        assert_eq!(cfg.docker_socket, DockerSocket::None);
        let bad = file(&format!("{base}docker-socket: root\n")).unwrap();
        let err = merge(&args(&[]), bad, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("docker-socket") && err.contains("root"),
            "{err}"
        );
    }

    #[test]
    fn cache_settings_come_from_flags_and_the_file() {
        let f = file(
            "endpoint: e\ntoken: t\ncache-backend: s3\ncache-s3-bucket: fleet\n\
             cache-s3-url: http://127.0.0.1:3900\ncache-max-bytes: 1000\n\
             cache-s3-instance-profile: true\ncache-dir: \"\"\n",
        )
        .unwrap();
        let cfg = merge(&args(&["--cache-s3-bucket", "flagged"]), f, &no_env).unwrap();
        assert_eq!(cfg.cache.backend.as_deref(), Some("s3"));
        assert_eq!(cfg.cache.s3_bucket.as_deref(), Some("flagged"));
        assert_eq!(cfg.cache.s3_url.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(cfg.cache.max_bytes, Some(1000));
        assert!(cfg.cache.s3_instance_profile);
        assert_eq!(cfg.cache.dir, None);
        assert!(file("cache-s3-bucket-name: x\n").is_err());
    }

    #[test]
    fn endpoint_and_token_are_required() {
        let err = merge(&args(&["--endpoint", "x"]), FileConfig::default(), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no token"), "{err}");
        let err = merge(&args(&["--token", "t"]), FileConfig::default(), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no endpoint"), "{err}");
    }

    #[test]
    fn an_empty_token_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let flag = path.to_str().unwrap();
        let err = merge(
            &args(&["--endpoint", "x", "--token-file", flag]),
            FileConfig::default(),
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!("token file '{flag}' is empty: its first line must be the registration token")
        );
        std::fs::write(&path, "t0k3n\nignored\n").unwrap();
        let cfg = merge(
            &args(&["--endpoint", "x", "--token-file", flag]),
            FileConfig::default(),
            &no_env,
        )
        .unwrap();
        assert_eq!(cfg.token, "t0k3n");
    }

    #[test]
    fn names_and_values_are_checked() {
        let base = ["--endpoint", "x", "--token", "t"];
        let with = |extra: &[&str]| {
            let mut list = base.to_vec();
            list.extend_from_slice(extra);
            merge(&args(&list), FileConfig::default(), &no_env).map_err(|e| e.to_string())
        };
        assert!(with(&["--name", "short"]).unwrap_err().contains("8 to 80"));
        assert!(with(&["--env-vars", "1A=x"])
            .unwrap_err()
            .contains("NAME=VALUE"));
        assert!(with(&["--upload-job-logs", "sometimes"])
            .unwrap_err()
            .contains("sometimes"));
        assert!(with(&["--job-id", "j"])
            .unwrap_err()
            .contains("disconnect-after-job"));
        let cfg = with(&["--files", "/a:/b,/c:/d", "--no-https"]).unwrap();
        assert_eq!(cfg.files.len(), 2);
        assert!(!cfg.https);
        assert_eq!(cfg.name.len(), 20);
    }

    #[test]
    fn empty_paths_and_names_mean_none() {
        let f = file(
            "endpoint: x\ntoken: t\nname: ''\nshutdown-hook-path: ''\n\
             pre-job-hook-path: ''\npost-job-hook-path: /hooks/post\nenv-vars: []\nfiles: []\n",
        )
        .unwrap();
        let cfg = merge(&args(&[]), f, &no_env).unwrap();
        assert_eq!(cfg.shutdown_hook, None);
        assert_eq!(cfg.pre_job_hook, None);
        assert_eq!(cfg.post_job_hook, Some(PathBuf::from("/hooks/post")));
        assert_eq!(cfg.name.len(), 20);
        // An empty flag wins over the file, and means none too.
        let f = file("endpoint: x\ntoken: t\npost-job-hook-path: /hooks/post\n").unwrap();
        let cli = <crate::cli::Cli as argh::FromArgs>::from_args(
            &["agent"],
            &["start", "--post-job-hook-path", ""],
        )
        .unwrap()
        .without_empty_paths();
        let crate::cli::Sub::Start(start) = cli.command else {
            panic!("not start")
        };
        assert_eq!(merge(&start, f, &no_env).unwrap().post_job_hook, None);
    }

    #[test]
    fn disk_limits_come_from_flags_then_the_file() {
        let f = file("endpoint: x\ntoken: t\nkeep-jobs: 3\nmax-job-log-bytes: 2097152\n").unwrap();
        let cfg = merge(&args(&["--keep-jobs", "5"]), f, &no_env).unwrap();
        assert_eq!(cfg.disk.keep_jobs, 5);
        assert_eq!(cfg.disk.max_job_log_bytes, Some(2 << 20));
        assert_eq!(
            cfg.disk.max_data_bytes,
            Some(retention::DEFAULT_MAX_DATA_BYTES)
        );
        let f = file("endpoint: x\ntoken: t\nmax-data-bytes: 0\n").unwrap();
        let cfg = merge(&args(&[]), f, &no_env).unwrap();
        assert_eq!(cfg.disk.keep_jobs, retention::DEFAULT_KEEP_JOBS_LISTEN);
        assert_eq!(cfg.disk.max_data_bytes, None);
        let f = file("endpoint: x\ntoken: t\nmax-job-log-bytes: 1000\n").unwrap();
        let err = merge(&args(&[]), f, &no_env).unwrap_err().to_string();
        assert!(err.contains("max-job-log-bytes"), "{err}");
    }

    #[test]
    fn limits_come_from_the_environment() {
        let limits = Limits::from_env(&|name| match name {
            "AGENT_LISTEN_SYNC_GIVE_UP_MS" => Some("1500".into()),
            "AGENT_LISTEN_REGISTER_ATTEMPTS" => Some("3".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(limits.sync_give_up, Duration::from_millis(1500));
        assert_eq!(limits.register_attempts, 3);
        assert_eq!(limits.get_job_attempts, 10);
        assert!(Limits::from_env(&|_| Some("soon".into())).is_err());
    }
}
