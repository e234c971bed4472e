//! Integration tests of the SFTP cache backend against a real OpenSSH
//! server on loopback (a chrooted, key-only `internal-sftp`): two agents
//! with their own data directories share one cache, a job can bring the
//! toolbox's `SEMAPHORE_CACHE_*` variables, a compose job uses the cache
//! but cannot read the key, and a server that is down or silent gives a
//! clear error in bounded time without harming the agent.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::cache::{masked, run, run_value, static_agent};
use crate::support::docker::{self, ComposeJob, Container, BASH_IMAGE, COMPOSE_JOB_TIMEOUT};
use crate::support::server::TestAgent;
use crate::support::sftp::SftpServer;
use crate::support::sshd;
use crate::support::Job;

/// The longest an unreachable server may hold a `cache` command.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(40);

fn agent_of(server: &SftpServer) -> TestAgent {
    let mut builder = TestAgent::builder();
    for arg in server.agent_args() {
        builder = builder.arg(&arg);
    }
    builder.start()
}

#[test]
fn two_agents_share_one_sftp_cache() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    let first = agent_of(&server);
    let second = agent_of(&server);

    let store = Job::new("sftp-store")
        .command("mkdir -p a/deps && cd a && echo shared > deps/f && ln -s f deps/l")
        .command("cache store deps-main-1 deps")
        .command("cache store deps/main/1 deps")
        .command("cache has_key deps-main-1");
    let ran = run(&first, &store);
    ran.assert_passed();
    assert_eq!(
        masked(&ran.ok("cache store deps-main-1 deps")),
        "Compressing deps...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Uploading 'deps' with cache key 'deps-main-1'...\n\
         Upload complete. Duration: D.\n"
    );
    assert_eq!(
        ran.ok("cache store deps/main/1 deps"),
        "Key 'deps/main/1' is normalized to 'deps-main-1'.\nKey 'deps-main-1' already exists.\n"
    );
    // One complete archive, no temporary file left.
    assert_eq!(server.names(), ["deps-main-1"]);

    let restore = Job::new("sftp-restore")
        .command("mkdir -p b && cd b && cache restore deps-feature-,deps-main-")
        .command("cat deps/l")
        .command("cache list")
        .command("cache usage")
        .command("cache delete deps-main-1 && cache is_not_empty || echo empty");
    let ran = run(&second, &restore);
    ran.assert_passed();
    let out = masked(&ran.ok("mkdir -p b && cd b && cache restore deps-feature-,deps-main-"));
    assert_eq!(
        out,
        "MISS: 'deps-feature-'.\n\
         HIT: 'deps-main-', using key 'deps-main-1'.\n\
         Downloading key 'deps-main-1'...\n\
         Download complete. Duration: D. Size: S bytes.\n\
         Unpacking 'TMP/deps-main-1-N'...\n\
         Unpack complete. Duration: D.\n\
         Restored: deps/.\n"
    );
    assert_eq!(ran.ok("cat deps/l"), "shared\n");
    let list = ran.ok("cache list");
    assert!(
        list.lines()
            .nth(1)
            .unwrap_or("")
            .starts_with("deps-main-1 "),
        "{list}"
    );
    let usage = ran.ok("cache usage");
    assert!(
        usage.starts_with("FREE SPACE: 9.0G\nUSED SPACE: "),
        "{usage}"
    );
    assert_eq!(
        ran.ok("cache delete deps-main-1 && cache is_not_empty || echo empty"),
        "Key 'deps-main-1' is deleted.\nempty\n"
    );
    assert!(server.names().is_empty());
}

#[test]
fn a_job_can_bring_the_toolbox_sftp_variables() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    let agent = TestAgent::start_default();
    let job = Job::new("sftp-job-vars")
        .env("SEMAPHORE_CACHE_BACKEND", "sftp")
        .env("SEMAPHORE_CACHE_URL", server.url())
        .env("SEMAPHORE_CACHE_USERNAME", "root")
        .env(
            "SEMAPHORE_CACHE_PRIVATE_KEY_PATH",
            server.key_path().to_str().unwrap(),
        )
        .command("echo x > f && cache store from-job f");
    let ran = run(&agent, &job);
    ran.assert_passed();
    // The chroot's root is the login directory: archives land there.
    assert!(
        server.dir().parent().unwrap().join("from-job").is_file(),
        "{}",
        ran.render()
    );
}

/// `sftp` shows no access times, so on SFTP `ACCESS_TIME` orders keys by
/// their store time, as the toolbox does when the server reports none, and
/// nothing but the archives is kept in the directory (an earlier version's
/// `.access/` markers would show up as a key in the toolbox's `list` and
/// make its `clear` fail; `cache clear` removes what is left of them).
#[test]
fn access_time_on_sftp_is_the_store_time_and_only_keys_are_kept() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    // The whole backend from the environment, as the toolbox's variables
    // (and the agent's own for the base path) give it.
    let agent = TestAgent::builder()
        .env("SEMAPHORE_CACHE_BACKEND", "sftp")
        .env("SEMAPHORE_CACHE_URL", &server.url())
        .env("SEMAPHORE_CACHE_USERNAME", server.user())
        .env(
            "SEMAPHORE_CACHE_PRIVATE_KEY_PATH",
            server.key_path().to_str().unwrap(),
        )
        .env("SEMAPHORE_CACHE_CLEANUP_BY", "access-time")
        .env("AGENT_CACHE_SFTP_PATH", crate::support::sftp::BASE)
        .arg("--cache-max-bytes")
        .arg("250000")
        .start();
    // Three incompressible archives of about 100 kB; two fit. `a` is stored
    // first and restored after `b` is stored, but SFTP tells no access
    // times: `a`, the oldest stored, is the one to go.
    let job = Job::new("sftp-access-time")
        .command("for k in a b c; do head -c 100000 /dev/urandom > $k; done")
        .command("cache store a a")
        .command("sleep 1 && cache store b b")
        .command("(mkdir -p back && cd back && cache restore a && cmp a ../a)")
        .command("sleep 1 && cache store c c")
        .command("cache list --sort-by ACCESS_TIME");
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert!(
        ran.ok("sleep 1 && cache store c c").contains(
            "\nNot enough space, deleting keys based on ACCESS_TIME...\nKey 'a' is deleted.\n"
        ),
        "{}",
        ran.render()
    );
    assert_eq!(server.names(), ["b", "c"]);
    let keys: Vec<String> = ran
        .ok("cache list --sort-by ACCESS_TIME")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    assert_eq!(keys, ["c", "b"]);

    // What an earlier version left: neither listed nor kept by `clear`.
    let old = server.dir().join(".access");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("b@1764446500123"), "").unwrap();
    let clear = Job::new("sftp-clear")
        .command("cache list")
        .command("cache clear")
        .command("cache is_not_empty || echo empty");
    let ran = run(&agent, &clear);
    ran.assert_passed();
    assert!(
        !ran.ok("cache list").contains(".access"),
        "{}",
        ran.render()
    );
    assert_eq!(ran.ok("cache clear"), "Deleted all caches.\n");
    assert_eq!(ran.ok("cache is_not_empty || echo empty"), "empty\n");
    assert_eq!(server.names(), Vec::<String>::new());
}

#[test]
fn concurrent_stores_of_one_key_leave_one_complete_archive() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    let agents = [agent_of(&server), agent_of(&server)];
    std::thread::scope(|s| {
        for (i, agent) in agents.iter().enumerate() {
            s.spawn(move || {
                let job = Job::new(&format!("sftp-race-{i}"))
                    .command(&format!("mkdir -p r{i}/d && cd r{i}/d && head -c 3000000 /dev/urandom > blob && sha256sum blob > sum"))
                    .command(&format!("cd ~/r{i} && cache store raced d"));
                run(agent, &job).assert_passed();
            });
        }
    });
    assert_eq!(server.names(), ["raced"]);
    let check = Job::new("sftp-race-check")
        .command("mkdir -p check && cd check && cache restore raced && cd d && sha256sum -c sum");
    let ran = run(&agents[0], &check);
    ran.assert_passed();
}

#[test]
fn a_compose_job_uses_the_sftp_cache_but_cannot_read_the_key() {
    if !sshd::available() || !docker::ready() {
        return;
    }
    let server = SftpServer::start();
    let binary = static_agent();
    let mut builder = TestAgent::builder()
        .arg("--cache-static-binary")
        .arg(binary.to_str().unwrap());
    for arg in server.agent_args() {
        builder = builder.arg(&arg);
    }
    let agent = builder.start();
    let key = server.key_path().display().to_string();
    let probe = format!(
        "cat {key} 2>&1 || echo unreadable; env | grep -c -e SEMAPHORE_CACHE -e {key} || true"
    );
    let job = ComposeJob::new("sftp-compose", Container::new("main", BASH_IMAGE))
        .command("mkdir -p /w && cd /w && echo c > f && cache store compose-sftp f")
        .command("rm f && cache restore compose-sftp && cat f")
        .command(&probe);
    let ran = run_value(&agent, &job.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert!(ran
        .ok("rm f && cache restore compose-sftp && cat f")
        .ends_with("c\n"));
    assert!(
        ran.ok(&probe).ends_with("unreadable\n0\n"),
        "{}",
        ran.render()
    );
    assert_eq!(server.names(), ["compose-sftp"]);
}

#[test]
fn an_unreachable_server_gives_a_clear_error_in_bounded_time() {
    if !sshd::available() {
        return;
    }
    // One port nobody listens on, one that accepts and never says a word.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    std::fs::write(&key, "not a key\n").unwrap();
    for (port, reason) in [(closed_port, "Connection refused"), (silent_port, "")] {
        let agent = TestAgent::builder()
            .arg("--cache-backend")
            .arg("sftp")
            .arg("--cache-sftp-url")
            .arg(&format!("127.0.0.1:{port}"))
            .arg("--cache-sftp-user")
            .arg("nobody")
            .arg("--cache-sftp-key")
            .arg(key.to_str().unwrap())
            .start();
        let job = Job::new("sftp-down")
            .command("echo x > f && cache store down f")
            .command("cache restore down")
            .command("cache list || echo \"exit $?\"")
            .command("CACHE_FAIL_ON_ERROR=true cache has_key down; echo \"exit $?\"");
        let started = Instant::now();
        let ran = run(&agent, &job);
        assert!(
            started.elapsed() < 3 * UNREACHABLE_LIMIT,
            "took {:?}",
            started.elapsed()
        );
        ran.assert_passed();
        let server = format!("cannot reach the SFTP cache server nobody@127.0.0.1:{port}: ");
        for directive in [
            "echo x > f && cache store down f",
            "cache restore down",
            "cache list || echo \"exit $?\"",
        ] {
            // The error path: one line on stdout, and exit 0.
            let out = ran.ok(directive);
            let last = out.lines().last().unwrap_or_default();
            assert!(
                last.starts_with(&format!("error: {server}")) && last.contains(reason),
                "{directive}: {out}"
            );
        }
        // CACHE_FAIL_ON_ERROR=true turns the error path's exit 0 into 1.
        let strict = ran.ok("CACHE_FAIL_ON_ERROR=true cache has_key down; echo \"exit $?\"");
        assert!(
            strict.starts_with(&format!("error: {server}")) && strict.ends_with("\nexit 1\n"),
            "{strict}"
        );
        // The agent goes on serving.
        let after = run(&agent, &Job::new("sftp-after").command("echo alive"));
        assert_eq!(after.ok("echo alive"), "alive\n");
    }
    drop(silent);
}

/// The toolbox's upload replaces a key stored meanwhile (a POSIX rename);
/// the agent's links it under the key, which fails when the key is there,
/// so the store that finds its key taken says so and leaves it.
#[test]
fn a_key_stored_during_an_upload_is_kept() {
    if !sshd::available() {
        return;
    }
    let server = SftpServer::start();
    // 16 kB a tick: the 300 kB archive takes about two seconds.
    let proxy = crate::support::crawl::CrawlProxy::start(server.sshd.port(), 16 * 1024);
    let mut args = server.agent_args();
    let at = args.iter().position(|a| a == "--cache-sftp-url").unwrap();
    args[at + 1] = proxy.url();
    let mut builder = TestAgent::builder();
    for arg in &args {
        builder = builder.arg(arg);
    }
    let agent = builder.start();
    let store = "head -c 300000 /dev/urandom > blob && cache store raced blob";
    let job = Job::new("sftp-taken").command(store);
    agent.submit_ok(&job.to_value());
    crate::support::wait_until("the upload to start", Duration::from_secs(60), || {
        server.names().iter().any(|n| n.starts_with(".incoming-"))
    });
    std::fs::write(server.dir().join("raced"), "theirs").unwrap();
    agent.wait_for_job_finished(&job.job_id);
    let ran = crate::support::cache::Ran {
        events: agent.poll_log(&job.job_id),
        job_id: job.job_id.clone(),
    };
    assert_eq!(
        masked(&ran.ok(store)),
        "Compressing blob...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Key 'raced' already exists.\n"
    );
    assert_eq!(
        std::fs::read_to_string(server.dir().join("raced")).unwrap(),
        "theirs"
    );
    assert_eq!(server.names(), ["raced"]);
}
