//! Image pull credentials, private registries and docker in docker.

use super::*;

/// Pushes `agent-test/bash:1` to the registry under a unique name and removes
/// the local tag, so that only a pull with credentials can bring it back.
pub(super) fn push_private_image(registry: &Registry) -> String {
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

pub(super) fn generic_docker(registry: &Registry, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DOCKER_CREDENTIAL_TYPE", "GenericDocker".to_owned()),
        ("DOCKER_URL", registry.addr.clone()),
        ("DOCKER_USERNAME", REGISTRY_USER.to_owned()),
        ("DOCKER_PASSWORD", password.to_owned()),
    ]
}

pub(super) fn with_credentials(job: ComposeJob, vars: &[(&'static str, String)]) -> ComposeJob {
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
