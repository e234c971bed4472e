//! Helpers of the cache and checkout tests: run a job on a `TestAgent` and
//! read what each of its commands printed and returned.

use serde_json::Value;

use std::time::Duration;

use super::check_invariants;
use super::server::{poll_until, unix_now, TestAgent, EVENT_TIMEOUT};
use super::Job;

/// One command of a finished job: directive, output, exit code.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub directive: String,
    pub output: String,
    pub exit_code: i64,
}

/// A finished job's log, by command.
#[derive(Debug)]
pub struct Ran {
    pub job_id: String,
    pub events: Vec<Value>,
}

impl Ran {
    pub fn commands(&self) -> Vec<Cmd> {
        let mut out: Vec<Cmd> = Vec::new();
        for e in &self.events {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            match e["event"].as_str().unwrap_or_default() {
                "cmd_started" => out.push(Cmd {
                    directive: text("directive"),
                    output: String::new(),
                    exit_code: i64::MIN,
                }),
                "cmd_output" => {
                    if let Some(c) = out.last_mut() {
                        c.output.push_str(&text("output"));
                    }
                }
                "cmd_finished" => {
                    if let Some(c) = out.last_mut() {
                        c.exit_code = e["exit_code"].as_i64().unwrap_or(i64::MIN);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The command whose directive is `directive` (the first one).
    pub fn cmd(&self, directive: &str) -> Cmd {
        self.commands()
            .into_iter()
            .find(|c| c.directive == directive)
            .unwrap_or_else(|| panic!("no command {directive:?} in:\n{}", self.render()))
    }

    /// The output of `directive`, which must have exited 0.
    pub fn ok(&self, directive: &str) -> String {
        let c = self.cmd(directive);
        assert_eq!(
            c.exit_code,
            0,
            "{directive:?} exited {} in job {}:\n{}",
            c.exit_code,
            self.job_id,
            self.render()
        );
        c.output
    }

    pub fn result(&self) -> String {
        self.events
            .last()
            .and_then(|e| e["result"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The log for failure messages: directive, exit code, output.
    pub fn render(&self) -> String {
        self.commands()
            .iter()
            .map(|c| format!("$ {}  [exit {}]\n{}", c.directive, c.exit_code, c.output))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn assert_passed(&self) {
        assert_eq!(
            self.result(),
            "passed",
            "job {}:\n{}",
            self.job_id,
            self.render()
        );
    }
}

/// Submits `job` to `agent`, waits until it has finished and, the log
/// read as an archivator would, until it is torn down, so that the agent
/// takes the next job.
pub fn run(agent: &TestAgent, job: &Job) -> Ran {
    run_value(agent, &job.to_value(), EVENT_TIMEOUT)
}

/// `run` for a job request given as JSON, with its own timeout.
pub fn run_value(agent: &TestAgent, job: &Value, timeout: Duration) -> Ran {
    let job_id = job["job_id"].as_str().expect("a job id").to_owned();
    // The previous job may still be tearing down: after the log read it
    // still sends its teardown_finished callback (docs/protocol.md §7.2).
    poll_until("the agent to take the job", timeout, || {
        let reply = agent.submit(job);
        match reply.status {
            200 => true,
            422 if reply.message() == "another job is already running"
                || reply.message().starts_with("another job is tearing down: ") =>
            {
                false
            }
            other => panic!("POST /jobs of {job_id} answered {other}: {}", reply.text()),
        }
    });
    agent.wait_for_event(&job_id, timeout, |e| e["event"] == "job_finished");
    let events = agent.poll_log(&job_id);
    if let Err(problem) = check_invariants(&events, agent.started_secs, unix_now() + 1) {
        panic!("the log of job {job_id} breaks §6.1: {problem}\n{events:#?}");
    }
    assert_eq!(agent.client().archivator_read(&job_id).status, 200);
    Ran { events, job_id }
}

/// How long building the static agent may take (a first build compiles
/// every dependency again, for the static target).
const STATIC_BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// A statically linked build of the agent, for compose jobs' `cache`: the
/// test binary's agent is linked against the host's glibc and would not run
/// in an image without it. Built once into `target/static-agent` (cargo's
/// own lock serialises concurrent tests; later builds are up to date).
pub fn static_agent() -> std::path::PathBuf {
    use std::process::Command;
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let host = Command::new("rustc")
                .arg("-vV")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
                })
                .expect("the host triple from rustc -vV");
            let target_dir = manifest_dir.join("target/static-agent");
            let mut command = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            command
                .args(["build", "--quiet", "--bin", "agent", "--target", &host])
                .arg("--target-dir")
                .arg(&target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .current_dir(manifest_dir);
            let out = super::docker::run_bounded(command, b"", STATIC_BUILD_TIMEOUT);
            assert!(
                out.success(),
                "building the static agent failed:\n{}",
                out.stderr
            );
            target_dir.join(host).join("debug/agent")
        })
        .clone()
}

/// An image with bash and nothing else (no tar, no ssh, no coreutils):
/// the bash of `BASH_IMAGE`, and /tmp.
pub fn bash_only_image() -> &'static str {
    const TAG: &str = "agent-test/bash-only:1";
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        use super::docker::{docker, BASH_IMAGE};
        let dir = tempfile::tempdir().expect("a build context");
        let name = format!("agent-bash-only-{}", std::process::id());
        docker(&["create", "--name", &name, BASH_IMAGE]).ok("docker create");
        let bash = dir.path().join("bash");
        let copied = docker(&["cp", &format!("{name}:/bin/bash"), &bash.to_string_lossy()]);
        docker(&["rm", "-f", &name]).ok("docker rm");
        copied.ok("docker cp of bash");
        std::fs::create_dir(dir.path().join("tmp")).expect("a tmp directory");
        build_image(
            TAG,
            dir.path(),
            "FROM scratch\nCOPY bash /bin/bash\nCOPY tmp /tmp\nENV PATH=/bin\n",
        );
    });
    TAG
}

/// `docker build -t tag` of `context` with `dockerfile`, bounded; the
/// classic builder, which needs no registry.
fn build_image(tag: &str, context: &std::path::Path, dockerfile: &str) {
    std::fs::write(context.join("Dockerfile"), dockerfile).expect("write the Dockerfile");
    let mut command = std::process::Command::new("docker");
    command
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .env("DOCKER_BUILDKIT", "0");
    super::docker::run_bounded(command, b"", Duration::from_secs(120))
        .ok(&format!("docker build of {tag}"));
}

/// Where `probe_image` keeps busybox: off PATH, so the image has no
/// `stty`, yet a test can look at the terminal with `busybox stty`.
pub const PROBE_BUSYBOX: &str = "/opt/probe/busybox";

/// `bash_only_image` plus busybox at `PROBE_BUSYBOX` (not on PATH).
pub fn probe_image() -> &'static str {
    const TAG: &str = "agent-test/bash-only-probe:1";
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        use super::docker::{docker, BASH_IMAGE};
        let base = bash_only_image();
        let dir = tempfile::tempdir().expect("a build context");
        let name = format!("agent-bash-only-probe-{}", std::process::id());
        docker(&["create", "--name", &name, BASH_IMAGE]).ok("docker create");
        let busybox = dir.path().join("busybox");
        let copied = docker(&[
            "cp",
            &format!("{name}:/bin/busybox"),
            &busybox.to_string_lossy(),
        ]);
        docker(&["rm", "-f", &name]).ok("docker rm");
        copied.ok("docker cp of busybox");
        build_image(
            TAG,
            dir.path(),
            &format!("FROM {base}\nCOPY busybox {PROBE_BUSYBOX}\n"),
        );
    });
    TAG
}

/// `output` with what changes from run to run replaced: durations by `D`,
/// sizes in `Size: ... bytes.` by `S`, a download's temporary file by
/// `TMP/KEY-N`, and the dates of `cache list` by `DATE`.
pub fn masked(output: &str) -> String {
    use regex_lite::Regex;
    static RULES: std::sync::OnceLock<Vec<(Regex, &'static str)>> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            (r"Duration: [^ \n]+?\.( |$)", "Duration: D.$1"),
            (r"Size: [^ \n]+ bytes\.", "Size: S bytes."),
            (
                r"^Unpacking '.*/([^/]*)-[0-9]+'\.\.\.$",
                "Unpacking 'TMP/$1-N'...",
            ),
            (
                r"[0-9]{2} [A-Z][a-z]{2} [0-9]{2} [0-9]{2}:[0-9]{2} [^ \n]+",
                "DATE",
            ),
        ]
        .into_iter()
        .map(|(re, to)| (Regex::new(&format!("(?m){re}")).expect("a valid rule"), to))
        .collect()
    });
    let mut text = output.to_string();
    for (re, to) in rules {
        text = re.replace_all(&text, *to).into_owned();
    }
    text
}

/// The job's cache socket, which its first command prints with
/// `echo "$AGENT_CACHE_SOCKET"`.
pub fn socket_of(agent: &TestAgent, job_id: &str) -> std::path::PathBuf {
    let event = agent.wait_for_event(job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().unwrap_or("").contains("cache.sock")
    });
    let output = event["output"].as_str().unwrap_or_default();
    let line = output
        .lines()
        .find(|l| l.ends_with("cache.sock"))
        .expect("the socket's line");
    std::path::PathBuf::from(line.trim())
}

/// A number of `/proc/<pid>/status` (`Threads:`, `VmHWM:` in KiB, ...).
pub fn proc_status(pid: i32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read a /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The `ssh` and `sftp` processes on this host whose command line names
/// `port`: what the agent ran to reach an SFTP server there.
pub fn ssh_processes_to(port: u16) -> Vec<String> {
    let port = port.to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args.first().map(String::as_str).unwrap_or_default();
        let is_ssh = program.ends_with("ssh") || program.ends_with("sftp");
        if is_ssh && args.iter().any(|a| a.split([' ', '=']).any(|w| w == port)) {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                args.join(" ")
            ));
        }
    }
    found
}
