//! A real S3 service for the cache tests: Garage (`cargo install garage
//! --locked`), three nodes on loopback with replication factor 3 and
//! `consistency_mode = "consistent"`, each with its own config file, RPC
//! and S3 ports and directories in a temporary directory. The support
//! connects the nodes, assigns each a zone and applies the layout, makes a
//! bucket and a key that may read, write and own it, and kills the nodes
//! when dropped. Garage's S3 region is `garage` and it takes path-style
//! requests only.
//!
//! `make bench` uses this file too (benches/cache.rs).
//!
//! The tests look into the bucket with their own small client (rusty-s3
//! over ureq, as the agent does): its objects, and its incomplete multipart
//! uploads.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

pub const BUCKET: &str = "agent-cache";
pub const REGION: &str = "garage";
/// How long a cluster may take to start and agree on its layout.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const RPC_SECRET: &str = "0f4c43c1a5e3b4d7e1f7a3b2c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// The garage binary: `$GARAGE_BIN`, else `garage` on PATH, else cargo's.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GARAGE_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let cargo = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/garage");
        cargo.is_file().then_some(cargo)
    })
}

/// Whether Garage can run here; else the test is told to return early and
/// the skip is recorded (under `AGENT_REQUIRE_DOCKER=1`, a failure).
pub fn available() -> bool {
    match binary() {
        Some(_) => true,
        None => super::skip::skip(
            "no garage binary (cargo install garage --locked, or GARAGE_BIN=path)",
        ),
    }
}

/// Waits until `condition` holds, at most `timeout`.
fn poll_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

pub struct Garage {
    bin: PathBuf,
    /// The nodes' configs and directories, removed with the cluster.
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// The nodes' ids (`ID@HOST:PORT`), once set up.
    ids: Vec<String>,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Call `available` first.
    pub fn start() -> Garage {
        Garage::start_with(binary().expect("garage (see available)"))
    }

    pub fn start_with(bin: PathBuf) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("agent-garage-it-")
            .tempdir()
            .expect("a directory for garage");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (s3_port, rpc_port) = (free_port(), free_port());
            let home = dir.path().join(format!("node{i}"));
            fs::create_dir_all(&home).expect("a node directory");
            let config = home.join("garage.toml");
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{home}/meta\"\n\
                     data_dir = \"{home}/data\"\n\
                     db_engine = \"sqlite\"\n\
                     replication_factor = 3\n\
                     consistency_mode = \"consistent\"\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_secret = \"{RPC_SECRET}\"\n\
                     [s3_api]\n\
                     s3_region = \"{REGION}\"\n\
                     api_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                    home = home.display()
                ),
            )
            .expect("write a garage config");
            nodes.push(Node {
                config,
                s3_port,
                child: None,
            });
        }
        let mut garage = Garage {
            bin,
            _dir: dir,
            nodes,
            ids: Vec::new(),
            key_id: format!("GK{}", hex(12)),
            secret: hex(32),
        };
        for i in 0..3 {
            garage.spawn(i);
        }
        garage.set_up();
        garage
    }

    fn spawn(&mut self, i: usize) {
        let home = self.nodes[i].config.parent().unwrap().to_path_buf();
        let log = |name: &str| File::create(home.join(name)).expect("a garage log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("start garage");
        self.nodes[i].child = Some(child);
    }

    /// `garage -c CONFIG ARGS` against node `i`.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage")
    }

    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}\nnode log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.node_log(i)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_log(&self, i: usize) -> String {
        let home = self.nodes[i].config.parent().unwrap();
        fs::read_to_string(home.join("stderr.log")).unwrap_or_default()
    }

    fn set_up(&mut self) {
        let mut ids = Vec::new();
        for i in 0..3 {
            poll_until("a garage node answers", START_TIMEOUT, || {
                self.cli(i, &["node", "id", "-q"]).status.success()
            });
            let id = self.cli_ok(i, &["node", "id", "-q"]).trim().to_string();
            ids.push(id);
        }
        for id in &ids[1..] {
            self.cli_ok(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let hex_id = id.split('@').next().unwrap();
            let short = &hex_id[..16];
            poll_until("the nodes know each other", START_TIMEOUT, || {
                String::from_utf8_lossy(&self.cli(0, &["status"]).stdout).contains(short)
            });
            self.cli_ok(
                0,
                &[
                    "layout",
                    "assign",
                    "-z",
                    &format!("dc{i}"),
                    "-c",
                    "1G",
                    hex_id,
                ],
            );
        }
        self.cli_ok(0, &["layout", "apply", "--version", "1"]);
        self.ids = ids;
        self.cli_ok(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "agent",
                &self.key_id,
                &self.secret,
            ],
        );
        self.cli_ok(0, &["bucket", "create", BUCKET]);
        self.cli_ok(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                BUCKET,
                "--key",
                &self.key_id,
            ],
        );
        // Every node serves the bucket before a test starts.
        for i in 0..3 {
            poll_until("every garage node serves the bucket", START_TIMEOUT, || {
                self.try_list(i, "", false).is_ok()
            });
        }
    }

    /// The S3 endpoint of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.s3_port(i))
    }

    /// The loopback port of node `i`'s S3 endpoint.
    pub fn s3_port(&self, i: usize) -> u16 {
        self.nodes[i].s3_port
    }

    /// The flags of an agent whose cache is this cluster, at node `i`'s
    /// endpoint (or several, comma-separated: `urls`).
    pub fn agent_args_at(&self, urls: &str) -> Vec<String> {
        [
            "--cache-backend",
            "s3",
            "--cache-s3-bucket",
            BUCKET,
            "--cache-s3-url",
            urls,
            "--cache-s3-region",
            REGION,
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn agent_args(&self) -> Vec<String> {
        self.agent_args_at(&self.url(0))
    }

    /// The agent's credentials, as environment variables.
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SEMAPHORE_CACHE_S3_KEY", self.key_id.clone()),
            ("SEMAPHORE_CACHE_S3_SECRET", self.secret.clone()),
        ]
    }

    /// Kills node `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again, after `kill`, on its data; returns once it
    /// serves the bucket (it has found a quorum of its peers again).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} still runs");
        self.spawn(i);
        // Else the nodes find each other again only some 20 s later. The
        // command fails until the node takes RPC.
        for (peer, id) in self.ids.iter().enumerate() {
            if peer != i && self.nodes[peer].child.is_some() {
                poll_until("a restarted garage node connects", START_TIMEOUT, || {
                    self.cli(i, &["node", "connect", id]).status.success()
                });
            }
        }
        poll_until(
            "a restarted garage node serves the bucket",
            START_TIMEOUT,
            || self.try_list(i, "", false).is_ok(),
        );
    }

    /// The names of the objects node `i` lists, as it lists them.
    pub fn listed_at(&self, i: usize) -> Vec<String> {
        let body = self.try_list(i, "", false).expect("list the bucket");
        let page = rusty_s3::actions::ListObjectsV2::parse_response(&body).expect("a listing");
        page.contents.into_iter().map(|o| o.key).collect()
    }

    fn bucket(&self, i: usize) -> Bucket {
        Bucket::new(
            self.url(i).parse().unwrap(),
            UrlStyle::Path,
            BUCKET.to_string(),
            REGION.to_string(),
        )
        .unwrap()
    }

    fn http() -> ureq::Agent {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        )
    }

    /// The objects under `prefix`, by asking node `i`; or the raw answer
    /// of ListMultipartUploads when `uploads`.
    fn try_list(&self, i: usize, prefix: &str, uploads: bool) -> Result<String, String> {
        let creds = self.creds();
        let bucket = self.bucket(i);
        let url = if uploads {
            let mut action = bucket.get_object(Some(&creds), "");
            action.query_mut().insert("uploads", "");
            action.sign(Duration::from_secs(600))
        } else {
            let mut action = bucket.list_objects_v2(Some(&creds));
            action.with_prefix(prefix);
            action.sign(Duration::from_secs(600))
        };
        let mut response = Self::http()
            .get(url.as_str())
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .call()
            .map_err(|e| e.to_string())?;
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}: {body}", response.status()));
        }
        Ok(body)
    }

    /// The names of the objects under `prefix`, sorted, asking the first
    /// node that runs. Garage lists what each node of a read quorum holds,
    /// each node leaving out what it knows to be deleted: for a moment
    /// after a delete, one that has not heard of it yet still lists the
    /// object. Asking for the object itself merges what the nodes hold, so
    /// a listed object counts only when a `HEAD` finds it.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let i = self.running_node();
        let body = self.try_list(i, prefix, false).expect("list the bucket");
        let page = rusty_s3::actions::ListObjectsV2::parse_response(&body).expect("a listing");
        let mut names: Vec<String> = page
            .contents
            .into_iter()
            .map(|o| o.key)
            .filter(|key| self.found(i, self.bucket(i).head_object(Some(&self.creds()), key)))
            .collect();
        names.sort();
        names
    }

    /// The objects of incomplete multipart uploads; like `objects`, each
    /// listed upload counts only when its parts can be listed.
    pub fn uploads(&self) -> Vec<String> {
        let i = self.running_node();
        let body = self.try_list(i, "", true).expect("list the uploads");
        body.split("<Upload>")
            .skip(1)
            .filter_map(|u| Some((tag(u, "Key")?, tag(u, "UploadId")?)))
            .filter(|(key, id)| {
                let bucket = self.bucket(i);
                self.found(i, bucket.list_parts(Some(&self.creds()), key, id))
            })
            .map(|(key, _)| key.to_string())
            .collect()
    }

    fn creds(&self) -> Credentials {
        Credentials::new(self.key_id.clone(), self.secret.clone())
    }

    /// Whether node `i` answers `action` (a HEAD or a GET) with a success
    /// rather than a 404.
    fn found<'a, A: S3Action<'a>>(&self, i: usize, action: A) -> bool {
        let url = action.sign(Duration::from_secs(600));
        let request = match A::METHOD {
            rusty_s3::Method::Head => Self::http().head(url.as_str()),
            _ => Self::http().get(url.as_str()),
        };
        let response = request
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .call()
            .unwrap_or_else(|e| panic!("ask garage node {i}: {e}"));
        match response.status().as_u16() {
            200..=299 => true,
            404 => false,
            status => panic!("garage node {i} answers {status}"),
        }
    }

    fn running_node(&self) -> usize {
        (0..3)
            .find(|&i| self.nodes[i].child.is_some())
            .expect("a garage node that runs")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The text of the first `<name>` element in `xml`.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..end])
}

fn hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
