//! Every stop wins over what a job does to its cache: a connection to the
//! job's cache socket held open by a process the agent cannot find (one that
//! left the session and dropped `AGENT_JOB_MARK`; here the test holds it,
//! which the agent cannot tell apart), or an SFTP upload crawling through a
//! slow link, holds neither a stop request, the time limit nor SIGTERM to
//! the agent longer than the stop grace period and a bounded teardown.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::cache::{run, socket_of, ssh_processes_to};
use crate::support::crawl::CrawlProxy;
use crate::support::server::TestAgent;
use crate::support::sftp::SftpServer;
use crate::support::{sshd, wait_until, Job};

const GRACE_SECS: u64 = 1;
/// What a stopped job may take past the grace period to write
/// `job_finished`: the session's kill and a bounded teardown of its cache.
const TEARDOWN_BOUND: Duration = Duration::from_secs(20);

/// A job that prints its socket and waits to be stopped.
fn waiting_job(name: &str) -> Job {
    Job::new(name).command("echo \"$AGENT_CACHE_SOCKET\"; sleep 1000")
}

/// A connection to `socket` in the middle of a request: the first byte of
/// a frame's head, and then nothing.
fn hold(socket: &Path) -> UnixStream {
    let mut conn = UnixStream::connect(socket).expect("connect to the job's cache socket");
    conn.write_all(b"J").expect("write one byte");
    conn
}

fn bound() -> Duration {
    Duration::from_secs(GRACE_SECS) + TEARDOWN_BOUND
}

/// Waits for `job_finished` of a job stopped at `stopped_at`, within the
/// grace period and the teardown bound, and returns its result.
fn finished_in_bound(agent: &TestAgent, job_id: &str, stopped_at: Instant) -> String {
    let left = bound().saturating_sub(stopped_at.elapsed());
    let finished = agent.wait_for_event(job_id, left, |e| e["event"] == "job_finished");
    finished["result"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_held_cache_connection_holds_no_stop() {
    let agent = TestAgent::builder().stop_grace_period(GRACE_SECS).start();

    // A stop request.
    let job = waiting_job("held-api-stop");
    agent.submit_ok(&job.to_value());
    let _held = hold(&socket_of(&agent, &job.job_id));
    let stopped_at = Instant::now();
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    assert_eq!(
        finished_in_bound(&agent, &job.job_id, stopped_at),
        "stopped"
    );
    // The next job runs.
    let next = run(&agent, &Job::new("held-next").command("echo next"));
    assert_eq!(next.ok("echo next"), "next\n");

    // The time limit.
    let job = waiting_job("held-time-limit");
    let mut request = job.to_value();
    request["execution_time_limit_seconds"] = 3.into();
    // The job before may still be tearing down.
    crate::support::server::poll_until("the agent to take the job", bound(), || {
        let reply = agent.submit(&request);
        match reply.status {
            200 => true,
            422 if reply.message().starts_with("another job is tearing down") => false,
            _ => panic!("POST /jobs: {}", reply.text()),
        }
    });
    let _held = hold(&socket_of(&agent, &job.job_id));
    let limit_at = Instant::now() + Duration::from_secs(3);
    let left = bound() + Duration::from_secs(3);
    let finished = agent.wait_for_event(&job.job_id, left, |e| e["event"] == "job_finished");
    assert_eq!(finished["result"], "stopped");
    assert!(
        Instant::now() < limit_at + bound(),
        "the time limit took {:?} past its end",
        Instant::now() - limit_at
    );

    // SIGTERM to the agent.
    let job = waiting_job("held-sigterm");
    agent.submit_ok(&job.to_value());
    let _held = hold(&socket_of(&agent, &job.job_id));
    let signalled_at = Instant::now();
    agent.signal(libc::SIGTERM);
    wait_until("the agent to exit after SIGTERM", bound(), || {
        !agent.is_running()
    });
    eprintln!(
        "the agent exited {:?} after SIGTERM",
        signalled_at.elapsed()
    );
    // One line says the job is being stopped, not one every few ms.
    let log = std::fs::read_to_string(agent.agent_log_path()).unwrap_or_default();
    let stopping = log
        .lines()
        .filter(|l| l.contains(&job.job_id) && l.contains("stopping"))
        .count();
    assert!(stopping <= 2, "{stopping} lines say the job is stopping");
}

#[test]
fn a_crawling_sftp_upload_holds_no_stop() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    // 2 kB a tick: the 2 MB archive needs more than a minute and a half.
    let proxy = CrawlProxy::start(server.sshd.port(), 2048);
    let agent = TestAgent::builder().stop_grace_period(GRACE_SECS).start();
    let job = Job::new("crawl-stop")
        .env("SEMAPHORE_CACHE_BACKEND", "sftp")
        .env("SEMAPHORE_CACHE_URL", proxy.url())
        .env("SEMAPHORE_CACHE_USERNAME", server.user())
        .env(
            "SEMAPHORE_CACHE_PRIVATE_KEY_PATH",
            server.key_path().to_str().unwrap(),
        )
        .command("head -c 2000000 /dev/urandom > blob && cache store crawl blob");
    agent.submit_ok(&job.to_value());
    // The archive is with the agent, which is uploading it.
    agent.wait_for_event(&job.job_id, Duration::from_secs(60), |e| {
        e["event"] == "cmd_output"
            && e["output"]
                .as_str()
                .unwrap_or("")
                .contains("Compression complete")
    });
    wait_until("the upload to start", Duration::from_secs(30), || {
        !ssh_processes_to(proxy.port()).is_empty()
    });
    let stopped_at = Instant::now();
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    assert_eq!(
        finished_in_bound(&agent, &job.job_id, stopped_at),
        "stopped"
    );
    // Neither sftp nor its ssh is left behind.
    wait_until("sftp and ssh to be gone", Duration::from_secs(5), || {
        ssh_processes_to(proxy.port()).is_empty()
    });
}
