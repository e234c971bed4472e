//! Integration tests of the SSH jump point (docs/protocol.md §8, §12 items 8 and 9,
//! §13.2): a real sshd reads the `authorized_keys` of the agent's HOME, and a
//! real `ssh` logs in with the job's key and runs
//! `bash /tmp/ssh_jump_point-<job_id>`, which must land in the running job:
//! its env vars, its current directory (shell executor) or its main
//! container (compose executor). After the job the key must no longer log in
//! and the agent user's files must be exactly as they were.
//!
//! Jobs run under `agent serve` (`TestAgent`), each test with its own HOME.
//! `/tmp/ssh_jump_point` is shared by every job on the machine (the latest
//! started one owns it) and tests run in parallel, so it is checked only
//! when it is provably this job's.

mod tools;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::docker::{self, BASH_IMAGE};
use crate::support::server::{poll_until, TestAgent, EVENT_TIMEOUT};
use crate::support::sshd::{self, run_bounded, shell_quote, ClientKey, Sshd, SSH_TIMEOUT};
use crate::support::{
    assert_no_job_processes, b64, env_export, job_processes, log_of, no_files, normalize,
    result_export, step, Ev, Job,
};

/// The jump point every job shares (§8); the latest started job owns it.
const LATEST_JUMP_POINT: &str = "/tmp/ssh_jump_point";
/// An env value a shell would mangle if anything interpreted it.
const MY_VALUE: &str = r#"two  spaces, a $DOLLAR sign, 'single' and "double" quotes"#;
/// A line of someone else's in `authorized_keys`, which must survive jobs.
const UNRELATED_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVucmVsYXRlZCBrZXkgb2YgYW5vdGhlciB1c2Vy someone@elsewhere";
/// The command that holds a job until the test stops it.
const SLEEP: &str = "sleep 600";
/// How long starting a compose job (pull step, containers, session) may take.
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(180);

/// `/tmp/ssh_jump_point-<job_id>`, with every character outside
/// `[A-Za-z0-9._-]` of the id replaced by `_` (§13.2).
fn jump_point_of(job_id: &str) -> String {
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{LATEST_JUMP_POINT}-{safe}")
}

/// The job request of `job` with these keys, each as b64 of one
/// authorized_keys line (§3.1).
fn with_keys(job: &Job, keys: &[&ClientKey]) -> Value {
    let mut value = job.to_value();
    value["ssh_public_keys"] = keys.iter().map(|k| json!(b64(&k.public_line))).collect();
    value
}

/// A file's bytes (as text) and permission bits (in octal, as `ls` users
/// read them), or `None` when it is absent.
type FileState = Option<(String, String)>;

fn file_state(path: &Path) -> FileState {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).expect("a text file"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => panic!("read {}: {err}", path.display()),
    };
    let mode = fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777;
    Some((text, format!("{mode:04o}")))
}

/// Writes `text` to `path` (making its directory) with exactly `mode`.
fn seed(path: &Path, text: &str, mode: u32) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
    fs::write(path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("set the mode");
}

/// The agent user's files the jump point touches, as they are now.
struct HomeFiles {
    authorized_keys: PathBuf,
    bash_profile: PathBuf,
    keys_before: FileState,
    profile_before: FileState,
}

impl HomeFiles {
    fn snapshot(home: &Path) -> HomeFiles {
        let authorized_keys = home.join(".ssh/authorized_keys");
        let bash_profile = home.join(".bash_profile");
        HomeFiles {
            keys_before: file_state(&authorized_keys),
            profile_before: file_state(&bash_profile),
            authorized_keys,
            bash_profile,
        }
    }

    /// `authorized_keys` holds what it held before, then these keys, one
    /// line each (§8: appended, plus `\n`).
    fn assert_keys_added(&self, keys: &[&ClientKey]) {
        let mut expected = self
            .keys_before
            .as_ref()
            .map(|(text, _)| text.clone())
            .unwrap_or_default();
        for key in keys {
            expected.push_str(&key.public_line);
            expected.push('\n');
        }
        let now = fs::read_to_string(&self.authorized_keys).unwrap_or_default();
        assert_eq!(
            now, expected,
            "authorized_keys while the job runs: the lines before it, then the job's keys"
        );
    }

    /// Both files are back to what they were, byte for byte (and mode).
    fn assert_restored(&self) {
        let profile = file_state(&self.bash_profile);
        assert_eq!(
            profile, self.profile_before,
            "~/.bash_profile (text, mode) after the job differs from before it"
        );
        let keys = file_state(&self.authorized_keys);
        assert_eq!(
            keys.as_ref().map(|(text, _)| text),
            self.keys_before.as_ref().map(|(text, _)| text),
            "the text of ~/.ssh/authorized_keys after the job differs from before it"
        );
        assert_eq!(
            keys, self.keys_before,
            "~/.ssh/authorized_keys (text, mode) after the job differs from before it"
        );
    }
}

/// The remote command that prints `$MY_VAR` and the current directory
/// through the jump point `script`.
fn var_and_pwd_through(script: &str) -> String {
    format!(
        "bash {} bash -c {}",
        shell_quote(script),
        shell_quote(r#"printf '%s\n' "$MY_VAR"; pwd"#)
    )
}

/// The remote command that prints `$MY_VAR` and the variable `second` (set
/// by the user's own profile) in a login shell of the agent user (HOME set
/// to the agent's): it reads the user's profile, and no job's env vars
/// (§8: they reach only the job's own jump point).
fn login_shell_vars(home: &Path, second: &str) -> String {
    format!(
        "env HOME={} bash --login -c {}",
        shell_quote(&home.to_string_lossy()),
        shell_quote(&format!(r#"printf '%s|%s\n' "$MY_VAR" "${second}""#))
    )
}

/// Asserts that `ssh` succeeded and printed exactly `expected`.
fn assert_prints(sshd: &Sshd, key: &ClientKey, remote: &str, expected: &str) {
    let out = sshd.ssh(key, &[remote]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), expected),
        "ssh {remote:?}: {out:#?}\nsshd log:\n{}",
        sshd.log()
    );
}

/// Asserts that the key no longer logs in: ssh fails (255) because the
/// server refused the key.
fn assert_key_refused(sshd: &Sshd, key: &ClientKey) {
    let out = sshd.ssh(key, &["echo logged in"]);
    assert!(
        out.code == Some(255) && out.stderr.contains("Permission denied (publickey"),
        "the job's key still logs in (or ssh failed otherwise) after the job: {out:#?}"
    );
}

/// The directory as the kernel names it (what `pwd` prints after a `cd` to
/// `/proc/<pid>/cwd`'s target).
fn real_path(path: &Path) -> String {
    fs::canonicalize(path)
        .unwrap_or_else(|err| panic!("canonicalize {}: {err}", path.display()))
        .to_string_lossy()
        .into_owned()
}

/// Waits until a process of the job runs `command_line` (so every command
/// before it in the same directive, a `cd` included, has run).
fn wait_for_job_process(job_id: &str, command_line: &str) {
    poll_until(
        &format!("a process of job {job_id} running {command_line:?}"),
        EVENT_TIMEOUT,
        || {
            job_processes(job_id)
                .iter()
                .any(|p| p.marked && p.cmdline == command_line)
        },
    );
}

/// Waits until the job's output (all steps, concatenated) contains `needle`.
fn wait_for_output(agent: &TestAgent, job_id: &str, needle: &str, timeout: Duration) {
    let mut seen = String::new();
    agent.wait_for_event(job_id, timeout, |event| {
        if event["event"] == "cmd_output" {
            seen.push_str(event["output"].as_str().unwrap_or_default());
        }
        seen.contains(needle)
    });
}

/// The concatenated output of the step `directive` in `events`.
fn step_output(events: &[Value], directive: &str) -> String {
    let normalized = normalize(events);
    let start = normalized
        .iter()
        .position(|ev| *ev == Ev::CmdStarted(directive.to_owned()))
        .unwrap_or_else(|| panic!("no step {directive:?} in {normalized:#?}"));
    match normalized.get(start + 1) {
        Some(Ev::Output(text)) => text.clone(),
        _ => String::new(),
    }
}

/// Stops the job through the API and waits until it is torn down (the
/// archivator has read the log and the runner has let it go); returns its
/// log.
fn stop_and_tear_down(agent: &TestAgent, job_id: &str) -> Vec<Value> {
    let reply = agent.post(&format!("/jobs/{job_id}/stop"), b"");
    assert_eq!(
        reply.status,
        200,
        "POST /jobs/{job_id}/stop: {}",
        reply.text()
    );
    tear_down(agent, job_id)
}

/// An sshd that logs in to `agent`'s user, whose `authorized_keys` holds
/// an unrelated key first, and a new key `name` for it; the home's files as
/// they were, to compare with at the end.
fn sshd_for(agent: &TestAgent, name: &str) -> (HomeFiles, Sshd, ClientKey) {
    let home = agent.home();
    seed(
        &home.join(".ssh/authorized_keys"),
        &format!("{UNRELATED_KEY}\n"),
        0o600,
    );
    let files = HomeFiles::snapshot(&home);
    let sshd = Sshd::start(&files.authorized_keys);
    let key = sshd.new_key(name);
    (files, sshd, key)
}

/// `stop_and_tear_down` of a compose job: it ends `stopped`, and its
/// containers are removed.
fn stop_compose_job(agent: &TestAgent, job_id: &str) {
    let events = stop_and_tear_down(agent, job_id);
    assert_eq!(
        normalize(&events).last(),
        Some(&Ev::JobFinished("stopped".to_owned()))
    );
    poll_until(
        &format!("the containers of job {job_id} to be removed"),
        COMPOSE_TIMEOUT,
        || containers_named(&job_id.to_lowercase()).is_empty(),
    );
}

/// Waits for `job_finished`, reads the log as the archivator and waits for
/// the end of teardown; checks that no process of the job is left.
fn tear_down(agent: &TestAgent, job_id: &str) -> Vec<Value> {
    let events = agent.wait_for_job_finished(job_id);
    let archived = agent.client().archivator_read(job_id);
    assert_eq!(archived.status, 200, "archivator read: {}", archived.text());
    poll_until(
        &format!("the teardown of job {job_id}"),
        EVENT_TIMEOUT,
        || agent.job_state(job_id) == "finished",
    );
    assert_no_job_processes(job_id);
    events
}

/// The log of a shell job stopped while its only command ran.
fn stopped_log(command: &str) -> Vec<Ev> {
    log_of(
        vec![env_export(&["MY_VAR"]), no_files(), step(command, "", 1)],
        "stopped",
    )
}

/// Checks `/tmp/ssh_jump_point` through ssh, but only if it is this job's:
/// the remote side opens it once, compares what it opened with the job's own
/// jump point and runs exactly that file. Another job started later (by a
/// concurrent test) may own it; then it must at least be a whole bash
/// script, since the agent replaces it atomically (§12 item 8).
fn check_latest_jump_point(sshd: &Sshd, key: &ClientKey, job_id: &str, expected: &str) {
    let own = shell_quote(&jump_point_of(job_id));
    let print = shell_quote(r#"printf '%s\n' "$MY_VAR"; pwd"#);
    let script = format!(
        "{{ exec 3<{LATEST_JUMP_POINT}; }} 2>/dev/null || {{ echo 'latest: absent'; exit 0; }}
         if cmp -s /dev/fd/3 {own}; then echo 'latest: this job'; exec bash /dev/fd/3 bash -c {print}; fi
         echo 'latest: another job'"
    );
    let remote = format!("bash -c {}", shell_quote(&script));
    let out = sshd.ssh(key, &[&remote]);
    assert_eq!(out.code, Some(0), "ssh {remote:?}: {out:#?}");
    if let Some(rest) = out.stdout.strip_prefix("latest: this job\n") {
        assert_eq!(
            rest, expected,
            "{LATEST_JUMP_POINT}, while it is this job's, does not land in the job"
        );
        return;
    }
    eprintln!(
        "{LATEST_JUMP_POINT} belongs to a job started after {job_id} ({}); checked it is a whole script",
        out.stdout.trim_end()
    );
    if let Ok(text) = fs::read(LATEST_JUMP_POINT) {
        let mut check = Command::new("bash");
        check
            .arg("-n")
            .arg("-c")
            .arg(String::from_utf8_lossy(&text).as_ref());
        let syntax = run_bounded(check, SSH_TIMEOUT);
        assert!(
            !text.is_empty() && syntax.code == Some(0),
            "{LATEST_JUMP_POINT} is not a whole bash script: {syntax:?}\n{}",
            String::from_utf8_lossy(&text)
        );
    }
}

// ---------------------------------------------------------------------------
// Shell executor

/// A job's key logs in; its jump point, run with a command, runs it with the
/// job's env vars in the job's current directory; other login shells of the
/// agent user do not see them. After a stop the key is refused and
/// `authorized_keys` and a pre-existing `~/.bash_profile` are as they were.
#[test]
fn jump_point_runs_commands_in_the_job_until_it_is_stopped() {
    if !sshd::available() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let home = agent.home();
    // The mode the reference gives the file it creates.
    seed(
        &home.join(".ssh/authorized_keys"),
        &format!("{UNRELATED_KEY}\n"),
        0o644,
    );
    seed(
        &home.join(".bash_profile"),
        "# the user's own profile\nexport FROM_BASH_PROFILE=yes\n",
        0o644,
    );
    let files = HomeFiles::snapshot(&home);
    let sshd = Sshd::start(&files.authorized_keys);
    let key = sshd.new_key("shell");

    let command = format!("mkdir -p ~/'work dir/deep' && cd ~/'work dir/deep' && {SLEEP}");
    let job = Job::new("ssh-shell")
        .env("MY_VAR", MY_VALUE)
        .command(&command);
    agent.submit_ok(&with_keys(&job, &[&key]));
    wait_for_job_process(&job.job_id, SLEEP);
    files.assert_keys_added(&[&key]);

    let expected = format!("{MY_VALUE}\n{}\n", real_path(&home.join("work dir/deep")));
    let own = jump_point_of(&job.job_id);
    assert_prints(&sshd, &key, &var_and_pwd_through(&own), &expected);
    check_latest_jump_point(&sshd, &key, &job.job_id, &expected);
    assert_prints(
        &sshd,
        &key,
        &login_shell_vars(&home, "FROM_BASH_PROFILE"),
        "|yes\n",
    );

    let events = stop_and_tear_down(&agent, &job.job_id);
    assert_eq!(normalize(&events), stopped_log(&command));
    assert_key_refused(&sshd, &key);
    files.assert_restored();
}

/// An interactive session through the jump point (a pseudo-terminal, as
/// `ssh -t` users get) is a shell in the job. The job then finishes by
/// itself; no `~/.bash_profile` was made, and login shells kept reading
/// `~/.profile` (and nothing of the job) meanwhile.
#[test]
fn interactive_jump_point_session_then_the_job_finishes() {
    if !sshd::available() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let home = agent.home();
    seed(
        &home.join(".ssh/authorized_keys"),
        &format!("{UNRELATED_KEY}\n"),
        0o600,
    );
    seed(&home.join(".profile"), "export FROM_PROFILE=yes\n", 0o644);
    let profile_before = file_state(&home.join(".profile"));
    let files = HomeFiles::snapshot(&home);
    assert_eq!(
        files.profile_before, None,
        "the test starts without a profile"
    );
    let sshd = Sshd::start(&files.authorized_keys);
    let key = sshd.new_key("interactive");

    // Holds the job (at most 60 s) until the test creates ~/release.
    let command = "mkdir -p ~/'b dir' && cd ~/'b dir' && echo ready && \
                   for i in $(seq 1 1200); do [ -e ~/release ] && break; sleep 0.05; done && \
                   [ -e ~/release ]";
    let job = Job::new("ssh-interactive")
        .env("MY_VAR", MY_VALUE)
        .command(command);
    agent.submit_ok(&with_keys(&job, &[&key]));
    wait_for_output(&agent, &job.job_id, "ready\n", EVENT_TIMEOUT);

    let mut terminal = sshd.ssh_terminal(&key, &["bash", &jump_point_of(&job.job_id)]);
    // The arithmetic shows that a shell has read the line, not just the
    // terminal echoing it.
    terminal.type_text("echo READY-$((6*7))\n");
    terminal.wait_for("READY-42", SSH_TIMEOUT);
    terminal.type_text("echo \"[$MY_VAR]\" \"{$PWD}\"; exit\n");
    let (code, shown) = terminal.finish(SSH_TIMEOUT);
    let dir = real_path(&home.join("b dir"));
    let wanted = format!("[{MY_VALUE}] {{{dir}}}");
    assert!(
        code == Some(0) && shown.contains(&wanted),
        "the interactive session (exit code {code:?}) did not show {wanted:?}; it showed:\n{shown}"
    );
    assert_prints(
        &sshd,
        &key,
        &login_shell_vars(&home, "FROM_PROFILE"),
        "|yes\n",
    );

    fs::write(home.join("release"), "").expect("release the job");
    let events = tear_down(&agent, &job.job_id);
    assert_eq!(
        normalize(&events),
        log_of(
            vec![
                env_export(&["MY_VAR"]),
                no_files(),
                step(command, "ready\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    assert_key_refused(&sshd, &key);
    files.assert_restored();
    assert_eq!(file_state(&home.join(".profile")), profile_before);
}

/// Two jobs running at once each have a jump point that lands in that job.
/// When the first ends, its key goes, while the second's key and jump point
/// stay; login shells see neither job's env vars; when both have ended,
/// everything is as before.
#[test]
fn two_jobs_at_once_each_have_their_own_jump_point() {
    if !sshd::available() {
        return;
    }
    let agent = TestAgent::builder().jobs(2).stop_grace_period(2).start();
    let home = agent.home();
    seed(
        &home.join(".ssh/authorized_keys"),
        &format!("{UNRELATED_KEY}\n"),
        0o600,
    );
    seed(
        &home.join(".bash_profile"),
        "export FROM_BASH_PROFILE=yes\n",
        0o644,
    );
    let files = HomeFiles::snapshot(&home);
    let sshd = Sshd::start(&files.authorized_keys);

    struct Running {
        job: Job,
        key: ClientKey,
        command: String,
        expected: String,
    }
    let mut jobs = Vec::new();
    for (name, value) in [("alpha", "alpha  $A 'one'"), ("beta", "beta  $B \"two\"")] {
        let key = sshd.new_key(name);
        let command = format!("mkdir -p ~/'{name} dir' && cd ~/'{name} dir' && {SLEEP}");
        let job = Job::new(&format!("ssh-{name}"))
            .env("MY_VAR", value)
            .command(&command);
        agent.submit_ok(&with_keys(&job, &[&key]));
        jobs.push(Running {
            job,
            key,
            command,
            expected: format!("{value}\n"),
        });
    }
    for (running, name) in jobs.iter_mut().zip(["alpha", "beta"]) {
        wait_for_job_process(&running.job.job_id, SLEEP);
        running.expected += &format!("{}\n", real_path(&home.join(format!("{name} dir"))));
    }
    let keys: Vec<&ClientKey> = jobs.iter().map(|r| &r.key).collect();
    files.assert_keys_added(&keys);
    for running in &jobs {
        let script = jump_point_of(&running.job.job_id);
        assert_prints(
            &sshd,
            &running.key,
            &var_and_pwd_through(&script),
            &running.expected,
        );
    }

    let (first, second) = (&jobs[0], &jobs[1]);
    let events = stop_and_tear_down(&agent, &first.job.job_id);
    assert_eq!(normalize(&events), stopped_log(&first.command));
    assert_key_refused(&sshd, &first.key);
    files.assert_keys_added(&[&second.key]);
    let script = jump_point_of(&second.job.job_id);
    assert_prints(
        &sshd,
        &second.key,
        &var_and_pwd_through(&script),
        &second.expected,
    );
    assert_prints(
        &sshd,
        &second.key,
        &login_shell_vars(&home, "FROM_BASH_PROFILE"),
        "|yes\n",
    );

    let events = stop_and_tear_down(&agent, &second.job.job_id);
    assert_eq!(normalize(&events), stopped_log(&second.command));
    assert_key_refused(&sshd, &second.key);
    files.assert_restored();
}

/// A key that is not base64 fails the job in Prepare, with a remark that
/// says which key and no step of the agent's in the log; nothing of the
/// job runs, not even the epilogue, and the agent user's files are
/// untouched. (No sshd needed.)
#[test]
fn an_undecodable_key_fails_the_job_before_anything_runs() {
    let agent = TestAgent::start_default();
    let home = agent.home();
    seed(
        &home.join(".ssh/authorized_keys"),
        &format!("{UNRELATED_KEY}\n"),
        0o644,
    );
    seed(&home.join(".bash_profile"), "export KEEP=me\n", 0o644);
    let files = HomeFiles::snapshot(&home);
    let bad_key = "%%% not base64 %%%";
    let job = Job::new("ssh-bad-key")
        .env("MY_VAR", MY_VALUE)
        .command("touch ~/command-ran")
        .always("touch ~/epilogue-ran");
    let mut request = job.to_value();
    request["ssh_public_keys"] = json!([
        b64("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdvb2Qga2V5IG9uZQ first@test"),
        bad_key,
    ]);
    agent.submit_ok(&request);
    let events = tear_down(&agent, &job.job_id);

    // As the reference: `job_started`, `job_finished` `failed`, nothing
    // between; why is the agent's remark.
    assert_eq!(normalize(&events), log_of(vec![], "failed"));
    let info = agent.get(&format!("/jobs/{}", job.job_id)).json();
    let explanation = info["remarks"][0].as_str().unwrap_or_default().to_owned();
    assert!(
        explanation.contains("jump point")
            && (explanation.contains("#2") || explanation.contains(bad_key)),
        "the remark does not say which key (the second) is bad: {info}"
    );
    for name in ["command-ran", "epilogue-ran"] {
        assert!(!home.join(name).exists(), "~/{name} exists: the job ran");
    }
    files.assert_restored();
}

// ---------------------------------------------------------------------------
// Compose executor

/// Names of running containers whose name contains `needle`.
fn containers_named(needle: &str) -> Vec<String> {
    let mut ps = Command::new("docker");
    ps.args(["ps", "--format", "{{.Names}}", "--filter"])
        .arg(format!("name={needle}"));
    let out = run_bounded(ps, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "docker ps: {out:#?}");
    out.stdout.lines().map(str::to_owned).collect()
}

/// What the compose jump point prints before the command's own output:
/// the waiting line, a dot per retry, a newline when main is up (§8).
fn without_waiting_preamble(stdout: &str) -> &str {
    stdout
        .strip_prefix("Waiting for the container to start up\n")
        .map(|rest| rest.trim_start_matches('.'))
        .and_then(|rest| rest.strip_prefix('\n'))
        .unwrap_or_else(|| panic!("no waiting preamble (§8) in {stdout:?}"))
}

/// The compose jump point leads into the job's main container with the
/// job's env vars; after a stop the container is gone, the key refused, and
/// the agent user's files as they were.
#[test]
fn compose_jump_point_leads_into_the_main_container() {
    if !sshd::available() || !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let (files, sshd, key) = sshd_for(&agent, "compose");

    let job = Job::new("sshc")
        .env("MY_VAR", MY_VALUE)
        .command("hostname")
        .command(SLEEP);
    let mut request = with_keys(&job, &[&key]);
    request["executor"] = json!("dockercompose");
    request["compose"] = json!({ "containers": [{ "name": "main", "image": BASH_IMAGE }] });
    agent.submit_ok(&request);
    agent.wait_for_event(&job.job_id, COMPOSE_TIMEOUT, |e| {
        e["event"] == "cmd_started" && e["directive"] == SLEEP
    });
    files.assert_keys_added(&[&key]);
    let events = agent.poll_log(&job.job_id);
    let session_hostname = step_output(&events, "hostname").trim_end().to_owned();
    assert!(!session_hostname.is_empty(), "the job printed no hostname");

    // The session's container: `<project>-<main name>`, the project derived
    // from the job id.
    let main: Vec<String> = containers_named(&job.job_id.to_lowercase())
        .into_iter()
        .filter(|name| name.ends_with("-main"))
        .collect();
    assert_eq!(main.len(), 1, "one main container of the job: {main:?}");
    let mut inspect = Command::new("docker");
    inspect.args(["inspect", "-f", "{{.Config.Hostname}}", &main[0]]);
    let inspected = run_bounded(inspect, Duration::from_secs(60));
    assert_eq!(inspected.code, Some(0), "docker inspect: {inspected:#?}");
    assert_eq!(
        inspected.stdout.trim_end(),
        session_hostname,
        "the job's session does not run in {}",
        main[0]
    );

    let own = jump_point_of(&job.job_id);
    let out = sshd.ssh(&key, &[&format!("bash {} hostname", shell_quote(&own))]);
    assert_eq!(out.code, Some(0), "{out:#?}\nsshd log:\n{}", sshd.log());
    assert_eq!(
        without_waiting_preamble(&out.stdout),
        format!("{session_hostname}\n"),
        "the jump point does not lead into the main container"
    );
    let remote = format!(
        "bash {} bash -c {}",
        shell_quote(&own),
        shell_quote(r#"printf '%s\n' "$MY_VAR""#)
    );
    let out = sshd.ssh(&key, &[&remote]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        without_waiting_preamble(&out.stdout),
        format!("{MY_VALUE}\n"),
        "the jump point does not see the job's env vars"
    );

    stop_compose_job(&agent, &job.job_id);
    assert_key_refused(&sshd, &key);
    files.assert_restored();
}
