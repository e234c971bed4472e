//! Callbacks after job_finished, their retries, and the archivator wait of teardown.

use super::*;

#[test]
fn callbacks_arrive_in_order_after_job_finished() {
    let agent = TestAgent::start_default();
    let job = Job::new("callbacks").command("echo hello");
    let client = agent.client().clone();
    let job_id = job.job_id.clone();
    let callbacks = CallbackServer::builder()
        .on_request(move |request| {
            (request.path == "/finished").then(|| {
                format!(
                    "job_finished in the log: {}",
                    client.log_has_job_finished(&job_id)
                )
            })
        })
        .start();
    let token = "callback-token-123";
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        token,
    ));
    let version = agent.get("/status").json()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let finished = callbacks.wait_for(1, CALLBACK_TIMEOUT)[0].clone();
    assert_eq!(
        (finished.method.as_str(), finished.path.as_str()),
        ("POST", "/finished")
    );
    assert_eq!(finished.body_text(), r#"{"result": "passed"}"#);
    assert_eq!(
        finished.note.as_deref(),
        Some("job_finished in the log: true"),
        "§6.5: job_finished must be written before the finished callback"
    );

    // The teardown waits for the archivator's read.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        callbacks.requests().len(),
        1,
        "teardown before the archivator read"
    );
    let archived = agent.client().archivator_read(&job.job_id);
    assert_eq!(archived.status, 200);
    let requests = callbacks.wait_for(2, CALLBACK_TIMEOUT);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let teardown = &requests[1];
    assert_eq!(
        (teardown.method.as_str(), teardown.path.as_str()),
        ("POST", "/teardown")
    );
    assert_eq!(teardown.body_text(), "{}");
    for request in &requests {
        assert_eq!(
            request.header("Authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{}",
            request.path
        );
        assert_eq!(
            request.header("User-Agent"),
            Some(format!("SemaphoreAgent/{version}").as_str()),
            "{}",
            request.path
        );
        assert_eq!(request.header("Content-Type"), None, "{}", request.path);
    }
}

#[test]
fn finished_callback_reports_failed_and_stopped() {
    let agent = TestAgent::builder().jobs(2).archivator_timeout(1).start();
    let callbacks = CallbackServer::start();
    let failing = Job::new("failing").command("false");
    let stopped = Job::new("stopping").command("sleep 1000");
    for job in [&failing, &stopped] {
        agent.submit_ok(&with_callbacks(
            job,
            &callbacks.url(&format!("/finished/{}", job.job_id)),
            "",
            "",
        ));
    }
    agent.wait_for_cmd_started(&stopped.job_id, "sleep 1000");
    assert_eq!(
        agent
            .post(&format!("/jobs/{}/stop", stopped.job_id), b"")
            .status,
        200
    );
    for (job, result) in [(&failing, "failed"), (&stopped, "stopped")] {
        let path = format!("/finished/{}", job.job_id);
        let requests = callbacks.wait_for_path(&path, 1, CALLBACK_TIMEOUT);
        assert_eq!(
            requests[0].body_text(),
            format!(r#"{{"result": "{result}"}}"#)
        );
        // No token in the request: no Authorization header.
        assert_eq!(requests[0].header("Authorization"), None);
    }
}

#[test]
fn callback_is_retried_after_a_500() {
    let agent = TestAgent::builder().callback_retry_attempts(5).start();
    let callbacks = CallbackServer::builder().fail_first(1).start();
    let job = Job::new("retried").command("echo hi");
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    let finished = callbacks.wait_for_path("/finished", 2, CALLBACK_TIMEOUT);
    assert_eq!(
        finished.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200]
    );
    for request in &finished {
        assert_eq!(request.body_text(), r#"{"result": "passed"}"#);
    }
    let gap = finished[1].at - finished[0].at;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(10),
        "the retry came {gap:?} after the 500 (expected about 1 s)"
    );
    assert_eq!(agent.client().archivator_read(&job.job_id).status, 200);
    callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT);
    let requests = callbacks.requests();
    assert_eq!(
        requests.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/finished", "/finished", "/teardown"]
    );
}

#[test]
fn callbacks_are_given_up_after_the_configured_attempts() {
    let agent = TestAgent::builder()
        .callback_retry_attempts(2)
        .archivator_timeout(60)
        .start();
    let callbacks = CallbackServer::builder().fail_first(usize::MAX).start();
    let job = Job::new("given-up").command("echo hi");
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    // `job_finished` is written whatever the callback does (§7.2).
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(events.last().unwrap()["result"], "passed");
    callbacks.wait_for_path("/finished", 2, CALLBACK_TIMEOUT);
    assert_eq!(agent.client().archivator_read(&job.job_id).status, 200);
    callbacks.wait_for_path("/teardown", 2, CALLBACK_TIMEOUT);
    // The teardown completes: the single runner takes a new job.
    let next = Job::new("after-given-up").command("echo next");
    poll_until("the next job to be accepted", EVENT_TIMEOUT, || {
        agent.submit(&next.to_value()).status == 200
    });
    agent.wait_for_job_finished(&next.job_id);
    let paths: Vec<String> = callbacks.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/finished", "/finished", "/teardown", "/teardown"]);
}

#[test]
fn empty_callback_urls_are_skipped() {
    // With the default 300 attempts a retried empty URL would hold the job
    // for five minutes.
    let agent = TestAgent::builder().archivator_timeout(60).start();
    let callbacks = CallbackServer::start();
    let job = Job::new("no-finished-url").command("echo hi");
    agent.submit_ok(&with_callbacks(&job, "", &callbacks.url("/teardown"), "t"));
    agent.wait_for_job_finished(&job.job_id);
    assert_eq!(agent.client().archivator_read(&job.job_id).status, 200);
    let requests = callbacks.wait_for(1, Duration::from_secs(5));
    assert_eq!(requests[0].path, "/teardown");

    let silent = Job::new("no-urls").command("echo hi");
    poll_until(
        "the next job to be accepted",
        Duration::from_secs(5),
        || agent.submit(&silent.to_value()).status == 200,
    );
    agent.wait_for_job_finished(&silent.job_id);
    assert_eq!(agent.client().archivator_read(&silent.job_id).status, 200);
    let last = Job::new("after-no-urls").command("echo hi");
    poll_until(
        "the job after that to be accepted",
        Duration::from_secs(5),
        || agent.submit(&last.to_value()).status == 200,
    );
    agent.wait_for_job_finished(&last.job_id);
    assert_eq!(callbacks.requests().len(), 1, "{:#?}", callbacks.requests());
}

// ---------------------------------------------------------------------------
// The archivator wait (§7.2 as amended by §12 item 6)

#[test]
fn teardown_waits_for_the_archivator_timeout_without_a_read() {
    let agent = TestAgent::builder().archivator_timeout(2).start();
    let callbacks = CallbackServer::start();
    let job = Job::new("no-archivator").command("echo hi");
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    let finished = callbacks.wait_for_path("/finished", 1, CALLBACK_TIMEOUT)[0].clone();
    // Reads by other clients do not count, nor near misses of the name.
    for name in ["Archivator", "archivator-proxy", ""] {
        let reply = agent.client().get_with(
            &format!("/jobs/{}/log", job.job_id),
            &[("X-Client-Name", name)],
        );
        assert_eq!(reply.status, 200);
    }
    let teardown = callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT)[0].clone();
    let gap = teardown.at - finished.at;
    assert!(
        gap >= Duration::from_millis(1800) && gap < Duration::from_secs(8),
        "teardown_finished came {gap:?} after finished (expected about 2 s)"
    );
}

#[test]
fn archivator_read_after_job_finished_releases_teardown_at_once() {
    let agent = TestAgent::builder().archivator_timeout(60).start();
    let callbacks = CallbackServer::start();
    let job = Job::new("archivator").command("echo hi");
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    callbacks.wait_for_path("/finished", 1, CALLBACK_TIMEOUT);
    let read_at = Instant::now();
    let reply = agent.client().archivator_read(&job.job_id);
    assert_eq!(reply.status, 200);
    assert!(parse_log_lines(&reply.body)
        .iter()
        .any(|e| e["event"] == "job_finished"));
    assert_teardown_soon_after(&callbacks, read_at);
}

/// The teardown_finished callback came promptly after an archivator read.
fn assert_teardown_soon_after(callbacks: &CallbackServer, read_at: Instant) {
    let teardown = callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT)[0].clone();
    let gap = teardown.at.saturating_duration_since(read_at);
    assert!(
        gap < Duration::from_secs(2),
        "teardown_finished came {gap:?} after the archivator read"
    );
}

/// §11 with no finished callback: the control plane sees `job_finished`
/// while polling and reads the log once more as the archivator.
#[test]
fn archivator_read_as_soon_as_job_finished_is_seen_releases_teardown() {
    let agent = TestAgent::builder().archivator_timeout(60).start();
    let callbacks = CallbackServer::start();
    let job = Job::new("polling-archivator").command("echo hi");
    agent.submit_ok(&with_callbacks(&job, "", &callbacks.url("/teardown"), ""));
    agent.wait_for_job_finished(&job.job_id);
    let read_at = Instant::now();
    assert_eq!(agent.client().archivator_read(&job.job_id).status, 200);
    assert_teardown_soon_after(&callbacks, read_at);
}

#[test]
fn archivator_read_during_the_job_does_not_release_teardown() {
    let agent = TestAgent::builder().archivator_timeout(3).start();
    let callbacks = CallbackServer::start();
    let gate = agent.root().join("gate");
    let hold = wait_for_file(&gate);
    let job = Job::new("early-archivator").command(&hold);
    agent.submit_ok(&with_callbacks(
        &job,
        &callbacks.url("/finished"),
        &callbacks.url("/teardown"),
        "",
    ));
    agent.wait_for_cmd_started(&job.job_id, &hold);
    let early = agent.client().archivator_read(&job.job_id);
    assert_eq!(early.status, 200);
    assert!(!parse_log_lines(&early.body)
        .iter()
        .any(|e| e["event"] == "job_finished"));
    std::fs::write(&gate, b"").expect("open the gate");
    let finished = callbacks.wait_for_path("/finished", 1, CALLBACK_TIMEOUT)[0].clone();
    assert_eq!(finished.body_text(), r#"{"result": "passed"}"#);
    let teardown = callbacks.wait_for_path("/teardown", 1, CALLBACK_TIMEOUT)[0].clone();
    let gap = teardown.at - finished.at;
    assert!(
        gap >= Duration::from_millis(2500),
        "teardown_finished came {gap:?} after finished: the mid-job archivator read released the wait"
    );
}

// ---------------------------------------------------------------------------
// Hostile clients (§2.1, §12 item 5)
