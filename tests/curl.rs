//! The API driven by hand, as a person with curl does: jobs without
//! callbacks tear down at once, a job request may be the YAML job file as
//! it is, and a refusal says what it waits for (docs/protocol.md §2.3, §7.2).

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::server::{poll_until, TestAgent};
use crate::support::{with_callbacks, Job};

/// How long a job without callbacks may take from `job_finished` to the end
/// of its teardown: no wait, only the clean-up.
const PROMPT_TEARDOWN: Duration = Duration::from_secs(5);

#[test]
fn a_second_job_without_callbacks_is_accepted_as_soon_as_the_first_has_finished() {
    // The default archivator timeout (600 s): the curl user must not see it.
    let agent = TestAgent::start_default();
    let first = Job::new("curl-first").command("echo first");
    agent.submit_ok(&first.to_value());
    let events = agent.wait_for_job_finished(&first.job_id);
    assert_eq!(events.last().unwrap()["result"], "passed");
    let second = Job::new("curl-second").command("echo second");
    let waited = poll_until("the second job to be accepted", PROMPT_TEARDOWN, || {
        let reply = agent.submit(&second.to_value());
        match reply.status {
            200 => true,
            422 => false,
            other => panic!("POST /jobs answered {other}: {}", reply.text()),
        }
    });
    assert!(waited < PROMPT_TEARDOWN, "accepted after {waited:?}");
    agent.wait_for_job_finished(&second.job_id);
    let log = std::fs::read_to_string(agent.agent_log_path()).unwrap_or_default();
    assert!(
        log.contains(&format!(
            "job {}: no callbacks, so no archivator read is awaited",
            first.job_id
        )),
        "agent log:\n{log}"
    );
}

#[test]
fn a_job_with_only_empty_callback_urls_does_not_wait_for_the_archivator() {
    let agent = TestAgent::start_default();
    let first = Job::new("empty-urls").command("true");
    agent.submit_ok(&with_callbacks(&first, "", "", "token"));
    agent.wait_for_job_finished(&first.job_id);
    let next = Job::new("after-empty-urls").command("true");
    poll_until("the next job to be accepted", PROMPT_TEARDOWN, || {
        agent.submit(&next.to_value()).status == 200
    });
    agent.wait_for_job_finished(&next.job_id);
}

#[test]
fn the_example_job_file_is_accepted_as_yaml_and_as_json() {
    // One at a time: the four jobs are the same file, and two of them at
    // once would write and read the same ~/hello/message.txt in one HOME.
    let agent = TestAgent::builder().queue_size(3).start();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let yaml = std::fs::read_to_string(format!("{dir}/hello.yaml")).unwrap();
    let json = std::fs::read_to_string(format!("{dir}/hello.json")).unwrap();
    // Each gets its own id, the rest of the file as it is.
    let cases = [
        ("hello-yaml-typed", Some("application/yaml"), &yaml),
        ("hello-yaml-guessed", None, &yaml),
        (
            "hello-yaml-form",
            Some("application/x-www-form-urlencoded"),
            &yaml,
        ),
        ("hello-json", Some("application/json"), &json),
    ];
    for (job_id, content_type, text) in cases {
        let body = text.replacen("\"hello\"", &format!("\"{job_id}\""), 1);
        let body = body.replacen("job_id: hello", &format!("job_id: {job_id}"), 1);
        assert!(body.contains(job_id), "{job_id}: the id was not replaced");
        let reply = agent.submit_text(job_id, content_type, body.as_bytes());
        assert_eq!(
            (reply.status, reply.message().as_str()),
            (200, "ok"),
            "{job_id}: {}",
            reply.text()
        );
    }
    let mut outputs = Vec::new();
    for (job_id, _, _) in cases {
        let events = agent.wait_for_job_finished(job_id);
        assert_eq!(events.last().unwrap()["result"], "passed", "{job_id}");
        let output: String = events.iter().filter_map(|e| e["output"].as_str()).collect();
        assert!(output.contains("Hello World\n"), "{job_id}: {output}");
        outputs.push(output);
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{outputs:#?}");
}

#[test]
fn a_malformed_yaml_body_gets_422_with_the_parser_error() {
    let agent = TestAgent::start_default();
    for (content_type, body) in [
        (
            Some("application/yaml"),
            "commands: [ {directive: \"echo\"\n",
        ),
        (None, "commands: [ {directive: \"echo\"\n"),
        (Some("application/yaml"), "# nothing yet\n"),
    ] {
        let reply = agent.submit_text("malformed", content_type, body.as_bytes());
        assert_eq!(reply.status, 422, "{body:?}: {}", reply.text());
        assert!(
            reply.message().starts_with("invalid job request: "),
            "{}",
            reply.text()
        );
    }
}

#[test]
fn plain_http_to_the_port_gets_a_plain_400_that_says_https() {
    let agent = TestAgent::start_default();
    for request in [
        "GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\njob_id: x".to_owned(),
    ] {
        let mut stream = agent.tcp_stream();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("a plain-HTTP answer, then the close");
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with(
                "\r\n\r\nThis port speaks HTTPS, not plain HTTP: use an https:// URL \
                 (with curl, add -k for the agent's self-signed certificate).\n"
            ),
            "{answer}"
        );
    }
    // TLS clients are served as before.
    agent.assert_responsive();
}
