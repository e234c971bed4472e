//! A private registry on loopback with htpasswd auth, logins into it, image tags removed on drop, and free ports.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::docker::*;
use super::Job;

/// A TCP port on 127.0.0.1 nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a local address").port()
}

/// A unique lowercase suffix for image tags and repository names.
pub fn unique_tag(name: &str) -> String {
    let id = Job::new(name).job_id;
    id.to_ascii_lowercase()
}

/// A private registry from `tests/docker/registry.sh` (htpasswd auth, user
/// `agent`, password `s3cret`) on 127.0.0.1; stopped on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

pub const REGISTRY_USER: &str = "agent";
pub const REGISTRY_PASSWORD: &str = "s3cret";

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("agent-registry-")
            .tempdir()
            .expect("a registry directory");
        let mut problems = Vec::new();
        // A free port may be taken between the probe and the start.
        for _ in 0..3 {
            let port = free_port().to_string();
            let mut command = Command::new("bash");
            command
                .arg(script("registry.sh"))
                .arg("start")
                .arg(dir.path())
                .arg(&port);
            let out = run_bounded(command, b"", Duration::from_secs(120));
            if out.success() {
                let addr = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("REGISTRY_ADDR="))
                    .unwrap_or_else(|| panic!("no REGISTRY_ADDR in {:?}", out.stdout))
                    .to_owned();
                return Registry { dir, addr };
            }
            problems.push(out.stderr);
        }
        panic!("the registry did not start: {problems:#?}");
    }

    /// `GET http://<addr><path>` with the registry's credentials.
    pub fn get(&self, path: &str) -> (u16, String) {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build();
        let http = ureq::Agent::new_with_config(config);
        let auth = format!(
            "Basic {}",
            super::b64(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"))
        );
        let url = format!("http://{}{path}", self.addr);
        let mut response = http
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("read GET {url}: {e}"));
        (response.status().as_u16(), body)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let mut command = Command::new("bash");
        command
            .arg(script("registry.sh"))
            .arg("stop")
            .arg(self.dir.path());
        let _ = run_bounded(command, b"", Duration::from_secs(60));
    }
}

/// A `DOCKER_CONFIG` directory of the test's own, logged in to a registry.
pub struct DockerLogin {
    dir: tempfile::TempDir,
}

impl DockerLogin {
    pub fn new(registry: &Registry) -> DockerLogin {
        let dir = tempfile::Builder::new()
            .prefix("agent-docker-config-")
            .tempdir()
            .expect("a DOCKER_CONFIG directory");
        docker_with_config(
            dir.path(),
            &[
                "login",
                "--username",
                REGISTRY_USER,
                "--password-stdin",
                &registry.addr,
            ],
            REGISTRY_PASSWORD.as_bytes(),
        )
        .ok("docker login to the test registry");
        DockerLogin { dir }
    }

    pub fn docker(&self, args: &[&str]) -> CmdOutput {
        docker_with_config(self.dir.path(), args, b"")
    }
}

/// Removes an image tag from the engine when dropped.
pub struct ImageTag(pub String);

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

/// Checks that `.docker/config.json` under `home` holds no registry
/// credentials: it does not exist, or its `auths` is missing or empty.
pub fn has_no_docker_credentials(home: &Path) -> Result<(), String> {
    let path = home.join(".docker/config.json");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not JSON ({e}): {text}", path.display()))?;
    match config.get("auths") {
        None => Ok(()),
        Some(Value::Object(auths)) if auths.is_empty() => Ok(()),
        Some(_) => Err(format!("{} holds credentials: {text}", path.display())),
    }
}
