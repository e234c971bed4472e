//! A real OpenSSH server and client for the tests of the SSH jump point
//! (docs/protocol.md §8, §13.2).
//!
//! `Sshd` runs `/usr/sbin/sshd -D` as a child of the test on 127.0.0.1 with a
//! configuration of the test's own: a host key made here, and keys read from
//! the `authorized_keys` file of the agent's HOME (an absolute path, since the
//! agent's HOME is a temporary directory, not the login user's home). The
//! client side is the real `ssh`, with a key pair made per test, and
//! `Terminal`, which drives an interactive `ssh -tt` through a
//! pseudo-terminal made by util-linux `script`. Every wait is bounded.
//!
//! It knows nothing of the agent: the tests decide what to log in to.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
/// sshd refuses to start without its privilege separation directory.
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long sshd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Ports tried before giving up, in case another test takes the free port
/// between our probe and sshd's bind.
const START_ATTEMPTS: usize = 5;
/// How long one `ssh` command may take, login included.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Whether the tests may use a real sshd here. Under
/// `AGENT_REQUIRE_DOCKER=1` a missing piece fails the test; otherwise the
/// test is told to return early, and the skip is recorded (`support::skip`).
pub fn available() -> bool {
    match missing_piece() {
        None => true,
        Some(reason) => super::skip::skip(&reason),
    }
}

fn missing_piece() -> Option<String> {
    if !Path::new(SSHD).is_file() {
        return Some(format!("{SSHD} is not installed (openssh-server)"));
    }
    let probes: [(&str, &[&str]); 4] = [
        ("ssh", &["-V"]),
        ("ssh-keygen", &["-?"]),
        ("script", &["--version"]),
        ("id", &["-u"]),
    ];
    for (program, args) in probes {
        let ran = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if ran.is_err() {
            return Some(format!("`{program}` cannot be run"));
        }
    }
    if command_text("id", &["-u"]).trim() != "0" {
        return Some("sshd can start sessions only when the tests run as root".to_owned());
    }
    if let Err(err) = fs::create_dir_all(PRIVSEP_DIR) {
        return Some(format!("cannot create {PRIVSEP_DIR}: {err}"));
    }
    None
}

/// The stdout of a short command that must succeed.
fn command_text(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Quotes `text` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b);
    if !text.is_empty() && text.bytes().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A client key pair made for one test.
pub struct ClientKey {
    /// The private key file, for `ssh -i`.
    pub path: PathBuf,
    /// The public key as one authorized_keys line, without the newline.
    pub public_line: String,
}

/// A running sshd of one test. Dropping it kills the server and the
/// connections it is still serving.
pub struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    user: String,
    log_path: PathBuf,
}

impl Sshd {
    /// Starts sshd reading keys from `authorized_keys` (absolute). Call
    /// `available` first.
    pub fn start(authorized_keys: &Path) -> Sshd {
        Sshd::start_with(authorized_keys, "")
    }

    /// `start`, with `extra` appended to the configuration (e.g. a chrooted
    /// `internal-sftp`).
    pub fn start_with(authorized_keys: &Path, extra: &str) -> Sshd {
        assert!(
            authorized_keys.is_absolute(),
            "AuthorizedKeysFile must be absolute: {}",
            authorized_keys.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("agent-sshd-it-")
            .tempdir()
            .expect("create a temporary directory");
        let host_key = dir.path().join("host_ed25519_key");
        keygen(&host_key, "agent-test-host");
        let user = command_text("id", &["-un"]).trim().to_owned();
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {keys}\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PidFile {pid_file}\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     LogLevel VERBOSE\n\
                     {extra}",
                    host_key = host_key.display(),
                    keys = authorized_keys.display(),
                    pid_file = dir.path().join("sshd.pid").display(),
                ),
            )
            .expect("write sshd_config");
            let log_path = dir.path().join(format!("sshd-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("create the sshd log");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // Its own group, so that Drop also reaches the processes
                // serving connections.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|err| panic!("start {SSHD}: {err}"));
            match wait_until_serving(&mut child, port) {
                Ok(()) => {
                    return Sshd {
                        dir,
                        child,
                        port,
                        user,
                        log_path,
                    }
                }
                Err(problem) => {
                    kill_group(&mut child);
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push(format!("port {port}: {problem}\n{log}"));
                }
            }
        }
        panic!(
            "sshd did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user every key logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// What sshd has logged so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A fresh ed25519 key pair without a passphrase.
    pub fn new_key(&self, name: &str) -> ClientKey {
        let path = self.dir.path().join(format!("client-{name}"));
        keygen(&path, &format!("agent-test-{name}"));
        let public =
            fs::read_to_string(format!("{}.pub", path.display())).expect("read the public key");
        ClientKey {
            path,
            public_line: public.trim_end().to_owned(),
        }
    }

    /// The `ssh` command line logging in with `key` and no other identity,
    /// then `options` (e.g. `-tt`), the destination and `remote`, which ssh
    /// joins with spaces and hands to the login user's shell.
    pub fn ssh_argv(&self, key: &ClientKey, options: &[&str], remote: &[&str]) -> Vec<String> {
        let port = self.port.to_string();
        let key_path = key.path.to_string_lossy().into_owned();
        let mut argv: Vec<String> = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            &port,
            "-i",
            &key_path,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(options.iter().map(|s| (*s).to_owned()));
        argv.push(format!("{}@127.0.0.1", self.user));
        argv.extend(remote.iter().map(|s| (*s).to_owned()));
        argv
    }

    /// Runs `ssh ... <remote>` without a terminal and returns what it did;
    /// fails the test if it takes longer than `SSH_TIMEOUT`.
    pub fn ssh(&self, key: &ClientKey, remote: &[&str]) -> SshOutput {
        let argv = self.ssh_argv(key, &[], remote);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        run_bounded(command, SSH_TIMEOUT)
    }

    /// Starts `ssh -tt ... <remote>` in a pseudo-terminal.
    pub fn ssh_terminal(&self, key: &ClientKey, remote: &[&str]) -> Terminal {
        Terminal::spawn(&self.ssh_argv(key, &["-tt"], remote))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills the process group led by our child `child` and reaps the leader.
fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) has no memory-safety preconditions. The group was
    // made for this child (`process_group(0)`), whose pid cannot have been
    // reused while it is unreaped.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn keygen(path: &Path, comment: &str) {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        output.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// Polls until sshd greets on `port`. An early exit (say, the port was
/// taken meanwhile) or a greeting that is not SSH is an error.
fn wait_until_serving(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("sshd exited with {status}"));
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut greeting = [0u8; 8];
            let read = stream.read_exact(&mut greeting);
            // Someone else may have taken the port; only sshd's banner counts.
            if read.is_ok() && &greeting == b"SSH-2.0-" && child.try_wait().ok() == Some(None) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no SSH greeting within {START_TIMEOUT:?}"));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// What one `ssh` command did.
#[derive(Debug)]
pub struct SshOutput {
    /// The exit code (255: ssh itself failed, e.g. the key was refused).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with stdin closed, reading stdout and stderr on threads;
/// fails the test if it cannot start or runs longer than `timeout`.
pub fn run_bounded(command: Command, timeout: Duration) -> SshOutput {
    let description = format!("{command:?}");
    try_run_bounded(command, timeout).unwrap_or_else(|err| panic!("start {description}: {err}"))
}

/// `run_bounded`, but a command that cannot be started is an error for the
/// caller (say, a tool that is not installed).
pub fn try_run_bounded(mut command: Command, timeout: Duration) -> std::io::Result<SshOutput> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = read_on_thread(child.stdout.take().expect("piped stdout"));
    let stderr = read_on_thread(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{description} did not finish within {timeout:?}; stdout: {:?}; stderr: {:?}",
                collect(&stdout),
                collect(&stderr)
            );
        }
        thread::sleep(POLL_INTERVAL);
    };
    Ok(SshOutput {
        code: status.code(),
        stdout: collect(&stdout),
        stderr: collect(&stderr),
    })
}

/// Everything a pipe delivers until it closes, read on a thread.
fn read_on_thread(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// What `read_on_thread` got, waiting a little for the pipe to close (a
/// grandchild could keep it open; then whatever arrived is lost).
fn collect(rx: &mpsc::Receiver<Vec<u8>>) -> String {
    rx.recv_timeout(Duration::from_secs(5))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A command running in a pseudo-terminal (util-linux `script`), typed into
/// through a pipe; everything the terminal shows is collected.
pub struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    /// Says when the terminal's output has ended.
    output_closed: mpsc::Receiver<()>,
}

impl Terminal {
    pub fn spawn(argv: &[String]) -> Terminal {
        let command_line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        let mut child = Command::new("script")
            .args(["--quiet", "--flush", "--return", "--command"])
            .arg(command_line.join(" "))
            .arg("/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // script reports its own troubles on the test's stderr.
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start script");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, output_closed) = mpsc::channel();
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    match stdout.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => output
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = closed_tx.send(());
            });
        }
        Terminal {
            child,
            stdin,
            output,
            output_closed,
        }
    }

    /// What the terminal has shown so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Types `text` as a user would.
    pub fn type_text(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("the terminal's input is open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|err| {
                panic!("type into the terminal: {err}; shown:\n{}", self.output())
            });
    }

    /// Waits until the terminal has shown `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the terminal's command ended ({status}) before showing {needle:?}; shown:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the terminal did not show {needle:?} within {timeout:?}; shown:\n{}",
                self.output()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the command to end; returns its exit code and everything
    /// the terminal showed.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for script") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal's command did not end within {timeout:?}; shown:\n{}",
                self.output()
            );
            thread::sleep(POLL_INTERVAL);
        };
        self.stdin = None;
        // script has exited, so only a leaked copy of its stdout could keep
        // the pipe open; what arrived until then is all there is.
        let _ = self.output_closed.recv_timeout(Duration::from_secs(5));
        (status.code(), self.output())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(&mut self.child);
        }
    }
}
