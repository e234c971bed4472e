//! StatsD metrics of compose jobs.

use super::*;

/// §10: every run of characters outside `[a-zA-Z0-9-_]` becomes one `_`.
fn clean_tag(tag: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in tag.chars() {
        let kept = c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if kept {
            out.push(c);
        } else if !in_run {
            out.push('_');
        }
        in_run = !kept;
    }
    out
}

/// Reads StatsD packets until `done` holds for the metrics received so far
/// (one per line), failing the test after `timeout`.
fn read_metrics(
    socket: &UdpSocket,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let deadline = Instant::now() + timeout;
    let mut metrics = Vec::new();
    let mut buf = [0u8; 65536];
    while !done(&metrics) {
        assert!(
            Instant::now() < deadline,
            "the expected metrics did not arrive within {timeout:?}; got {metrics:#?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            metrics.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }
    metrics
}

#[test]
fn statsd_gets_pull_and_job_metrics() {
    if !docker::ready() {
        return;
    }
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a StatsD socket");
    let port = socket.local_addr().expect("an address").port();
    let agent = TestAgent::builder()
        .jobs(2)
        .stop_grace_period(2)
        .arg("--statsd-host")
        .arg("127.0.0.1")
        .arg("--statsd-port")
        .arg(&port.to_string())
        .start();
    let missing = format!("agent-test/no-such-image:{}", unique_tag("statsd"));
    let passing = ComposeJob::new("statsd-ok", Container::new("main", BASH_IMAGE)).command("true");
    let failing = ComposeJob::new("statsd-ko", Container::new("main", &missing)).command("true");
    let watches = [
        ProjectWatch::new(&passing.project_prefix()),
        ProjectWatch::new(&failing.project_prefix()),
    ];
    agent.submit_ok(&passing.to_value());
    agent.submit_ok(&failing.to_value());
    let passed = wait_for_compose_job(&agent, passing.job_id());
    let failed = wait_for_compose_job(&agent, failing.job_id());
    assert_eq!(
        passed.last().map(|e| e["result"].clone()),
        Some("passed".into())
    );
    assert_eq!(
        failed.last().map(|e| e["result"].clone()),
        Some("failed".into())
    );

    let ok = format!("tagged.agent.prod.{}.no_tag.no_tag.", clean_tag(BASH_IMAGE));
    let ko = format!("tagged.agent.prod.{}.no_tag.no_tag.", clean_tag(&missing));
    let exact = [
        format!("{ok}compose_ci.docker_pull.success.rate:1|g"),
        format!("{ok}compose.docker.pull.rate:1|g"),
        format!("{ko}compose_ci.docker_pull.failure.rate:1|g"),
        format!("{ko}compose.docker.pull.rate:1|g"),
        "tagged.agent.prod.passed.no_tag.no_tag.jobs.finished:1|c".to_owned(),
        "tagged.agent.prod.failed.no_tag.no_tag.jobs.finished:1|c".to_owned(),
    ];
    let started = "tagged.agent.prod.no_tag.no_tag.no_tag.jobs.started:1|c";
    let is_duration = |metric: &str, prefix: &str| {
        metric
            .strip_prefix(&format!("{prefix}compose_ci.docker_pull.duration:"))
            .and_then(|rest| rest.strip_suffix("|ms"))
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|ms| ms >= 0.0)
    };
    let complete = |metrics: &[String]| {
        exact.iter().all(|m| metrics.contains(m))
            && metrics.iter().filter(|m| *m == started).count() == 2
            && metrics.iter().any(|m| is_duration(m, &ok))
            && metrics.iter().any(|m| is_duration(m, &ko))
    };
    let metrics = read_metrics(&socket, COMPOSE_JOB_TIMEOUT, complete);
    let wrong = format!("{ko}compose_ci.docker_pull.success.rate:1|g");
    assert!(
        !metrics.contains(&wrong),
        "a failed pull was reported as a success: {metrics:#?}"
    );
    for watch in &watches {
        watch.assert_gone();
    }
}

#[test]
fn unreachable_statsd_neither_slows_nor_fails_a_job() {
    if !docker::ready() {
        return;
    }
    // Nobody listens on this port: sends are refused (ICMP) or lost.
    let port = {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        socket.local_addr().expect("an address").port()
    };
    let with_statsd = TestAgent::builder()
        .stop_grace_period(2)
        .arg("--statsd-host")
        .arg("127.0.0.1")
        .arg("--statsd-port")
        .arg(&port.to_string())
        .start();
    let without = TestAgent::builder().stop_grace_period(2).start();
    let run = |agent: &TestAgent, name: &str| {
        let job = ComposeJob::new(name, Container::new("main", BASH_IMAGE)).command("echo done");
        let watch = ProjectWatch::new(&job.project_prefix());
        let started = Instant::now();
        agent.submit_ok(&job.to_value());
        let events = wait_for_compose_job(agent, job.job_id());
        let took = started.elapsed();
        assert_log(
            &job,
            &events,
            started_log(
                &[],
                no_files(),
                vec![step("echo done", "done\n", 0), result_export(0)],
                "passed",
            ),
        );
        watch.assert_gone();
        took
    };
    let (slow, base) = thread::scope(|s| {
        let a = s.spawn(|| run(&with_statsd, "nostatsd"));
        let b = s.spawn(|| run(&without, "baseline"));
        (
            a.join().expect("the job with StatsD"),
            b.join().expect("the baseline job"),
        )
    });
    assert!(
        slow < base + Duration::from_secs(5),
        "with an unreachable StatsD the job took {slow:?}, without {base:?}"
    );
}
