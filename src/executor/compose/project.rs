//! The docker and compose command lines of the compose executor
//! (docs/protocol.md §9, §3.3): tool detection, a compose project per job, a
//! compose file generated with serde, argv built by pure functions,
//! credential logins into a per-job `DOCKER_CONFIG`, and the cleanup that
//! runs `down --remove-orphans --volumes`.
//!
//! This module knows command lines, not jobs: the executor (`mod.rs`)
//! decides when each runs and how it is logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::job::request::{decode_b64, Container, Credentials};
use crate::util::id_slug;

/// Where the host's Docker socket is mounted in main (docker in docker).
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

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

/// Compose interpolates `$VAR` in every value; `$$` is a literal `$`.
fn literal(s: &str) -> Value {
    Value::String(s.replace('$', "$$"))
}

/// Options of the compose file that come from the agent, not the job.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Add `/dev/kvm` (only when the host has it and the flag allows it).
    pub kvm: bool,
    /// `--files host:dest` volumes for main.
    pub volumes: Vec<String>,
}

/// The compose file (§9.4) as a JSON value: services in request order, every
/// value literal (no interpolation), env values byte-exact.
pub fn compose_file(containers: &[Container], opts: &FileOptions) -> Result<Value, String> {
    let mut services = Map::new();
    for (i, c) in containers.iter().enumerate() {
        let mut svc = Map::new();
        svc.insert("image".into(), literal(&c.image));
        if opts.kvm {
            svc.insert("devices".into(), json!(["/dev/kvm:/dev/kvm"]));
        }
        if !c.command.is_empty() {
            svc.insert("command".into(), literal(&c.command));
        }
        if !c.user.is_empty() {
            svc.insert("user".into(), literal(&c.user));
        }
        if !c.entrypoint.is_empty() {
            svc.insert("entrypoint".into(), literal(&c.entrypoint));
        }
        if !c.env_vars.is_empty() {
            let mut env = Map::new();
            for v in &c.env_vars {
                let value = decode_b64(&v.value)
                    .map_err(|_| format!("cannot decode env var '{}' of '{}'", v.name, c.name))?;
                let value = String::from_utf8(value).map_err(|_| {
                    format!("env var '{}' of '{}' is not UTF-8 text", v.name, c.name)
                })?;
                env.insert(v.name.clone(), literal(&value));
            }
            svc.insert("environment".into(), Value::Object(env));
        }
        if i == 0 {
            let others: Vec<Value> = containers[1..].iter().map(|o| literal(&o.name)).collect();
            if !others.is_empty() {
                svc.insert("links".into(), Value::Array(others));
            }
            if !opts.volumes.is_empty() {
                let vols: Vec<Value> = opts.volumes.iter().map(|v| literal(v)).collect();
                svc.insert("volumes".into(), Value::Array(vols));
            }
        }
        services.insert(c.name.clone(), Value::Object(svc));
    }
    Ok(json!({ "version": "2.0", "services": services }))
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

    /// §9.2 step 3: the session's bash in main. docker-compose v1 logs a
    /// container's non-zero exit status as an error line of its own when
    /// `run` ends; only critical messages keep that line out of the job log.
    pub fn session_argv(&self) -> Vec<String> {
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
            "-v".into(),
            format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}"),
            "-v".into(),
            format!("{work}:{work}:ro"),
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

/// One credential entry's login (§3.3).
#[derive(Debug, Clone)]
pub struct Login {
    /// `Setting up credentials for <what>`.
    pub what: &'static str,
    /// The bash script run on the host, with `$VAR` references unexpanded.
    pub script: String,
    /// The entry's decoded env vars: the login's whole environment, with
    /// PATH, HOME and DOCKER_CONFIG added by the caller.
    pub env: BTreeMap<String, String>,
    /// Files to write on the host first (GCR's key file).
    pub files: Vec<crate::job::request::File>,
}

/// Resolves an entry's strategy from `DOCKER_CREDENTIAL_TYPE`. The error is
/// the line §9.2 prescribes.
pub fn login_for(entry: &Credentials) -> Result<Login, String> {
    let mut env = BTreeMap::new();
    for v in &entry.env_vars {
        let value = decode_b64(&v.value)
            .map_err(|_| format!("Failed to decode the value of '{}'", v.name))?;
        env.insert(v.name.clone(), String::from_utf8_lossy(&value).into_owned());
    }
    let kind = env
        .get("DOCKER_CREDENTIAL_TYPE")
        .cloned()
        .ok_or("Failed to resolve docker login strategy: DOCKER_CREDENTIAL_TYPE not set")?;
    let (what, script) = match kind.as_str() {
        "DockerHub" => (
            "DockerHub",
            "printf '%s' \"$DOCKERHUB_PASSWORD\" | docker login --username \"$DOCKERHUB_USERNAME\" --password-stdin".to_string(),
        ),
        "GenericDocker" => (
            "Docker",
            "printf '%s' \"$DOCKER_PASSWORD\" | docker login --username \"$DOCKER_USERNAME\" --password-stdin \"$DOCKER_URL\"".to_string(),
        ),
        "AWS_ECR" => ("ECR", ecr_script(env.contains_key("AWS_ACCOUNT_ID"))),
        "GCR" => (
            "GCR",
            "docker login --username _json_key --password-stdin \"https://$GCR_HOSTNAME\" < /tmp/gcr/keyfile.json".to_string(),
        ),
        other => {
            return Err(format!(
                "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: '{other}'"
            ))
        }
    };
    Ok(Login {
        what,
        script,
        env,
        files: if kind == "GCR" {
            entry.files.clone()
        } else {
            Vec::new()
        },
    })
}

/// ECR: aws CLI 2 pipes `get-login-password` into docker login; aws CLI 1
/// runs the login command `get-login` prints.
fn ecr_script(has_account: bool) -> String {
    let account = if has_account {
        "\"$AWS_ACCOUNT_ID\""
    } else {
        "\"$(aws sts get-caller-identity --query Account --output text)\""
    };
    let registry_ids = if has_account {
        " --registry-ids \"$AWS_ACCOUNT_ID\""
    } else {
        ""
    };
    format!(
        "if aws --version 2>&1 | grep -q '^aws-cli/1\\.'; then \
         $(aws ecr get-login --no-include-email --region \"$AWS_REGION\"{registry_ids}); \
         else aws ecr get-login-password --region \"$AWS_REGION\" | \
         docker login --username AWS --password-stdin {account}.dkr.ecr.\"$AWS_REGION\".amazonaws.com; fi"
    )
}

/// The login's command: bash with the entry's env vars only, plus PATH, HOME
/// and the job's DOCKER_CONFIG (so the login never touches ~/.docker).
pub fn login_command(login: &Login, docker_config: &Path, home: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&login.script)
        .env_clear()
        .envs(&login.env)
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null());
    cmd
}

/// The compose path rules (§9.5): absolute or `~`-prefixed as given (the
/// container's bash expands the tilde), else `~/<path>`; quoted for bash so
/// spaces and quotes survive, with a leading `~` or `~/` left unquoted.
pub fn container_path(path: &str) -> String {
    use crate::util::shell_quote;
    if let Some(rest) = path.strip_prefix("~/") {
        format!("~/{}", shell_quote(rest))
    } else if path == "~" {
        "~".into()
    } else if path.starts_with('/') {
        shell_quote(path)
    } else {
        format!("~/{}", shell_quote(path))
    }
}

/// `--files host:dest,...` (§9.6): pairs whose host path exists.
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

pub fn host_volumes(spec: Option<&str>) -> Vec<String> {
    let Some(spec) = spec else { return Vec::new() };
    spec.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|pair| {
            let (host, dest) = pair.split_once(':')?;
            if Path::new(host).exists() {
                Some(format!("{host}:{dest}"))
            } else {
                log::warn!("--files: {host} does not exist; not mounted");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::request::EnvVar;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn env_vars(vars: &[(&str, &str)]) -> Vec<EnvVar> {
        vars.iter()
            .map(|(n, v)| EnvVar {
                name: n.to_string(),
                value: b64(v),
                secret: false,
            })
            .collect()
    }

    fn container(name: &str, env: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            image: "agent-test/bash:1".into(),
            env_vars: env_vars(env),
            ..Container::default()
        }
    }

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
    fn hostile_values_survive_the_compose_file() {
        let nasty = "multi\nline: value # not a comment\n- \"quoted\" 'single' $HOME ${X} {a} * !tag &anchor";
        let file = compose_file(
            &[container("main", &[("NASTY", nasty)]), container("db", &[])],
            &FileOptions::default(),
        )
        .unwrap();
        let text = serde_json::to_string_pretty(&file).unwrap();
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        let env = &back["services"]["main"]["environment"]["NASTY"];
        // `$` is doubled for compose, which turns `$$` back into `$`.
        assert_eq!(env.as_str().unwrap().replace("$$", "$"), nasty);
        assert_eq!(back["services"]["main"]["links"][0], "db");
        assert!(back["services"]["main"].get("devices").is_none());
        assert!(back["services"]["db"].get("links").is_none());
    }

    #[test]
    fn kvm_only_when_asked() {
        let opts = FileOptions {
            kvm: true,
            volumes: vec![],
        };
        let file = compose_file(&[container("main", &[])], &opts).unwrap();
        assert_eq!(file["services"]["main"]["devices"][0], "/dev/kvm:/dev/kvm");
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
            p.session_argv().join(" "),
            "docker-compose --log-level CRITICAL --ansi never -p agent-job-42-x-ab12 -f /d/compose.yml run --rm --name agent-job-42-x-ab12-main -v /var/run/docker.sock:/var/run/docker.sock -v /d/work:/d/work:ro main bash --noediting"
        );
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

    fn creds(vars: &[(&str, &str)]) -> Credentials {
        Credentials {
            env_vars: env_vars(vars),
            files: vec![],
        }
    }

    #[test]
    fn login_strategies() {
        let hub = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "DockerHub"),
            ("DOCKERHUB_USERNAME", "u"),
            ("DOCKERHUB_PASSWORD", "p"),
        ]))
        .unwrap();
        assert_eq!(hub.what, "DockerHub");
        assert!(hub
            .script
            .contains("docker login --username \"$DOCKERHUB_USERNAME\" --password-stdin"));
        assert_eq!(hub.env["DOCKERHUB_PASSWORD"], "p");

        let generic = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "GenericDocker"),
            ("DOCKER_URL", "127.0.0.1:5000"),
        ]))
        .unwrap();
        assert_eq!(generic.what, "Docker");
        assert!(generic.script.ends_with("--password-stdin \"$DOCKER_URL\""));

        let ecr = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "AWS_ECR"),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(ecr.what, "ECR");
        assert!(ecr.script.contains("aws sts get-caller-identity"));
        assert!(ecr
            .script
            .contains("$(aws ecr get-login --no-include-email --region \"$AWS_REGION\")"));
        let ecr = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "AWS_ECR"),
            ("AWS_ACCOUNT_ID", "123"),
        ]))
        .unwrap();
        assert!(ecr.script.contains("--registry-ids \"$AWS_ACCOUNT_ID\""));
        assert!(ecr
            .script
            .contains("\"$AWS_ACCOUNT_ID\".dkr.ecr.\"$AWS_REGION\".amazonaws.com"));

        let gcr = login_for(&creds(&[("DOCKER_CREDENTIAL_TYPE", "GCR")])).unwrap();
        assert!(gcr.script.contains("https://$GCR_HOSTNAME"));
        assert!(gcr.script.contains("/tmp/gcr/keyfile.json"));

        assert_eq!(
            login_for(&creds(&[])).unwrap_err(),
            "Failed to resolve docker login strategy: DOCKER_CREDENTIAL_TYPE not set"
        );
        assert_eq!(
            login_for(&creds(&[("DOCKER_CREDENTIAL_TYPE", "Quay")])).unwrap_err(),
            "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: 'Quay'"
        );
    }

    #[test]
    fn login_environment_is_only_the_entry() {
        std::env::set_var("AGENT_TEST_LEAK", "x");
        let login = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "DockerHub"),
            ("DOCKERHUB_USERNAME", "u"),
        ]))
        .unwrap();
        let cmd = login_command(&login, Path::new("/cfg"), Path::new("/home/a"));
        let envs: BTreeMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        assert_eq!(envs["DOCKER_CONFIG"], "/cfg");
        assert_eq!(envs["DOCKERHUB_USERNAME"], "u");
        assert!(envs.contains_key("PATH"));
        assert!(!envs.contains_key("AGENT_TEST_LEAK"));
    }

    #[test]
    fn container_paths() {
        assert_eq!(container_path("/etc/a b"), "'/etc/a b'");
        assert_eq!(container_path("~/x y"), "~/'x y'");
        assert_eq!(container_path("rel/p"), "~/'rel/p'");
    }
}
