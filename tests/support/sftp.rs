//! A real SFTP server for the cache tests: the loopback sshd of `sshd.rs`
//! with a configuration of its own (key-only login, `internal-sftp` forced
//! and chrooted into a directory made here) and a client key for the agent.
//! sshd accepts a chroot only when every component of its path belongs to
//! root and nobody else may write it, so the directory is made under /run,
//! not under the world-writable /tmp.

use std::fs;
use std::path::{Path, PathBuf};

use super::sshd::{ClientKey, Sshd};

/// The archives' directory, as the server's chrooted user sees it.
pub const BASE: &str = "/cache";

pub struct SftpServer {
    pub sshd: Sshd,
    pub key: ClientKey,
    chroot: tempfile::TempDir,
    _keys: tempfile::TempDir,
}

impl SftpServer {
    /// Call `sshd::available` first.
    pub fn start() -> SftpServer {
        let chroot = tempfile::Builder::new()
            .prefix("agent-sftp-it-")
            .tempdir_in("/run")
            .expect("a chroot directory under /run");
        fs::create_dir(chroot.path().join("cache")).expect("the cache directory");
        let keys = tempfile::tempdir().expect("a directory for authorized_keys");
        let authorized = keys.path().join("authorized_keys");
        fs::write(&authorized, "").expect("write authorized_keys");
        let sshd = Sshd::start_with(
            &authorized,
            &format!(
                "Subsystem sftp internal-sftp\n\
                 ChrootDirectory {}\n\
                 ForceCommand internal-sftp\n\
                 AllowTcpForwarding no\n\
                 X11Forwarding no\n",
                chroot.path().display()
            ),
        );
        let key = sshd.new_key("cache");
        fs::write(&authorized, format!("{}\n", key.public_line)).expect("write authorized_keys");
        SftpServer {
            sshd,
            key,
            chroot,
            _keys: keys,
        }
    }

    /// `host:port`, as `SEMAPHORE_CACHE_URL` has it.
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.sshd.port())
    }

    /// The flags of an agent whose cache is this server.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--cache-backend".into(),
            "sftp".into(),
            "--cache-sftp-url".into(),
            self.url(),
            "--cache-sftp-user".into(),
            self.sshd.user().to_owned(),
            "--cache-sftp-key".into(),
            self.key.path.to_string_lossy().into_owned(),
            "--cache-sftp-path".into(),
            BASE.into(),
        ]
    }

    /// The archives' directory on this machine.
    pub fn dir(&self) -> PathBuf {
        self.chroot.path().join("cache")
    }

    /// Every name in the archives' directory, sorted.
    pub fn names(&self) -> Vec<String> {
        Self::list(&self.dir())
    }

    fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read the cache directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    pub fn user(&self) -> &str {
        self.sshd.user()
    }

    pub fn key_path(&self) -> &Path {
        &self.key.path
    }
}
