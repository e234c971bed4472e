//! Integration tests of the docker-compose executor (docs/protocol.md §9, §3.3, §10,
//! and the fixes of §12 items 1, 12–16 and 20) on the real Docker engine:
//! nothing is mocked. Jobs run with `agent run --json` (one job, checked by
//! `support`) or `agent serve` (stops, concurrency, metrics). Every test
//! checks that no process of its jobs and nothing of their compose projects
//! (containers, networks, volumes) is left.
//!
//! Each test starts with the gate `docker::ready()`: without Docker, a
//! compose tool or the test images it is skipped (it fails instead under
//! `AGENT_REQUIRE_DOCKER=1`). Images are never pulled from the internet:
//! `tests/docker/images.sh` builds them locally, and private images come from
//! a local registry (`tests/docker/registry.sh`).

use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::docker::{
    self, compose_started, has_no_docker_credentials, run_bounded, unique_tag,
    wait_for_compose_job, ComposeJob, Container, DockerLogin, ImageTag, ProjectWatch, Registry,
    BASH_IMAGE, COMPOSE_JOB_TIMEOUT, CREDENTIALS_STEP, DIND_IMAGE, GIT_IMAGE, NOBASH_IMAGE,
    PULL_STEP, REGISTRY_PASSWORD, REGISTRY_USER, START_STEP,
};
use crate::support::server::{poll_until, TestAgent};
use crate::support::{
    assert_no_job_processes, env_export, job_processes, log_of, no_files, result_export, step,
    token_for, Ev, Outcome, Sandbox, FILES_STEP,
};

mod checkout;
mod cleanup;
mod credentials;
mod echo;
mod gate;
mod metrics;

use credentials::{generic_docker, push_private_image, with_credentials};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&hmac_sha256::Hash::hash(bytes))
}

/// The expected log of a compose job that started: pull, start, the env
/// export of `env_names`, then `steps`.
fn started_log(env_names: &[&str], files: Vec<Ev>, steps: Vec<Vec<Ev>>, result: &str) -> Vec<Ev> {
    let mut all = vec![compose_started(), env_export(env_names), files];
    all.extend(steps);
    log_of(all, result)
}

/// The `Injecting Files` step for files given as `(path, mode)`.
fn files_step(files: &[(&str, &str)]) -> Vec<Ev> {
    let output: String = files
        .iter()
        .map(|(path, mode)| format!("Injecting {path} with file mode {mode}\n"))
        .collect();
    step(FILES_STEP, &output, 0)
}

fn assert_log(job: &ComposeJob, events: &[Value], expected: Vec<Ev>) {
    let got = job.normalize(events);
    assert_eq!(
        got,
        expected,
        "the log of job {} differs; raw events:\n{}",
        job.job_id(),
        log_text(events)
    );
}

/// The whole log as text, one event a line.
fn log_text(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loop, for a job's command, that retries `attempt` (a command list)
/// every 0.1 s until it succeeds, at most 60 s: services start on their own
/// time, and a job's waits are bounded too.
fn retry(attempt: &str) -> String {
    format!("for i in $(seq 1 600); do {attempt} && break; sleep 0.1; done")
}

// ---------------------------------------------------------------------------
// Commands in main

#[test]
fn commands_share_one_bash_session_in_main() {
    if !docker::ready() {
        return;
    }
    let job = ComposeJob::new("session", Container::new("main", BASH_IMAGE))
        .command("pwd; echo hello")
        .command("[ -t 1 ] && echo stdout is a terminal")
        .command("cd /tmp && mkdir -p work && cd work")
        .command("COUNT=41; greet() { echo \"hi $1\"; }")
        .command("COUNT=$((COUNT + 1)); echo \"$PWD $COUNT\"; greet there")
        .command("cat")
        .command("exit 7")
        .command("echo never")
        .on_fail("echo on-fail");
    let outcome = job.run();
    // The session ended with `exit 7`: the compose v1 client then prints the
    // container's status ("7") as a last line, which is not job output.
    assert_log(
        &job,
        &outcome.events,
        started_log(
            &[],
            no_files(),
            vec![
                step("pwd; echo hello", "/root\nhello\n", 0),
                step(
                    "[ -t 1 ] && echo stdout is a terminal",
                    "stdout is a terminal\n",
                    0,
                ),
                step("cd /tmp && mkdir -p work && cd work", "", 0),
                step("COUNT=41; greet() { echo \"hi $1\"; }", "", 0),
                step(
                    "COUNT=$((COUNT + 1)); echo \"$PWD $COUNT\"; greet there",
                    "/tmp/work 42\nhi there\n",
                    0,
                ),
                step("cat", "", 0),
                step("exit 7", "", 7),
                result_export(1),
                step("echo on-fail", "", 1),
            ],
            "failed",
        ),
    );
}

#[test]
fn services_are_reached_from_main_by_name() {
    if !docker::ready() {
        return;
    }
    let nc_server = "sh -c 'while true; do echo pong-from-db | nc -l -p 7000; done'";
    let http_server = "sh -c 'mkdir -p /www && echo page-from-web > /www/index.html \
                       && exec httpd -f -p 8080 -h /www'";
    let ask_db = format!(
        "{}; echo \"db says: $reply\"",
        retry("reply=$(nc db 7000 </dev/null 2>/dev/null) && [ -n \"$reply\" ]")
    );
    let ask_web = format!(
        "{}; echo \"web says: $page\"",
        retry("page=$(wget -qO- http://web:8080/index.html 2>/dev/null)")
    );
    let job = ComposeJob::new("dns", Container::new("main", BASH_IMAGE))
        .service(Container::new("db", BASH_IMAGE).command(nc_server))
        .service(Container::new("web", BASH_IMAGE).command(http_server))
        .command(&ask_db)
        .command(&ask_web);
    let outcome = job.run();
    assert_log(
        &job,
        &outcome.events,
        started_log(
            &[],
            no_files(),
            vec![
                step(&ask_db, "db says: pong-from-db\n", 0),
                step(&ask_web, "web says: page-from-web\n", 0),
                result_export(0),
            ],
            "passed",
        ),
    );
}

// ---------------------------------------------------------------------------
// Checkout and tests

// ---------------------------------------------------------------------------
// Env vars, files, users

/// Values that break a compose file written by string concatenation, or an
/// env file written without quoting, or compose's `$` interpolation.
const HOSTILE_VALUES: &[(&str, &str)] = &[
    (
        "MULTILINE",
        "first line\nsecond: line # not a comment\n\nlast",
    ),
    ("QUOTES", "it's \"double\" and 'single' and `id`"),
    ("DOLLARS", "$HOME ${HOME} $$ $(id -u) \\$ 100$"),
    ("COLON_SPACE", "key: value"),
    ("HASH", "# not a comment"),
    ("DASH", "- not a list item"),
    ("BANG", "!tag"),
    ("AMPERSAND", "&anchor"),
    ("STAR", "*alias"),
    ("BRACES", "{a: b} [1, 2]"),
    ("PIPE", "| > % @ `"),
    ("BACKSLASHES", "C:\\temp\\new \\n \\t \\\\"),
    ("OCTAL", "0777"),
    ("BOOLEAN", "yes"),
    ("NULL", "null"),
    ("EMPTY", ""),
    ("SPACES", "  padded  "),
    ("TRAILING_NEWLINE", "ends with a newline\n"),
    ("CARRIAGE_RETURN", "a\rb\r\n"),
    ("EQUALS", "a=b=c"),
    ("TAB", "col1\tcol2"),
    ("UNICODE", "héllo wörld ✓ 日本"),
];

/// A shell snippet printing `<NAME>=<set>:<hex of the value>` for each
/// name (`set` is empty when the variable is unset). `sh` and bash both run
/// it; the value never reaches the terminal, only its hex does. It has no
/// single quote, so it fits in a single-quoted `sh -c '...'`.
fn dump_vars(prefix: &str) -> String {
    HOSTILE_VALUES
        .iter()
        .map(|(name, _)| {
            format!(
                "printf \"{prefix}{name}=%s:\" \"${{{prefix}{name}+set}}\"; \
                 printf %s \"${prefix}{name}\" | od -An -v -tx1 | tr -d \" \\n\"; echo; "
            )
        })
        .collect()
}

fn expected_dump(prefix: &str) -> String {
    HOSTILE_VALUES
        .iter()
        .map(|(name, value)| format!("{prefix}{name}=set:{}\n", hex(value.as_bytes())))
        .collect()
}

/// `(path as given, mode, content, where it lands in main as root)`.
fn injected_files() -> Vec<(&'static str, &'static str, Vec<u8>, &'static str)> {
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(3 * 256 + 7).collect();
    vec![
        (
            "/etc/agent-test/nested/abs.conf",
            "0600",
            b"absolute: yes\n# comment\n".to_vec(),
            "/etc/agent-test/nested/abs.conf",
        ),
        (
            "~/tilde/dir/home.sh",
            "0755",
            b"#!/bin/sh\necho from home\n".to_vec(),
            "/root/tilde/dir/home.sh",
        ),
        (
            "relative/dir/all-bytes.bin",
            "644",
            all_bytes,
            "/root/relative/dir/all-bytes.bin",
        ),
        (
            "spaced dir/it's a file.txt",
            "0640",
            b"no trailing newline".to_vec(),
            "/root/spaced dir/it's a file.txt",
        ),
        ("~/.empty", "0400", Vec::new(), "/root/.empty"),
    ]
}

#[test]
fn env_vars_and_files_arrive_byte_exact() {
    if !docker::ready() {
        return;
    }
    // The side container writes its env as hex into a file that busybox
    // httpd serves; its command has `$` that compose must not interpolate.
    let side_command = format!(
        "sh -c 'mkdir -p /www && {{ {}}} > /www/env && exec httpd -f -p 8080 -h /www'",
        dump_vars("C_")
    );
    let mut main = Container::new("main", BASH_IMAGE);
    let mut side = Container::new("side", BASH_IMAGE).command(&side_command);
    for (name, value) in HOSTILE_VALUES {
        main = main.env(&format!("C_{name}"), value);
        side = side.env(&format!("C_{name}"), value);
    }
    let mut job = ComposeJob::new("bytes", main).service(side);
    for (name, value) in HOSTILE_VALUES {
        job = job.env(name, value);
    }
    let files = injected_files();
    for (path, mode, content, _) in &files {
        job = job.file(path, content, mode);
    }
    let dump_job_env = dump_vars("");
    let dump_main_env = dump_vars("C_");
    let login_shell = "bash --login -c 'printf %s \"$MULTILINE\"' | od -An -v -tx1 | tr -d ' \\n'";
    let fetch_side = format!(
        "{}; cat /tmp/side.env",
        retry("wget -qO /tmp/side.env http://side:8080/env 2>/dev/null")
    );
    let check_files: String = files
        .iter()
        .map(|(_, _, _, at)| {
            let quoted = format!("'{}'", at.replace('\'', "'\\''"));
            format!(
                "printf '%s %s ' \"$(stat -c %a {quoted})\" \"$(stat -c %U {quoted})\"; \
                 sha256sum < {quoted}; "
            )
        })
        .collect();
    let job = job
        .command(&dump_job_env)
        .command(login_shell)
        .command(&dump_main_env)
        .command(&fetch_side)
        .command(&check_files);
    let outcome = job.run();

    let mut names: Vec<&str> = HOSTILE_VALUES.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let modes: Vec<(&str, &str)> = files.iter().map(|(p, m, _, _)| (*p, *m)).collect();
    let expected_files: String = files
        .iter()
        .map(|(_, mode, content, _)| {
            let mode = mode.trim_start_matches('0');
            format!("{mode} root {}  -\n", sha256_hex(content))
        })
        .collect();
    assert_log(
        &job,
        &outcome.events,
        started_log(
            &names,
            files_step(&modes),
            vec![
                step(&dump_job_env, &expected_dump(""), 0),
                step(
                    login_shell,
                    &hex(b"first line\nsecond: line # not a comment\n\nlast"),
                    0,
                ),
                step(&dump_main_env, &expected_dump("C_"), 0),
                step(&fetch_side, &expected_dump("C_"), 0),
                step(&check_files, &expected_files, 0),
                result_export(0),
            ],
            "passed",
        ),
    );
}

#[test]
fn container_user_runs_the_session_and_owns_the_files() {
    if !docker::ready() {
        return;
    }
    let job = ComposeJob::new("user", Container::new("main", BASH_IMAGE).user("runner"))
        .env("JOB_VAR", "job value with $dollar")
        .file("~/from-job/a.txt", "tilde file\n", "0600")
        .file("rel.txt", "relative file\n", "0644")
        .file("/tmp/abs.txt", "absolute file\n", "0664")
        .command("id -u; id -un; echo ~; pwd")
        .command("printf '%s\\n' \"$JOB_VAR\"")
        .command("bash --login -c 'printf \"%s\\n\" \"$JOB_VAR\"'")
        .command("stat -c '%a %U %n' ~/from-job/a.txt ~/rel.txt /tmp/abs.txt")
        .command("cat ~/from-job/a.txt rel.txt /tmp/abs.txt");
    let outcome = job.run();
    assert_log(
        &job,
        &outcome.events,
        started_log(
            &["JOB_VAR"],
            files_step(&[
                ("~/from-job/a.txt", "0600"),
                ("rel.txt", "0644"),
                ("/tmp/abs.txt", "0664"),
            ]),
            vec![
                step(
                    "id -u; id -un; echo ~; pwd",
                    "1000\nrunner\n/home/runner\n/home/runner\n",
                    0,
                ),
                step("printf '%s\\n' \"$JOB_VAR\"", "job value with $dollar\n", 0),
                step(
                    "bash --login -c 'printf \"%s\\n\" \"$JOB_VAR\"'",
                    "job value with $dollar\n",
                    0,
                ),
                step(
                    "stat -c '%a %U %n' ~/from-job/a.txt ~/rel.txt /tmp/abs.txt",
                    "600 runner /home/runner/from-job/a.txt\n\
                     644 runner /home/runner/rel.txt\n\
                     664 runner /tmp/abs.txt\n",
                    0,
                ),
                step(
                    "cat ~/from-job/a.txt rel.txt /tmp/abs.txt",
                    "tilde file\nrelative file\nabsolute file\n",
                    0,
                ),
                result_export(0),
            ],
            "passed",
        ),
    );
}

#[test]
fn container_command_entrypoint_and_user_are_honoured() {
    if !docker::ready() {
        return;
    }
    // Main's entrypoint wraps the session's bash (and the pull step's
    // `true`); the side container's entrypoint and command make a server
    // that runs as `runner`, with a `$` compose must leave alone.
    let main = Container::new("main", BASH_IMAGE).entrypoint("env FROM_ENTRYPOINT=main-entrypoint");
    let side = Container::new("side", BASH_IMAGE)
        .user("runner")
        .entrypoint("sh -c")
        .command(
            "'mkdir -p /tmp/www && id -un > /tmp/www/user \
             && printf \"%s\\n\" \"$GREETING\" > /tmp/www/greeting \
             && exec httpd -f -p 8080 -h /tmp/www'",
        )
        .env("GREETING", "hello $USER from side");
    let fetch = format!(
        "{}; cat /tmp/user /tmp/greeting",
        retry(
            "wget -qO /tmp/user http://side:8080/user 2>/dev/null \
             && wget -qO /tmp/greeting http://side:8080/greeting 2>/dev/null"
        )
    );
    let job = ComposeJob::new("entrypoint", main)
        .service(side)
        .command("echo \"$FROM_ENTRYPOINT\"; id -un")
        .command(&fetch);
    let outcome = job.run();
    assert_log(
        &job,
        &outcome.events,
        started_log(
            &[],
            no_files(),
            vec![
                step(
                    "echo \"$FROM_ENTRYPOINT\"; id -un",
                    "main-entrypoint\nroot\n",
                    0,
                ),
                step(&fetch, "runner\nhello $USER from side\n", 0),
                result_export(0),
            ],
            "passed",
        ),
    );
}

#[test]
fn failing_host_setup_command_is_explained_and_nothing_else_runs() {
    if !docker::ready() {
        return;
    }
    let sandbox = Sandbox::new();
    let ran = sandbox.root().join("first-setup-ran");
    let never = sandbox.root().join("third-setup-ran");
    let failing = "echo preparing the host; exit 3";
    let job = ComposeJob::new("hostsetup", Container::new("main", BASH_IMAGE))
        .host_setup(&format!("touch '{}'", ran.display()))
        .host_setup(failing)
        .host_setup(&format!("touch '{}'", never.display()))
        .command("echo never");
    let outcome = job.run_in(&sandbox);
    assert!(ran.exists(), "the first host setup command did not run");
    assert!(
        !never.exists(),
        "a host setup command ran after the failing one"
    );
    // The log is the reference's: nothing between `job_started` and
    // `job_finished`; the remark (stderr with `--json`) explains.
    assert_log(&job, &outcome.events, log_of(vec![], "failed"));
    let remark = format!(
        "agent: The host setup command `{failing}` failed with exit status 3; \
         the job did not start. Its output:\npreparing the host\n"
    );
    assert!(
        outcome.stderr.contains(&remark),
        "the remark does not explain the failure:\n{}",
        outcome.stderr
    );
}

/// A directory of links to the programs a compose job needs on the host,
/// without the compose tool (and, unless `with_docker`, without docker).
fn path_without_compose(dir: &Path, with_docker: bool) -> String {
    let mut programs = vec!["bash", "sh", "env", "cat", "ls", "mkdir", "rm", "sleep"];
    if with_docker {
        programs.push("docker");
    }
    for program in programs {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{program} is not on PATH"));
        std::os::unix::fs::symlink(&found, dir.join(program)).expect("link a program");
    }
    dir.display().to_string()
}

#[test]
fn missing_compose_tool_is_explained_and_nothing_else_runs() {
    if !docker::ready() {
        return;
    }
    thread::scope(|s| {
        for with_docker in [true, false] {
            s.spawn(move || {
                let sandbox = Sandbox::new();
                let bin = sandbox.root().join("bin");
                fs::create_dir(&bin).expect("create bin");
                let path = path_without_compose(&bin, with_docker);
                let name = if with_docker { "nocompose" } else { "nodocker" };
                let job =
                    ComposeJob::new(name, Container::new("main", BASH_IMAGE)).command("echo never");
                let project = ProjectWatch::new(&job.project_prefix());
                let (events, status, stderr) =
                    docker::run_with_env(&sandbox, &job, &[("PATH", &path)]);
                project.assert_gone();
                assert_eq!(status.code(), Some(1), "the agent's exit status");
                // The reference's log, and a remark naming both tools.
                assert_eq!(
                    crate::support::normalize(&events),
                    [Ev::JobStarted, Ev::JobFinished("failed".into())]
                );
                assert!(
                    stderr
                        .contains("agent: Neither `docker compose` (v2) nor `docker-compose` (v1)"),
                    "no remark naming both compose tools:\n{stderr}"
                );
            });
        }
    });
}

#[test]
fn missing_image_fails_the_pull_step() {
    if !docker::ready() {
        return;
    }
    let image = format!("agent-test/no-such-image:{}", unique_tag("missing"));
    let job = ComposeJob::new("noimage", Container::new("main", &image)).command("echo never");
    let outcome = job.run();
    let pull = outcome.step(PULL_STEP);
    let text = pull.output();
    assert!(
        text.contains("Pulling main") && text.to_lowercase().contains("error"),
        "the pull step does not say that main's image could not be pulled: {:#?}",
        pull.outputs
    );
    assert_log(
        &job,
        &outcome.events,
        log_of(vec![step(PULL_STEP, docker::PULL_OUTPUT, 1)], "failed"),
    );
}

/// The start step failed with an explanation after the prescribed lines
/// (§9.2 step 3), nothing of the session's initialisation in it, and the
/// job failed right there; returns the step's output.
fn assert_start_failed(job: &ComposeJob, outcome: &Outcome) -> String {
    const LINES: &str = "Starting a new bash session.\nFailed to start the docker image\n";
    let start = outcome.step(START_STEP);
    let text = start.output();
    assert!(
        text.starts_with(LINES) && text.len() > LINES.len(),
        "the start step does not explain the failure: {:#?}",
        start.outputs
    );
    assert_no_initialisation(&text);
    assert_log(
        job,
        &outcome.events,
        log_of(
            vec![
                step(PULL_STEP, docker::PULL_OUTPUT, 0),
                step(START_STEP, &text, 1),
            ],
            "failed",
        ),
    );
    text
}

/// §4: nothing of the session's initialisation (the agent's own setup line,
/// which the container's terminal echoes before `stty -echo` has run)
/// reaches the job log.
fn assert_no_initialisation(text: &str) {
    assert!(
        !text.contains("stty -echo") && !text.contains("PROMPT_COMMAND"),
        "the session's initialisation is in the job log: {text:?}"
    );
}

#[test]
fn image_without_bash_fails_the_start_step() {
    if !docker::ready() {
        return;
    }
    let job = ComposeJob::new("nobash", Container::new("main", NOBASH_IMAGE)).command("echo never");
    let outcome = job.run();
    let text = assert_start_failed(&job, &outcome);
    assert!(
        text.contains("bash"),
        "the reason does not name bash: {text:?}"
    );
}

#[test]
fn main_dying_before_the_session_is_ready_fails_the_start_step() {
    if !docker::ready() {
        return;
    }
    // The entrypoint lets the pull step's `true` through and kills the
    // session's bash at once (§12 item 15).
    let main = Container::new("main", BASH_IMAGE)
        .entrypoint("sh -c '[ \"$0\" = true ] && exit 0; echo dying before bash; exit 3'");
    let job = ComposeJob::new("dying", main).command("echo never");
    let outcome = job.run();
    let text = assert_start_failed(&job, &outcome);
    assert!(
        text.contains("dying before bash"),
        "the start step does not show what main printed: {text:?}"
    );
}

// ---------------------------------------------------------------------------
// The pull step's output

#[test]
fn pull_output_is_logged_line_by_line() {
    if !docker::ready() {
        return;
    }
    // Main's image must be pulled (from the private registry) and two
    // services started: the step prints the pull's progress lines and the
    // compose lines of the network and the containers.
    let registry = Registry::start();
    let image = push_private_image(&registry);
    let _pulled = ImageTag(image.clone());
    let job = with_credentials(
        ComposeJob::new("pull-lines", Container::new("main", &image)),
        &generic_docker(&registry, REGISTRY_PASSWORD),
    )
    .service(Container::new("db", BASH_IMAGE).command("sleep 1000"))
    .service(Container::new("cache", BASH_IMAGE).command("sleep 1000"))
    .command("true");
    let outcome = job.run();
    let pull = outcome.step(PULL_STEP);
    assert_eq!(pull.exit_code, 0, "{:#?}", pull.outputs);
    docker::check_pull_lines(&pull.outputs, true, &job.project_prefix());
    if docker::compose_tool() == docker::ComposeTool::Standalone {
        let words = |line: &String| line.split_whitespace().collect::<Vec<_>>().join(" ");
        let lines: Vec<String> = pull.outputs.iter().map(words).collect();
        let network = lines
            .iter()
            .find_map(|l| l.strip_prefix("Creating network \""))
            .and_then(|rest| rest.strip_suffix("_default\" with the default driver"))
            .unwrap_or_else(|| panic!("no line creates the network: {lines:#?}"));
        assert!(network.starts_with(&job.project_prefix()), "{network}");
        for done in [
            "Pulling main ... done".to_owned(),
            format!("Creating {network}_db_1 ... done"),
            format!("Creating {network}_cache_1 ... done"),
        ] {
            assert!(lines.contains(&done), "no line {done:?} in {lines:#?}");
        }
    }
    assert_log(
        &job,
        &outcome.events,
        log_of(
            vec![
                step(
                    CREDENTIALS_STEP,
                    &outcome.step(CREDENTIALS_STEP).output(),
                    0,
                ),
                compose_started(),
                env_export(&[]),
                no_files(),
                step("true", "", 0),
                result_export(0),
            ],
            "passed",
        ),
    );
}
