//! Hostile clients and requests against the real `agent serve`: a flood of
//! idle connections from one peer (docs/protocol.md §2.1), bodies sent
//! before or without authentication (§2.1, §2.2), malformed time claims in
//! JWTs (§2.2), job ids that would need encoding (§3.1), and client text in
//! the agent log and the log file itself (§1).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::client::sign_jwt;
use crate::support::net::connect_from;
use crate::support::server::{poll_until, read_response_head, TestAgent, TlsStream};
use crate::support::{b64, Job, Sandbox};

/// Connections the flood opens, all from 127.0.0.1.
const FLOOD: usize = 500;
/// Pending connections one address may hold (docs/protocol.md §2.1).
const PENDING_PER_ADDRESS: usize = 32;
/// Bound of anything the tests wait for here.
const WAIT: Duration = Duration::from_secs(20);

/// Sends `GET /is_alive` with `Connection: close` and returns the status and
/// body.
fn is_alive_over(mut tls: TlsStream) -> (u16, String) {
    tls.write_all(b"GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send GET /is_alive");
    let (status, _) = read_response_head(&mut tls);
    let mut body = Vec::new();
    // The agent ends with close_notify; an abrupt close shows as an error.
    tls.read_to_end(&mut body)
        .expect("read the body to the close");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Whether the agent closed `stream` (which sent nothing): a read that does
/// not block sees end-of-file or a reset.
fn closed_by_agent(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_others_out() {
    let agent = TestAgent::start_default();
    let started = Instant::now();
    let flood: Vec<TcpStream> = (0..FLOOD).map(|_| agent.tcp_stream()).collect();
    assert!(
        started.elapsed() < WAIT,
        "the flood took {:?}",
        started.elapsed()
    );

    // Another peer gets in at once, and keeps getting in.
    let fresh = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..5 {
        let took = Instant::now();
        let tcp = connect_from(fresh, agent.port(), WAIT).expect("connect from 127.0.0.2");
        assert_eq!(is_alive_over(agent.tls_over(tcp)), (200, "yes".to_owned()));
        assert!(
            took.elapsed() < Duration::from_secs(2),
            "GET /is_alive took {:?}",
            took.elapsed()
        );
    }
    // So does a new client of the flooding address: its oldest pending
    // connection makes room.
    agent.assert_responsive();
    // The flood holds no more than its share of pending connections.
    poll_until("the flood to be cut to its share", WAIT, || {
        flood.iter().filter(|s| !closed_by_agent(s)).count() <= PENDING_PER_ADDRESS
    });
    assert_eq!(agent.get("/status").status, 200);
}

/// `POST /jobs` with this head and no body sent, over a new connection;
/// returns the first response head the agent sends.
fn post_head_only(
    agent: &TestAgent,
    extra_headers: &str,
    body_len: usize,
) -> (TlsStream, u16, String) {
    let mut tls = agent.tls_stream();
    let head = format!(
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}Content-Length: {body_len}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).expect("send the head");
    let (status, head) = read_response_head(&mut tls);
    (tls, status, head)
}

#[test]
fn a_body_is_read_only_after_authentication() {
    let agent = TestAgent::start_default();
    let big = 30 * 1024 * 1024;
    // Without a token: the answer is 401, not 100 Continue, and the
    // connection closes without the body ever being sent.
    let (mut tls, status, head) = post_head_only(&agent, "Expect: 100-continue\r\n", big);
    assert_eq!(status, 401, "{head}");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).contains("An authorization header is required"),
        "{rest:?}"
    );
    // A client that sends its body unasked is answered as soon as the head
    // is read, and the body is not taken.
    let mut tls = agent.tls_stream();
    tls.write_all(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 31457280\r\n\r\n")
        .expect("send the head");
    let _ = tls.write_all(&vec![b'{'; 64 * 1024]);
    let (status, head) = read_response_head(&mut tls);
    assert_eq!(status, 401, "{head}");

    // With a token: 100 Continue first, then the body is read and judged.
    let job = Job::new("after-continue").command("echo continued");
    let body = job.to_value().to_string();
    let auth = format!(
        "Authorization: Bearer {}\r\nExpect: 100-continue\r\n",
        agent.token()
    );
    let (mut tls, status, head) = post_head_only(&agent, &auth, body.len());
    assert_eq!(status, 100, "{head}");
    tls.write_all(body.as_bytes()).expect("send the body");
    let (status, head) = read_response_head(&mut tls);
    assert_eq!(status, 200, "{head}");
    drop(tls);
    agent.wait_for_job_finished(&job.job_id);
}

/// A job request of about `bytes` bytes, made of many env vars, with an
/// executor no agent has: it is parsed whole, then refused with 422.
fn bulky_request(name: &str, bytes: usize) -> Vec<u8> {
    let value = b64(vec![b'v'; 24 * 1024]);
    let count = bytes / (value.len() + 40);
    let env_vars: Vec<Value> = (0..count)
        .map(|i| json!({ "name": format!("V{i}"), "value": value }))
        .collect();
    json!({ "job_id": name, "executor": "none-such", "env_vars": env_vars })
        .to_string()
        .into_bytes()
}

/// `VmHWM` (peak resident memory) of the agent, in KiB.
fn vm_hwm_kib(agent: &TestAgent) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("read the agent's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

#[test]
fn concurrent_large_bodies_take_turns_and_memory_returns() {
    // The bodies are read one after the other, each parsed by a debug
    // build on a busy machine: the last one may wait long for its turn.
    let agent = TestAgent::builder()
        .http_timeout(Duration::from_secs(120))
        .start();
    agent.assert_responsive();
    let idle = agent.vm_rss_kib();
    // Two of these would not fit the default budget of 32 MiB together.
    let body = bulky_request("bulky", 20 * 1024 * 1024);
    thread::scope(|scope| {
        let senders: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| agent.client().fresh().post("/jobs", &body)))
            .collect();
        for sender in senders {
            let reply = sender.join().expect("a sender thread");
            assert_eq!(reply.status, 422, "{}", reply.text());
            assert_eq!(reply.message(), "unknown executor type 'none-such'");
        }
    });
    // Three 20 MiB requests at once, read one after the other: the peak is
    // about one request, not three.
    let peak = vm_hwm_kib(&agent);
    assert!(peak < idle + 40 * 1024, "peak {peak} KiB, idle {idle} KiB");
    poll_until("memory to return near idle", WAIT, || {
        agent.vm_rss_kib() < idle + 8 * 1024
    });
    agent.assert_responsive();
}

/// A token with this payload, signed with the agent's secret.
fn token_with(agent: &TestAgent, payload: &str) -> String {
    sign_jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        payload,
        agent.secret().as_bytes(),
    )
}

#[test]
fn negative_or_fractional_time_claims_are_refused() {
    let agent = TestAgent::start_default();
    let cases = [
        (r#"{"exp":-1}"#.to_owned(), "exp"),
        (format!(r#"{{"exp":{}}}"#, i64::MIN), "exp"),
        (r#"{"nbf":-1}"#.to_owned(), "nbf"),
        (r#"{"iat":1.5}"#.to_owned(), "iat"),
        (r#"{"exp":"4102444800"}"#.to_owned(), "exp"),
    ];
    for (payload, claim) in cases {
        let bearer = format!("Bearer {}", token_with(&agent, &payload));
        let reply = agent
            .client()
            .request("GET", "/status", &[("Authorization", &bearer)], b"");
        assert_eq!(reply.status, 401, "{payload}: {}", reply.text());
        assert_eq!(
            reply.text(),
            format!("\"token claim {claim} must be a non-negative integer\"\n"),
            "{payload}"
        );
    }
    let fine = format!(
        "Bearer {}",
        token_with(&agent, r#"{"exp":4102444800,"iat":0}"#)
    );
    let reply = agent
        .client()
        .request("GET", "/status", &[("Authorization", &fine)], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn job_ids_outside_the_rule_are_refused() {
    let agent = TestAgent::start_default();
    let rule = "invalid job_id: a job id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'";
    let long = "x".repeat(129);
    for id in [
        "space id",
        "a/b",
        "quote\"",
        "back\\slash",
        "nul\0",
        "é",
        long.as_str(),
    ] {
        let reply = agent.post("/jobs", json!({ "job_id": id }).to_string().as_bytes());
        assert_eq!(
            (reply.status, reply.message().as_str()),
            (422, rule),
            "{id:?}"
        );
    }
    let legacy = agent.post("/jobs", br#"{"id": "space id"}"#);
    assert_eq!((legacy.status, legacy.message().as_str()), (422, rule));

    // A UUID is fine; a path that would need decoding names no job.
    let uuid = "0b5a7d0e-54b3-4bd6-a4f5-3c1b9b0f2f0e";
    let job = json!({ "job_id": uuid, "commands": [{ "directive": "echo uuid" }] });
    agent.submit_ok(&job);
    agent.wait_for_job_finished(uuid);
    assert_eq!(agent.get("/jobs/space%20id/log").status, 403);

    // `agent run` follows the same rule for a job file that names an id.
    let sandbox = Sandbox::new();
    let path = sandbox.root().join("bad-id.yaml");
    fs::write(
        &path,
        "job_id: 'space id'\ncommands: [{directive: 'echo'}]\n",
    )
    .unwrap();
    let output = sandbox
        .agent_command()
        .arg("run")
        .arg("--data-dir")
        .arg(sandbox.data_dir())
        .arg(&path)
        .output()
        .expect("run agent run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(rule),
        "{output:?}"
    );
}

#[test]
fn the_agent_log_is_private_in_the_data_dir_and_escapes_clients() {
    // An empty SEMAPHORE_AGENT_LOG_FILE_PATH counts as unset.
    let agent = TestAgent::builder()
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", "")
        .start();
    let user_agent = r#"tool "quoted" \ end"#;
    let reply = agent
        .client()
        .request("GET", "/is_alive", &[("User-Agent", user_agent)], b"");
    assert_eq!(reply.status, 200);
    let path = agent.root().join("data/agent.log");
    let mode = fs::metadata(&path)
        .expect("the agent log in the data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let escaped = r#""tool \"quoted\" \\ end""#;
    poll_until("the access line", WAIT, || {
        agent.get("/agent_logs").text().contains(escaped)
    });
}

#[test]
fn a_symbolic_link_in_place_of_the_agent_log_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let target = dir.path().join("victim");
    fs::write(&target, "untouched\n").unwrap();
    let link = dir.path().join("agent.log");
    symlink(&target, &link).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args([
            "--auth-token-secret",
            "a-secret-of-thirty-two-bytes-or-more",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("HOME", dir.path())
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", &link)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the agent") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent started on a symbolic link as its log");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("cannot open the agent log"), "{stderr}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched\n");
}
