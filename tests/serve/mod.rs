//! Integration tests of `agent serve`: the real binary on its own port, driven
//! over TLS the way a control plane drives it (docs/protocol.md §§2, 6.3, 7, 11),
//! plus our extensions (§13) and the fixes §12 demands. Every test starts its
//! own agent; dropping it checks that no process of its jobs is left.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::callback::CallbackServer;
use crate::support::client::{parse_log_lines, sign_jwt};
use crate::support::server::{poll_until, read_response_head, unix_now, TestAgent, EVENT_TIMEOUT};
use crate::support::{
    env_export, log_of, no_files, normalize, result_export, step, with_callbacks, Job,
    API_STOP_REMARK,
};

mod auth;
mod callbacks;
mod clients;

/// How long a callback may take to arrive when nothing delays it.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(20);

/// The 401 body of §2.2: a JSON string followed by a newline.
fn unauthorized_text(status: u16, body: &[u8]) -> String {
    assert_eq!(
        status,
        401,
        "expected 401, got {status}: {:?}",
        String::from_utf8_lossy(body)
    );
    let text = std::str::from_utf8(body).expect("a UTF-8 401 body");
    let json = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("the 401 body does not end with a newline: {text:?}"));
    match serde_json::from_str::<Value>(json) {
        Ok(Value::String(s)) => s,
        other => panic!("the 401 body is not a JSON string: {text:?} ({other:?})"),
    }
}

/// A bash loop that holds the command until `path` exists (at most 20 s).
fn wait_for_file(path: &std::path::Path) -> String {
    let path = path.display();
    format!("for i in $(seq 1 400); do [ -e '{path}' ] && break; sleep 0.05; done; [ -e '{path}' ]")
}

/// The `jobs` entry of `GET /jobs` for `job_id`.
fn listed(agent: &TestAgent, job_id: &str) -> Value {
    let reply = agent.get("/jobs");
    assert_eq!(reply.status, 200, "GET /jobs: {}", reply.text());
    let list = reply.json();
    let entries = list
        .as_array()
        .unwrap_or_else(|| panic!("GET /jobs is not an array: {list}"));
    entries
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} is not in GET /jobs: {list}"))
        .clone()
}

/// The log of a job stopped through the API while `directive` ran: the
/// reference's, with no line of the agent's (who stopped it is a remark).
fn expected_stopped_log(directive: &str) -> Vec<crate::support::Ev> {
    log_of(
        vec![env_export(&[]), no_files(), step(directive, "", 1)],
        "stopped",
    )
}

// ---------------------------------------------------------------------------
// Routes

#[test]
fn is_alive_answers_yes_without_auth() {
    let agent = TestAgent::start_default();
    let reply = agent.client().get_anon("/is_alive");
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"yes"[..]));
    // A bad token does not matter either.
    let reply = agent.client().request(
        "GET",
        "/is_alive",
        &[("Authorization", "Bearer x.y.z")],
        b"",
    );
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"yes"[..]));
}

#[test]
fn status_follows_the_jobs() {
    let agent = TestAgent::start_default();
    let reply = agent.get("/status");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = reply.json();
    assert_eq!(status["state"], "waiting-for-job", "{status}");
    assert!(
        status["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );
    assert_eq!(
        status["jobs"],
        json!({"running": 0, "queued": 0, "tearing_down": 0, "capacity": 1}),
        "{status}"
    );

    let job = Job::new("status").command("sleep 1000");
    agent.submit_ok(&job.to_value());
    agent.wait_for_cmd_started(&job.job_id, "sleep 1000");
    let status = agent.get("/status").json();
    assert_eq!(status["state"], "job-received", "{status}");
    assert_eq!(
        status["jobs"],
        json!({"running": 1, "queued": 0, "tearing_down": 0, "capacity": 1}),
        "{status}"
    );

    assert_eq!(agent.post("/jobs/terminate", b"").status, 200);
    agent.wait_for_job_finished(&job.job_id);
    // §13.2: `job-received` only while a job is queued or running.
    poll_until("/status back to waiting-for-job", EVENT_TIMEOUT, || {
        let status = agent.get("/status").json();
        status["state"] == "waiting-for-job" && status["jobs"]["running"] == 0
    });
}

#[test]
fn submitting_the_same_job_twice_is_idempotent() {
    let agent = TestAgent::start_default();
    let job = Job::new("twice").command("echo hello");
    agent.submit_ok(&job.to_value());
    let again = agent.submit(&job.to_value());
    assert_eq!(
        (again.status, again.message().as_str()),
        (200, "job is already running")
    );
    let events = agent.wait_for_job_finished(&job.job_id);
    // Also after the job finished (§2.3), and the job does not run again.
    let again = agent.submit(&job.to_value());
    assert_eq!(
        (again.status, again.message().as_str()),
        (200, "job is already running")
    );
    assert_eq!(
        normalize(&events),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo hello", "hello\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    let full = parse_log_lines(&agent.client().log(&job.job_id, None).body);
    assert_eq!(full, events, "the log changed after the re-submission");
}

#[test]
fn malformed_or_unsupported_requests_get_422_with_a_json_message() {
    let agent = TestAgent::start_default();
    let base = || Job::new("bad").command("echo hi").to_value();
    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();
    let mut add = |what: &'static str, value: Value| {
        let id = value["job_id"].as_str().unwrap_or_default().to_owned();
        cases.push((what, value.to_string().into_bytes(), id));
    };
    let mut wrong_type = base();
    wrong_type["commands"] = json!("echo hi");
    add("a wrong type", wrong_type);
    let mut executor = base();
    executor["executor"] = json!("kubernetes");
    add("an unknown executor", executor);
    let mut push = base();
    push["logger"] = json!({"method": "push", "url": "https://example.invalid/logs", "token": "t"});
    add("logger push", push);
    let mut unknown_logger = base();
    unknown_logger["logger"] = json!({"method": "carrier-pigeon"});
    add("an unknown logger", unknown_logger);
    let mut no_containers = base();
    no_containers["executor"] = json!("dockercompose");
    no_containers["compose"] = json!({"containers": []});
    add("dockercompose with an empty container list", no_containers);
    let mut no_compose = base();
    no_compose["executor"] = json!("dockercompose");
    add("dockercompose without compose", no_compose);
    cases.push((
        "a syntax error",
        br#"{"job_id": "syntax", "commands": [{"directive": "echo"}"#.to_vec(),
        "syntax".into(),
    ));
    cases.push(("an empty body", Vec::new(), String::new()));

    for (what, body, job_id) in &cases {
        let reply = agent.post("/jobs", body);
        assert_eq!(
            reply.status,
            422,
            "{what}: expected 422, got {}: {}",
            reply.status,
            reply.text()
        );
        let message = reply.message();
        assert!(!message.is_empty(), "{what}: an empty message");
        if !job_id.is_empty() {
            // Not accepted: no job exists yet, so its log is 404.
            let log = agent.client().log(job_id, None);
            assert_eq!(log.status, 404, "{what}: the job's log: {}", log.text());
        }
    }
    let status = agent.get("/status").json();
    assert_eq!(status["state"], "waiting-for-job", "{status}");
    assert_eq!(agent.get("/jobs").json(), json!([]));

    // Nothing was reserved by the refused requests.
    let good = Job::new("good").command("echo fine");
    agent.submit_ok(&good.to_value());
    let events = agent.wait_for_job_finished(&good.job_id);
    assert_eq!(events.last().unwrap()["result"], "passed");
}

#[test]
fn another_job_is_refused_while_one_runs_and_accepted_after_teardown() {
    let agent = TestAgent::start_default();
    let callbacks = CallbackServer::start();
    let first = Job::new("first").command("sleep 1000");
    agent.submit_ok(&with_callbacks(
        &first,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    agent.wait_for_cmd_started(&first.job_id, "sleep 1000");
    let second = Job::new("second").command("echo second");
    let refused = agent.submit(&second.to_value());
    assert_eq!(
        (refused.status, refused.message().as_str()),
        (422, "another job is already running")
    );

    assert_eq!(agent.post("/jobs/terminate", b"").status, 200);
    agent.wait_for_job_finished(&first.job_id);
    callbacks.wait_for_path("/finished", 1, CALLBACK_TIMEOUT);
    // Finished but not torn down (the archivator has not read the log yet):
    // the refusal and /status say what the teardown waits for.
    let refused = agent.submit(&second.to_value());
    assert_eq!(refused.status, 422, "{}", refused.text());
    let message = refused.message();
    let expected = format!(
        "another job is tearing down: job {} is waiting for a log read with X-Client-Name: archivator (at most ",
        first.job_id
    );
    assert!(
        message.starts_with(&expected) && message.ends_with(" seconds more)"),
        "{message}"
    );
    let status = agent.get("/status").json();
    assert_eq!(status["jobs"]["tearing_down"], 1, "{status}");
    assert_eq!(status["teardown"][0]["job_id"], first.job_id.as_str());
    assert_eq!(
        status["teardown"][0]["waiting_for"],
        "a log read with X-Client-Name: archivator"
    );
    let left = status["teardown"][0]["at_most_seconds"].as_u64().unwrap();
    assert!(left > 0 && left <= 600, "{status}");

    assert_eq!(agent.client().archivator_read(&first.job_id).status, 200);
    callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT);
    poll_until("the second job to be accepted", EVENT_TIMEOUT, || {
        let reply = agent.submit(&second.to_value());
        match reply.status {
            200 => true,
            422 => false,
            other => panic!("POST /jobs answered {other}: {}", reply.text()),
        }
    });
    let events = agent.wait_for_job_finished(&second.job_id);
    assert_eq!(events.last().unwrap()["result"], "passed");
}

#[test]
fn job_log_is_404_before_any_job_and_403_for_another_id() {
    let agent = TestAgent::start_default();
    let reply = agent.client().log("nope", None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.message(), "no job with id nope on this agent");

    let job = Job::new("log-ids").command("echo hi");
    agent.submit_ok(&job.to_value());
    let reply = agent.client().log("other", None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.message(), "no job with id other on this agent");

    agent.wait_for_job_finished(&job.job_id);
    let reply = agent.client().log(&job.job_id, None);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "Content-Type {:?}",
        reply.header("Content-Type")
    );
}

#[test]
fn start_from_selects_events_by_index() {
    let agent = TestAgent::start_default();
    let job = Job::new("start-from")
        .command("echo one")
        .command("echo two")
        .command("echo three");
    agent.submit_ok(&job.to_value());
    agent.wait_for_job_finished(&job.job_id);
    let full = agent.client().log(&job.job_id, None);
    assert_eq!(full.status, 200);
    let lines: Vec<&[u8]> = full.body.split_inclusive(|b| *b == b'\n').collect();
    let n = lines.len();
    assert!(n > 10, "a short log: {}", full.text());
    for k in 0..=n {
        let reply = agent.client().log(&job.job_id, Some(&k.to_string()));
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.text(),
            String::from_utf8_lossy(&lines[k..].concat()),
            "start_from={k}"
        );
    }
    for beyond in [n + 1, n + 100, 1 << 40] {
        let reply = agent.client().log(&job.job_id, Some(&beyond.to_string()));
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, ""),
            "start_from={beyond}"
        );
    }
    for means_zero in ["-1", "-100", "abc", "", "1.5", "0x2"] {
        let reply = agent.client().log(&job.job_id, Some(means_zero));
        assert_eq!(reply.status, 200, "start_from={means_zero:?}");
        assert_eq!(
            reply.body, full.body,
            "start_from={means_zero:?} must mean 0"
        );
    }
}

#[test]
fn log_polls_return_only_complete_lines() {
    let agent = TestAgent::start_default();
    let job = Job::new("complete-lines")
        .command("for i in $(seq 1 300); do echo line-$i-$(printf '%0200d' 0); sleep 0.003; done");
    agent.submit_ok(&job.to_value());
    let mut raw_polls = 0;
    loop {
        // `poll_log` checks every body: complete, compact JSON lines only.
        let received = agent.poll_log(&job.job_id);
        // So does a full read at the same moment.
        parse_log_lines(&agent.client().log(&job.job_id, None).body);
        raw_polls += 1;
        if received.iter().any(|e| e["event"] == "job_finished") {
            break;
        }
        assert!(raw_polls < 5000, "the job did not finish");
    }
    let incremental = agent.wait_for_job_finished(&job.job_id);
    let full = parse_log_lines(&agent.client().log(&job.job_id, None).body);
    assert_eq!(
        incremental, full,
        "incremental polls disagree with a full read"
    );
    let output: String = full
        .iter()
        .filter(|e| e["event"] == "cmd_output")
        .filter_map(|e| e["output"].as_str())
        .collect();
    let expected: String = (1..=300)
        .map(|i| format!("line-{i}-{}\n", "0".repeat(200)))
        .collect();
    assert!(
        output.contains(&expected),
        "the output lost or reordered lines"
    );
}

#[test]
fn log_stays_readable_after_teardown() {
    let agent = TestAgent::start_default();
    let callbacks = CallbackServer::start();
    let first = Job::new("kept").command("echo kept");
    agent.submit_ok(&with_callbacks(&first, "", &callbacks.url("/teardown"), ""));
    let events = agent.wait_for_job_finished(&first.job_id);
    let archived = agent.client().archivator_read(&first.job_id);
    assert_eq!(archived.status, 200);
    assert_eq!(parse_log_lines(&archived.body), events);
    callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT);

    let after = agent.client().log(&first.job_id, None);
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.body, archived.body, "the log changed at teardown");

    // Still there once another job has run.
    let second = Job::new("next").command("echo next");
    poll_until("the next job to be accepted", EVENT_TIMEOUT, || {
        agent.submit(&second.to_value()).status == 200
    });
    agent.wait_for_job_finished(&second.job_id);
    let later = agent.client().log(&first.job_id, None);
    assert_eq!((later.status, &later.body), (200, &archived.body));
    assert_eq!(listed(&agent, &first.job_id)["result"], "passed");
}

#[test]
fn stop_without_a_job_answers_200() {
    let agent = TestAgent::start_default();
    for path in ["/stop", "/jobs/terminate"] {
        let reply = agent.post(path, b"");
        assert_eq!(reply.status, 200, "POST {path}: {}", reply.text());
        if !reply.body.is_empty() {
            reply.message();
        }
    }
    agent.assert_responsive();
    assert_eq!(agent.get("/status").json()["state"], "waiting-for-job");
}

fn stop_a_running_job(route: impl Fn(&str) -> String) {
    // Interactive bash ignores SIGTERM: a short grace period keeps a stop
    // that relies on SIGKILL fast as well.
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let job = Job::new("stopped")
        .command("sleep 1000")
        .command("echo never")
        .always("echo epilogue");
    agent.submit_ok(&job.to_value());
    agent.wait_for_cmd_started(&job.job_id, "sleep 1000");
    let path = route(&job.job_id);
    let reply = agent.post(&path, b"");
    assert_eq!(reply.status, 200, "POST {path}: {}", reply.text());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(normalize(&events), expected_stopped_log("sleep 1000"));
    let listed = listed(&agent, &job.job_id);
    assert_eq!(listed["result"], "stopped");
    assert_eq!(listed["remarks"], json!([API_STOP_REMARK]), "{listed}");
}

#[test]
fn terminate_stops_a_running_job() {
    stop_a_running_job(|_| "/jobs/terminate".into());
}

#[test]
fn stop_stops_a_running_job() {
    stop_a_running_job(|_| "/stop".into());
}

#[test]
fn job_stop_route_stops_that_job() {
    stop_a_running_job(|id| format!("/jobs/{id}/stop"));
}

#[test]
fn jobs_routes_list_and_show_jobs() {
    let agent = TestAgent::start_default();
    assert_eq!(agent.get("/jobs").json(), json!([]));
    let job = Job::new("listed").command("sleep 1000");
    let before = unix_now();
    agent.submit_ok(&job.to_value());
    agent.wait_for_cmd_started(&job.job_id, "sleep 1000");

    let entry = listed(&agent, &job.job_id);
    assert_eq!(agent.get("/jobs").json().as_array().map(Vec::len), Some(1));
    assert_eq!(entry["state"], "running", "{entry}");
    let queued_at = entry["queued_at"].as_i64().expect("an integer queued_at");
    let started_at = entry["started_at"].as_i64().expect("an integer started_at");
    assert!(before <= queued_at && queued_at <= started_at && started_at <= unix_now());
    assert!(
        entry.get("result").is_none() && entry.get("finished_at").is_none(),
        "{entry}"
    );
    let one = agent.get(&format!("/jobs/{}", job.job_id));
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), entry);

    for path in ["/jobs/unknown", "/jobs/unknown/stop"] {
        let method = if path.ends_with("stop") {
            "POST"
        } else {
            "GET"
        };
        let bearer = format!("Bearer {}", agent.token());
        let reply = agent
            .client()
            .request(method, path, &[("Authorization", &bearer)], b"");
        assert!(
            reply.status == 403 || reply.status == 404,
            "{method} {path}: {} {}",
            reply.status,
            reply.text()
        );
    }

    let stop = agent.post(&format!("/jobs/{}/stop", job.job_id), b"");
    assert_eq!(stop.status, 200);
    agent.wait_for_job_finished(&job.job_id);
    let entry = listed(&agent, &job.job_id);
    assert_eq!(
        (entry["state"].as_str(), entry["result"].as_str()),
        (Some("finished"), Some("stopped")),
        "{entry}"
    );
    let finished_at = entry["finished_at"]
        .as_i64()
        .expect("an integer finished_at");
    assert!(started_at <= finished_at && finished_at <= unix_now());
}

#[test]
fn agent_logs_hold_access_lines() {
    let agent = TestAgent::start_default();
    let probe = agent.client().request(
        "GET",
        "/is_alive",
        &[("User-Agent", "serve-test-probe/1")],
        b"",
    );
    assert_eq!(probe.status, 200);
    let mut body = String::new();
    poll_until("the access line of the probe", EVENT_TIMEOUT, || {
        let reply = agent.get("/agent_logs");
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .header("Content-Type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "Content-Type {:?}",
            reply.header("Content-Type")
        );
        body = reply.text();
        body.contains("serve-test-probe/1")
    });
    let line = body
        .lines()
        .find(|l| l.contains("serve-test-probe/1"))
        .expect("the probe's line");
    assert!(
        line.contains("127.0.0.1")
            && line.contains(" - - [")
            && line.contains("] \"GET /is_alive HTTP/1.1\" 200 3 \"-\" \"serve-test-probe/1\""),
        "not a combined-format access line: {line:?}"
    );
    // The file of SEMAPHORE_AGENT_LOG_FILE_PATH is what is served (§12 item 21).
    let on_disk = std::fs::read_to_string(agent.agent_log_path()).expect("the agent log file");
    assert!(
        on_disk.starts_with(&body),
        "GET /agent_logs is not the agent log file"
    );
    assert!(!agent.root().join("tmp/agent_log").exists());
}

#[test]
fn unknown_paths_wrong_methods_and_trailing_slashes() {
    let agent = TestAgent::start_default();
    let bearer = format!("Bearer {}", agent.token());
    let auth: &[(&str, &str)] = &[("Authorization", &bearer)];
    // Routing happens before authentication, so these need no token.
    for headers in [&[][..], auth] {
        for path in [
            "/nope",
            "/",
            "/jobs/x/other",
            "/job_logs",
            "/jobs/x/log/more",
        ] {
            let reply = agent.client().request("GET", path, headers, b"");
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (404, "404 page not found\n"),
                "GET {path}"
            );
        }
        for (method, path) in [
            ("POST", "/is_alive"),
            ("GET", "/stop"),
            ("GET", "/jobs/terminate"),
            ("DELETE", "/jobs"),
            ("PUT", "/status"),
            ("POST", "/agent_logs"),
            ("POST", "/jobs/x/log"),
        ] {
            let reply = agent.client().request(method, path, headers, b"");
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (405, ""),
                "{method} {path}"
            );
        }
        for (path, location) in [
            ("/status/", "/status"),
            ("/is_alive/", "/is_alive"),
            ("/jobs/x/log/", "/jobs/x/log"),
        ] {
            let reply = agent.client().request("GET", path, headers, b"");
            assert_eq!(reply.status, 301, "GET {path}: {}", reply.text());
            assert_eq!(reply.header("Location"), Some(location), "GET {path}");
        }
    }
}

// ---------------------------------------------------------------------------
// Authentication (§2.2)

#[test]
fn three_jobs_run_at_once_a_fourth_waits_and_a_fifth_is_refused() {
    let agent = TestAgent::builder()
        .jobs(3)
        .queue_size(1)
        .archivator_timeout(1)
        .start();
    let running: Vec<Job> = (0..3)
        .map(|i| Job::new(&format!("parallel-{i}")).command("sleep 1000"))
        .collect();
    for job in &running {
        agent.submit_ok(&job.to_value());
    }
    for job in &running {
        agent.wait_for_cmd_started(&job.job_id, "sleep 1000");
    }
    let queued = Job::new("queued").command("sleep 1000");
    agent.submit_ok(&queued.to_value());
    let log = agent.client().log(&queued.job_id, None);
    assert_eq!((log.status, log.text().as_str()), (200, ""));
    assert_eq!(listed(&agent, &queued.job_id)["state"], "queued");
    assert_eq!(agent.job_state(&queued.job_id), "queued");
    for job in &running {
        assert_eq!(listed(&agent, &job.job_id)["state"], "running");
    }
    let status = agent.get("/status").json();
    assert_eq!(status["state"], "job-received");
    assert_eq!(
        status["jobs"],
        json!({"running": 3, "queued": 1, "tearing_down": 0, "capacity": 3}),
        "{status}"
    );

    let refused = Job::new("refused").command("echo no");
    let reply = agent.submit(&refused.to_value());
    assert_eq!(
        (reply.status, reply.message().as_str()),
        (422, "agent is at capacity")
    );

    let stopped = &running[1];
    let reply = agent.post(&format!("/jobs/{}/stop", stopped.job_id), b"");
    assert_eq!(reply.status, 200);
    let events = agent.wait_for_job_finished(&stopped.job_id);
    assert_eq!(normalize(&events), expected_stopped_log("sleep 1000"));
    // The queued job takes the free runner once the stopped one is torn down.
    agent.wait_for_cmd_started(&queued.job_id, "sleep 1000");
    for job in [&running[0], &running[2]] {
        assert_eq!(agent.job_state(&job.job_id), "running");
        let events = agent.poll_log(&job.job_id);
        assert!(
            !events.iter().any(|e| e["event"] == "job_finished"),
            "{} finished too",
            job.job_id
        );
        assert_eq!(events.last().unwrap()["directive"], "sleep 1000");
    }
}

// ---------------------------------------------------------------------------
// Callbacks (§7)

#[test]
fn sigterm_stops_every_job_and_the_agent_exits() {
    let agent = TestAgent::builder().jobs(2).start();
    let first = Job::new("sigterm-a").command("sleep 1000 & setsid sleep 1000 & sleep 1000");
    let second = Job::new("sigterm-b").command("sleep 1000");
    agent.submit_ok(&first.to_value());
    agent.submit_ok(&second.to_value());
    agent.wait_for_cmd_started(&first.job_id, "sleep 1000 & setsid sleep 1000 & sleep 1000");
    agent.wait_for_cmd_started(&second.job_id, "sleep 1000");
    poll_until(
        "the first job's three sleeps",
        Duration::from_secs(10),
        || {
            crate::support::job_processes(&first.job_id)
                .iter()
                .filter(|p| p.cmdline.contains("sleep"))
                .count()
                >= 3
        },
    );
    agent.signal(libc::SIGTERM);
    poll_until("the agent exits", Duration::from_secs(30), || {
        !agent.is_running()
    });
    crate::support::assert_no_job_processes(&first.job_id);
    crate::support::assert_no_job_processes(&second.job_id);
}

#[test]
fn sigterm_gives_up_callbacks_being_retried() {
    // Every callback is answered 500: without the shutdown the agent would
    // retry for five minutes.
    let agent = TestAgent::builder().start();
    let callbacks = CallbackServer::builder().fail_first(usize::MAX).start();
    let job = Job::new("sigterm-callbacks").command("echo hi");
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "t",
    ));
    callbacks.wait_for(2, Duration::from_secs(20));
    let signalled = Instant::now();
    agent.signal(libc::SIGTERM);
    poll_until("the agent exits", Duration::from_secs(30), || {
        !agent.is_running()
    });
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the agent took {took:?} to exit after SIGTERM"
    );
    // One attempt of each callback is made even while stopping.
    let paths: Vec<String> = callbacks.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths.last().map(String::as_str),
        Some("/teardown"),
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| *p == "/teardown").count(),
        1,
        "{paths:?}"
    );
}

#[test]
fn the_log_is_uploaded_through_the_artifact_cli_when_asked() {
    // A stand-in `artifact` CLI on PATH records its arguments, environment
    // and the file it was given.
    let bin = tempfile::tempdir().expect("a temp dir");
    let record = bin.path().join("record");
    let script = format!(
        "#!/usr/bin/env bash\n\
         {{ printf '%s\\n' \"$*\" \"$SEMAPHORE_ARTIFACT_TOKEN\" \"$SEMAPHORE_ORGANIZATION_URL\" \"$SEMAPHORE_JOB_ID\"; }} > '{rec}.args'\n\
         cp \"${{@: -1}}\" '{rec}.file'\n",
        rec = record.display()
    );
    let cli = bin.path().join("artifact");
    std::fs::write(&cli, script).expect("write the stand-in CLI");
    std::fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let agent = TestAgent::builder().env("PATH", &path).start();
    let job = Job::new("upload")
        .env("SEMAPHORE_AGENT_UPLOAD_JOB_LOGS", "always")
        .env("SEMAPHORE_ARTIFACT_TOKEN", "tok-123")
        .env("SEMAPHORE_ORGANIZATION_URL", "https://org.example")
        .env("SEMAPHORE_JOB_ID", "job-42")
        .command("echo uploaded");
    agent.submit_ok(&job.to_value());
    agent.wait_for_job_finished(&job.job_id);
    agent.client().archivator_read(&job.job_id);
    let args_file = bin.path().join("record.args");
    poll_until("the artifact CLI runs", Duration::from_secs(20), || {
        args_file.exists()
    });
    poll_until("the upload ends", Duration::from_secs(20), || {
        agent.job_state(&job.job_id) == "finished" && bin.path().join("record.file").exists()
    });
    let args = std::fs::read_to_string(&args_file).expect("read the arguments");
    let lines: Vec<&str> = args.lines().collect();
    assert!(
        lines[0].starts_with("push job --destination agent/job_logs.txt "),
        "{args}"
    );
    assert_eq!(
        lines[1..],
        ["tok-123", "https://org.example", "job-42"],
        "{args}"
    );
    let text = std::fs::read_to_string(bin.path().join("record.file")).expect("read the upload");
    assert!(
        text.contains("echo uploaded\nuploaded\n"),
        "the plain-text log: {text:?}"
    );
    assert!(
        text.starts_with("Exporting environment variables\n"),
        "{text:?}"
    );
}

#[test]
fn the_pre_job_hook_runs_before_the_commands_and_its_failure_fails_the_job() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let hook = dir.path().join("hook.sh");
    // The hook decides from a file whether it fails, so one agent serves both jobs.
    let fail_flag = dir.path().join("fail");
    std::fs::write(
        &hook,
        format!(
            "echo hook ran\nexport FROM_HOOK=yes\n[ ! -e '{}' ]\n",
            fail_flag.display()
        ),
    )
    .expect("write the hook");
    let agent = TestAgent::builder()
        .arg("--pre-job-hook-path")
        .arg(&hook.display().to_string())
        .start();
    let hook_step = "Running the pre-job hook configured in the agent";
    let hook_output = format!(
        "Running: source '{}'\nWarning: The agent is configured to fail the job if the pre-job hook fails.\nhook ran\n",
        hook.display()
    );

    let passing = Job::new("hook-pass").command("echo $FROM_HOOK");
    agent.submit_ok(&passing.to_value());
    let events = agent.wait_for_job_finished(&passing.job_id);
    assert_eq!(
        normalize(&events),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(hook_step, &hook_output, 0),
                step("echo $FROM_HOOK", "yes\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    agent.client().archivator_read(&passing.job_id);
    poll_until("the first job's teardown", Duration::from_secs(20), || {
        agent.job_state(&passing.job_id) == "finished"
            && agent.get("/status").json()["state"] == "waiting-for-job"
    });

    std::fs::write(&fail_flag, "").expect("make the hook fail");
    let failing = Job::new("hook-fail").command("echo never");
    agent.submit_ok(&failing.to_value());
    let events = agent.wait_for_job_finished(&failing.job_id);
    assert_eq!(
        normalize(&events),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(hook_step, &hook_output, 1),
                result_export(0),
            ],
            "failed"
        )
    );
}
