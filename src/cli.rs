//! Command-line arguments: the argh structs only. `config.rs` turns them
//! into a validated configuration; `usage.rs` adds to what argh prints.

use argh::FromArgs;
use std::path::PathBuf;

/// An empty path means no path, as in the reference agent (its e2e
/// configuration sets `shutdown-hook-path: ""`).
pub fn non_empty(path: Option<PathBuf>) -> Option<PathBuf> {
    path.filter(|p| !p.as_os_str().is_empty())
}

/// Flags whose values are secrets: hidden from `/proc/PID/cmdline` at start.
pub const SECRET_FLAGS: &[&str] = &["--token", "--auth-token-secret"];

impl Cli {
    /// The credentials given in the environment move into the arguments,
    /// and out of the environment (and `/proc/PID/environ`), so that no job
    /// inherits them: `AGENT_AUTH_TOKEN_SECRET` (serve, token) when neither
    /// the flag nor the file gives the secret, `SEMAPHORE_AGENT_TOKEN`
    /// (start) when neither `--token` nor `--token-file` does. Runs before
    /// any thread starts.
    pub fn take_env_credentials(mut self) -> Cli {
        let take = |name: &str| match crate::process::sys::take_env(name) {
            Ok(value) => value.filter(|v| !v.is_empty()),
            Err(e) => {
                eprintln!("agent: warning: cannot hide ${name} from /proc: {e}");
                std::env::var(name).ok().filter(|v| !v.is_empty())
            }
        };
        let secret = take("AGENT_AUTH_TOKEN_SECRET");
        let token = take("SEMAPHORE_AGENT_TOKEN");
        match &mut self.command {
            Sub::Serve(a)
                if a.auth_token_secret.is_none() && a.auth_token_secret_file.is_none() =>
            {
                a.auth_token_secret = secret;
            }
            Sub::Token(a)
                if a.auth_token_secret.is_none() && a.auth_token_secret_file.is_none() =>
            {
                a.auth_token_secret = secret;
            }
            Sub::Start(a) if a.token.is_none() && a.token_file.is_none() => a.token = token,
            _ => {}
        }
        self
    }

    /// Every path flag given as `""` becomes absent.
    pub fn without_empty_paths(mut self) -> Cli {
        let clear = |p: &mut Option<PathBuf>| *p = non_empty(p.take());
        match &mut self.command {
            Sub::Version(_) => {}
            Sub::Run(a) => clear(&mut a.data_dir),
            Sub::Serve(a) => {
                for p in [
                    &mut a.auth_token_secret_file,
                    &mut a.tls_cert_path,
                    &mut a.tls_key_path,
                    &mut a.pre_job_hook_path,
                    &mut a.data_dir,
                    &mut a.cache_dir,
                    &mut a.cache_sftp_key,
                    &mut a.cache_static_binary,
                ] {
                    clear(p);
                }
            }
            // The hook paths are merged with the config file first: an
            // empty flag wins over the file, and then means none.
            Sub::Start(a) => {
                clear(&mut a.config_file);
                clear(&mut a.data_dir);
                clear(&mut a.token_file);
            }
            Sub::Token(a) => clear(&mut a.auth_token_secret_file),
        }
        self
    }
}

/// A CI job runner that speaks the Semaphore 2.0 agent API.
#[derive(FromArgs, Debug)]
#[argh(help_triggers("-h", "--help", "help"))]
pub struct Cli {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,
    #[argh(subcommand)]
    pub command: Sub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Sub {
    Version(VersionArgs),
    Run(RunArgs),
    Serve(Box<ServeArgs>),
    Start(Box<StartArgs>),
    Token(TokenArgs),
}

/// Print the agent's version.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version", help_triggers("-h", "--help", "help"))]
pub struct VersionArgs {}

/// Run one job from a YAML or JSON job file and show it live.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run", help_triggers("-h", "--help", "help"))]
pub struct RunArgs {
    /// print the raw event log lines instead of the readable rendering
    #[argh(switch)]
    pub json: bool,
    /// where job logs and per-job working files live
    /// (default: $AGENT_DATA_DIR, else ~/.local/state/agent)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// seconds between SIGTERM and SIGKILL when the job is stopped (default 10)
    #[argh(option, default = "10")]
    pub stop_grace_period: u64,
    /// attempts per callback when the job file has callback URLs (default 60)
    #[argh(option, default = "60")]
    pub callback_retry_attempts: u32,
    /// the job file, YAML or JSON (its format: README, "Run one job from a file")
    #[argh(positional)]
    pub job_file: PathBuf,
}

/// Serve the Semaphore-compatible HTTPS API and run the jobs it receives
/// (`agent start` with only these flags is the same command).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve", help_triggers("-h", "--help", "help"))]
pub struct ServeArgs {
    #[argh(option)]
    /// HMAC secret for the API's JWTs (or $AGENT_AUTH_TOKEN_SECRET, or --auth-token-secret-file)
    pub auth_token_secret: Option<String>,
    #[argh(option)]
    /// file holding the JWT secret (trailing newline ignored)
    pub auth_token_secret_file: Option<PathBuf>,
    #[argh(option, default = "String::from(\"0.0.0.0\")")]
    /// address to listen on (default 0.0.0.0)
    pub host: String,
    #[argh(option, default = "8000")]
    /// port to listen on (default 8000; 0 picks a free one)
    pub port: u16,
    #[argh(option)]
    /// PEM certificate (default server.crt; a self-signed pair is made when neither default file exists)
    pub tls_cert_path: Option<PathBuf>,
    #[argh(option)]
    /// PEM private key (default server.key)
    pub tls_key_path: Option<PathBuf>,
    #[argh(option)]
    /// the StatsD host (metrics are sent only when host and port are set)
    pub statsd_host: Option<String>,
    #[argh(option)]
    /// the StatsD port
    pub statsd_port: Option<u16>,
    #[argh(option, default = "String::from(\"agent.prod\")")]
    /// the StatsD namespace (default agent.prod)
    pub statsd_namespace: String,
    #[argh(option, default = "300")]
    /// attempts per callback (default 300, one second apart)
    pub callback_retry_attempts: u32,
    #[argh(option)]
    /// a script sourced before the job's commands; its failure fails the job
    pub pre_job_hook_path: Option<PathBuf>,
    #[argh(option)]
    /// host:dest pairs mounted into compose jobs' main container, comma-separated
    pub files: Option<String>,
    #[argh(option, default = "true")]
    /// add /dev/kvm to compose jobs when the host has it (default true)
    pub expose_kvm_device: bool,
    #[argh(option)]
    /// what compose jobs get as /var/run/docker.sock: gate (default: the job's own Docker gate), host (the engine's socket, root on the host), none
    pub docker_socket: Option<String>,
    #[argh(option, default = "1")]
    /// jobs that may run at once (default 1)
    pub jobs: usize,
    #[argh(option, default = "0")]
    /// accepted jobs that may wait for a runner (default 0)
    pub queue_size: usize,
    #[argh(option)]
    /// where job logs and per-job working files live (default $AGENT_DATA_DIR, else ~/.local/state/agent)
    pub data_dir: Option<PathBuf>,
    #[argh(option, default = "10")]
    /// seconds between SIGTERM and SIGKILL when a job is stopped (default 10)
    pub stop_grace_period: u64,
    #[argh(option, default = "600")]
    /// seconds teardown waits for the archivator's log read (default 600)
    pub archivator_timeout: u64,
    #[argh(option, default = "32 * 1024 * 1024")]
    /// largest accepted request body in bytes (default 32 MiB); larger gets 413
    pub max_request_bytes: u64,
    #[argh(option, default = "256")]
    /// concurrent connections (default 256); when all are taken, the oldest
    /// that has sent no request makes room, else a new one is refused
    pub max_connections: usize,
    #[argh(option, default = "100 * 1024 * 1024")]
    /// the most one job's event log takes, in bytes (default 100 MiB; 0: no
    /// limit); past it the log keeps its start and end and says what it left out
    pub max_job_log_bytes: u64,
    #[argh(option, default = "100")]
    /// finished jobs whose directories (and logs) are kept, the newest (default 100)
    pub keep_jobs: usize,
    #[argh(option, default = "1024 * 1024 * 1024")]
    /// the most bytes finished jobs' directories take together; the oldest
    /// go first (default 1 GiB; 0: no limit)
    pub max_data_bytes: u64,
    #[argh(option)]
    /// where jobs' `cache` keeps archives: local (default), sftp or s3
    pub cache_backend: Option<String>,
    #[argh(option)]
    /// the local cache directory (default: cache in the data dir)
    pub cache_dir: Option<PathBuf>,
    #[argh(option)]
    /// the most the cache may hold in bytes (on S3: each project); older keys go first
    pub cache_max_bytes: Option<u64>,
    #[argh(option)]
    /// which keys go when room is needed: store-time (default), access-time, size
    pub cache_cleanup_by: Option<String>,
    #[argh(option)]
    /// the SFTP cache server, host[:port] (or $SEMAPHORE_CACHE_URL)
    pub cache_sftp_url: Option<String>,
    #[argh(option)]
    /// the SFTP user (or $SEMAPHORE_CACHE_USERNAME)
    pub cache_sftp_user: Option<String>,
    #[argh(option)]
    /// the SFTP private key (or $SEMAPHORE_CACHE_PRIVATE_KEY_PATH)
    pub cache_sftp_key: Option<PathBuf>,
    #[argh(option)]
    /// the directory on the SFTP server holding the archives (or $AGENT_CACHE_SFTP_PATH; default: the login directory)
    pub cache_sftp_path: Option<String>,
    #[argh(option)]
    /// a statically linked agent binary mounted into compose jobs as `cache` (default: this binary when static)
    pub cache_static_binary: Option<PathBuf>,
    #[argh(option)]
    /// how jobs' `cache store` compresses: zstd (default) or gzip, the toolbox's tar.gz, for caches shared with toolboxes (or $AGENT_CACHE_ARCHIVE_FORMAT)
    pub cache_archive_format: Option<String>,
    #[argh(option)]
    /// the S3 cache bucket (or $SEMAPHORE_CACHE_S3_BUCKET); keys go under PROJECT_ID/
    pub cache_s3_bucket: Option<String>,
    #[argh(option)]
    /// an S3-compatible endpoint, path-style, or several comma-separated to fail over between (or $SEMAPHORE_CACHE_S3_URL; default: AWS)
    pub cache_s3_url: Option<String>,
    #[argh(option)]
    /// the S3 region (or $AWS_REGION; default us-east-1)
    pub cache_s3_region: Option<String>,
    #[argh(option)]
    /// the profile of the shared AWS credentials file (or $SEMAPHORE_CACHE_AWS_PROFILE)
    pub cache_s3_profile: Option<String>,
    #[argh(switch)]
    /// sign S3 requests with the EC2 instance's role, through IMDSv2 (or $SEMAPHORE_CACHE_USE_EC2_INSTANCE_PROFILE=true)
    pub cache_s3_instance_profile: bool,
    #[argh(option)]
    /// run shell jobs as this user, not the agent's: a user name, or auto
    /// for a new user per job, removed after it (the agent runs as root)
    pub job_user: Option<String>,
}

/// Register with a control plane and run the jobs it hands out (listen mode:
/// no inbound port). Given only `serve`'s flags, `start` is `serve`.
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "start", help_triggers("-h", "--help", "help"))]
pub struct StartArgs {
    #[argh(option)]
    /// YAML file with the keys below (flags win over it)
    pub config_file: Option<PathBuf>,
    #[argh(option)]
    /// host[:port] of the control plane
    pub endpoint: Option<String>,
    #[argh(option)]
    /// the registration token (visible to every process of this host on a
    /// command line: prefer --token-file, token-file in the config file, or
    /// $SEMAPHORE_AGENT_TOKEN)
    pub token: Option<String>,
    #[argh(option)]
    /// file holding the registration token
    pub token_file: Option<PathBuf>,
    #[argh(switch)]
    /// talk to the control plane over http instead of https
    pub no_https: bool,
    #[argh(option)]
    /// the agent's name (default $SEMAPHORE_AGENT_NAME, else random)
    pub name: Option<String>,
    #[argh(option)]
    /// NAME=VALUE exported into every job (repeatable)
    pub env_vars: Vec<String>,
    #[argh(option)]
    /// host/path:/container/path mounted into compose jobs (repeatable, or comma-separated)
    pub files: Vec<String>,
    #[argh(switch)]
    /// a missing `files` source fails the job instead of a warning
    pub fail_on_missing_files: bool,
    #[argh(option)]
    /// what compose jobs get as /var/run/docker.sock: gate (default), host, none
    pub docker_socket: Option<String>,
    #[argh(switch)]
    /// run one job, then disconnect and exit
    pub disconnect_after_job: bool,
    #[argh(option)]
    /// seconds without a job before disconnecting (default 0: never)
    pub disconnect_after_idle_timeout: Option<u64>,
    #[argh(option)]
    /// with --disconnect-after-job: ask for this job only
    pub job_id: Option<String>,
    #[argh(option)]
    /// script run with bash when the agent shuts down
    pub shutdown_hook_path: Option<PathBuf>,
    #[argh(option)]
    /// script run before the job's commands
    pub pre_job_hook_path: Option<PathBuf>,
    #[argh(switch)]
    /// a failing pre-job hook fails the job
    pub fail_on_pre_job_hook_error: bool,
    #[argh(switch)]
    /// source the pre-job hook in the job's shell instead of running it with bash
    pub source_pre_job_hook: bool,
    #[argh(option)]
    /// script run after the job's commands and epilogues
    pub post_job_hook_path: Option<PathBuf>,
    #[argh(option)]
    /// upload the whole job log as an artifact: never (default), always, when-trimmed
    pub upload_job_logs: Option<String>,
    #[argh(option)]
    /// seconds a job may keep running after SIGTERM/SIGINT (default 0)
    pub interruption_grace_period: Option<u64>,
    #[argh(option)]
    /// where job logs and per-job working files live (default $AGENT_DATA_DIR, else ~/.local/state/agent)
    pub data_dir: Option<PathBuf>,
    #[argh(option)]
    /// run shell jobs as this user, not the agent's: a user name, or auto
    /// for a new user per job, removed after it (the agent runs as root)
    pub job_user: Option<String>,
    #[argh(option)]
    /// the most one job's event log takes, in bytes (default 100 MiB; 0: no
    /// limit); past it the log keeps its start and end and says what it left out
    pub max_job_log_bytes: Option<u64>,
    #[argh(option)]
    /// finished jobs whose directories (and logs) are kept, the newest (default 10)
    pub keep_jobs: Option<usize>,
    #[argh(option)]
    /// the most bytes finished jobs' directories take together; the oldest
    /// go first (default 1 GiB; 0: no limit)
    pub max_data_bytes: Option<u64>,
    #[argh(option)]
    /// where jobs' `cache` keeps archives: local (default), sftp or s3
    pub cache_backend: Option<String>,
    #[argh(option)]
    /// the local cache directory (default: cache in the data dir)
    pub cache_dir: Option<PathBuf>,
    #[argh(option)]
    /// the most the cache may hold in bytes (on S3: each project); older keys go first
    pub cache_max_bytes: Option<u64>,
    #[argh(option)]
    /// which keys go when room is needed: store-time (default), access-time, size
    pub cache_cleanup_by: Option<String>,
    #[argh(option)]
    /// the SFTP cache server, host[:port] (or $SEMAPHORE_CACHE_URL)
    pub cache_sftp_url: Option<String>,
    #[argh(option)]
    /// the SFTP user (or $SEMAPHORE_CACHE_USERNAME)
    pub cache_sftp_user: Option<String>,
    #[argh(option)]
    /// the SFTP private key (or $SEMAPHORE_CACHE_PRIVATE_KEY_PATH)
    pub cache_sftp_key: Option<PathBuf>,
    #[argh(option)]
    /// the directory on the SFTP server holding the archives (or $AGENT_CACHE_SFTP_PATH)
    pub cache_sftp_path: Option<String>,
    #[argh(option)]
    /// a statically linked agent binary mounted into compose jobs as `cache` (default: this binary when static)
    pub cache_static_binary: Option<PathBuf>,
    #[argh(option)]
    /// how jobs' `cache store` compresses: zstd (default) or gzip (or $AGENT_CACHE_ARCHIVE_FORMAT)
    pub cache_archive_format: Option<String>,
    #[argh(option)]
    /// the S3 cache bucket (or $SEMAPHORE_CACHE_S3_BUCKET); keys go under PROJECT_ID/
    pub cache_s3_bucket: Option<String>,
    #[argh(option)]
    /// an S3-compatible endpoint, path-style, or several comma-separated (or $SEMAPHORE_CACHE_S3_URL; default: AWS)
    pub cache_s3_url: Option<String>,
    #[argh(option)]
    /// the S3 region (or $AWS_REGION; default us-east-1)
    pub cache_s3_region: Option<String>,
    #[argh(option)]
    /// the profile of the shared AWS credentials file (or $SEMAPHORE_CACHE_AWS_PROFILE)
    pub cache_s3_profile: Option<String>,
    #[argh(switch)]
    /// sign S3 requests with the EC2 instance's role, through IMDSv2
    pub cache_s3_instance_profile: bool,
}

/// The flags that only listen mode has: `agent start` with one of them (or
/// with `--help` alone) is listen mode, else it is `serve`.
pub const LISTEN_ONLY_FLAGS: &[&str] = &[
    "--config-file",
    "--endpoint",
    "--token",
    "--token-file",
    "--no-https",
    "--name",
    "--env-vars",
    "--fail-on-missing-files",
    "--disconnect-after-job",
    "--disconnect-after-idle-timeout",
    "--job-id",
    "--shutdown-hook-path",
    "--fail-on-pre-job-hook-error",
    "--source-pre-job-hook",
    "--post-job-hook-path",
    "--upload-job-logs",
    "--interruption-grace-period",
];

/// Print a JWT for the configured secret, for curl.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token", help_triggers("-h", "--help", "help"))]
pub struct TokenArgs {
    #[argh(option)]
    /// the JWT secret (or $AGENT_AUTH_TOKEN_SECRET, or --auth-token-secret-file)
    pub auth_token_secret: Option<String>,
    #[argh(option)]
    /// file holding the JWT secret
    pub auth_token_secret_file: Option<PathBuf>,
    #[argh(option, default = "3600")]
    /// seconds the token stays valid (default 3600)
    pub ttl: u64,
}
