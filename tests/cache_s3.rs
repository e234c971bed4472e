//! Integration tests of the S3 cache backend against a real distributed
//! S3 service: a three-node Garage cluster on loopback (replication factor
//! 3, consistent mode). Every subcommand for a shell and a compose job; a
//! `serve` and a `start` agent sharing one bucket; a node killed during a
//! 200 MB store and two nodes down; a key a node still lists after its
//! delete; an agent killed mid-upload; the agent's
//! credentials never in a job; the instance role through IMDSv2. A job
//! naming a backend the agent lacks gets a clear error, never the agent's
//! cache.

use std::time::{Duration, Instant};

use crate::support::cache::{masked, run, run_value, static_agent};
use crate::support::control_plane::{ControlPlane, REGISTRATION_TOKEN};
use crate::support::crawl::{CrawlProxy, Shaping};
use crate::support::docker::{self, ComposeJob, Container, BASH_IMAGE, COMPOSE_JOB_TIMEOUT};
use crate::support::garage::{self, Garage, BUCKET};
use crate::support::imds::Imds;
use crate::support::listen_agent::{outputs, ListenAgent};
use crate::support::server::{poll_until, AgentBuilder, TestAgent};
use crate::support::Job;

const PROJECT: &str = "proj-1";
/// The longest a `cache` command may take when two of three nodes are down.
const DOWN_LIMIT: Duration = Duration::from_secs(60);
/// The longest a 200 MB store or restore may take on this machine.
const BIG_TIMEOUT: Duration = Duration::from_secs(300);

fn agent_at(garage: &Garage, urls: &str) -> TestAgent {
    on_garage(TestAgent::builder(), garage, urls).start()
}

/// `builder` with the flags and credentials of an agent whose cache is
/// `garage`, at `urls`.
fn on_garage(mut builder: AgentBuilder, garage: &Garage, urls: &str) -> AgentBuilder {
    for arg in garage.agent_args_at(urls) {
        builder = builder.arg(&arg);
    }
    for (name, value) in garage.agent_env() {
        builder = builder.env(name, &value);
    }
    builder
}

/// A command that counts the agent's S3 key and secret in the job's
/// environment and `environs`, then the files under `dirs` holding either:
/// `0\n0\n` when the job has neither. The directive carries them reversed,
/// so that it is not itself where they are found.
fn probe(garage: &Garage, environs: &str, dirs: &str) -> String {
    let rev = |s: &str| s.chars().rev().collect::<String>();
    format!(
        "s=$(echo {} | rev); k=$(echo {} | rev); \
         {{ env; cat {environs} 2>/dev/null; }} | tr '\\0' '\\n' | grep -c -e \"$s\" -e \"$k\"; \
         grep -rsl -e \"$s\" -e \"$k\" {dirs} | wc -l",
        rev(&garage.secret),
        rev(&garage.key_id)
    )
}

fn object(key: &str) -> String {
    format!("{PROJECT}/{key}")
}

#[test]
fn every_subcommand_on_a_garage_cluster() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let agent = agent_at(&garage, &garage.url(0));
    let job = Job::new("s3-all")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("mkdir -p a/deps && echo shared > a/deps/f && ln -s f a/deps/l")
        .command("(cd a && cache store deps-main-1 deps)")
        .command("(cd a && cache store deps/main/1 deps)")
        .command("cache has_key deps-main-1 && cache has_key nope || echo missing")
        .command("cache list")
        .command("mkdir -p b && (cd b && cache restore deps-feature-,deps-main-)")
        .command("cat b/deps/l")
        .command("cache restore absent-key")
        .command("cache usage")
        .command("(cd a && cache store second deps)")
        .command("cache delete deps-main-1 && cache delete deps-main-1")
        .command("cache is_not_empty && echo not-empty")
        .command("cache clear")
        .command("cache is_not_empty || echo empty");
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert_eq!(
        masked(&ran.ok("(cd a && cache store deps-main-1 deps)")),
        "Compressing deps...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Uploading 'deps' with cache key 'deps-main-1'...\n\
         Upload complete. Duration: D.\n"
    );
    assert_eq!(
        ran.ok("(cd a && cache store deps/main/1 deps)"),
        "Key 'deps/main/1' is normalized to 'deps-main-1'.\nKey 'deps-main-1' already exists.\n"
    );
    assert_eq!(
        ran.ok("cache has_key deps-main-1 && cache has_key nope || echo missing"),
        "Key 'deps-main-1' exists in the cache store.\n\
         Key 'nope' doesn't exist in the cache store.\nmissing\n"
    );
    let list = ran.ok("cache list");
    assert!(
        list.lines()
            .nth(1)
            .unwrap_or("")
            .starts_with("deps-main-1 "),
        "{list}"
    );
    assert_eq!(
        masked(&ran.ok("mkdir -p b && (cd b && cache restore deps-feature-,deps-main-)")),
        "MISS: 'deps-feature-'.\n\
         HIT: 'deps-main-', using key 'deps-main-1'.\n\
         Downloading key 'deps-main-1'...\n\
         Download complete. Duration: D. Size: S bytes.\n\
         Unpacking 'TMP/deps-main-1-N'...\n\
         Unpack complete. Duration: D.\n\
         Restored: deps/.\n"
    );
    assert_eq!(ran.ok("cat b/deps/l"), "shared\n");
    assert_eq!(ran.ok("cache restore absent-key"), "MISS: 'absent-key'.\n");
    let usage = ran.ok("cache usage");
    assert!(usage.contains("USED SPACE: "), "{usage}");
    assert_eq!(
        ran.ok("cache delete deps-main-1 && cache delete deps-main-1"),
        "Key 'deps-main-1' is deleted.\nKey 'deps-main-1' doesn't exist in the cache store.\n"
    );
    assert!(ran
        .ok("cache is_not_empty && echo not-empty")
        .ends_with("not-empty\n"));
    assert_eq!(ran.ok("cache is_not_empty || echo empty"), "empty\n");
    assert!(garage.objects("").is_empty(), "{:?}", garage.objects(""));
    assert!(garage.uploads().is_empty());
}

/// A node that was down during a delete still lists the key until Garage's
/// anti-entropy reaches it (some 20 s after its start), and a listing
/// through it merges what it holds with what a node that knows of the
/// delete leaves out: the key is listed. `cache is_not_empty` through that
/// node still answers empty, and `cache has_key` does not find the key.
#[test]
fn a_key_listed_after_its_delete_is_not_taken_for_a_key() {
    if !garage::available() {
        return;
    }
    let mut garage = Garage::start();
    let writer = agent_at(&garage, &garage.url(0));
    let job = |name: &str, command: &str| {
        Job::new(name)
            .env("SEMAPHORE_PROJECT_ID", PROJECT)
            .command(command)
    };
    let store = "echo x > f && cache store gone f";
    run(&writer, &job("s3-lag-store", store)).assert_passed();
    garage.kill(2);
    let delete = "cache delete gone";
    assert_eq!(
        run(&writer, &job("s3-lag-delete", delete)).ok(delete),
        "Key 'gone' is deleted.\n"
    );
    garage.restart(2);
    // Node 2 did not hear of the delete, and lists the key.
    let object = format!("{PROJECT}/gone");
    assert_eq!(garage.listed_at(2), [object.as_str()]);
    let reader = agent_at(&garage, &garage.url(2));
    let check = "cache list | grep -c gone; cache is_not_empty || echo empty; \
                 cache has_key gone || echo no-key";
    let ran = run(&reader, &job("s3-lag-check", check));
    ran.assert_passed();
    assert_eq!(
        ran.ok(check),
        "1\nempty\nKey 'gone' doesn't exist in the cache store.\nno-key\n"
    );
    assert!(garage.objects("").is_empty(), "{:?}", garage.objects(""));
}

#[test]
fn keys_live_under_the_project_and_the_limit_is_each_projects() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let builder = TestAgent::builder().arg("--cache-max-bytes").arg("25000");
    let agent = on_garage(builder, &garage, &garage.url(0)).start();
    // Incompressible 10 kB files: two fit under the limit, a third evicts
    // the oldest, in this project only.
    let store = |project: &str, keys: &[&str]| {
        let mut job = Job::new("s3-limit")
            .env("SEMAPHORE_PROJECT_ID", project)
            .command("head -c 10000 /dev/urandom > f");
        for key in keys {
            job = job.command(&format!("cache store {key} f"));
        }
        run(&agent, &job)
    };
    store("p-a", &["one", "two"]).assert_passed();
    store("p-b", &["one"]).assert_passed();
    let ran = store("p-a", &["three"]);
    ran.assert_passed();
    assert_eq!(
        garage.objects(""),
        ["p-a/three", "p-a/two", "p-b/one"],
        "{}",
        ran.render()
    );
    let other = Job::new("s3-other-project")
        .env("SEMAPHORE_PROJECT_ID", "p-b")
        .command("cache has_key two || echo not-here");
    assert!(run(&agent, &other)
        .ok("cache has_key two || echo not-here")
        .ends_with("not-here\n"));
}

#[test]
fn a_compose_job_uses_the_s3_cache_without_the_credentials() {
    if !garage::available() || !docker::ready() {
        return;
    }
    let garage = Garage::start();
    let binary = static_agent();
    let builder = TestAgent::builder()
        .arg("--cache-static-binary")
        .arg(binary.to_str().unwrap());
    let agent = on_garage(builder, &garage, &garage.url(0)).start();
    let probe = probe(&garage, "/proc/1/environ /proc/$$/environ", "/w /tmp /opt");
    let job = ComposeJob::new("s3-compose", Container::new("main", BASH_IMAGE))
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("mkdir -p /w && cd /w && echo c > f && cache store compose-s3 f")
        .command("cache has_key compose-s3 && cache list | grep -c compose-s3")
        .command("cd /w && rm f && cache restore compose-s3 && cat f")
        .command("cache usage | grep -c USED")
        .command("cache delete compose-s3 && cache store compose-s3 /w/f && cache clear")
        .command(&probe);
    let ran = run_value(&agent, &job.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert!(ran
        .ok("cd /w && rm f && cache restore compose-s3 && cat f")
        .ends_with("c\n"));
    assert!(ran
        .ok("cache has_key compose-s3 && cache list | grep -c compose-s3")
        .ends_with("1\n"));
    assert_eq!(ran.ok(&probe), "0\n0\n", "{}", ran.render());
    assert!(garage.objects("").is_empty());
}

/// Neither the environment nor any file a shell job can read holds the
/// agent's S3 key or secret.
#[test]
fn a_shell_job_never_holds_the_agents_s3_credentials() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let agent = agent_at(&garage, &garage.url(0));
    let probe = probe(
        &garage,
        "/proc/$$/environ /proc/$PPID/environ",
        "\"$HOME\" \"$PWD\" \"${TMPDIR:-/tmp}\"",
    );
    let job = Job::new("s3-creds")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("echo x > f && cache store creds f")
        .command(&probe);
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert_eq!(ran.ok(&probe), "0\n0\n", "{}", ran.render());
    assert_eq!(garage.objects(""), [object("creds")]);
}

/// A `serve` agent and a listen-mode agent (`start`, with its cache in
/// its config file) with data directories of their own share one bucket.
#[test]
fn a_serve_and_a_listen_agent_share_one_bucket() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let serve = agent_at(&garage, &garage.url(0));
    let stored = run(
        &serve,
        &Job::new("s3-share-store")
            .env("SEMAPHORE_PROJECT_ID", PROJECT)
            .command("mkdir d && seq 1 1000 > d/n && cache store shared-1 d"),
    );
    stored.assert_passed();

    let cp = ControlPlane::start();
    let config = format!(
        "endpoint: {}\ntoken: {REGISTRATION_TOKEN}\nno-https: true\n\
         cache-backend: s3\ncache-s3-bucket: {BUCKET}\ncache-s3-url: {}\ncache-s3-region: garage\n",
        cp.endpoint(),
        garage.url(1)
    );
    let mut builder = ListenAgent::builder().config_file(&config);
    for (name, value) in garage.agent_env() {
        builder = builder.env(name, &value);
    }
    let listen = builder.start(&cp);
    let job = Job::new("s3-share-restore")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("cache restore shared- && seq 1 1000 | cmp - d/n && echo same")
        .command("echo y > y && cache store from-listen y");
    listen.track(&job.job_id);
    cp.schedule(&job.to_value());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cp.wait_for_result(&job.job_id, Duration::from_secs(120))
    }))
    .unwrap_or_else(|_| panic!("the listen agent said:\n{}", listen.stderr_text()));
    let out = outputs(&cp, &job.job_id);
    assert_eq!(result, "passed", "{out}");
    assert!(out.contains("same\n"), "{out}");
    let back = run(
        &serve,
        &Job::new("s3-share-back")
            .env("SEMAPHORE_PROJECT_ID", PROJECT)
            .command("cache restore from-listen && cat y"),
    );
    assert!(back
        .ok("cache restore from-listen && cat y")
        .ends_with("y\n"));
}

/// A job naming a backend the agent lacks, or S3 without a bucket or its
/// own credentials, hears why from every `cache` command; the job goes on.
#[test]
fn an_unusable_backend_is_a_clear_error_never_the_local_cache() {
    let agent = TestAgent::start_default();
    let cases = [
        (
            vec![("SEMAPHORE_CACHE_BACKEND", "gcs")],
            "error: SEMAPHORE_CACHE_BACKEND=gcs: this agent has no such cache backend (sftp or s3, or none for the agent's own)\n",
        ),
        (
            vec![("SEMAPHORE_CACHE_BACKEND", "s3")],
            "error: SEMAPHORE_CACHE_BACKEND=s3 needs SEMAPHORE_CACHE_S3_BUCKET\n",
        ),
        (
            vec![
                ("SEMAPHORE_CACHE_BACKEND", "s3"),
                ("SEMAPHORE_CACHE_S3_BUCKET", "their-bucket"),
            ],
            "error: this job's S3 cache bucket 'their-bucket' needs credentials of the job's own: set SEMAPHORE_CACHE_S3_KEY and SEMAPHORE_CACHE_S3_SECRET (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)\n",
        ),
    ];
    for (vars, expected) in cases {
        let mut job = Job::new("s3-unusable");
        for (name, value) in &vars {
            job = job.env(name, value);
        }
        let job = job
            .command("echo x > f; cache store k f; echo \"exit $?\"")
            .command("CACHE_FAIL_ON_ERROR=true cache has_key k; echo \"exit $?\"")
            .command("echo goes-on");
        let ran = run(&agent, &job);
        ran.assert_passed();
        let store = ran.ok("echo x > f; cache store k f; echo \"exit $?\"");
        // The toolbox's error path: one line, exit 0 (1 when the job
        // asks for CACHE_FAIL_ON_ERROR).
        assert_eq!(store, format!("{expected}exit 0\n"), "{vars:?}");
        assert_eq!(
            ran.ok("CACHE_FAIL_ON_ERROR=true cache has_key k; echo \"exit $?\""),
            format!("{expected}exit 1\n")
        );
        assert_eq!(ran.ok("echo goes-on"), "goes-on\n");
    }
    // Nothing went to the agent's local cache.
    let cache_dir = agent.root().join("data/cache");
    let names: Vec<_> = std::fs::read_dir(&cache_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "{names:?}");
}

/// Two of the three nodes killed: the agent's endpoints do not answer, and
/// the node left cannot make a quorum (an agent whose endpoint it is gets
/// its errors). The job hears a clear error within a bounded time and goes
/// on; the agent keeps serving.
#[test]
fn two_nodes_down_is_a_clear_error_in_bounded_time() {
    if !garage::available() {
        return;
    }
    let mut garage = Garage::start();
    let agent = agent_at(&garage, &format!("{},{}", garage.url(0), garage.url(1)));
    // At the node left: it answers, but cannot make a quorum.
    let survivor = agent_at(&garage, &garage.url(2));
    garage.kill(0);
    garage.kill(1);
    let job = Job::new("s3-down")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("echo x > f; cache store down f; echo \"exit $?\"")
        .command("cache restore down; echo \"exit $?\"")
        .command("echo goes-on");
    let started = Instant::now();
    let ran = run(&agent, &job);
    let took = started.elapsed();
    ran.assert_passed();
    assert!(took < DOWN_LIMIT * 2, "the job took {took:?}");
    let store = ran.ok("echo x > f; cache store down f; echo \"exit $?\"");
    assert!(
        store
            .contains("error: cannot reach the S3 cache bucket 'agent-cache' at http://127.0.0.1:"),
        "{store}"
    );
    assert!(store.ends_with("exit 0\n"), "{store}");
    assert_eq!(ran.ok("echo goes-on"), "goes-on\n");
    // The agent still serves.
    let after = run(&agent, &Job::new("s3-after").command("echo alive"));
    assert_eq!(after.ok("echo alive"), "alive\n");

    let started = Instant::now();
    let ran = run_value(&survivor, &job.to_value(), DOWN_LIMIT * 4);
    let took = started.elapsed();
    ran.assert_passed();
    assert!(took < DOWN_LIMIT * 3, "the job took {took:?}");
    let store = ran.ok("echo x > f; cache store down f; echo \"exit $?\"");
    let at = format!("S3 cache bucket 'agent-cache' at {} ", garage.url(2));
    assert!(
        store
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains(&at)),
        "{store}"
    );
    assert!(store.ends_with("exit 0\n"), "{store}");
    assert_eq!(ran.ok("echo goes-on"), "goes-on\n");
}

/// 200 MB of incompressible data, stored while a node other than the one
/// the agent's endpoint names is killed, then restored byte-exact by
/// another agent at another endpoint.
#[test]
fn a_node_killed_during_a_big_store_loses_nothing() {
    if !garage::available() {
        return;
    }
    let mut garage = Garage::start();
    let writer = agent_at(&garage, &garage.url(0));
    let reader = agent_at(&garage, &garage.url(1));
    let make = Job::new("s3-big-store")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command(
            "mkdir big && head -c 200000000 /dev/urandom > big/blob && sha256sum big/blob > sum",
        )
        .command("cat sum")
        .command("cache store big-1 big");
    let ran = std::thread::scope(|scope| {
        let store = scope.spawn(|| run_value(&writer, &make.to_value(), BIG_TIMEOUT));
        // Kill node 2 once the upload is under way: parts are on their way.
        poll_until("the upload started", BIG_TIMEOUT, || {
            !garage.uploads().is_empty() || store.is_finished()
        });
        garage.kill(2);
        // The kill came while the archive was on its way: no key yet.
        assert!(garage.objects("").is_empty(), "the upload was done already");
        store.join().expect("the store")
    });
    ran.assert_passed();
    let sum = ran.ok("cat sum");
    assert_eq!(garage.objects(""), [object("big-1")]);
    let restore = Job::new("s3-big-restore")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("cache restore big-1 && sha256sum big/blob");
    let back = run_value(&reader, &restore.to_value(), BIG_TIMEOUT);
    assert!(
        back.ok("cache restore big-1 && sha256sum big/blob")
            .ends_with(&sum),
        "{}",
        back.render()
    );
}

/// An agent killed (SIGKILL) mid-upload leaves no key and, once an agent
/// on its data dir stores again, no incomplete upload.
#[test]
fn an_agent_killed_mid_upload_leaves_no_key_and_no_upload() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let root = tempfile::tempdir().unwrap();
    let start = || {
        on_garage(
            TestAgent::builder().root(root.path()),
            &garage,
            &garage.url(0),
        )
        .start()
    };
    let agent = start();
    let job = Job::new("s3-killed")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("mkdir big && head -c 100000000 /dev/urandom > big/blob")
        .command("cache store killed big");
    agent.submit_ok(&job.to_value());
    // The kill comes once the spool records the upload: one created but not
    // yet recorded when the agent dies goes only once it is older than any
    // upload can take (README, Cache), which this test cannot wait for.
    let spool = root.path().join("data/cache-spool");
    let recorded = || {
        std::fs::read_dir(&spool).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("mpu-")
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("upload_id"))
            })
        })
    };
    poll_until("the upload started and recorded", BIG_TIMEOUT, || {
        recorded() && !garage.uploads().is_empty()
    });
    agent.signal(libc::SIGKILL);
    poll_until("the agent to die", Duration::from_secs(5), || {
        !agent.is_running()
    });
    drop(agent);
    assert!(garage.objects("").is_empty());
    let again = start();
    let next = Job::new("s3-next")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("echo n > n && cache store next n");
    run(&again, &next).assert_passed();
    assert_eq!(garage.objects(""), [object("next")]);
    // Aborted by the agent's start (a thread of its own) or by the store,
    // whichever takes the record first: the start may still be at it.
    poll_until(
        "the upload the crash left aborted",
        Duration::from_secs(30),
        || garage.uploads().is_empty(),
    );
}

/// The agent signs with the EC2 instance's role: IMDSv2 (a session token,
/// the role's name, its credentials), kept until shortly before they
/// expire and fetched again then.
#[test]
fn the_instance_role_signs_through_imdsv2_and_is_refreshed() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    // Credentials that enter the refresh window (5 minutes before expiry)
    // 4 seconds after each fetch.
    let imds = Imds::start(
        &garage.key_id,
        &garage.secret,
        Duration::from_secs(5 * 60 + 4),
    );
    let mut builder = TestAgent::builder()
        .arg("--cache-s3-instance-profile")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint());
    for arg in garage.agent_args() {
        builder = builder.arg(&arg);
    }
    let agent = builder.start();
    let job = |name: &str| {
        Job::new(name)
            .env("SEMAPHORE_PROJECT_ID", PROJECT)
            .command(&format!(
                "echo {name} > f && cache store {name} f && cache has_key {name}"
            ))
    };
    let first = Instant::now();
    run(&agent, &job("role-1")).assert_passed();
    assert_eq!(imds.fetches(), 1, "the credentials are kept");
    // Past the refresh point: fetched again.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(first.elapsed()));
    run(&agent, &job("role-2")).assert_passed();
    assert_eq!(imds.fetches(), 2);
    assert_eq!(garage.objects(""), [object("role-1"), object("role-2")]);
}

/// A job on an agent whose cache is local brings the toolbox's S3
/// variables with credentials of its own: its keys go to that bucket,
/// signed with what its `cache` handed over, and none to the agent's cache.
#[test]
fn a_job_can_bring_its_own_bucket_and_credentials() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let agent = TestAgent::start_default();
    let job = Job::new("s3-own-bucket")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .env("SEMAPHORE_CACHE_BACKEND", "s3")
        .env("SEMAPHORE_CACHE_S3_BUCKET", BUCKET)
        .env("SEMAPHORE_CACHE_S3_URL", garage.url(1))
        .env("AWS_REGION", garage::REGION)
        .env("AWS_ACCESS_KEY_ID", &garage.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
        .command("echo own > f && cache store own-1 f")
        .command("rm f && cache restore own-1 && cat f")
        .command("AWS_SECRET_ACCESS_KEY=wrong cache has_key own-1");
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert!(ran
        .ok("rm f && cache restore own-1 && cat f")
        .ends_with("own\n"));
    // The credentials are the job's: a wrong secret is refused by S3.
    let wrong = ran.ok("AWS_SECRET_ACCESS_KEY=wrong cache has_key own-1");
    assert!(
        wrong.starts_with("error: the S3 cache bucket 'agent-cache' at "),
        "{wrong}"
    );
    assert_eq!(garage.objects(""), [object("own-1")]);
    let names: Vec<_> = std::fs::read_dir(agent.root().join("data/cache"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "{names:?}");
}

/// Renames the Range header of a request passing through (same length,
/// so nothing else moves): the server then sends the whole object.
fn hide_range(bytes: &mut [u8]) {
    for i in 0..bytes.len().saturating_sub(8) {
        if bytes[i..i + 8].eq_ignore_ascii_case(b"\r\nrange:") {
            bytes[i + 2..i + 7].copy_from_slice(b"x-rng");
        }
    }
}

/// A restore whose connection breaks mid-object goes on from where it
/// broke, byte-exact: with a Range the server honours, and with one it
/// ignores (the object then comes from its start again, and what was read
/// already is skipped).
#[test]
fn a_download_cut_short_resumes_where_it_broke() {
    if !garage::available() {
        return;
    }
    let garage = Garage::start();
    let writer = agent_at(&garage, &garage.url(0));
    let make = Job::new("s3-resume-store")
        .env("SEMAPHORE_PROJECT_ID", PROJECT)
        .command("mkdir big && head -c 8000000 /dev/urandom > big/blob && sha256sum big/blob > sum")
        .command("cat sum")
        .command("cache store big-1 big");
    let ran = run_value(&writer, &make.to_value(), BIG_TIMEOUT);
    ran.assert_passed();
    let sum = ran.ok("cat sum");
    for hidden in [false, true] {
        // No other answer is that big: the object being read is cut.
        let proxy = CrawlProxy::shaped(
            garage.s3_port(1),
            Shaping {
                cut_download_after: Some(2_000_000),
                rewrite_upload: hidden.then_some(hide_range as fn(&mut [u8])),
                ..Shaping::default()
            },
        );
        let reader = agent_at(&garage, &format!("http://{}", proxy.url()));
        let restore = Job::new("s3-resume-restore")
            .env("SEMAPHORE_PROJECT_ID", PROJECT)
            .command("cache restore big-1 && sha256sum big/blob");
        let back = run_value(&reader, &restore.to_value(), BIG_TIMEOUT);
        assert_eq!(
            proxy.cuts(),
            1,
            "hidden range {hidden}: the download was not cut"
        );
        assert!(
            back.ok("cache restore big-1 && sha256sum big/blob")
                .ends_with(&sum),
            "hidden range {hidden}: {}",
            back.render()
        );
    }
}
