//! The cache's configuration: which backend, its limits, and the static
//! binary mounted into compose jobs. Built once from the agent's flags and
//! environment (`SEMAPHORE_CACHE_*`, as the toolbox reads them); a job that
//! carries the toolbox's variables gets its own SFTP server or S3 bucket,
//! reached with credentials the job hands over, never the agent's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::archive::ArchiveFormat;

/// The toolbox's variables, read from the agent's environment (and then
/// removed from it, so that shell jobs do not inherit them) or from a job's.
pub const ENV_BACKEND: &str = "SEMAPHORE_CACHE_BACKEND";
pub const ENV_URL: &str = "SEMAPHORE_CACHE_URL";
pub const ENV_USERNAME: &str = "SEMAPHORE_CACHE_USERNAME";
pub const ENV_KEY_PATH: &str = "SEMAPHORE_CACHE_PRIVATE_KEY_PATH";
pub const ENV_CLEANUP_BY: &str = "SEMAPHORE_CACHE_CLEANUP_BY";
/// The agent's own variable for `--cache-sftp-path` (the toolbox has none:
/// it keeps archives in the login directory).
pub const ENV_SFTP_PATH: &str = "AGENT_CACHE_SFTP_PATH";
/// The agent's own variable for `--cache-archive-format`, which `agent run`
/// and `agent start` read too.
pub const ENV_ARCHIVE_FORMAT: &str = "AGENT_CACHE_ARCHIVE_FORMAT";
/// The toolbox's choice of archiver; any of its values means its tar.gz.
pub const ENV_ARCHIVE_METHOD: &str = "SEMAPHORE_CACHE_ARCHIVE_METHOD";
/// The toolbox's S3 variables: the bucket, an S3-compatible endpoint
/// (path-style; the agent takes a comma-separated list to fail over
/// between), and the credentials, in the order the agent looks for them.
pub const ENV_S3_BUCKET: &str = "SEMAPHORE_CACHE_S3_BUCKET";
pub const ENV_S3_URL: &str = "SEMAPHORE_CACHE_S3_URL";
pub const ENV_S3_KEY: &str = "SEMAPHORE_CACHE_S3_KEY";
pub const ENV_S3_SECRET: &str = "SEMAPHORE_CACHE_S3_SECRET";
pub const ENV_AWS_PROFILE: &str = "SEMAPHORE_CACHE_AWS_PROFILE";
pub const ENV_USE_INSTANCE_PROFILE: &str = "SEMAPHORE_CACHE_USE_EC2_INSTANCE_PROFILE";
/// The AWS SDKs' own variables, which the toolbox's S3 backend reads too.
pub const ENV_AWS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_AWS_SECRET: &str = "AWS_SECRET_ACCESS_KEY";
pub const ENV_AWS_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const ENV_AWS_REGION: &str = "AWS_REGION";
pub const ENV_AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
pub const ENV_AWS_CREDENTIALS_FILE: &str = "AWS_SHARED_CREDENTIALS_FILE";
/// Where the instance metadata service is, for tests and unusual networks
/// (the AWS SDKs' name).
pub const ENV_IMDS_ENDPOINT: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The S3 region when nothing names one.
pub const S3_DEFAULT_REGION: &str = "us-east-1";
/// Each project's keys live under `PROJECT_ID/` in a shared bucket.
pub const ENV_PROJECT_ID: &str = "SEMAPHORE_PROJECT_ID";

/// The values of `SEMAPHORE_CACHE_ARCHIVE_METHOD` the toolbox knows.
pub const ARCHIVE_METHODS: [&str; 3] = ["shell-out", "native", "native-parallel"];

/// How long connecting to the SFTP server may take.
pub const SFTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which keys go first when a store needs room (and how `cache list
/// --sort-by` orders them, the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupBy {
    /// The oldest stored.
    #[default]
    StoreTime,
    /// The least recently restored (or stored).
    AccessTime,
    /// The smallest, as the toolbox does: it sorts keys largest first and
    /// removes from the end of that list.
    Size,
}

impl CleanupBy {
    /// The agent's flag and variable: any case, `-` or `_`.
    pub fn parse(text: &str) -> Option<CleanupBy> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "store-time" => Some(CleanupBy::StoreTime),
            "access-time" => Some(CleanupBy::AccessTime),
            "size" => Some(CleanupBy::Size),
            _ => None,
        }
    }

    /// The toolbox's `--cleanup-by` and `--sort-by` values, exactly.
    pub fn from_toolbox(text: &str) -> Option<CleanupBy> {
        match text {
            "STORE_TIME" => Some(CleanupBy::StoreTime),
            "ACCESS_TIME" => Some(CleanupBy::AccessTime),
            "SIZE" => Some(CleanupBy::Size),
            _ => None,
        }
    }

    pub fn toolbox_name(self) -> &'static str {
        match self {
            CleanupBy::StoreTime => "STORE_TIME",
            CleanupBy::AccessTime => "ACCESS_TIME",
            CleanupBy::Size => "SIZE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The agent's private key, on the host; never shown to a job. None for
    /// a job's own server, whose key the job's `cache` hands over.
    pub key: Option<PathBuf>,
    /// The directory on the server that holds the archives.
    pub base: String,
    /// Host keys seen on first use (`StrictHostKeyChecking=accept-new`).
    pub known_hosts: PathBuf,
}

impl SftpConfig {
    /// `user@host:port`, for messages.
    pub fn server(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// A secret that never shows in a `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where an S3 backend's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// Given (a key and secret in the environment, or a profile of a
    /// shared credentials file read at start).
    Static {
        key: String,
        secret: Secret,
        token: Option<Secret>,
    },
    /// The EC2 instance's role, through IMDSv2 at this endpoint; refreshed
    /// before they expire.
    InstanceProfile { endpoint: String },
    /// A job's own bucket: what its `cache` hands over with each request.
    FromJob,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Base URLs of an S3-compatible service, tried in turn (path-style
    /// addressing); empty for AWS's regional endpoint.
    pub endpoints: Vec<String>,
    pub region: String,
    pub credentials: S3Credentials,
}

impl S3Config {
    /// `bucket at endpoint,...`, for messages.
    pub fn describe(&self) -> String {
        if self.endpoints.is_empty() {
            format!("'{}' ({})", self.bucket, self.region)
        } else {
            format!("'{}' at {}", self.bucket, self.endpoints.join(","))
        }
    }
}

/// The endpoints of `SEMAPHORE_CACHE_S3_URL`: comma-separated http(s)
/// URLs, without a trailing `/`.
pub fn parse_s3_urls(text: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| format!("the S3 cache URL '{url}' is not http:// or https://"))?;
        if rest.is_empty()
            || rest.starts_with('/')
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("the S3 cache URL '{url}' has no host"));
        }
        urls.push(url.trim_end_matches('/').to_string());
    }
    Ok(urls)
}

/// A bucket name S3 could hold (3 to 63 of `a-z0-9.-`; Garage and MinIO
/// take the same).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the S3 cache bucket '{bucket}' is not a valid bucket name"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Local { dir: PathBuf },
    Sftp(SftpConfig),
    S3(S3Config),
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub backend: BackendConfig,
    /// The most the archives may take together; storing past it removes
    /// keys (see `cleanup_by`).
    pub max_bytes: Option<u64>,
    pub cleanup_by: CleanupBy,
    /// The format of stored archives (restore reads both).
    pub archive_format: ArchiveFormat,
    /// Where archives wait on the host on their way to or from a remote
    /// backend.
    pub spool_dir: PathBuf,
    /// A statically linked agent, mounted into compose jobs as `cache`.
    pub static_binary: Option<PathBuf>,
}

/// Refuses a user or host that `ssh` would take for an option, or that
/// holds what a command line should not carry: `what` names it.
fn check_login_part(what: &str, value: &str) -> Result<(), String> {
    let reason = if value.starts_with('-') {
        "it starts with '-'"
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "it holds a space or a control character"
    } else {
        return Ok(());
    };
    Err(format!(
        "the SFTP cache {what} '{value}' is refused: {reason}"
    ))
}

/// `host[:port]` as the toolbox's `SEMAPHORE_CACHE_URL` gives it.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let url = url.trim();
    let url = url.strip_prefix("sftp://").unwrap_or(url);
    let (host, port) = match url.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in the cache URL '{url}'"))?,
        ),
        None => (url, 22),
    };
    if host.is_empty() {
        return Err(format!("no host in the cache URL '{url}'"));
    }
    check_login_part("host", host)?;
    Ok((host.to_string(), port))
}

impl CacheConfig {
    /// The configuration for a job whose env vars are `env`: the toolbox's
    /// `SEMAPHORE_CACHE_BACKEND=sftp` (URL, user, key path) or `=s3`
    /// (bucket, URL) selects a backend for this job; without it the job
    /// keeps the agent's. A backend this agent does not have, or variables
    /// that cannot be used, are an error for every `cache` command of the
    /// job: never a silent fallback to the agent's cache.
    pub fn for_job(
        &self,
        env: &BTreeMap<String, Vec<u8>>,
        private_dir: &Path,
    ) -> Result<CacheConfig, String> {
        let get = |name: &str| {
            env.get(name)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let backend = match get(ENV_BACKEND).as_deref() {
            None => return Ok(self.clone()),
            Some("local") if matches!(self.backend, BackendConfig::Local { .. }) => {
                return Ok(self.clone())
            }
            Some("sftp") => job_sftp(&get, private_dir)?,
            Some("s3") => match job_s3(&get, &self.backend)? {
                Some(own) => own,
                None => return Ok(self.clone()),
            },
            Some(other) => {
                return Err(format!(
                    "{ENV_BACKEND}={other}: this agent has no such cache backend (sftp or s3, or none for the agent's own)"
                ))
            }
        };
        let mut cfg = self.clone();
        cfg.backend = backend;
        Ok(cfg)
    }
}

/// A job's own SFTP server. The key path is not followed here: the job's
/// `cache` reads the key where the job is and hands it over with each
/// request. The host keys the job's server shows are kept in
/// `private_dir`, the job's own.
fn job_sftp(
    get: &dyn Fn(&str) -> Option<String>,
    private_dir: &Path,
) -> Result<BackendConfig, String> {
    let (Some(url), Some(user), Some(_)) = (get(ENV_URL), get(ENV_USERNAME), get(ENV_KEY_PATH))
    else {
        return Err(format!(
            "{ENV_BACKEND}=sftp needs {ENV_URL}, {ENV_USERNAME} and {ENV_KEY_PATH}"
        ));
    };
    let (host, port) = parse_url(&url)?;
    check_login_part("user", &user)?;
    Ok(BackendConfig::Sftp(SftpConfig {
        host,
        port,
        user,
        key: None,
        base: ".".into(),
        known_hosts: private_dir.join("known_hosts"),
    }))
}

/// The bucket a job names: None when it is the agent's own bucket (same
/// name, and the endpoints the job names, if any, are the agent's), which
/// the agent reaches with its own credentials; else the job's own bucket,
/// reached with the credentials its `cache` hands over. The agent's
/// instance role is never lent to a job's bucket.
fn job_s3(
    get: &dyn Fn(&str) -> Option<String>,
    agent: &BackendConfig,
) -> Result<Option<BackendConfig>, String> {
    let bucket =
        get(ENV_S3_BUCKET).ok_or_else(|| format!("{ENV_BACKEND}=s3 needs {ENV_S3_BUCKET}"))?;
    check_bucket(&bucket)?;
    let endpoints = parse_s3_urls(&get(ENV_S3_URL).unwrap_or_default())?;
    if let BackendConfig::S3(own) = agent {
        if own.bucket == bucket && endpoints.iter().all(|u| own.endpoints.contains(u)) {
            return Ok(None);
        }
    }
    if get(ENV_S3_KEY).is_none() && get(ENV_AWS_KEY).is_none() {
        let why = if get(ENV_USE_INSTANCE_PROFILE).as_deref() == Some("true") {
            "the agent does not lend its instance role to a bucket other than its own; "
        } else {
            ""
        };
        return Err(format!(
            "this job's S3 cache bucket '{bucket}' needs credentials of the job's own: {why}set {ENV_S3_KEY} and {ENV_S3_SECRET} (or {ENV_AWS_KEY} and {ENV_AWS_SECRET})"
        ));
    }
    Ok(Some(BackendConfig::S3(S3Config {
        bucket,
        endpoints,
        region: get(ENV_AWS_REGION)
            .or_else(|| get(ENV_AWS_DEFAULT_REGION))
            .unwrap_or_else(|| S3_DEFAULT_REGION.into()),
        credentials: S3Credentials::FromJob,
    })))
}

/// The project whose keys a job sees in an S3 bucket
/// (`SEMAPHORE_PROJECT_ID/KEY`): one path segment.
pub fn project_of(env: &BTreeMap<String, Vec<u8>>) -> Result<String, String> {
    let project = env
        .get(ENV_PROJECT_ID)
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
        .unwrap_or_default();
    if project.is_empty() {
        return Err(format!(
            "the S3 cache keeps each project's keys apart: the job needs {ENV_PROJECT_ID}"
        ));
    }
    if project == "." || project == ".." || project.chars().any(|c| c == '/' || c.is_control()) {
        return Err(format!(
            "{ENV_PROJECT_ID} '{project}' cannot name a folder of the S3 cache"
        ));
    }
    Ok(project)
}

/// Whether `path` is a statically linked ELF executable (no interpreter), so
/// that it runs in any Linux image of the same architecture.
pub fn is_static_elf(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    // Only the ELF header and the program headers are read: the binary
    // itself may be a hundred megabytes (a debug build).
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err() {
        return false;
    }
    // A little-endian ELF64 file only: the agent's own targets.
    if header[..6] != [0x7f, b'E', b'L', b'F', 2, 1] {
        return false;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&header[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff);
    let phentsize = usize::from(u16_at(&header, 0x36));
    let phnum = usize::from(u16_at(&header, 0x38));
    if phentsize < 4 || phentsize * phnum > 64 * 1024 {
        return false;
    }
    let mut table = vec![0u8; phentsize * phnum];
    if file.seek(SeekFrom::Start(phoff)).is_err() || file.read_exact(&mut table).is_err() {
        return false;
    }
    const PT_INTERP: u32 = 3;
    table
        .chunks_exact(phentsize)
        .all(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) != PT_INTERP)
}

/// The format stores use: the flag (or `AGENT_CACHE_ARCHIVE_FORMAT`), else
/// gzip when the agent's environment names one of the toolbox's archive
/// methods, else zstd.
fn archive_format(flag: Option<String>, method: Option<String>) -> Result<ArchiveFormat, String> {
    match flag {
        Some(text) => ArchiveFormat::parse(&text)
            .ok_or_else(|| format!("unknown --cache-archive-format '{text}' (zstd or gzip)")),
        None if method.is_some_and(|m| ARCHIVE_METHODS.contains(&m.as_str())) => {
            Ok(ArchiveFormat::Gzip)
        }
        None => Ok(ArchiveFormat::Zstd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_host_and_port() {
        assert_eq!(
            parse_url("10.0.0.1:29920").unwrap(),
            ("10.0.0.1".into(), 29920)
        );
        assert_eq!(
            parse_url("cache.local").unwrap(),
            ("cache.local".into(), 22)
        );
        assert!(parse_url(":22").is_err());
        assert!(parse_url("h:x").is_err());
    }

    #[test]
    fn archive_formats() {
        let f = |flag: Option<&str>, method: Option<&str>| {
            archive_format(flag.map(String::from), method.map(String::from))
        };
        assert_eq!(f(None, None), Ok(ArchiveFormat::Zstd));
        assert_eq!(f(Some("gzip"), None), Ok(ArchiveFormat::Gzip));
        assert_eq!(f(Some("zstd"), Some("native")), Ok(ArchiveFormat::Zstd));
        assert_eq!(f(None, Some("native-parallel")), Ok(ArchiveFormat::Gzip));
        assert_eq!(f(None, Some("Native")), Ok(ArchiveFormat::Zstd));
        assert!(f(Some("xz"), None).is_err());
    }

    #[test]
    fn cleanup_names() {
        assert_eq!(CleanupBy::parse("STORE_TIME"), Some(CleanupBy::StoreTime));
        assert_eq!(CleanupBy::parse("access-time"), Some(CleanupBy::AccessTime));
        assert_eq!(CleanupBy::parse("size"), Some(CleanupBy::Size));
        assert_eq!(CleanupBy::parse("age"), None);
        assert_eq!(CleanupBy::from_toolbox("SIZE"), Some(CleanupBy::Size));
        assert_eq!(CleanupBy::from_toolbox("size"), None);
        assert_eq!(CleanupBy::AccessTime.toolbox_name(), "ACCESS_TIME");
    }

    #[test]
    fn a_job_can_bring_the_toolbox_variables() {
        let cfg = CacheConfig {
            backend: BackendConfig::Local { dir: "/c".into() },
            max_bytes: None,
            cleanup_by: CleanupBy::StoreTime,
            archive_format: ArchiveFormat::Zstd,
            spool_dir: "/s".into(),
            static_binary: None,
        };
        let mut env = BTreeMap::new();
        let dir = Path::new("/job");
        assert_eq!(cfg.for_job(&env, dir).unwrap().backend, cfg.backend);
        env.insert(ENV_BACKEND.to_string(), b"sftp".to_vec());
        assert!(cfg.for_job(&env, dir).is_err());
        env.insert(ENV_URL.to_string(), b"h:2222".to_vec());
        env.insert(ENV_USERNAME.to_string(), b"u".to_vec());
        env.insert(ENV_KEY_PATH.to_string(), b"/k".to_vec());
        let BackendConfig::Sftp(s) = cfg.for_job(&env, dir).unwrap().backend else {
            panic!("not sftp");
        };
        assert_eq!((s.host.as_str(), s.port, s.user.as_str()), ("h", 2222, "u"));
        // The host never learns the key's path, and the job's server's
        // host keys are the job's.
        assert_eq!(s.key, None);
        assert_eq!(s.known_hosts, Path::new("/job/known_hosts"));
        env.insert(ENV_USERNAME.to_string(), b"-oProxyCommand=x".to_vec());
        assert_eq!(
            cfg.for_job(&env, dir).unwrap_err(),
            "the SFTP cache user '-oProxyCommand=x' is refused: it starts with '-'"
        );
        env.insert(ENV_USERNAME.to_string(), b"u".to_vec());
        env.insert(ENV_URL.to_string(), b"-oX=y:22".to_vec());
        assert!(cfg.for_job(&env, dir).is_err());
    }

    #[test]
    fn a_job_names_the_agents_bucket_or_its_own() {
        let agent_s3 = S3Config {
            bucket: "fleet-cache".into(),
            endpoints: vec![
                "http://127.0.0.1:3900".into(),
                "http://127.0.0.1:3910".into(),
            ],
            region: "garage".into(),
            credentials: S3Credentials::Static {
                key: "GK1".into(),
                secret: Secret("agent-secret".into()),
                token: None,
            },
        };
        let cfg = CacheConfig {
            backend: BackendConfig::S3(agent_s3.clone()),
            max_bytes: None,
            cleanup_by: CleanupBy::StoreTime,
            archive_format: ArchiveFormat::Zstd,
            spool_dir: "/s".into(),
            static_binary: None,
        };
        let dir = Path::new("/job");
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.as_bytes().to_vec());
            cfg.for_job(&env, dir)
        };
        assert_eq!(
            set(ENV_BACKEND, "s3").unwrap_err(),
            "SEMAPHORE_CACHE_BACKEND=s3 needs SEMAPHORE_CACHE_S3_BUCKET"
        );
        // The agent's own bucket, at one of its endpoints: the agent's.
        set(ENV_S3_BUCKET, "fleet-cache").unwrap();
        let same = set(ENV_S3_URL, "http://127.0.0.1:3910/").unwrap();
        assert_eq!(same.backend, cfg.backend);
        // Another bucket needs the job's own credentials.
        let err = set(ENV_S3_BUCKET, "other").unwrap_err();
        assert!(err.contains("needs credentials of the job's own"), "{err}");
        let err = set(ENV_USE_INSTANCE_PROFILE, "true").unwrap_err();
        assert!(err.contains("does not lend its instance role"), "{err}");
        let BackendConfig::S3(own) = set(ENV_S3_KEY, "JOBKEY").unwrap().backend else {
            panic!("not s3");
        };
        assert_eq!(own.credentials, S3Credentials::FromJob);
        assert_eq!(own.endpoints, ["http://127.0.0.1:3910"]);
        assert!(set(ENV_S3_BUCKET, "Bad_Bucket").is_err());
        // A backend the agent lacks is an error, not the agent's cache.
        let err = set(ENV_BACKEND, "gcs").unwrap_err();
        assert!(err.contains("no such cache backend"), "{err}");
        assert!(set(ENV_BACKEND, "local").is_err());
        // Secrets never show in a debug print.
        assert!(!format!("{agent_s3:?}").contains("agent-secret"));
    }

    #[test]
    fn s3_urls_and_projects() {
        assert_eq!(
            parse_s3_urls(" http://a:1/, https://b ").unwrap(),
            ["http://a:1", "https://b"]
        );
        assert!(parse_s3_urls("ftp://a").is_err());
        assert!(parse_s3_urls("http://").is_err());
        let env = |v: &str| BTreeMap::from([(ENV_PROJECT_ID.to_string(), v.as_bytes().to_vec())]);
        assert_eq!(project_of(&env("p-1")).unwrap(), "p-1");
        assert!(project_of(&env("")).is_err());
        assert!(project_of(&env("a/b")).is_err());
        assert!(project_of(&env("..")).is_err());
        assert!(project_of(&BTreeMap::new()).is_err());
    }

    #[test]
    fn the_test_binary_is_dynamic_or_static_as_built() {
        // Whatever it is, the check does not panic; a text file is not ELF.
        let _ = is_static_elf(&std::env::current_exe().unwrap());
        assert!(!is_static_elf(Path::new("/etc/hostname")));
    }
}

/// The agent's cache flags, as given (`--cache-*`).
#[derive(Debug, Clone, Default)]
pub struct CacheArgs {
    pub backend: Option<String>,
    pub dir: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    pub cleanup_by: Option<String>,
    pub sftp_url: Option<String>,
    pub sftp_user: Option<String>,
    pub sftp_key: Option<PathBuf>,
    pub sftp_path: Option<String>,
    pub static_binary: Option<PathBuf>,
    pub archive_format: Option<String>,
    pub s3_bucket: Option<String>,
    /// Comma-separated endpoints.
    pub s3_url: Option<String>,
    pub s3_region: Option<String>,
    pub s3_profile: Option<String>,
    pub s3_instance_profile: bool,
}

/// The `--cache-s3-*` flags.
struct S3Args {
    bucket: Option<String>,
    url: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    instance_profile: bool,
}

/// The agent's S3 bucket from its flags, else the toolbox's variables; its
/// credentials from the first of: `SEMAPHORE_CACHE_S3_KEY`/`_SECRET`, the
/// SDKs' `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
/// a profile of the shared credentials file, the instance role. Every one
/// of these variables leaves the agent's environment, so that no job
/// inherits the agent's credentials.
fn s3_config(args: &S3Args) -> Result<S3Config, String> {
    let bucket = args
        .bucket
        .clone()
        .or(take_env(ENV_S3_BUCKET))
        .ok_or("the s3 cache backend needs --cache-s3-bucket (or SEMAPHORE_CACHE_S3_BUCKET)")?;
    check_bucket(&bucket)?;
    let endpoints = parse_s3_urls(
        &args
            .url
            .clone()
            .or(take_env(ENV_S3_URL))
            .unwrap_or_default(),
    )?;
    let region = args
        .region
        .clone()
        .or_else(|| std::env::var(ENV_AWS_REGION).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::env::var(ENV_AWS_DEFAULT_REGION)
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| S3_DEFAULT_REGION.into());
    let (s3_key, s3_secret) = (take_env(ENV_S3_KEY), take_env(ENV_S3_SECRET));
    let (aws_key, aws_secret, aws_token) = (
        take_env(ENV_AWS_KEY),
        take_env(ENV_AWS_SECRET),
        take_env(ENV_AWS_TOKEN),
    );
    let profile = args
        .profile
        .clone()
        .or(take_env(ENV_AWS_PROFILE))
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|v| !v.is_empty()));
    let instance = args.instance_profile
        || take_env(ENV_USE_INSTANCE_PROFILE).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let imds = take_env(ENV_IMDS_ENDPOINT).unwrap_or_else(|| IMDS_DEFAULT_ENDPOINT.into());
    let given = |key: Option<String>, secret: Option<String>, token: Option<String>| {
        Some(S3Credentials::Static {
            key: key?,
            secret: Secret(secret?),
            token: token.map(Secret),
        })
    };
    let credentials = if let Some(c) = given(s3_key, s3_secret, None) {
        c
    } else if let Some(c) = given(aws_key, aws_secret, aws_token) {
        c
    } else if let Some(c) = profile_credentials(profile.as_deref())? {
        c
    } else if instance {
        S3Credentials::InstanceProfile { endpoint: imds }
    } else {
        return Err(format!(
            "the s3 cache backend has no credentials: set {ENV_S3_KEY} and {ENV_S3_SECRET}, or {ENV_AWS_KEY} and {ENV_AWS_SECRET}, give a shared credentials file, or --cache-s3-instance-profile"
        ));
    };
    Ok(S3Config {
        bucket,
        endpoints,
        region,
        credentials,
    })
}

/// The keys of a profile of the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`). A profile
/// named but not found is an error; a missing default one is not.
fn profile_credentials(named: Option<&str>) -> Result<Option<S3Credentials>, String> {
    let file = std::env::var_os(ENV_AWS_CREDENTIALS_FILE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
    let Some(file) = file else { return Ok(None) };
    let profile = named.unwrap_or("default");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(_) if named.is_none() => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the AWS credentials file {}: {e}",
                file.display()
            ))
        }
    };
    match super::aws::profile_keys(&text, profile) {
        Some(k) => Ok(Some(S3Credentials::Static {
            key: k.key,
            secret: Secret(k.secret),
            token: k.token.map(Secret),
        })),
        None if named.is_some() => Err(format!(
            "the AWS credentials file {} has no profile '{profile}' with a key and secret",
            file.display()
        )),
        None => Ok(None),
    }
}

/// Reads one of the toolbox's variables from the agent's environment and
/// removes it, also from `/proc/PID/environ` (which a job of the agent's
/// user could read), so that the jobs the agent starts do not inherit it
/// and cannot find it. Call before any thread starts.
fn take_env(name: &str) -> Option<String> {
    let value = match crate::process::sys::take_env(name) {
        Ok(value) => value,
        Err(e) => {
            log::warn!("cannot hide ${name} from /proc: {e}");
            let value = std::env::var(name).ok();
            std::env::remove_var(name);
            value
        }
    };
    value.filter(|v| !v.is_empty())
}

impl CacheArgs {
    /// Flags win over the environment's `SEMAPHORE_CACHE_*`.
    pub fn into_config(self, data_dir: &Path) -> Result<CacheConfig, String> {
        let env_backend = take_env(ENV_BACKEND);
        let env_url = take_env(ENV_URL);
        let env_user = take_env(ENV_USERNAME);
        let env_key = take_env(ENV_KEY_PATH);
        let env_cleanup = take_env(ENV_CLEANUP_BY);
        let env_sftp_path = take_env(ENV_SFTP_PATH);
        let env_format = take_env(ENV_ARCHIVE_FORMAT);
        let env_method = take_env(ENV_ARCHIVE_METHOD);
        let spool_dir = data_dir.join("cache-spool");
        let s3_args = S3Args {
            bucket: self.s3_bucket.clone(),
            url: self.s3_url.clone(),
            region: self.s3_region.clone(),
            profile: self.s3_profile.clone(),
            instance_profile: self.s3_instance_profile,
        };
        let backend = match self.backend.or(env_backend).as_deref().unwrap_or("local") {
            "local" => BackendConfig::Local {
                dir: self.dir.unwrap_or_else(|| data_dir.join("cache")),
            },
            "sftp" => {
                let url = self.sftp_url.or(env_url).ok_or(
                    "the sftp cache backend needs --cache-sftp-url (or SEMAPHORE_CACHE_URL)",
                )?;
                let (host, port) = parse_url(&url)?;
                let user = self.sftp_user.or(env_user).ok_or(
                    "the sftp cache backend needs --cache-sftp-user (or SEMAPHORE_CACHE_USERNAME)",
                )?;
                check_login_part("user", &user)?;
                let key = self.sftp_key.or(env_key.map(PathBuf::from)).ok_or(
                    "the sftp cache backend needs --cache-sftp-key (or SEMAPHORE_CACHE_PRIVATE_KEY_PATH)",
                )?;
                if std::fs::metadata(&key).is_err() {
                    return Err(format!("cannot read the cache key {}", key.display()));
                }
                BackendConfig::Sftp(SftpConfig {
                    host,
                    port,
                    user,
                    key: Some(key),
                    base: self
                        .sftp_path
                        .or(env_sftp_path)
                        .unwrap_or_else(|| ".".into()),
                    known_hosts: spool_dir.join("known_hosts"),
                })
            }
            "s3" => BackendConfig::S3(s3_config(&s3_args)?),
            other => {
                return Err(format!(
                    "unknown cache backend '{other}' (local, sftp or s3)"
                ))
            }
        };
        let cleanup_by = match self.cleanup_by.or(env_cleanup) {
            None => CleanupBy::StoreTime,
            Some(text) => CleanupBy::parse(&text).ok_or_else(|| {
                format!("unknown --cache-cleanup-by '{text}' (store-time, access-time or size)")
            })?,
        };
        let static_binary = match self.static_binary {
            Some(path) if is_static_elf(&path) => Some(path),
            Some(path) => {
                return Err(format!(
                    "{} is not a statically linked executable",
                    path.display()
                ))
            }
            None => std::env::current_exe().ok().filter(|p| is_static_elf(p)),
        };
        Ok(CacheConfig {
            backend,
            max_bytes: self.max_bytes,
            cleanup_by,
            archive_format: archive_format(self.archive_format.or(env_format), env_method)?,
            spool_dir,
            static_binary,
        })
    }
}
