//! `--job-user`: shell jobs run as a user that is not the agent's (README,
//! "What a job can read"). With `auto`, each job gets a user of its own,
//! made when it is accepted and removed, with what it left, when it ends or
//! when a restarted agent cleans up after it; with a name, every job runs as
//! that user, and the agent writes in that user's home as that user.
//!
//! The tests run as root (the only way the agent can run jobs as another
//! user); elsewhere they skip.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::control_plane::{ControlPlane, REGISTRATION_TOKEN};
use crate::support::listen_agent::{outputs as listen_outputs, ListenAgent};
use crate::support::procs::{kill_processes_of_uid, processes_of_uid};
use crate::support::server::TestAgent;
use crate::support::server::EVENT_TIMEOUT;
use crate::support::skip::skip;
use crate::support::{wait_until, Job, JOB_TIMEOUT};

/// How long the agent may take to remove what a job left.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

const SECRET: &str = "job-user-secret-A-8c1f2e";

/// Root with `useradd` and `userdel`, or a recorded skip.
fn can_make_users() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("running jobs as other users needs root");
    }
    let found = |tool: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
    };
    if !found("useradd") || !found("userdel") {
        return skip("useradd/userdel are not installed (Debian: passwd)");
    }
    true
}

/// A directory for the agent that other users can pass through (as a
/// data dir under `--job-user` must be), removed at the end.
fn reachable_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("agent-job-user-")
        .tempdir()
        .expect("create a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// Submits `job` once the agent takes it: the job before may still be
/// tearing down.
fn submit_when_free(agent: &TestAgent, job: &Value) {
    crate::support::server::poll_until("the agent to take the job", EVENT_TIMEOUT, || {
        let reply = agent.submit(job);
        match reply.status {
            200 => true,
            422 if reply.message().starts_with("another job is tearing down") => false,
            _ => panic!("POST /jobs: {}", reply.text()),
        }
    });
}

fn outputs(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["output"].as_str()).collect()
}

fn user_exists(name: &str) -> bool {
    uid_of(name).is_some()
}

/// The uid of `name`; None when there is no such user.
fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)?
        .trim()
        .parse()
        .ok()
}

/// The value after `label=` on a line of `text`.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}=")))
        .unwrap_or_else(|| panic!("no {label}= in:\n{text}"))
}

#[test]
fn a_job_of_its_own_user_reads_nothing_of_the_agent_nor_of_another_job() {
    if !can_make_users() {
        return;
    }
    let root = reachable_root();
    // What the agent holds: a config file and an SFTP key, private to it.
    for (name, text) in [
        ("config.yaml", "token: agent-token-x\n"),
        ("id_sftp", "KEY\n"),
    ] {
        fs::write(root.path().join(name), text).expect("write");
        fs::set_permissions(root.path().join(name), fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let agent = TestAgent::builder()
        .root(root.path())
        .jobs(2)
        .arg("--job-user")
        .arg("auto")
        .start();

    let a = Job::new("ju-a")
        .env("SECRET_A", SECRET)
        .command("echo uid=$(id -u); echo home=$HOME; echo ready; exec -a ju-holder-a sleep 60");
    agent.submit_ok(&a.to_value());
    agent.wait_for_event(&a.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().is_some_and(|o| o.contains("ready"))
    });
    let a_out = outputs(&agent.poll_log(&a.job_id));

    let data = root.path().join("data");
    let b = Job::new("ju-b")
        .command("echo uid=$(id -u); echo user=$(whoami); echo home=$HOME")
        // The other job's processes: found, but their environment unreadable.
        .command("for d in /proc/[0-9]*; do case $(tr '\\0' ' ' < $d/cmdline 2>/dev/null) in ju-holder-a*) echo pid=${d#/proc/}; tr '\\0' '\\n' < $d/environ;; esac; done; true")
        // The agent, the parent of the job's subreaper.
        .command("tr '\\0' '\\n' < /proc/$(awk '{print $4}' /proc/$PPID/stat)/environ; true")
        .command("kill -0 $PPID; echo kill-subreaper=$?")
        .command(&format!(
            "cat {r}/config.yaml {r}/id_sftp; ls {d} {d}/jobs; cat {d}/jobs/*/work/env; true",
            r = root.path().display(),
            d = data.display()
        ))
        .command("touch ~/mine && stat -c owner=%U ~/mine")
        // The other job's home, which exists while it runs.
        .command("for h in /home/agent-job-*; do [ \"$h\" = \"$HOME\" ] || { ls \"$h\" >/dev/null 2>&1 && echo \"read-other-home=$h\"; }; done; true");
    agent.submit_ok(&b.to_value());
    let b_events = agent.wait_for_job_finished(&b.job_id);
    let b_out = outputs(&b_events);
    assert_eq!(b_events.last().unwrap()["result"], "passed", "{b_out}");

    let (uid_a, uid_b) = (field(&a_out, "uid"), field(&b_out, "uid"));
    assert!(
        uid_a != "0" && uid_b != "0" && uid_a != uid_b,
        "a: {a_out}\nb: {b_out}"
    );
    assert!(field(&b_out, "user").starts_with("agent-job-"), "{b_out}");
    assert_eq!(
        field(&b_out, "home"),
        format!("/home/{}", field(&b_out, "user"))
    );
    assert_eq!(field(&b_out, "owner"), field(&b_out, "user"));
    assert!(b_out.contains("pid="), "the holder was not seen: {b_out}");
    assert!(!b_out.contains("read-other-home="), "{b_out}");
    for leaked in [
        SECRET,
        "agent-token-x",
        "KEY",
        "AGENT_AUTH_TOKEN_SECRET",
        "SECRET_A",
    ] {
        assert!(!b_out.contains(leaked), "the job read {leaked:?}:\n{b_out}");
    }
    assert!(b_out.contains("Permission denied"), "{b_out}");
    assert_ne!(field(&b_out, "kill-subreaper"), "0", "{b_out}");

    // A's user and home exist while it runs, and go with it.
    let home_a = field(&a_out, "home").to_string();
    let user_a = home_a.trim_start_matches("/home/").to_string();
    assert!(user_exists(&user_a));
    let stop = agent.post(&format!("/jobs/{}/stop", a.job_id), b"");
    assert_eq!(stop.status, 200);
    agent.wait_for_job_finished(&a.job_id);
    wait_until("the job users to be removed", CLEANUP_TIMEOUT, || {
        !user_exists(&user_a) && !user_exists(field(&b_out, "user"))
    });
    assert!(!Path::new(&home_a).exists());
}

#[test]
fn a_user_made_for_a_job_goes_with_everything_it_left() {
    if !can_make_users() {
        return;
    }
    let root = reachable_root();
    let agent = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg("auto")
        .start();
    let job = Job::new("ju-leaves")
        .command("echo user=$(whoami) && echo uid=$(id -u)")
        .command("mkdir -p /tmp/ju-left-dir && touch /tmp/ju-left-dir/f /var/tmp/ju-left /dev/shm/ju-left")
        // An escapee without the job's mark, in a session of its own.
        .command("setsid env -u AGENT_JOB_MARK bash -c 'exec -a ju-escapee sleep 600' </dev/null >/dev/null 2>&1 &")
        .command("echo $TMPDIR; touch $TMPDIR/scratch; mktemp");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    let out = outputs(&events);
    assert_eq!(events.last().unwrap()["result"], "passed", "{out}");
    let user = field(&out, "user").to_string();
    let uid: u32 = field(&out, "uid").parse().expect("a uid");
    wait_until("the job's user to be removed", CLEANUP_TIMEOUT, || {
        !user_exists(&user)
    });
    for path in ["/tmp/ju-left-dir", "/var/tmp/ju-left", "/dev/shm/ju-left"] {
        assert!(!Path::new(path).exists(), "{path} is left");
    }
    assert!(!Path::new(&format!("/home/{user}")).exists());
    assert_eq!(processes_of_uid(uid), Vec::<String>::new());
}

#[test]
fn a_restarted_agent_removes_the_user_of_a_job_cut_short() {
    if !can_make_users() {
        return;
    }
    let root = reachable_root();
    let first = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg("auto")
        .start();
    let job = Job::new("ju-crash").command("echo user=$(whoami) uid=$(id -u); sleep 600");
    first.submit_ok(&job.to_value());
    first.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().is_some_and(|o| o.contains("user="))
    });
    // The whole line: its output may come in more than one event.
    let whole = |out: &str| {
        out.split_once(" uid=")
            .is_some_and(|(_, r)| r.contains('\n'))
    };
    let mut out = String::new();
    wait_until("the job's user and uid", EVENT_TIMEOUT, || {
        out = outputs(&first.poll_log(&job.job_id));
        whole(&out)
    });
    let (user, uid) = field(&out, "user").split_once(" uid=").expect("user= uid=");
    let (user, uid) = (user.to_string(), uid.parse::<u32>().expect("a uid"));
    assert!(user_exists(&user));
    // What the check below looks for: the job runs as that uid.
    assert!(!processes_of_uid(uid).is_empty());
    first.signal(libc::SIGKILL);
    wait_until("the agent to die", CLEANUP_TIMEOUT, || !first.is_running());
    let second = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg("auto")
        .start();
    wait_until("the job's user to be removed", CLEANUP_TIMEOUT, || {
        !user_exists(&user)
    });
    assert!(!Path::new(&format!("/home/{user}")).exists());
    assert_eq!(processes_of_uid(uid), Vec::<String>::new());
    let events = second.poll_log(&job.job_id);
    assert_eq!(events.last().unwrap()["result"], "failed");
    drop(second);
    drop(first);
}

/// A named user that the test makes (and removes).
struct NamedUser(String);

impl NamedUser {
    fn make(name: &str) -> NamedUser {
        let _ = Command::new("userdel").args(["--remove", name]).output();
        // Agents of other tests may hold the user database's lock.
        for _ in 0..20 {
            let status = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/bash", name])
                .status()
                .expect("useradd");
            if status.success() {
                return NamedUser(name.to_string());
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("useradd {name} failed 20 times");
    }

    fn home(&self) -> String {
        format!("/home/{}", self.0)
    }

    fn uid(&self) -> u32 {
        uid_of(&self.0).expect("the user's uid")
    }
}

impl Drop for NamedUser {
    fn drop(&mut self) {
        if let Some(uid) = uid_of(&self.0) {
            kill_processes_of_uid(uid);
        }
        let _ = Command::new("userdel")
            .args(["--force", "--remove", &self.0])
            .status();
    }
}

#[test]
fn the_agent_writes_in_a_named_users_home_only_what_that_user_could() {
    if !can_make_users() {
        return;
    }
    let user = NamedUser::make("agent-ju-named");
    let root = reachable_root();
    // A root-owned file the user can read but not write, and links to it
    // that an earlier job of the user planted in its home.
    let target = root.path().join("not-the-jobs");
    fs::write(&target, "original\n").expect("write");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).expect("chmod");
    let home = user.home();
    std::os::unix::fs::symlink(&target, Path::new(&home).join("planted")).expect("symlink");
    let chown = |path: &str| {
        Command::new("chown")
            .args(["-h", &format!("{0}:{0}", user.0), path])
            .status()
            .expect("chown");
    };
    chown(&format!("{home}/planted"));
    fs::create_dir_all(format!("{home}/.ssh")).expect("mkdir");
    std::os::unix::fs::symlink(&target, format!("{home}/.ssh/authorized_keys")).expect("symlink");
    chown(&format!("{home}/.ssh"));
    chown(&format!("{home}/.ssh/authorized_keys"));

    let agent = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg(&user.0)
        .start();
    // Injected through the planted link: refused, as for the user itself.
    let job = Job::new("ju-named-inject")
        .file("planted", "replaced\n", "0644")
        .command("echo never");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    let out = outputs(&events);
    assert_eq!(events.last().unwrap()["result"], "failed", "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "original\n");

    // A jump point's key through the planted authorized_keys: the link is
    // replaced (as the user could), never followed for writing.
    let mut job = Job::new("ju-named-keys").command("echo ran").to_value();
    job["ssh_public_keys"] = serde_json::json!([crate::support::b64("ssh-ed25519 AAAAjob")]);
    submit_when_free(&agent, &job);
    agent.wait_for_job_finished(job["job_id"].as_str().unwrap());
    assert_eq!(fs::read_to_string(&target).unwrap(), "original\n");

    // A file of its own lands in its home, as its own.
    let job = Job::new("ju-named-ok")
        .file("dir/own.txt", "mine\n", "0600")
        .command("cat ~/dir/own.txt; whoami");
    submit_when_free(&agent, &job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    let out = outputs(&events);
    assert_eq!(events.last().unwrap()["result"], "passed", "{out}");
    assert!(out.contains(&format!("mine\n{}\n", user.0)), "{out}");
    let meta = fs::metadata(format!("{home}/dir/own.txt")).expect("stat");
    let uid = fs::metadata(&home).expect("stat home").uid();
    assert_eq!(meta.uid(), uid);
    // A named user is not removed with its jobs.
    thread::sleep(Duration::from_millis(100));
    assert!(user_exists(&user.0));
    drop(agent);
}

/// After a crash, the keys of a named user's jump point leave that user's
/// home (where they were written), not the agent's: a key left there would
/// let its holder log in as the user long after the job.
#[test]
fn a_restarted_agent_removes_a_jump_point_key_from_the_named_users_home() {
    if !can_make_users() {
        return;
    }
    let user = NamedUser::make("agent-ju-crashkeys");
    let root = reachable_root();
    // The agent's own user holds the same key (an administrator's): it stays.
    let key = "ssh-ed25519 AAAAcrashkey";
    let agents_keys = root.path().join("home/.ssh/authorized_keys");
    fs::create_dir_all(agents_keys.parent().unwrap()).expect("mkdir");
    fs::write(&agents_keys, format!("{key}\n")).expect("write");
    let users_keys = format!("{}/.ssh/authorized_keys", user.home());
    let users_keys_text = || fs::read_to_string(&users_keys).unwrap_or_default();

    let first = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg(&user.0)
        .start();
    let mut job = Job::new("ju-crash-keys")
        .command("echo up; sleep 600")
        .to_value();
    job["ssh_public_keys"] = serde_json::json!([crate::support::b64(key)]);
    let job_id = job["job_id"].as_str().expect("job_id").to_string();
    first.submit_ok(&job);
    first.wait_for_event(&job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().is_some_and(|o| o.contains("up"))
    });
    assert!(users_keys_text().contains(key), "{}", users_keys_text());
    first.signal(libc::SIGKILL);
    wait_until("the agent to die", CLEANUP_TIMEOUT, || !first.is_running());

    let second = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg(&user.0)
        .start();
    wait_until(
        "the job's key to leave the user's home",
        CLEANUP_TIMEOUT,
        || !users_keys_text().contains(key),
    );
    assert_eq!(
        fs::read_to_string(&agents_keys).unwrap(),
        format!("{key}\n")
    );
    let events = second.poll_log(&job_id);
    assert_eq!(events.last().unwrap()["result"], "failed");
    assert_eq!(processes_of_uid(user.uid()), Vec::<String>::new());
    drop(second);
    drop(first);
}

#[test]
fn a_data_dir_the_jobs_user_cannot_reach_is_refused_at_start() {
    if !can_make_users() {
        return;
    }
    // No other user passes through a directory of mode 0700.
    let root = tempfile::Builder::new()
        .prefix("agent-job-user-closed-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    // Bounded: an agent that wrongly starts serving is killed.
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_agent")])
        .args(["serve", "--port", "0", "--job-user", "auto", "--data-dir"])
        .arg(root.path().join("data"))
        .env("AGENT_AUTH_TOKEN_SECRET", "x".repeat(32))
        .env("HOME", root.path())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not searchable by other users"),
        "{stderr}"
    );
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_agent")])
        .args(["serve", "--port", "0", "--job-user", "nobody-such-user-x"])
        .env("AGENT_AUTH_TOKEN_SECRET", "x".repeat(32))
        .env("HOME", root.path())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no such user"), "{stderr}");
}

#[test]
fn listen_mode_runs_shell_jobs_as_their_own_user_from_the_config_file() {
    if !can_make_users() {
        return;
    }
    let cp = ControlPlane::start();
    let config = format!(
        "endpoint: {}\nno-https: true\njob-user: auto\n",
        cp.endpoint()
    );
    let agent = ListenAgent::builder()
        .config_file(&config)
        .env("SEMAPHORE_AGENT_TOKEN", REGISTRATION_TOKEN)
        .start(&cp);
    let job = Job::new("ju-listen").command("echo user=$(whoami) uid=$(id -u)");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let seen = listen_outputs(&cp, &job.job_id);
    let line = seen
        .lines()
        .find(|l| l.starts_with("user="))
        .unwrap_or_else(|| panic!("{seen}"));
    let user = line["user=".len()..].split(' ').next().unwrap().to_string();
    assert!(
        user.starts_with("agent-job-") && !line.ends_with("uid=0"),
        "{line}"
    );
    wait_until("the job's user to be removed", CLEANUP_TIMEOUT, || {
        !user_exists(&user)
    });
}

/// A shell job of its own user cannot use the engine's socket, so it gets
/// a Docker gate of its own (`DOCKER_HOST`): docker works, within the
/// gate's rules and with no bind mount at all (a path its user controls
/// could be a link the engine would follow as root), and what it made goes
/// with it.
#[test]
fn a_shell_job_of_its_own_user_uses_docker_through_its_gate() {
    if !can_make_users() || !crate::support::docker::ready() {
        return;
    }
    let root = reachable_root();
    let agent = TestAgent::builder()
        .root(root.path())
        .arg("--job-user")
        .arg("auto")
        .start();
    let image = crate::support::docker::BASH_IMAGE;
    let job = Job::new("ju-docker");
    // The jump point's shell as sshd starts it: a login of the job's user
    // with nothing of the session's environment.
    let jump_point = format!(
        "env -i HOME=\"$HOME\" PATH=/usr/bin:/bin /tmp/ssh_jump_point-{} bash -c {}",
        job.job_id,
        crate::support::sshd::shell_quote(
            "echo jp-host=$DOCKER_HOST; echo jp-tmp=$TMPDIR; docker ps -q >/dev/null; echo jp-ps=$?"
        )
    );
    let job = job
        // A job's own value is kept, in the session and the jump point.
        .env("TMPDIR", "/tmp/ju-own-tmp")
        .command("echo tmp=$TMPDIR")
        .command(&jump_point)
        .command("test -w /var/run/docker.sock; echo engine-socket=$?; echo \"$DOCKER_HOST\"")
        .command(&format!(
            "docker run --rm {image} bash -c 'echo from-a-container'"
        ))
        .command(&format!(
            "docker run -d --name ju-left-$$ {image} sleep 600 >/dev/null; echo started=$?"
        ))
        .command(&format!(
            "docker run --rm -v /:/host {image} true; echo root-mount=$?"
        ))
        .command(&format!(
            "docker run --rm -v \"$HOME\":/h:ro {image} true; echo home-mount=$?"
        ))
        .command(&format!(
            "docker run --rm --privileged {image} true; echo privileged=$?"
        ));
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    let out = outputs(&events);
    assert_eq!(events.last().unwrap()["result"], "passed", "{out}");
    assert_eq!(field(&out, "engine-socket"), "1", "{out}");
    assert!(
        out.contains("unix://") && out.contains("/work/tmp/docker.sock"),
        "{out}"
    );
    assert!(out.contains("from-a-container\n"), "{out}");
    assert_eq!(field(&out, "tmp"), "/tmp/ju-own-tmp", "{out}");
    assert!(
        field(&out, "jp-host").starts_with("unix://")
            && field(&out, "jp-host").ends_with("/work/tmp/docker.sock"),
        "{out}"
    );
    assert_eq!(field(&out, "jp-tmp"), "/tmp/ju-own-tmp", "{out}");
    assert_eq!(field(&out, "jp-ps"), "0", "{out}");
    assert_eq!(field(&out, "started"), "0", "{out}");
    for refused in ["root-mount", "home-mount", "privileged"] {
        assert_ne!(field(&out, refused), "0", "{out}");
    }
    assert!(out.contains("agent docker gate: "), "{out}");
    // The container it left goes with it.
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", "name=ju-left-"])
        .output()
        .expect("docker ps");
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}
