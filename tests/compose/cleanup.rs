//! Two jobs with the same names at once, and nothing of a project left after a pass, a fail or a stop.

use super::*;

// ---------------------------------------------------------------------------
// Isolation and cleanup

#[test]
fn two_jobs_with_the_same_container_names_run_at_once() {
    if !docker::ready() {
        return;
    }
    // A host directory mounted into both mains (`--files`): each job waits
    // there for the other, so they provably overlap.
    let rendezvous = tempfile::tempdir().expect("a rendezvous directory");
    let agent = TestAgent::builder()
        .jobs(2)
        .stop_grace_period(2)
        .arg("--files")
        .arg(&format!("{}:/rendezvous", rendezvous.path().display()))
        .start();
    let twin = |me: &str, other: &str| {
        let ask_db = format!(
            "{}; echo \"db says: $reply\"",
            retry("reply=$(nc db 7000 </dev/null 2>/dev/null) && [ -n \"$reply\" ]")
        );
        let meet = format!(
            "touch /rendezvous/{me}; {}; ls -1 /rendezvous",
            retry(&format!("[ -e /rendezvous/{other} ]"))
        );
        let job = ComposeJob::new(&format!("twin-{me}"), Container::new("main", BASH_IMAGE))
            .upper_case_id()
            .service(
                Container::new("db", BASH_IMAGE)
                    .env("ANSWER", format!("{me} job's db"))
                    .command("sh -c 'while true; do echo \"$ANSWER\" | nc -l -p 7000; done'"),
            )
            .command(&meet)
            .command(&ask_db);
        let expected = started_log(
            &[],
            no_files(),
            vec![
                step(&meet, "a\nb\n", 0),
                step(&ask_db, &format!("db says: {me} job's db\n"), 0),
                result_export(0),
            ],
            "passed",
        );
        (job, expected)
    };
    let jobs = [twin("a", "b"), twin("b", "a")];
    let watches: Vec<ProjectWatch> = jobs
        .iter()
        .map(|(job, _)| ProjectWatch::new(&job.project_prefix()))
        .collect();
    for (job, _) in &jobs {
        agent.submit_ok(&job.to_value());
    }
    for (job, expected) in jobs {
        let events = wait_for_compose_job(&agent, job.job_id());
        assert_log(&job, &events, expected);
        assert_no_job_processes(job.job_id());
    }
    for watch in &watches {
        watch.assert_gone();
    }
}

/// The session container of a running job, found by its project.
fn session_container(watch: &ProjectWatch, main: &str) -> String {
    let mut found = None;
    poll_until("the session container", COMPOSE_JOB_TIMEOUT, || {
        found = watch
            .containers()
            .into_iter()
            .map(|(_, name)| name)
            .find(|name| name.ends_with(&format!("-{main}")));
        found.is_some()
    });
    found.expect("found")
}

/// A job whose main and service have anonymous volumes (`VOLUME /data`),
/// holding its last command until the test creates `/tmp/go` in main.
fn held_job(name: &str, last: &str) -> ComposeJob {
    let image = docker::volume_image();
    ComposeJob::new(name, Container::new("main", image))
        .service(Container::new("cache", image).command("sleep 1000"))
        .command(&format!("echo holding; {}", retry("[ -e /tmp/go ]")))
        .command(last)
}

#[test]
fn nothing_of_the_project_is_left_after_pass_and_fail() {
    if !docker::ready() {
        return;
    }
    thread::scope(|s| {
        for (name, last, result) in [
            ("left-pass", "true", "passed"),
            ("left-fail", "false", "failed"),
        ] {
            s.spawn(move || {
                let job = held_job(name, last);
                let mut watch = ProjectWatch::new(&job.project_prefix());
                let sandbox = Sandbox::new();
                let text = job.to_value().to_string();
                let mut running = sandbox.spawn_text("job.json", &text, job.job_id());
                running.wait_for_output("holding", COMPOSE_JOB_TIMEOUT);
                let n_volumes = watch.record_attached_volumes();
                assert!(
                    n_volumes >= 2,
                    "expected the anonymous volumes of main and cache, found {n_volumes}"
                );
                let container = session_container(&watch, job.main_name());
                docker::docker(&["exec", &container, "touch", "/tmp/go"]).ok("docker exec");
                let outcome: Outcome = running.finish(COMPOSE_JOB_TIMEOUT);
                assert_eq!(outcome.result(), result);
                watch.assert_gone();
            });
        }
    });
}

#[test]
fn stop_during_a_command_removes_everything_of_the_job() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let job = ComposeJob::new("stopped", Container::new("main", docker::volume_image()))
        .service(Container::new("cache", docker::volume_image()).command("sleep 1000"));
    // Processes in main that the kill must reach; their command lines carry
    // the job's token, so the host's /proc finds them.
    let command = format!(
        "{}echo started; sleep 1000",
        crate::support::background_processes(job.job_id())
    );
    let job = job
        .command(&command)
        .command("echo never")
        .on_fail("echo never");
    let mut watch = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(job.job_id(), COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().unwrap_or("").contains("started")
    });
    let token = token_for(job.job_id());
    poll_until("the job's processes in main", COMPOSE_JOB_TIMEOUT, || {
        job_processes(job.job_id())
            .iter()
            .filter(|p| p.cmdline.contains(&token))
            .count()
            >= crate::support::N_TOKEN_PROCESSES
    });
    assert!(watch.record_attached_volumes() >= 2);

    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id()), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    let events = wait_for_compose_job(&agent, job.job_id());
    assert_log(
        &job,
        &events,
        started_log(
            &[],
            no_files(),
            vec![step(&command, "started\n", 1)],
            "stopped",
        ),
    );
    watch.assert_gone();
    assert_no_job_processes(job.job_id());
}

#[test]
fn stop_during_a_host_setup_command_stops_the_job() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let job = ComposeJob::new("stopsetup", Container::new("main", BASH_IMAGE));
    let setup = format!("sleep 1000; : {}", token_for(job.job_id()));
    let job = job.host_setup(&setup).command("echo never");
    let watch = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    poll_until("the host setup command", COMPOSE_JOB_TIMEOUT, || {
        job_processes(job.job_id()).iter().any(|p| p.has_token)
    });
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id()), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    let events = wait_for_compose_job(&agent, job.job_id());
    assert_eq!(
        crate::support::normalize(&events),
        log_of(vec![], "stopped")
    );
    watch.assert_gone();
    assert_no_job_processes(job.job_id());
}

/// A host setup command runs below a subreaper of its own: what it leaves
/// running (one that drops the mark and leaves the session, one that holds
/// its output pipe) lives until the job ends, and not a moment longer; the
/// command's own end is not held up by them.
#[test]
fn what_a_host_setup_command_leaves_running_ends_with_the_job() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let job = ComposeJob::new("setupleft", Container::new("main", BASH_IMAGE));
    let token = token_for(job.job_id());
    let setup = format!(
        "setsid env -u AGENT_JOB_MARK bash -c 'exec -a {token}-escapee sleep 600' </dev/null >/dev/null 2>&1 & \
         bash -c 'exec -a {token}-holder sleep 600' & echo setup-done"
    );
    let job = job
        .host_setup(&setup)
        .command(&format!("echo in-main; : {token}"));
    let watch = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(job.job_id(), COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"] == "in-main\n"
    });
    // While the job runs, what the setup left is there.
    let left = job_processes(job.job_id());
    assert!(
        left.iter().any(|p| p.cmdline.contains("-escapee"))
            && left.iter().any(|p| p.cmdline.contains("-holder")),
        "{left:#?}"
    );
    let events = wait_for_compose_job(&agent, job.job_id());
    assert_eq!(events.last().unwrap()["result"], "passed");
    watch.assert_gone();
    assert_no_job_processes(job.job_id());
    assert!(
        fs::read_to_string(agent.agent_log_path())
            .unwrap_or_default()
            .contains("host setup: setup-done"),
        "the setup's output is not in the agent log"
    );
}
