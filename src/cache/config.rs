//! The cache's configuration: which backend, its limits, and the static
//! binary mounted into compose jobs. Built once from the agent's flags and
//! environment (`SEMAPHORE_CACHE_*`, as the toolbox reads them); a job that
//! carries the toolbox's variables gets its own SFTP backend.

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Local { dir: PathBuf },
    Sftp(SftpConfig),
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
    /// `SEMAPHORE_CACHE_BACKEND=sftp` with URL, user and key path selects an
    /// SFTP backend for this job; anything else keeps the agent's. The key
    /// path is not followed here: the job's `cache` reads the key where the
    /// job is and hands it over with each request. The host keys the job's
    /// server shows are kept in `private_dir`, the job's own.
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
        if get(ENV_BACKEND).as_deref() != Some("sftp") {
            return Ok(self.clone());
        }
        let (Some(url), Some(user), Some(_)) = (get(ENV_URL), get(ENV_USERNAME), get(ENV_KEY_PATH))
        else {
            return Err(format!(
                "{ENV_BACKEND}=sftp needs {ENV_URL}, {ENV_USERNAME} and {ENV_KEY_PATH}"
            ));
        };
        let (host, port) = parse_url(&url)?;
        check_login_part("user", &user)?;
        let mut cfg = self.clone();
        cfg.backend = BackendConfig::Sftp(SftpConfig {
            host,
            port,
            user,
            key: None,
            base: ".".into(),
            known_hosts: private_dir.join("known_hosts"),
        });
        Ok(cfg)
    }
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
}

/// Reads one of the toolbox's variables from the agent's environment and
/// removes it, so that the jobs the agent starts do not inherit it. Call
/// before any thread starts.
fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty());
    std::env::remove_var(name);
    value
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
            other => return Err(format!("unknown cache backend '{other}' (local or sftp)")),
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
