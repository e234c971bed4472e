//! The docker and compose command lines of the compose executor
//! (docs/protocol.md §9, §3.3): tool detection, a compose project per job, a
//! compose file generated with serde, argv built by pure functions,
//! credential logins into a per-job `DOCKER_CONFIG`, and the cleanup that
//! runs `down --remove-orphans --volumes`.
//!
//! This module knows command lines, not jobs: the executor (`mod.rs`)
//! decides when each runs and how it is logged.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::id_slug;

/// Where a Docker socket is mounted in main (docker in docker): the job's
/// gate, or the engine's own (`--docker-socket`).
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Where the session's stdin terminal appears in main.
pub const STDIN_TERMINAL: &str = "/dev/job-stdin";

/// The compose tool found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComposeTool {
    /// `docker compose` (the v2+ plugin).
    Plugin,
    /// `docker-compose` (the v1 standalone tool).
    Standalone,
}

impl ComposeTool {
    pub fn argv(&self) -> Vec<String> {
        match self {
            ComposeTool::Plugin => vec!["docker".into(), "compose".into()],
            ComposeTool::Standalone => vec!["docker-compose".into()],
        }
    }
}

/// §9.1 step 3, from the outputs of `docker compose version` and
/// `docker-compose --version` (None when a command failed).
pub fn detect_from(
    plugin_output: Option<&str>,
    standalone_output: Option<&str>,
) -> Option<ComposeTool> {
    if let Some(out) = plugin_output {
        if let Some(v) = out.trim().strip_prefix("Docker Compose version ") {
            if !v.is_empty() {
                return Some(ComposeTool::Plugin);
            }
        }
    }
    let out = standalone_output?;
    let v = out.trim().strip_prefix("docker-compose version ")?;
    let v = v.split(',').next().unwrap_or("");
    if v.is_empty() {
        return None;
    }
    // A standalone binary that reports v2+ speaks the plugin's syntax, but is
    // still invoked as `docker-compose`.
    Some(ComposeTool::Standalone)
}

/// The tool found by an earlier job: asking costs about half a second.
static DETECTED: std::sync::Mutex<Option<ComposeTool>> = std::sync::Mutex::new(None);

/// §9.1 step 3, once per agent process (a failure is not remembered, so a
/// tool installed later is found by the next job).
pub fn detect() -> Option<ComposeTool> {
    let mut cached = DETECTED.lock().unwrap_or_else(|e| e.into_inner());
    if cached.is_none() {
        *cached = detect_now();
    }
    cached.clone()
}

fn detect_now() -> Option<ComposeTool> {
    let run = |argv: &[&str]| -> Option<String> {
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let plugin = run(&["docker", "compose", "version"]);
    if let Some(tool) = detect_from(plugin.as_deref(), None) {
        return Some(tool);
    }
    detect_from(None, run(&["docker-compose", "--version"]).as_deref())
}

/// A compose project name from the job id: lowercase letters, digits, `-`.
pub fn project_name(job_id: &str, nonce: &str) -> String {
    // Compose project names are lowercase letters, digits, `-` and `_`.
    let id: String = id_slug(job_id, 40)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("agent-{}-{nonce}", id.trim_matches('-'))
}

/// The compose project of one job and the argv of each step.
#[derive(Debug, Clone)]
pub struct Project {
    pub tool: ComposeTool,
    pub name: String,
    pub file: PathBuf,
    pub main: String,
    /// The name of the main container running the session.
    pub container: String,
    /// The job's working directory, mounted read-only at the same path.
    pub work_dir: PathBuf,
    pub docker_config: PathBuf,
}

impl Project {
    fn base(&self) -> Vec<String> {
        let mut argv = self.tool.argv();
        argv.extend([
            "--ansi".into(),
            "never".into(),
            "-p".into(),
            self.name.clone(),
            "-f".into(),
            self.file.to_string_lossy().into_owned(),
        ]);
        argv
    }

    /// §9.2 step 2, for main: pulls its image (run only when it is missing).
    pub fn pull_main_argv(&self) -> Vec<String> {
        let mut argv = self.base();
        argv.extend(["pull".into(), self.main.clone()]);
        argv
    }

    /// §9.2 step 2, for the other containers: pulls what is missing and
    /// starts them, so they are up before the session.
    pub fn up_services_argv(&self, services: &[String]) -> Vec<String> {
        let mut argv = self.base();
        argv.extend(["up".into(), "-d".into()]);
        argv.extend(services.iter().cloned());
        argv
    }

    /// §9.2 step 3: the session's bash in main, with `docker_socket` (a
    /// host path) mounted at `DOCKER_SOCKET` when there is one.
    /// docker-compose v1 logs a container's non-zero exit status as an
    /// error line of its own when `run` ends; only critical messages keep
    /// that line out of the job log.
    pub fn session_argv(&self, stdin_terminal: &Path, docker_socket: Option<&Path>) -> Vec<String> {
        let work = self.work_dir.to_string_lossy();
        let mut argv = self.base();
        if self.tool == ComposeTool::Standalone {
            argv.splice(1..1, ["--log-level".to_string(), "CRITICAL".to_string()]);
        }
        argv.extend([
            "run".into(),
            "--rm".into(),
            "--name".into(),
            self.container.clone(),
        ]);
        if let Some(socket) = docker_socket {
            argv.extend(["-v".into(), format!("{}:{DOCKER_SOCKET}", socket.display())]);
        }
        argv.extend([
            "-v".into(),
            format!("{work}:{work}:ro"),
            // A bind mount, not a device: a terminal slave opens only
            // through its node in the devpts file system.
            "-v".into(),
            format!("{}:{STDIN_TERMINAL}", stdin_terminal.display()),
            self.main.clone(),
            "bash".into(),
            "--noediting".into(),
        ]);
        argv
    }

    /// §9.6: everything of the project goes, volumes included.
    pub fn down_argv(&self, timeout_secs: u64) -> Vec<String> {
        let mut argv = self.base();
        argv.extend([
            "down".into(),
            "--remove-orphans".into(),
            "--volumes".into(),
            "-t".into(),
            timeout_secs.to_string(),
        ]);
        argv
    }

    pub fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("DOCKER_CONFIG", &self.docker_config)
            .stdin(Stdio::null());
        cmd
    }

    /// Kills the project's containers: the job is over, nothing in them is
    /// worth a graceful shutdown.
    pub fn kill_argv(&self) -> Vec<String> {
        let mut argv = self.base();
        argv.extend(["kill".into(), "-s".into(), "SIGKILL".into()]);
        argv
    }

    /// Removes the session container and the project; bounded in time.
    pub fn cleanup(&self, grace: Duration) {
        let started = Instant::now();
        let _ = self
            .command(&self.kill_argv())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .env("DOCKER_CONFIG", &self.docker_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let down = self.down_argv(grace.as_secs().max(1));
        match self
            .command(&down)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => {
                log::info!(
                    "compose project {} removed in {:?}",
                    self.name,
                    started.elapsed()
                )
            }
            Ok(out) => log::error!(
                "compose down of {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => log::error!("cannot run compose down for {}: {e}", self.name),
        }
    }
}

/// Whether the engine already has `image` (no pull needed).
pub fn image_present(image: &str, docker_config: &Path) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", ".", image])
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_tools() {
        assert_eq!(
            detect_from(Some("Docker Compose version v2.20.2\n"), None),
            Some(ComposeTool::Plugin)
        );
        assert_eq!(
            detect_from(
                Some("docker: 'compose' is not a docker command."),
                Some("docker-compose version 1.29.2, build unknown\n")
            ),
            Some(ComposeTool::Standalone)
        );
        assert_eq!(detect_from(None, None), None);
        assert_eq!(detect_from(None, Some("something else")), None);
    }

    #[test]
    fn project_argv() {
        let p = Project {
            tool: ComposeTool::Standalone,
            name: project_name("Job 42/x", "ab12"),
            file: "/d/compose.yml".into(),
            main: "main".into(),
            container: "agent-job-42-x-ab12-main".into(),
            work_dir: "/d/work".into(),
            docker_config: "/d/work/docker".into(),
        };
        assert_eq!(p.name, "agent-job-42-x-ab12");
        assert_eq!(
            p.pull_main_argv().join(" "),
            "docker-compose --ansi never -p agent-job-42-x-ab12 -f /d/compose.yml pull main"
        );
        assert_eq!(
            p.up_services_argv(&["db".into(), "cache".into()]).join(" "),
            "docker-compose --ansi never -p agent-job-42-x-ab12 -f /d/compose.yml up -d db cache"
        );
        assert_eq!(
            p.session_argv(Path::new("/dev/pts/7"), Some(Path::new("/d/work/docker.sock")))
                .join(" "),
            "docker-compose --log-level CRITICAL --ansi never -p agent-job-42-x-ab12 -f /d/compose.yml run --rm --name agent-job-42-x-ab12-main -v /d/work/docker.sock:/var/run/docker.sock -v /d/work:/d/work:ro -v /dev/pts/7:/dev/job-stdin main bash --noediting"
        );
        assert!(!p
            .session_argv(Path::new("/dev/pts/7"), None)
            .join(" ")
            .contains("docker.sock"));
        assert!(p
            .down_argv(10)
            .join(" ")
            .ends_with("down --remove-orphans --volumes -t 10"));
        let plugin = Project {
            tool: ComposeTool::Plugin,
            ..p
        };
        assert!(plugin
            .pull_main_argv()
            .join(" ")
            .starts_with("docker compose --ansi never"));
    }
}
