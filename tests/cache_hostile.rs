//! What a hostile or faulty job can try on the cache, against the real
//! `agent serve`: naming a key file that never ends a read (a FIFO,
//! /dev/kmsg) for its own SFTP server, or a user that looks like an option,
//! flooding its cache socket with connections and frames that claim
//! megabytes, and restoring an archive that expands a thousandfold and
//! more. Each is refused with a clear line, in bounded time and memory,
//! and leaves no process behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::cache::{proc_status, run, socket_of, ssh_processes_to};
use crate::support::server::TestAgent;
use crate::support::sftp::SftpServer;
use crate::support::{sshd, wait_until, Job};

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

/// An archive of the agent's format that holds one file, `bomb`, of
/// `128 MiB * chunks` zeros: a zstd frame of 128 MiB of zeros repeated.
fn zstd_bomb(chunks: u64) -> Vec<u8> {
    const CHUNK: usize = 128 * 1024 * 1024;
    let mut tar_head = tar::Builder::new(Vec::new());
    let manifest = br#"{"path":"bomb","absolute":false}"#;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar_head
        .append_data(&mut header, ".agent-cache-manifest", &manifest[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").unwrap();
    header.set_size(chunks * CHUNK as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    // Not `into_inner`, which would end the archive here.
    let mut head = std::mem::take(tar_head.get_mut());
    head.extend_from_slice(header.as_bytes());
    let frame = |bytes: &[u8]| zstd::stream::encode_all(bytes, 1).unwrap();
    let mut archive = frame(&head);
    let zeros = frame(&vec![0u8; CHUNK]);
    for _ in 0..chunks {
        archive.extend_from_slice(&zeros);
    }
    // tar's two end blocks.
    archive.extend(frame(&[0u8; 1024]));
    archive
}

/// The CPU time the agent has used, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Sends a `restore` of `key` over `socket` and leaves once the agent has
/// answered.
fn restore_and_leave(socket: &Path, key: &str) {
    let mut conn = UnixStream::connect(socket).expect("connect");
    let request = format!(r#"{{"op":"restore","key":"{key}"}}"#);
    conn.write_all(&frame_head(b'J', request.len() as u32))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).unwrap();
}

#[test]
fn an_archive_that_expands_past_the_bound_is_refused_and_costs_the_agent_nothing() {
    let agent = TestAgent::start_default();
    // 1.5 GiB of zeros in about 60 kB.
    let bomb = zstd_bomb(12);
    fs::write(agent.root().join("data/cache/bomb"), &bomb).unwrap();
    let job = Job::new("bomb")
        .command("echo \"$AGENT_CACHE_SOCKET\"; until [ -e ~/left ]; do sleep 0.1; done")
        .command("(mkdir -p w && cd w && cache restore bomb)")
        .command("ls -A w");
    agent.submit_ok(&job.to_value());
    let socket = socket_of(&agent, &job.job_id);
    // Six restores whose clients leave once told it is a hit: the agent
    // streams archives and never unpacks one, so it spends no CPU on them.
    let ticks = cpu_ticks(agent.pid());
    for _ in 0..6 {
        restore_and_leave(&socket, "bomb");
    }
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(agent.pid()) - ticks;
    assert!(spent < 100, "the agent spent {spent} ticks on six restores");
    fs::write(agent.home().join("left"), "").unwrap();
    agent.wait_for_job_finished(&job.job_id);
    let ran = crate::support::cache::Ran {
        events: agent.poll_log(&job.job_id),
        job_id: job.job_id.clone(),
    };
    ran.assert_passed();
    let out = ran.ok("(mkdir -p w && cd w && cache restore bomb)");
    let last = out.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: the archive of 'bomb' is refused (it expands past 1.0G, the most an archive of {} bytes may hold); nothing was restored",
            bomb.len()
        ),
        "{out}"
    );
    assert_eq!(ran.ok("ls -A w"), "");
    wait_until("nothing left in TMPDIR", Duration::from_secs(5), || {
        fs::read_dir(agent.root().join("tmp"))
            .map(|d| {
                d.flatten()
                    .all(|e| !e.file_name().to_string_lossy().starts_with("bomb-"))
            })
            .unwrap_or(true)
    });
}
