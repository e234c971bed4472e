//! What a hostile or faulty job can try on the cache, against the real
//! `agent serve`: naming a key file that never ends a read (a FIFO,
//! /dev/kmsg) for its own SFTP server, or a user that looks like an option.
//! Each is refused with a clear line, in bounded time, and leaves no
//! process behind.

use std::time::{Duration, Instant};

use crate::support::cache::{run, ssh_processes_to};
use crate::support::server::TestAgent;
use crate::support::sftp::SftpServer;
use crate::support::{sshd, Job};

/// A job whose own SFTP server is `server`, with the key at `key_path`.
fn with_sftp(job: Job, url: &str, user: &str, key_path: &str) -> Job {
    job.env("SEMAPHORE_CACHE_BACKEND", "sftp")
        .env("SEMAPHORE_CACHE_URL", url)
        .env("SEMAPHORE_CACHE_USERNAME", user)
        .env("SEMAPHORE_CACHE_PRIVATE_KEY_PATH", key_path)
}

#[test]
fn the_sftp_key_a_job_names_is_read_in_the_job_never_on_the_host() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    let agent = TestAgent::start_default();
    let fifo = agent.home().join("key.fifo");
    let started = Instant::now();
    for (name, key, setup) in [
        ("key-fifo", fifo.to_str().unwrap(), "mkfifo ~/key.fifo"),
        ("key-kmsg", "/dev/kmsg", "true"),
    ] {
        let job = with_sftp(Job::new(name), &server.url(), server.user(), key)
            .command(setup)
            .command("cache has_key x; echo \"exit $?\"");
        let ran = run(&agent, &job);
        ran.assert_passed();
        let out = ran.ok("cache has_key x; echo \"exit $?\"");
        assert!(
            out.starts_with(&format!(
                "error: cannot use the SFTP key {key}: not a regular file\n"
            )) && out.ends_with("exit 0\n"),
            "{out}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // A relative path is the job's: the key is read where the job is.
    let job = with_sftp(
        Job::new("key-relative"),
        &server.url(),
        server.user(),
        "k/key",
    )
    .command(&format!(
        "mkdir -p w/k && cp {} w/k/key && cd w && echo x > f && cache store from-job f",
        server.key_path().display()
    ))
    .command("ls -A \"$(dirname \"$AGENT_CACHE_SOCKET\")\"");
    let ran = run(&agent, &job);
    ran.assert_passed();
    let stored = ran.ok(&format!(
        "mkdir -p w/k && cp {} w/k/key && cd w && echo x > f && cache store from-job f",
        server.key_path().display()
    ));
    assert!(stored.contains("\nUpload complete."), "{stored}");
    // The copy the agent gave ssh is gone once the command is done.
    let work = ran.ok("ls -A \"$(dirname \"$AGENT_CACHE_SOCKET\")\"");
    assert!(!work.contains("key"), "{work}");
    assert!(ssh_processes_to(server.sshd.port()).is_empty());
}

#[test]
fn an_sftp_user_that_looks_like_an_option_is_refused() {
    let agent = TestAgent::start_default();
    let job = with_sftp(
        Job::new("dash-user"),
        "127.0.0.1:22",
        "-oProxyCommand=touch /tmp/x",
        "/dev/null",
    )
    .command("cache has_key x; echo \"exit $?\"");
    let ran = run(&agent, &job);
    assert_eq!(
        ran.ok("cache has_key x; echo \"exit $?\""),
        "error: the SFTP cache user '-oProxyCommand=touch /tmp/x' is refused: it starts with '-'\nexit 0\n"
    );
}
