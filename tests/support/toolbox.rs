//! The cache tests' view of one agent and its cache: a local directory or
//! a real SFTP server, the directory the keys are files in (to put
//! objects straight into the storage, as the toolbox's tests do), and
//! helpers that run a command with its exit code and mask what changes
//! from run to run.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::cache::{masked, run, Ran};
use super::server::TestAgent;
use super::sftp::SftpServer;
use super::sshd;
use super::Job;

/// An agent and the directory its cache keeps keys in.
pub struct Cache {
    pub agent: TestAgent,
    pub server: Option<SftpServer>,
}

impl Cache {
    pub fn local(args: &[&str]) -> Cache {
        let mut builder = TestAgent::builder();
        for a in args {
            builder = builder.arg(a);
        }
        Cache {
            agent: builder.start(),
            server: None,
        }
    }

    /// None (and the test skips, loudly) without sshd.
    pub fn sftp(args: &[&str]) -> Option<Cache> {
        if !sshd::available() {
            return None;
        }
        let server = SftpServer::start();
        let mut builder = TestAgent::builder();
        for a in server
            .agent_args()
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
        {
            builder = builder.arg(a);
        }
        Some(Cache {
            agent: builder.start(),
            server: Some(server),
        })
    }

    pub fn is_sftp(&self) -> bool {
        self.server.is_some()
    }

    pub fn dir(&self) -> PathBuf {
        match &self.server {
            Some(s) => s.dir(),
            None => self.agent.root().join("data/cache"),
        }
    }

    /// Puts `bytes` under `key` straight into the storage, stored `age`
    /// ago.
    pub fn raw_store(&self, key: &str, bytes: &[u8], age: Duration) {
        let path = self.dir().join(key);
        fs::write(&path, bytes).unwrap();
        let when = SystemTime::now() - age;
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
            .unwrap();
    }

    pub fn clear(&self) {
        for e in fs::read_dir(self.dir()).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }

    pub fn keys(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn home(&self) -> PathBuf {
        self.agent.home()
    }

    pub fn run(&self, job: &Job) -> Ran {
        let ran = run(&self.agent, job);
        ran.assert_passed();
        ran
    }
}

/// `cmd` with its exit code after its output, so that a job goes on past
/// a command that exits 1.
pub fn step(cmd: &str) -> String {
    format!("{cmd}; echo \"exit $?\"")
}

/// The masked output of `step(cmd)`.
pub fn out(ran: &Ran, cmd: &str) -> String {
    masked(&ran.ok(&step(cmd)))
}

pub fn job(name: &str, cmds: &[&str]) -> Job {
    cmds.iter()
        .fold(Job::new(name), |job, c| job.command(&step(c)))
}

/// The lines of one `cache store KEY PATH` that uploads.
pub fn stored(path: &str, key: &str) -> String {
    format!(
        "Compressing {path}...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Uploading '{path}' with cache key '{key}'...\n\
         Upload complete. Duration: D.\n"
    )
}

/// The lines of one restore of `key` after its HIT line.
pub fn restored(key: &str, first: &str) -> String {
    format!(
        "Downloading key '{key}'...\n\
         Download complete. Duration: D. Size: S bytes.\n\
         Unpacking 'TMP/{key}-N'...\n\
         Unpack complete. Duration: D.\n\
         Restored: {first}.\n"
    )
}

/// The keys of a `cache list` table, in its order.
pub fn listed(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|k| k != "exit")
        .collect()
}
