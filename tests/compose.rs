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

/// `git` on the host, with no user or system configuration.
fn git(dir: &Path, args: &[&str]) {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Agent Test", "-c", "user.email=agent@test"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    run_bounded(command, b"", Duration::from_secs(60)).ok(&format!("git {args:?}"));
}

/// A repository with a test script and two commits, as a git bundle. The
/// script fails when the second commit sets the version to `broken`.
fn repository_bundle(version: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a repository directory");
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).expect("create the repository");
    git(&repo, &["init", "-q", "-b", "main"]);
    let script = "#!/usr/bin/env bash\n\
                  echo \"test_checkout ... ok\"\n\
                  if [ \"$(cat VERSION)\" = broken ]; then\n\
                  \x20 echo \"test_version ... FAILED\"; echo \"1 of 2 tests failed\"; exit 1\n\
                  fi\n\
                  echo \"test_version ... ok\"; echo \"2 tests passed\"\n";
    fs::write(repo.join("test.sh"), script).expect("write test.sh");
    fs::set_permissions(repo.join("test.sh"), fs::Permissions::from_mode(0o755))
        .expect("chmod test.sh");
    git(&repo, &["add", "test.sh"]);
    git(&repo, &["commit", "-q", "-m", "Add the test script"]);
    fs::write(repo.join("VERSION"), version).expect("write VERSION");
    git(&repo, &["add", "VERSION"]);
    git(&repo, &["commit", "-q", "-m", "Set the version"]);
    let bundle = dir.path().join("repo.bundle");
    git(
        &repo,
        &[
            "bundle",
            "create",
            "-q",
            &bundle.to_string_lossy(),
            "HEAD",
            "main",
        ],
    );
    fs::read(&bundle).expect("read the bundle")
}

/// The job checks the repository out and runs its tests. The repository
/// reaches main as a git bundle injected with `files`: containers on the
/// compose network cannot reach a `git daemon` on the host's 127.0.0.1, and
/// a bundle carries the same history a clone would, with no server.
fn checkout_job(name: &str, version: &str) -> ComposeJob {
    ComposeJob::new(name, Container::new("main", GIT_IMAGE))
        .file("repo.bundle", repository_bundle(version), "0644")
        .command("git clone -q repo.bundle app")
        .command("cd app")
        .command("git --no-pager log --format=%s")
        .command("./test.sh")
        .on_pass("echo \"result: $SEMAPHORE_JOB_RESULT\"")
        .on_fail("echo \"result: $SEMAPHORE_JOB_RESULT\"")
}

fn expected_checkout_log(test_output: &str, status: i64, result: &str) -> Vec<Ev> {
    started_log(
        &[],
        files_step(&[("repo.bundle", "0644")]),
        vec![
            step("git clone -q repo.bundle app", "", 0),
            step("cd app", "", 0),
            step(
                "git --no-pager log --format=%s",
                "Set the version\nAdd the test script\n",
                0,
            ),
            step("./test.sh", test_output, status),
            result_export(0),
            step(
                "echo \"result: $SEMAPHORE_JOB_RESULT\"",
                &format!("result: {result}\n"),
                0,
            ),
        ],
        result,
    )
}

#[test]
fn checkout_and_tests_decide_the_result() {
    if !docker::ready() {
        return;
    }
    let passing = checkout_job("git-pass", "1.0");
    let failing = checkout_job("git-fail", "broken");
    let (passed, failed) = thread::scope(|s| {
        let passed = s.spawn(|| passing.run());
        let failed = s.spawn(|| failing.run());
        (
            passed.join().expect("the passing job"),
            failed.join().expect("the failing job"),
        )
    });
    assert_log(
        &passing,
        &passed.events,
        expected_checkout_log(
            "test_checkout ... ok\ntest_version ... ok\n2 tests passed\n",
            0,
            "passed",
        ),
    );
    assert_log(
        &failing,
        &failed.events,
        expected_checkout_log(
            "test_checkout ... ok\ntest_version ... FAILED\n1 of 2 tests failed\n",
            1,
            "failed",
        ),
    );
}

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

// ---------------------------------------------------------------------------
// Private images

/// Pushes `agent-test/bash:1` to the registry under a unique name and removes
/// the local tag, so that only a pull with credentials can bring it back.
fn push_private_image(registry: &Registry) -> String {
    let image = format!(
        "{}/agent-test/private:{}",
        registry.addr,
        unique_tag("private")
    );
    let login = DockerLogin::new(registry);
    // Removes the local tag once pushed, or if the push fails.
    let local_tag = ImageTag(image.clone());
    login.docker(&["tag", BASH_IMAGE, &image]).ok("docker tag");
    login.docker(&["push", &image]).ok("docker push");
    drop(local_tag);
    // Without credentials the registry refuses it.
    let anonymous = tempfile::tempdir().expect("an empty DOCKER_CONFIG");
    let pull = docker::docker_with_config(anonymous.path(), &["pull", &image], b"");
    assert!(
        !pull.success(),
        "{image} was pulled without credentials:\n{}",
        pull.stdout
    );
    image
}

/// Fails the test if a file under `root` still holds the docker login of
/// `user:password` (the `auth` a `config.json` keeps), wherever the agent
/// may have put it: HOME, the data directory, TMPDIR.
fn assert_no_login_left(root: &Path, user: &str, password: &str) {
    let auth = crate::support::b64(format!("{user}:{password}"));
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() => {
                    let bytes = fs::read(&path).unwrap_or_default();
                    assert!(
                        !bytes.windows(auth.len()).any(|w| w == auth.as_bytes()),
                        "{} still holds the registry login of the job",
                        path.display()
                    );
                }
                _ => {}
            }
        }
    }
}

fn generic_docker(registry: &Registry, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DOCKER_CREDENTIAL_TYPE", "GenericDocker".to_owned()),
        ("DOCKER_URL", registry.addr.clone()),
        ("DOCKER_USERNAME", REGISTRY_USER.to_owned()),
        ("DOCKER_PASSWORD", password.to_owned()),
    ]
}

fn with_credentials(job: ComposeJob, vars: &[(&'static str, String)]) -> ComposeJob {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    job.credentials(&vars)
}

/// The start of the credentials step's output for one GenericDocker entry:
/// what is being set up, then the login command with `$VAR`s unexpanded.
fn check_login_preamble(outputs: &[String]) {
    assert_eq!(
        outputs.first().map(String::as_str),
        Some("Setting up credentials for Docker\n"),
        "outputs: {outputs:#?}"
    );
    let command = outputs.get(1).map(String::as_str).unwrap_or_default();
    for needle in [
        "docker login",
        "$DOCKER_USERNAME",
        "$DOCKER_PASSWORD",
        "$DOCKER_URL",
    ] {
        assert!(
            command.contains(needle) && command.ends_with('\n'),
            "the login command line {command:?} lacks {needle:?}"
        );
    }
}

#[test]
fn private_image_is_pulled_with_generic_docker_credentials() {
    if !docker::ready() {
        return;
    }
    let registry = Registry::start();
    let image = push_private_image(&registry);
    let _pulled = ImageTag(image.clone());
    let job = with_credentials(
        ComposeJob::new("private", Container::new("main", &image)),
        &generic_docker(&registry, REGISTRY_PASSWORD),
    )
    .command("echo running in the private image; grep -c runner /etc/passwd");
    let sandbox = Sandbox::new();
    let outcome = job.run_in(&sandbox);

    let login = outcome.step(CREDENTIALS_STEP);
    check_login_preamble(&login.outputs);
    assert_eq!(login.exit_code, 0, "login outputs: {:#?}", login.outputs);
    assert!(
        login.output().contains("Login Succeeded\n"),
        "{:#?}",
        login.outputs
    );
    // The image was pulled, and its last line is there (§12 item 13).
    let pull = outcome.step(PULL_STEP);
    assert_eq!(
        pull.outputs
            .last()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["Pulling", "main", "...", "done"]),
        "the pull step does not end with main's pull: {:#?}",
        pull.outputs
    );
    let mut expected = vec![
        Ev::JobStarted,
        Ev::CmdStarted(CREDENTIALS_STEP.into()),
        Ev::Output(login.output()),
        Ev::CmdFinished(CREDENTIALS_STEP.into(), 0),
    ];
    expected.extend(
        started_log(
            &[],
            no_files(),
            vec![
                step(
                    "echo running in the private image; grep -c runner /etc/passwd",
                    "running in the private image\n1\n",
                    0,
                ),
                result_export(0),
            ],
            "passed",
        )
        .into_iter()
        .skip(1),
    );
    assert_log(&job, &outcome.events, expected);
    assert!(
        !log_text(&outcome.events).contains(REGISTRY_PASSWORD),
        "the password is in the log"
    );
    if let Err(problem) = has_no_docker_credentials(&sandbox.home()) {
        panic!("the login outlived the job: {problem}");
    }
    assert_no_login_left(sandbox.root(), REGISTRY_USER, REGISTRY_PASSWORD);
}

#[test]
fn wrong_pull_credentials_fail_the_login_step_and_nothing_else_runs() {
    if !docker::ready() {
        return;
    }
    let registry = Registry::start();
    let image = format!(
        "{}/agent-test/private:{}",
        registry.addr,
        unique_tag("never")
    );
    // A later entry that would log in must not hide the failure (§12 item 12).
    let job = with_credentials(
        with_credentials(
            ComposeJob::new("badlogin", Container::new("main", &image)),
            &generic_docker(&registry, "wrong-password"),
        ),
        &generic_docker(&registry, REGISTRY_PASSWORD),
    )
    .command("echo never");
    let sandbox = Sandbox::new();
    let outcome = job.run_in(&sandbox);

    let login = outcome.step(CREDENTIALS_STEP);
    check_login_preamble(&login.outputs);
    let text = login.output();
    assert!(
        text.to_lowercase().contains("unauthorized"),
        "the login step does not say why it failed:\n{text}"
    );
    assert_eq!(
        text.matches("Setting up credentials for").count(),
        1,
        "a login was attempted after the failed one:\n{text}"
    );
    assert_log(
        &job,
        &outcome.events,
        log_of(vec![step(CREDENTIALS_STEP, &text, 1)], "failed"),
    );
    assert!(
        !log_text(&outcome.events).contains("wrong-password")
            && !log_text(&outcome.events).contains(REGISTRY_PASSWORD),
        "a password is in the log"
    );
    if let Err(problem) = has_no_docker_credentials(&sandbox.home()) {
        panic!("the login outlived the job: {problem}");
    }
    assert_no_login_left(sandbox.root(), REGISTRY_USER, REGISTRY_PASSWORD);
}

#[test]
fn unresolvable_credential_types_fail_the_login_step() {
    if !docker::ready() {
        return;
    }
    let cases = [
        (
            "nocredtype",
            vec![("DOCKER_USERNAME", "someone")],
            "Failed to resolve docker login strategy: DOCKER_CREDENTIAL_TYPE not set\n",
        ),
        (
            "quay",
            vec![("DOCKER_CREDENTIAL_TYPE", "Quay")],
            "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: 'Quay'\n",
        ),
    ];
    thread::scope(|s| {
        for (name, vars, message) in &cases {
            s.spawn(move || {
                let job = ComposeJob::new(name, Container::new("main", BASH_IMAGE))
                    .credentials(vars)
                    .command("echo never");
                let outcome = job.run();
                assert_log(
                    &job,
                    &outcome.events,
                    log_of(vec![step(CREDENTIALS_STEP, message, 1)], "failed"),
                );
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Docker in docker

#[test]
fn docker_in_docker_builds_and_pushes_an_image() {
    if !docker::ready() {
        return;
    }
    let registry = Registry::start();
    let tag = unique_tag("dind");
    let image = format!("{}/agent-test/dind-built:{tag}", registry.addr);
    // The job drives the host's engine: what it builds is the host's to
    // remove.
    let _built = ImageTag(image.clone());
    let job = ComposeJob::new("dind", Container::new("main", DIND_IMAGE))
        .env("DOCKER_BUILDKIT", "0")
        .env("IMAGE", &image)
        .env("REGISTRY", &registry.addr)
        .env("REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        .file(
            "ctx/Dockerfile",
            format!("FROM {BASH_IMAGE}\nCOPY hello.txt /hello.txt\n"),
            "0644",
        )
        .file("ctx/hello.txt", "built inside a job\n", "0644");
    // Each command prints one word when it works, and the tool's output
    // (for the failure message) when it does not.
    let quietly = |command: &str, word: &str| {
        format!("out=$({command} 2>&1) && echo {word} || {{ echo \"$out\"; false; }}")
    };
    let commands = [
        quietly("docker build -t \"$IMAGE\" ctx", "built"),
        "docker run --rm \"$IMAGE\" cat /hello.txt".to_owned(),
        quietly(
            &format!(
                "printf '%s' \"$REGISTRY_PASSWORD\" | \
                 docker login -u {REGISTRY_USER} --password-stdin \"$REGISTRY\""
            ),
            "logged-in",
        ),
        quietly("docker push \"$IMAGE\"", "pushed"),
    ];
    let job = commands.iter().fold(job, |job, c| job.command(c));
    let outcome = job.run();
    let steps = outcome.steps();
    let tail: Vec<(String, String, i64)> = steps
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|s| (s.directive.clone(), s.output(), s.exit_code))
        .collect();
    let expected: Vec<(String, String, i64)> = [
        (commands[0].as_str(), "built\n"),
        (commands[1].as_str(), "built inside a job\n"),
        (commands[2].as_str(), "logged-in\n"),
        (commands[3].as_str(), "pushed\n"),
        (crate::support::ENV_STEP, "Exporting SEMAPHORE_JOB_RESULT\n"),
    ]
    .iter()
    .map(|(d, o)| (d.to_string(), o.to_string(), 0))
    .collect();
    assert_eq!(tail, expected, "the job's commands:\n{}", outcome.render());
    assert_eq!(outcome.result(), "passed");
    let (status, body) = registry.get("/v2/agent-test/dind-built/tags/list");
    assert_eq!(status, 200, "tags/list: {body}");
    let tags: Value = serde_json::from_str(&body).expect("a JSON tag list");
    assert_eq!(
        tags["tags"],
        serde_json::json!([tag]),
        "the pushed tag is not in the registry: {body}"
    );
}

// ---------------------------------------------------------------------------
// Failures before the session

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
    let setup = outcome.step(failing);
    assert!(
        setup.output().starts_with("preparing the host\n") && setup.output().len() > 20,
        "the failing setup command's output does not explain it: {:#?}",
        setup.outputs
    );
    assert_ne!(setup.exit_code, 0);
    assert_log(
        &job,
        &outcome.events,
        log_of(
            vec![step(failing, &setup.output(), setup.exit_code)],
            "failed",
        ),
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
                let (events, status) = docker::run_with_env(&sandbox, &job, &[("PATH", &path)]);
                project.assert_gone();
                assert_eq!(status.code(), Some(1), "the agent's exit status");
                let got = crate::support::normalize(&events);
                let explained = matches!(
                    got.as_slice(),
                    [
                        Ev::JobStarted,
                        Ev::CmdStarted(_),
                        Ev::Output(text),
                        Ev::CmdFinished(_, code),
                        Ev::JobFinished(result),
                    ] if text.contains("docker-compose")
                        && text.contains("docker compose")
                        && *code != 0
                        && result == "failed"
                );
                assert!(
                    explained,
                    "expected one failed step naming both compose tools, got {got:#?}"
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
            vec![step(
                &command,
                &format!("started\n{}", crate::support::API_STOP_LINE),
                1,
            )],
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

// ---------------------------------------------------------------------------
// StatsD

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
