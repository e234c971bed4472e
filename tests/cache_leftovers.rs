//! What a store cut short leaves, and who removes it: an agent killed with
//! SIGKILL leaves no `sftp` running, and its next start removes the staged
//! files of the local backend and the spool files of SFTP transfers that
//! no living process holds; the next store on SFTP removes the temporary
//! uploads older than any upload can take. A staged file of a store still
//! running counts towards the cache's usage.

use std::fs::{self, File, FileTimes};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::cache::{run, ssh_processes_to};
use crate::support::crawl::CrawlProxy;
use crate::support::server::TestAgent;
use crate::support::sftp::SftpServer;
use crate::support::{sshd, wait_until, Job};

/// Names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Holds an exclusive lock on `file`, as a store in progress does.
fn lock(file: &File) {
    // SAFETY: flock(2) on a descriptor `file` owns, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
}

#[test]
fn a_start_removes_what_a_crash_left_and_live_staged_files_count() {
    let root = tempfile::Builder::new()
        .prefix("agent-leftovers-it-")
        .tempdir()
        .unwrap();
    let cache = root.path().join("data/cache");
    let spool = root.path().join("data/cache-spool");
    fs::create_dir_all(&cache).unwrap();
    fs::create_dir_all(&spool).unwrap();
    // A local store and two SFTP transfers of an agent that was killed.
    fs::write(cache.join(".incoming-0123456789abcdef"), vec![1u8; 100_000]).unwrap();
    fs::write(spool.join("up-0123456789abcdef"), vec![1u8; 100_000]).unwrap();
    fs::write(spool.join("down-0123456789abcdef"), vec![1u8; 100_000]).unwrap();
    // A store another agent sharing the directory is making right now.
    let live = cache.join(".incoming-fedcba9876543210");
    fs::write(&live, vec![2u8; 2 * 1024 * 1024]).unwrap();
    let live_file = File::open(&live).unwrap();
    lock(&live_file);

    let agent = TestAgent::builder().root(root.path()).start();
    assert_eq!(named(&cache, ".incoming-"), [".incoming-fedcba9876543210"]);
    assert!(named(&spool, "up-").is_empty() && named(&spool, "down-").is_empty());
    let ran = run(&agent, &Job::new("usage-live").command("cache usage"));
    let usage = ran.ok("cache usage");
    assert!(usage.ends_with("\nUSED SPACE: 2.0M\n"), "{usage}");
    drop(live_file);
    drop(agent);
}

#[test]
fn a_killed_agent_leaves_no_transfer_running_and_old_uploads_go() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    let proxy = CrawlProxy::start(server.sshd.port(), 2048);
    let root = tempfile::Builder::new()
        .prefix("agent-killed-it-")
        .tempdir()
        .unwrap();
    let args_to = |url: String| {
        let mut args = server.agent_args();
        let at = args.iter().position(|a| a == "--cache-sftp-url").unwrap();
        args[at + 1] = url;
        args
    };
    let mut builder = TestAgent::builder().root(root.path());
    for arg in args_to(proxy.url()) {
        builder = builder.arg(&arg);
    }
    let agent = builder.start();
    let job = Job::new("killed-store")
        .command("head -c 2000000 /dev/urandom > blob && cache store crawl blob");
    agent.submit_ok(&job.to_value());
    let spool = root.path().join("data/cache-spool");
    wait_until("the upload to start", Duration::from_secs(60), || {
        !named(&spool, "up-").is_empty() && !ssh_processes_to(proxy.port()).is_empty()
    });
    agent.signal(libc::SIGKILL);
    wait_until("the agent to die", Duration::from_secs(5), || {
        !agent.is_running()
    });
    // Its sftp and ssh die with it.
    wait_until("sftp and ssh to be gone", Duration::from_secs(5), || {
        ssh_processes_to(proxy.port()).is_empty()
    });
    drop(agent);

    // An upload of a crash two hours ago, and one of a store in progress
    // (another agent's, say).
    let stale = server.dir().join(".incoming-0000000000000000");
    fs::write(&stale, "old").unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_times(FileTimes::new().set_modified(two_hours_ago))
        .unwrap();
    let fresh = server.dir().join(".incoming-1111111111111111");
    fs::write(&fresh, "new").unwrap();

    let mut builder = TestAgent::builder().root(root.path());
    for arg in args_to(server.url()) {
        builder = builder.arg(&arg);
    }
    let again = builder.start();
    assert!(
        named(&spool, "up-").is_empty(),
        "{:?}",
        named(&spool, "up-")
    );
    // At start, before any store.
    wait_until(
        "the upload of two hours ago to go",
        Duration::from_secs(30),
        || !stale.exists(),
    );
    assert!(fresh.exists(), "an upload in progress was removed");
    let ran = run(
        &again,
        &Job::new("next-store").command("echo y > g && cache store next g"),
    );
    ran.assert_passed();
    assert!(!stale.exists(), "the upload of two hours ago is left");
    assert!(fresh.exists(), "an upload in progress was removed");
    assert!(server.names().contains(&"next".to_string()));
}
