//! Test support for the docker-compose executor (docs/protocol.md §9, §3.3, §10).
//!
//! It owns what the compose tests need around the real Docker engine: the
//! gate (Docker and a compose tool present, the test images built by
//! `tests/docker/images.sh` once per test process; a skip, or a failure under
//! `AGENT_REQUIRE_DOCKER=1`), a builder of compose job requests on top of
//! `support::Job`, the check that a job's compose project left no container,
//! network or volume behind, the normalization of the `Pulling docker
//! images...` step (whose text names the project), and a private registry
//! (`tests/docker/registry.sh`) with logins kept in throw-away
//! `DOCKER_CONFIG` directories. It runs only the docker CLI and the scripts,
//! and knows the agent only through its command line and its event log.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{assert_no_job_processes, check_invariants, normalize, Ev, Job, Outcome, Sandbox};

/// `FROM scratch` busybox with bash-static; users root and `runner` (1000).
pub const BASH_IMAGE: &str = "agent-test/bash:1";
/// The same without bash.
pub const NOBASH_IMAGE: &str = "agent-test/nobash:1";
/// Debian minbase with git.
pub const GIT_IMAGE: &str = "agent-test/git:1";
/// With the docker CLI, for docker-in-docker jobs.
pub const DIND_IMAGE: &str = "agent-test/dind:1";
/// `DIND_IMAGE` with Debian's docker-compose (v1).
pub const COMPOSE_IMAGE: &str = "agent-test/compose:1";
/// `agent-test/bash:1` with `VOLUME /data`: its containers get an anonymous
/// volume that `compose down --volumes` must remove. Built here.
pub const VOLUME_IMAGE: &str = "agent-test/volume:1";

/// The synthetic steps of the compose start (§9.2).
pub const CREDENTIALS_STEP: &str = "Setting up image pull credentials";
pub const PULL_STEP: &str = "Pulling docker images...";
pub const START_STEP: &str = "Starting the docker image...";
/// What stands for the pull step's output in normalized logs: its text names
/// the project (with the agent's nonce), so it is checked line by line by
/// `normalize_compose` and then replaced by this.
pub const PULL_OUTPUT: &str = "<pull output, checked line by line>";

/// How long one compose job may take. A job takes 2–6 s on an idle machine
/// (compose v1 starts in about a second, twice); the margin is for a loaded
/// one running the suite in parallel.
pub const COMPOSE_JOB_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a docker CLI call may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `images.sh` may take: the first run bootstraps Debian.
const IMAGES_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long the leftovers of a finished job's project may take to go.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/docker")
        .join(name)
}

// ---------------------------------------------------------------------------
// Commands with deadlines

/// What a finished host command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails the test unless the command succeeded.
    pub fn ok(self, what: &str) -> CmdOutput {
        assert!(
            self.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `command` with `stdin` as its input, killing it after `timeout`.
/// Output is read on threads so a chatty command cannot block on a pipe.
pub fn run_bounded(command: Command, stdin: &[u8], timeout: Duration) -> CmdOutput {
    let what = format!("{command:?}");
    try_run_bounded(command, stdin, timeout).unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// `run_bounded`, with a failure to start the program as an error.
pub fn try_run_bounded(
    mut command: Command,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<CmdOutput> {
    let what = format!("{command:?}");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let readers = [
        Box::new(child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped stderr")),
    ]
    .map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(POLL_INTERVAL);
    };
    let _ = writer.join();
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// `docker <args>` with the machine's docker configuration.
pub fn docker(args: &[&str]) -> CmdOutput {
    let mut command = Command::new("docker");
    command.args(args);
    run_bounded(command, b"", DOCKER_TIMEOUT)
}

/// `docker <args>` with `DOCKER_CONFIG` pointing at `config` (logins made
/// there never reach the machine's `~/.docker`).
pub fn docker_with_config(config: &Path, args: &[&str], stdin: &[u8]) -> CmdOutput {
    let mut command = Command::new("docker");
    command.args(args).env("DOCKER_CONFIG", config);
    run_bounded(command, stdin, DOCKER_TIMEOUT)
}

// ---------------------------------------------------------------------------
// The gate

/// The compose tool the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComposeTool {
    /// `docker compose` (v2 plugin).
    Plugin,
    /// `docker-compose` (v1).
    Standalone,
}

/// The stdout of a command that worked; None if it is missing or failed.
fn probe(program: &str, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command.args(args);
    let out = try_run_bounded(command, b"", Duration::from_secs(60)).ok()?;
    out.success().then_some(out.stdout)
}

fn check_environment() -> Result<ComposeTool, String> {
    probe("docker", &["version", "--format", "{{.Server.Version}}"])
        .ok_or("the docker CLI is missing or the engine does not answer")?;
    let tool = if probe("docker", &["compose", "version"])
        .is_some_and(|out| out.starts_with("Docker Compose version"))
    {
        ComposeTool::Plugin
    } else if probe("docker-compose", &["--version"])
        .is_some_and(|out| out.starts_with("docker-compose version"))
    {
        ComposeTool::Standalone
    } else {
        return Err("neither `docker compose` nor `docker-compose` works".into());
    };
    let mut command = Command::new("bash");
    command.arg(script("images.sh"));
    let out = run_bounded(command, b"", IMAGES_TIMEOUT);
    if !out.success() {
        return Err(format!(
            "tests/docker/images.sh failed ({}):\n{}{}",
            out.status, out.stdout, out.stderr
        ));
    }
    Ok(tool)
}

fn environment() -> &'static Result<ComposeTool, String> {
    static ENVIRONMENT: OnceLock<Result<ComposeTool, String>> = OnceLock::new();
    ENVIRONMENT.get_or_init(check_environment)
}

/// True when Docker, a compose tool and the test images are there. When they
/// are not, the test should return: `skip::skip` says why and records it, or
/// fails the test when `AGENT_REQUIRE_DOCKER=1` (CI) says they must be.
pub fn ready() -> bool {
    match environment() {
        Ok(_) => true,
        Err(reason) => super::skip::skip(&format!("Docker is not usable: {reason}")),
    }
}

/// The compose tool found by `ready` (which must have returned true).
pub fn compose_tool() -> ComposeTool {
    *environment().as_ref().expect("ready() was checked")
}

/// Builds `VOLUME_IMAGE` once per test process.
pub fn volume_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a build context");
        fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {BASH_IMAGE}\nVOLUME /data\n"),
        )
        .expect("write the Dockerfile");
        let mut command = Command::new("docker");
        command
            .args(["build", "-q", "-t", VOLUME_IMAGE])
            .arg(dir.path())
            .env("DOCKER_BUILDKIT", "0");
        run_bounded(command, b"", DOCKER_TIMEOUT).ok("docker build of the volume image");
    });
    VOLUME_IMAGE
}

// ---------------------------------------------------------------------------
// Job requests

/// One entry of `compose.containers` (§3.1).
#[derive(Clone, Debug)]
pub struct Container {
    name: String,
    image: String,
    command: String,
    entrypoint: String,
    user: String,
    env_vars: Vec<Value>,
}

impl Container {
    pub fn new(name: &str, image: &str) -> Container {
        Container {
            name: name.to_owned(),
            image: image.to_owned(),
            command: String::new(),
            entrypoint: String::new(),
            user: String::new(),
            env_vars: Vec::new(),
        }
    }

    pub fn command(mut self, command: &str) -> Container {
        self.command = command.to_owned();
        self
    }

    pub fn entrypoint(mut self, entrypoint: &str) -> Container {
        self.entrypoint = entrypoint.to_owned();
        self
    }

    pub fn user(mut self, user: &str) -> Container {
        self.user = user.to_owned();
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<[u8]>) -> Container {
        self.env_vars
            .push(json!({ "name": name, "value": super::b64(value) }));
        self
    }

    fn to_value(&self) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "command": self.command,
            "entrypoint": self.entrypoint,
            "user": self.user,
            "env_vars": self.env_vars,
        })
    }
}

/// A `dockercompose` job request: a `support::Job` (commands, env vars,
/// files, epilogues) plus the `compose` object.
#[derive(Clone, Debug)]
pub struct ComposeJob {
    pub job: Job,
    containers: Vec<Container>,
    credentials: Vec<Value>,
    host_setup: Vec<Value>,
}

impl ComposeJob {
    /// A job whose main container is `main`. The job id is short enough
    /// (at most 40 characters of letters, digits and `-`) for the project
    /// name to hold all of it: `agent-<id lowercased>-<nonce>`.
    pub fn new(name: &str, main: Container) -> ComposeJob {
        let job = Job::new(name);
        check_job_id(&job.job_id);
        ComposeJob {
            job,
            containers: vec![main],
            credentials: Vec::new(),
            host_setup: Vec::new(),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job.job_id
    }

    /// The same job under an upper-case id (the project name lowercases it).
    pub fn upper_case_id(mut self) -> ComposeJob {
        self.job.job_id = self.job.job_id.to_ascii_uppercase();
        self
    }

    /// Another container, reachable from main by its name.
    pub fn service(mut self, container: Container) -> ComposeJob {
        self.containers.push(container);
        self
    }

    pub fn host_setup(mut self, directive: &str) -> ComposeJob {
        self.host_setup.push(json!({ "directive": directive }));
        self
    }

    /// One `image_pull_credentials` entry with these (decoded) env vars.
    pub fn credentials(mut self, vars: &[(&str, &str)]) -> ComposeJob {
        let env_vars: Vec<Value> = vars
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": super::b64(value) }))
            .collect();
        self.credentials
            .push(json!({ "env_vars": env_vars, "files": [] }));
        self
    }

    pub fn command(mut self, directive: &str) -> ComposeJob {
        self.job = self.job.command(directive);
        self
    }

    pub fn on_pass(mut self, directive: &str) -> ComposeJob {
        self.job = self.job.on_pass(directive);
        self
    }

    pub fn on_fail(mut self, directive: &str) -> ComposeJob {
        self.job = self.job.on_fail(directive);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<[u8]>) -> ComposeJob {
        self.job = self.job.env(name, value);
        self
    }

    pub fn secret_env(mut self, name: &str, value: impl AsRef<[u8]>) -> ComposeJob {
        self.job = self.job.secret_env(name, value);
        self
    }

    pub fn always(mut self, directive: &str) -> ComposeJob {
        self.job = self.job.always(directive);
        self
    }

    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>, mode: &str) -> ComposeJob {
        self.job = self.job.file(path, content, mode);
        self
    }

    /// The name of the main container (the first one).
    pub fn main_name(&self) -> &str {
        &self.containers[0].name
    }

    /// Every compose project name of this job starts with this.
    pub fn project_prefix(&self) -> String {
        format!("agent-{}-", self.job_id().to_ascii_lowercase())
    }

    /// The JSON job request (§3.1).
    pub fn to_value(&self) -> Value {
        let mut value = self.job.to_value();
        value["job_id"] = json!(self.job_id());
        value["executor"] = json!("dockercompose");
        value["compose"] = json!({
            "containers": self.containers.iter().map(Container::to_value).collect::<Vec<_>>(),
            "image_pull_credentials": self.credentials,
            "host_setup_commands": self.host_setup,
        });
        value
    }

    /// Runs the job with `agent run --json` in a fresh sandbox.
    pub fn run(&self) -> Outcome {
        self.run_in(&Sandbox::new())
    }

    /// Runs the job with `agent run --json` in `sandbox`, checks the run as
    /// `support` does (§6.1 invariants, exit code, no process left), and
    /// that the compose project is gone.
    pub fn run_in(&self, sandbox: &Sandbox) -> Outcome {
        let project = ProjectWatch::new(&self.project_prefix());
        let text = serde_json::to_string_pretty(&self.to_value()).expect("serialise the job");
        let outcome = sandbox
            .spawn_text("job.json", &text, self.job_id())
            .finish(COMPOSE_JOB_TIMEOUT);
        project.assert_gone();
        outcome
    }

    /// `normalize_compose` for this job's events.
    pub fn normalize(&self, events: &[Value]) -> Vec<Ev> {
        normalize_compose(events, &self.project_prefix())
    }
}

fn check_job_id(job_id: &str) {
    assert!(
        job_id.len() <= 40
            && job_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !job_id.starts_with('-')
            && !job_id.ends_with('-'),
        "job id {job_id:?} is too long or has characters the project name would change; \
         use a shorter test name"
    );
}

// ---------------------------------------------------------------------------
// Expected logs

/// The pull and start steps of a compose job that started (§9.2).
pub fn compose_started() -> Vec<Ev> {
    let mut events = super::step(PULL_STEP, PULL_OUTPUT, 0);
    events.extend(super::step(START_STEP, "Starting a new bash session.\n", 0));
    events
}

/// Drops timestamps, merges outputs (`support::normalize`) and stands
/// `PULL_OUTPUT` for whatever the pull step printed (nothing at all when
/// every image is there and main runs alone), after checking that it was
/// written line by line (§6.6, §12 item 13; see `check_pull_lines`). It also
/// checks that no terminal output holds a `\r\n` (§6.2); the pull step's,
/// byte-exact, may (§6.6).
pub fn normalize_compose(events: &[Value], project_prefix: &str) -> Vec<Ev> {
    let mut kept = Vec::new();
    let mut pull_lines: Option<Vec<String>> = None;
    for event in events {
        let kind = event["event"].as_str().unwrap_or_default();
        if kind == "cmd_output" && pull_lines.is_none() {
            let output = event["output"].as_str().unwrap_or_default();
            assert!(
                !output.contains("\r\n"),
                "a cmd_output holds a \\r\\n (§6.2 folds each into \\n): {output:?}"
            );
        }
        match (kind, pull_lines.as_mut()) {
            ("cmd_started", None) if event["directive"] == PULL_STEP => {
                pull_lines = Some(Vec::new());
                kept.push(event.clone());
            }
            ("cmd_output", Some(lines)) => {
                lines.push(event["output"].as_str().unwrap_or_default().to_owned())
            }
            ("cmd_finished", Some(lines)) => {
                check_pull_lines(lines, event["exit_code"] == 0, project_prefix);
                kept.push(json!({ "event": "cmd_output", "output": PULL_OUTPUT }));
                pull_lines = None;
                kept.push(event.clone());
            }
            _ => kept.push(event.clone()),
        }
    }
    normalize(&kept)
}

/// The pull step's outputs: each event is one line as printed (compose v1
/// ends them in `\r\n`), ending in exactly one `\n` (the reference added an
/// empty line after each and dropped the last one). After a successful step there is no empty line, and with compose v1
/// every container or image it started on (`Creating X ... `, `Pulling X
/// ... `) has its final `... done` line, the last line included.
pub fn check_pull_lines(lines: &[String], passed: bool, project_prefix: &str) {
    for line in lines {
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "a `{PULL_STEP}` output is not one line ending in one \\n: {line:?}\n\
             all outputs: {lines:#?}"
        );
        assert!(
            !passed || !line.trim_end_matches(['\r', '\n']).is_empty(),
            "an empty line in the output of a successful `{PULL_STEP}`: {lines:#?}"
        );
    }
    if !passed || compose_tool() != ComposeTool::Standalone {
        return;
    }
    // compose v1 pads the names of what it works on together, so the items
    // are compared without the spaces before `...`.
    let item = |line: &str| -> Option<(String, String)> {
        let (what, status) = line.trim_end_matches(['\r', '\n']).split_once(" ... ")?;
        let what = what.trim_end();
        (what.starts_with("Creating ") || what.starts_with("Pulling "))
            .then(|| (what.to_owned(), status.trim().to_owned()))
    };
    for line in lines {
        if let Some((what, _)) = item(line) {
            assert!(
                what.starts_with("Pulling ")
                    || what.starts_with(&format!("Creating {project_prefix}")),
                "{what:?} is not in the job's project {project_prefix}*: {lines:#?}"
            );
            let done = lines
                .iter()
                .filter_map(|l| item(l))
                .any(|(w, status)| w == what && status == "done");
            assert!(done, "no final \"{what} ... done\" line: {lines:#?}");
        }
    }
    if let Some(last) = lines.last() {
        assert!(
            item(last).is_some_and(|(_, status)| status == "done"),
            "the last line of `{PULL_STEP}` is not a final `... done`: {lines:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The project's leftovers

/// Everything Docker still has of the compose projects whose names start
/// with a prefix: containers (by the compose project label or by name),
/// networks and volumes (by name), and the volumes seen attached to the
/// project's containers while the job ran. Dropping it removes whatever is
/// left, so one failure does not leak into the rest of the suite.
pub struct ProjectWatch {
    prefix: String,
    attached_volumes: Vec<String>,
}

impl ProjectWatch {
    pub fn new(prefix: &str) -> ProjectWatch {
        ProjectWatch {
            prefix: prefix.to_owned(),
            attached_volumes: Vec::new(),
        }
    }

    /// `(id, name)` of each container of the projects.
    pub fn containers(&self) -> Vec<(String, String)> {
        let out = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}}\t{{.Names}}\t{{.Label \"com.docker.compose.project\"}}",
        ])
        .ok("docker ps");
        out.stdout
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let (id, name, project) = (fields.next()?, fields.next()?, fields.next()?);
                (project.starts_with(&self.prefix) || name.starts_with(&self.prefix))
                    .then(|| (id.to_owned(), name.to_owned()))
            })
            .collect()
    }

    pub fn networks(&self) -> Vec<String> {
        let out = docker(&["network", "ls", "--format", "{{.Name}}"]).ok("docker network ls");
        out.stdout
            .lines()
            .filter(|name| name.starts_with(&self.prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Volumes named after the projects, and those seen attached to them.
    pub fn volumes(&self) -> Vec<String> {
        let out = docker(&["volume", "ls", "--format", "{{.Name}}"]).ok("docker volume ls");
        out.stdout
            .lines()
            .filter(|name| {
                name.starts_with(&self.prefix) || self.attached_volumes.iter().any(|v| v == name)
            })
            .map(str::to_owned)
            .collect()
    }

    /// Records the volumes now mounted in the projects' containers and
    /// returns how many there are.
    pub fn record_attached_volumes(&mut self) -> usize {
        for (id, _) in self.containers() {
            let out = docker(&[
                "inspect",
                "--format",
                "{{range .Mounts}}{{if .Name}}{{.Name}}\n{{end}}{{end}}",
                &id,
            ]);
            // A container may go between `ps` and `inspect`.
            for name in out.stdout.lines().filter(|l| !l.is_empty()) {
                if !self.attached_volumes.iter().any(|v| v == name) {
                    self.attached_volumes.push(name.to_owned());
                }
            }
        }
        self.attached_volumes.len()
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .containers()
            .into_iter()
            .map(|(_, name)| format!("container {name}"))
            .collect();
        left.extend(self.networks().into_iter().map(|n| format!("network {n}")));
        left.extend(self.volumes().into_iter().map(|v| format!("volume {v}")));
        left
    }

    /// Fails the test if anything of the projects is still there a few
    /// seconds after the job ended (the agent removes it before
    /// `job_finished`; the wait is for the engine's bookkeeping).
    pub fn assert_gone(&self) {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                self.remove_all();
                panic!(
                    "the compose project {}* of the job is not cleaned up: {left:#?}",
                    self.prefix
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    fn remove_all(&self) {
        for (id, _) in self.containers() {
            let _ = docker(&["rm", "-f", "-v", &id]);
        }
        for network in self.networks() {
            let _ = docker(&["network", "rm", &network]);
        }
        for volume in self.volumes() {
            let _ = docker(&["volume", "rm", "-f", &volume]);
        }
    }
}

impl Drop for ProjectWatch {
    fn drop(&mut self) {
        if thread::panicking() {
            self.remove_all();
        }
    }
}

/// The labelled objects of a job's gate still on the engine, as
/// `kind labels` lines.
pub fn gate_objects_of(job_id: &str) -> Vec<String> {
    let label = format!("agent.job={job_id}.");
    let mut left = Vec::new();
    for kind in [
        &["ps", "-a"][..],
        &["network", "ls"][..],
        &["volume", "ls"][..],
    ] {
        let mut args = kind.to_vec();
        args.extend(["--filter", "label=agent.job", "--format", "{{.Labels}}"]);
        let out = docker(&args).ok("list labelled objects");
        left.extend(
            out.stdout
                .lines()
                .filter(|l| l.contains(&label))
                .map(|l| format!("{} {l}", kind[0])),
        );
    }
    left
}

/// Waits for `job_finished` of a job given to `agent serve` and returns its
/// log, checked against §6.1.
pub fn wait_for_compose_job(agent: &super::server::TestAgent, job_id: &str) -> Vec<Value> {
    agent.wait_for_event(job_id, COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "job_finished"
    });
    let events = agent.poll_log(job_id);
    if let Err(problem) = check_invariants(&events, agent.started_secs, unix_now() + 1) {
        panic!("the log of job {job_id} breaks §6.1: {problem}\n{events:#?}");
    }
    events
}

fn unix_now() -> i64 {
    super::server::unix_now()
}

/// Runs a compose job with `agent run --json` and the environment changed
/// by `envs` (e.g. another PATH); checks the §6.1 invariants and that no
/// process of the job is left. Returns the events, the exit status and
/// stderr (where `--json` puts the agent's remarks).
pub fn run_with_env(
    sandbox: &Sandbox,
    job: &ComposeJob,
    envs: &[(&str, &str)],
) -> (Vec<Value>, ExitStatus, String) {
    let job_file = sandbox.root().join("job.json");
    fs::write(&job_file, job.to_value().to_string()).expect("write the job file");
    let mut command = sandbox.agent_command();
    command
        .arg("run")
        .arg("--json")
        .arg("--data-dir")
        .arg(sandbox.data_dir())
        .arg(&job_file);
    for (name, value) in envs {
        command.env(name, value);
    }
    let started = unix_now();
    let out = run_bounded(command, b"", COMPOSE_JOB_TIMEOUT);
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"))
        })
        .collect();
    if let Err(problem) = check_invariants(&events, started, unix_now() + 1) {
        panic!(
            "the log of job {} breaks §6.1: {problem}\nstdout:\n{}\nstderr:\n{}",
            job.job_id(),
            out.stdout,
            out.stderr
        );
    }
    assert_no_job_processes(job.job_id());
    (events, out.status, out.stderr)
}

// The registry helpers stay reachable as `docker::...` for the tests; the
// bench, which shares this module, uses none of them.
#[allow(unused_imports)]
pub use super::registry::*;
