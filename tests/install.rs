//! `make install` and `make uninstall` (dist/install.sh) into a staging
//! root, as a package build runs them: the files and their modes, a
//! configuration never overwritten, `systemd-analyze verify` of both units
//! as installed, the serve unit's command line started as systemd would
//! start it, and an uninstall that leaves the root as it was, except for
//! what the administrator changed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::{run_bounded, CmdOutput};
use crate::support::skip;

/// `make install` copies files; `make` itself may read the toolchain.
const MAKE_TIMEOUT: Duration = Duration::from_secs(60);
const UNITS: [&str; 2] = ["agent-serve.service", "agent-start.service"];

/// `make -s <target> DESTDIR=<root> PREFIX=/usr BIN=<the test binary>`,
/// with `extra` variables; BIN on the command line skips the build.
pub fn make(target: &str, root: &Path, extra: &[&str]) -> CmdOutput {
    let mut command = Command::new("make");
    command
        .args(["-s", target])
        .arg(format!("DESTDIR={}", root.display()))
        .args(["PREFIX=/usr", concat!("BIN=", env!("CARGO_BIN_EXE_agent"))])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    run_bounded(command, b"", MAKE_TIMEOUT).ok(&format!("make {target}"))
}

/// Every path under `root`, with its mode and, for a file, a hash of its
/// bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Option<u64>)> {
    use std::hash::{Hash, Hasher};
    let mut seen = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read a directory") {
            let path = entry.expect("an entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let hash = if meta.is_dir() {
                todo.push(path.clone());
                None
            } else {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                fs::read(&path).expect("read a file").hash(&mut hasher);
                Some(hasher.finish())
            };
            seen.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                (meta.mode(), hash),
            );
        }
    }
    seen
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A staging root that already holds something of the machine's, which
/// neither make target may touch.
fn staging_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("agent-install-it-")
        .tempdir()
        .expect("a temporary directory");
    fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    fs::write(root.path().join("usr/bin/other"), "not ours").unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/hostname"), "box\n").unwrap();
    root
}

#[test]
fn make_install_puts_each_file_in_place_and_uninstall_takes_back_only_those() {
    let root = staging_root();
    let r = root.path();
    let before = snapshot(r);

    let out = make("install", r, &[]);
    let agent = r.join("usr/bin/agent");
    assert_eq!(mode(&agent), 0o755);
    assert_eq!(
        fs::read(&agent).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_agent")).unwrap(),
        "the binary is BIN as it is"
    );
    for unit in UNITS {
        let path = r.join("usr/lib/systemd/system").join(unit);
        assert_eq!(mode(&path), 0o644, "{unit}");
        let text = fs::read_to_string(&path).unwrap();
        // The binary where PREFIX put it; root, as no AGENT_USER was given.
        assert!(
            text.contains("\nExecStart=/usr/bin/agent "),
            "{unit}:\n{text}"
        );
        assert!(text.contains("\nUser=root\n"), "{unit}");
        assert!(text.contains("\nKillMode=mixed\n"), "{unit}");
        assert!(!text.contains("/usr/local"), "{unit} names /usr/local");
    }
    // What may hold a secret is 0600; the JWT secret is made, the token
    // file waits for the registration token.
    for file in ["agent.env", "config.yaml", "token", "auth-token-secret"] {
        assert_eq!(mode(&r.join("etc/agent").join(file)), 0o600, "{file}");
    }
    let secret = fs::read_to_string(r.join("etc/agent/auth-token-secret")).unwrap();
    assert!(
        secret.trim().len() >= 43,
        "a 32-byte secret in base64: {secret:?}"
    );
    assert_eq!(fs::read(r.join("etc/agent/token")).unwrap(), b"");
    let shipped = |name: &str| {
        fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("dist")
                .join(name),
        )
    };
    assert_eq!(
        fs::read(r.join("etc/agent/config.yaml")).unwrap(),
        shipped("config.yaml").unwrap()
    );
    assert_eq!(
        fs::read(r.join("etc/agent/agent.env")).unwrap(),
        shipped("agent.env").unwrap()
    );
    assert!(
        !out.stdout.contains("user "),
        "no AGENT_USER, no user:\n{}",
        out.stdout
    );

    // A second install keeps the configuration and the secret as they are.
    fs::write(r.join("etc/agent/config.yaml"), "endpoint: mine.example\n").unwrap();
    let installed = snapshot(r);
    let out = make("install", r, &[]);
    assert!(
        out.stdout
            .contains("etc/agent/config.yaml (it exists; not overwritten)"),
        "{}",
        out.stdout
    );
    assert_eq!(snapshot(r), installed, "a second install changed the root");

    // Uninstall keeps the changed configuration (and its directories), and
    // takes back everything else install made.
    let out = make("uninstall", r, &[]);
    assert!(
        out.stdout
            .contains("etc/agent/config.yaml: changed since make install"),
        "{}",
        out.stdout
    );
    assert_eq!(
        fs::read_to_string(r.join("etc/agent/config.yaml")).unwrap(),
        "endpoint: mine.example\n"
    );
    fs::remove_file(r.join("etc/agent/config.yaml")).unwrap();
    fs::remove_dir(r.join("etc/agent")).unwrap();
    assert_eq!(
        snapshot(r),
        before,
        "uninstall did not leave the root as it was"
    );

    // Without a record, uninstall removes nothing.
    let mut command = Command::new("make");
    command
        .args([
            "-s",
            "uninstall",
            &format!("DESTDIR={}", r.display()),
            "PREFIX=/usr",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run_bounded(command, b"", MAKE_TIMEOUT);
    assert!(!out.success());
    assert!(out.stderr.contains("nothing removed"), "{}", out.stderr);
    assert_eq!(snapshot(r), before);
}

#[test]
fn agent_user_goes_into_both_units_and_is_not_created_under_destdir() {
    let root = staging_root();
    let r = root.path();
    let before = snapshot(r);
    let user = "agent-it-nobody";
    let out = make("install", r, &[&format!("AGENT_USER={user}")]);
    for unit in UNITS {
        let text = fs::read_to_string(r.join("usr/lib/systemd/system").join(unit)).unwrap();
        assert!(
            text.contains(&format!("\nUser={user}\n")),
            "{unit}:\n{text}"
        );
        assert!(!text.contains("\nUser=root\n"), "{unit}");
    }
    assert!(
        out.stdout
            .contains(&format!("user {user}: not created under DESTDIR")),
        "{}",
        out.stdout
    );
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(
        !passwd.contains(&format!("\n{user}:")),
        "the user was created"
    );
    make("uninstall", r, &[]);
    assert_eq!(snapshot(r), before);
}

#[test]
fn both_installed_units_pass_systemd_analyze_verify() {
    let Some(verify) = systemd_analyze() else {
        return;
    };
    let root = staging_root();
    let r = root.path();
    make("install", r, &[]);
    // `verify --root` checks the ExecStart binary inside that root, where
    // the units put it; the root also needs the targets every service
    // depends on by default. A root of its own for that, so the staging
    // root keeps what install made and nothing else.
    let scratch = tempfile::Builder::new()
        .prefix("agent-verify-it-")
        .tempdir()
        .unwrap();
    let v = scratch.path();
    let units = v.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    fs::create_dir_all(v.join("usr/bin")).unwrap();
    fs::copy(r.join("usr/bin/agent"), v.join("usr/bin/agent")).unwrap();
    for unit in UNITS {
        fs::copy(
            r.join("usr/lib/systemd/system").join(unit),
            units.join(unit),
        )
        .unwrap();
    }
    for target in [
        "sysinit.target",
        "basic.target",
        "shutdown.target",
        "network-online.target",
        "multi-user.target",
    ] {
        fs::write(units.join(target), "[Unit]\nDescription=stub\n").unwrap();
    }
    let check = |units: &[&str]| {
        let mut command = Command::new(&verify);
        command.arg("verify").arg(format!("--root={}", v.display()));
        command.args(units.iter().map(|u| format!("/usr/lib/systemd/system/{u}")));
        run_bounded(command, b"", MAKE_TIMEOUT)
    };
    // verify exits 0 on an unknown key or a bad value, and only says so:
    // a clean unit is one it says nothing about.
    let out = check(&UNITS);
    assert!(
        out.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    // The check can fail: a misspelt setting is reported.
    let serve = units.join(UNITS[0]);
    let text = fs::read_to_string(&serve).unwrap();
    fs::write(&serve, text.replace("KillMode=mixed", "KillMode=mixd")).unwrap();
    let out = check(&UNITS[..1]);
    assert!(out.stderr.contains("mixd"), "{}{}", out.stdout, out.stderr);
    make("uninstall", r, &[]);
}

/// The path of `systemd-analyze`, or `None` after a recorded skip.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_none() {
        skip::skip("systemd-analyze is not installed (Debian: apt-get install systemd)");
    }
    found
}

/// The command a unit installed under `root` runs, as systemd would run
/// it there: its `Environment=` and `EnvironmentFile=` variables (with
/// `overrides` after them, as an administrator's edit of agent.env),
/// `$VAR` split into words, `%d` the credentials directory (the unit's
/// credentials have the names of their files in /etc/agent), and every
/// absolute path moved into `root`, where the `StateDirectory=` and
/// `LogsDirectory=` directories are made. HOME is `home`.
pub fn unit_command(root: &Path, unit: &str, home: &Path, overrides: &[(&str, &str)]) -> Command {
    let text = fs::read_to_string(root.join("usr/lib/systemd/system").join(unit))
        .unwrap_or_else(|e| panic!("{unit}: {e}"));
    let rebase = |word: &str| -> String {
        if word.starts_with('/') {
            format!("{}{word}", root.display())
        } else {
            word.to_owned()
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut exec = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "Environment" => {
                let (name, value) = value.split_once('=').expect("NAME=value");
                env.push((name.to_owned(), rebase(value)));
            }
            "EnvironmentFile" => {
                let path = rebase(value.trim_start_matches('-'));
                for l in fs::read_to_string(&path).unwrap_or_default().lines() {
                    if let Some((name, value)) = l.split_once('=').filter(|_| !l.starts_with('#')) {
                        env.push((name.trim().to_owned(), value.trim().to_owned()));
                    }
                }
            }
            "StateDirectory" | "LogsDirectory" => {
                let base = if key == "StateDirectory" {
                    "var/lib"
                } else {
                    "var/log"
                };
                let dir = root.join(base).join(value);
                fs::create_dir_all(&dir).unwrap();
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            }
            "ExecStart" => exec = Some(value.to_owned()),
            _ => {}
        }
    }
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let credentials = root.join("etc/agent");
    let mut words = Vec::new();
    for word in exec.expect("an ExecStart= line").split_whitespace() {
        if let Some(name) = word.strip_prefix('$') {
            words.extend(lookup(name).split_whitespace().map(str::to_owned));
        } else if let Some(rest) = word.strip_prefix("%d") {
            words.push(format!("{}{rest}", credentials.display()));
        } else {
            words.push(rebase(word));
        }
    }
    let mut command = Command::new(&words[0]);
    command
        .args(&words[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::null());
    command
}

#[test]
fn the_installed_serve_unit_starts_and_stops_on_sigterm() {
    let root = staging_root();
    let r = root.path();
    make("install", r, &[]);
    let home = r.join("root");
    fs::create_dir(&home).unwrap();
    // Port 8000 may be taken on this machine: the edit an administrator
    // would make in agent.env.
    let mut command = unit_command(
        r,
        "agent-serve.service",
        &home,
        &[("AGENT_SERVE_ARGS", "--host 127.0.0.1 --port 0")],
    );
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the unit's command");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let listening = matches!(&first, Ok(line) if line.contains(" listening on https://127.0.0.1:"));
    // SIGTERM, as `systemctl stop` sends it to the main process.
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent serve did not exit within TimeoutStopSec after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    assert!(listening, "first line {first:?}; stderr:\n{stderr}");
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    // The log and the data went where the unit says, in the directories
    // systemd makes.
    let log = fs::read_to_string(r.join("var/log/agent/serve.log")).expect("the agent log");
    assert!(log.contains("listening on 127.0.0.1:"), "{log}");
    assert!(r.join("var/lib/agent/serve/tls/server.crt").exists());
    assert!(!stderr.contains(" WARN "), "{stderr}");
}
