//! What a hostile or faulty job can try on the cache, against the real
//! `agent serve`: naming a key file that never ends a read (a FIFO,
//! /dev/kmsg) for its own SFTP server, or a user that looks like an option,
//! and flooding its cache socket with connections and frames that claim
//! megabytes. Each is refused with a clear line, in bounded time and
//! memory, and leaves no process behind.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::support::cache::{proc_status, run, socket_of, ssh_processes_to};
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

/// How many connections the test keeps in the middle of a request.
const HOLDERS: usize = 4;
/// How many connections flood the socket after them.
const FLOOD: usize = 100;

/// A frame's head: its kind and a length.
fn frame_head(kind: u8, len: u32) -> Vec<u8> {
    let mut head = vec![kind];
    head.extend(len.to_be_bytes());
    head
}

#[test]
fn a_flood_of_cache_connections_is_refused_past_a_few() {
    let agent = TestAgent::start_default();
    let first = "echo \"$AGENT_CACHE_SOCKET\"; until [ -e ~/flooded ]; do sleep 0.1; done; cache has_key x; echo \"exit $?\"";
    let second = "until [ -e ~/released ]; do sleep 0.1; done; cache has_key x; echo \"exit $?\"";
    let job = Job::new("flood").command(first).command(second);
    agent.submit_ok(&job.to_value());
    let socket = socket_of(&agent, &job.job_id);
    let pid = agent.pid();
    let threads_before = proc_status(pid, "Threads:");
    let rss_before = proc_status(pid, "VmRSS:");
    // Requests that stay unfinished.
    let holders: Vec<UnixStream> = (0..HOLDERS)
        .map(|_| {
            let mut conn = UnixStream::connect(&socket).expect("connect");
            conn.write_all(&frame_head(b'J', 100))
                .expect("write a head");
            conn.write_all(b"{").expect("write a byte");
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Then frames that claim 16 MiB each and send 2 MiB of it.
    let junk = vec![b' '; 2 * 1024 * 1024];
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let Ok(mut conn) = UnixStream::connect(&socket) else {
            continue;
        };
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("a write timeout");
        let _ = conn
            .write_all(&frame_head(b'J', 16 * 1024 * 1024))
            .and_then(|()| conn.write_all(&junk));
        flood.push(conn);
    }
    std::thread::sleep(Duration::from_secs(1));
    let threads_peak = proc_status(pid, "Threads:");
    let hwm = proc_status(pid, "VmHWM:");
    eprintln!(
        "under the flood: {threads_before} threads before, {threads_peak} at the peak; \
         VmRSS {rss_before} KiB before, VmHWM {hwm} KiB"
    );
    fs::write(agent.home().join("flooded"), "").unwrap();
    agent.wait_for_event(&job.job_id, Duration::from_secs(30), |e| {
        e["event"] == "cmd_finished" && e["directive"] == first
    });
    drop(flood);
    drop(holders);
    fs::write(agent.home().join("released"), "").unwrap();
    agent.wait_for_job_finished(&job.job_id);
    let ran = crate::support::cache::Ran {
        events: agent.poll_log(&job.job_id),
        job_id: job.job_id.clone(),
    };
    let refused = ran.ok(first);
    assert!(
        refused.ends_with(
            "error: too many cache commands at once in this job (at most 4); try again when one has finished\nexit 0\n"
        ),
        "{refused}"
    );
    assert_eq!(
        ran.ok(second),
        "Key 'x' doesn't exist in the cache store.\nexit 1\n"
    );
    assert!(
        threads_peak <= threads_before + HOLDERS as u64 + 2,
        "{threads_peak} threads under the flood, {threads_before} before"
    );
    assert!(
        hwm < rss_before + 64 * 1024,
        "a peak of {hwm} KiB under the flood, {rss_before} KiB before"
    );
}
