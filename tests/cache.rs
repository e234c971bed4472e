//! Integration tests of `cache` in jobs run by `agent serve` on the local
//! backend: every subcommand, fallback keys, the size limit, a damaged
//! archive and the lock-file detection, in shell jobs and in compose jobs
//! (on the real Docker engine, gated like the compose tests) with the
//! static build of the agent mounted as `cache`, also in an image with bash
//! and nothing else.
//! Each test has its own agent, data directory and so its own cache.

use std::fs;
use std::path::PathBuf;

use crate::support::cache::{bash_only_image, masked, run, run_value, static_agent};
use crate::support::docker::{self, ComposeJob, Container, BASH_IMAGE, COMPOSE_JOB_TIMEOUT};
use crate::support::server::TestAgent;
use crate::support::Job;

/// The cache directory of an agent started with the defaults.
fn cache_dir(agent: &TestAgent) -> PathBuf {
    agent.root().join("data/cache")
}

/// Makes `deps/` with a file of mode 751 dated 2001-09-09, a symlink and a
/// subdirectory.
const MAKE_TREE: &str = "mkdir -p deps/sub && printf 'hello\\n' > deps/sub/a.txt && chmod 751 deps/sub/a.txt && ln -s sub/a.txt deps/link && touch -d @1000000000 deps/sub/a.txt";
/// What `MAKE_TREE` made, as `stat` shows it.
const SHOW_TREE: &str = "stat -c '%n %a %Y' deps/sub/a.txt && readlink deps/link && cat deps/link";

#[test]
fn a_shell_job_stores_and_another_restores_with_every_subcommand() {
    let agent = TestAgent::start_default();
    let first = Job::new("cache-store")
        .command("mkdir -p w1 && cd w1")
        .command(MAKE_TREE)
        .command("cache store deps/master/1 deps")
        .command("cache store deps-master-1 deps")
        .command("cache has_key deps-master-1")
        .command("cache has_key nothing-here || echo \"exit $?\"")
        .command("cache is_not_empty");
    let ran = run(&agent, &first);
    ran.assert_passed();
    assert_eq!(
        masked(&ran.ok("cache store deps/master/1 deps")),
        "Key 'deps/master/1' is normalized to 'deps-master-1'.\n\
         Compressing deps...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Uploading 'deps' with cache key 'deps-master-1'...\n\
         Upload complete. Duration: D.\n"
    );
    assert_eq!(
        ran.ok("cache store deps-master-1 deps"),
        "Key 'deps-master-1' already exists.\n"
    );
    assert_eq!(
        ran.ok("cache has_key deps-master-1"),
        "Key 'deps-master-1' exists in the cache store.\n"
    );
    assert_eq!(
        ran.ok("cache has_key nothing-here || echo \"exit $?\""),
        "Key 'nothing-here' doesn't exist in the cache store.\nexit 1\n"
    );
    // The archive is a file of the agent's, not of the job's directory.
    assert!(cache_dir(&agent).join("deps-master-1").is_file());

    let second = Job::new("cache-restore")
        .command("mkdir -p w2 && cd w2")
        .command("cache restore nope,deps-master-")
        .command(SHOW_TREE)
        .command("cache list")
        .command("cache usage")
        .command("cache delete deps-master-1")
        .command("cache delete deps-master-1; echo \"exit $?\"")
        .command("cache store other deps && cache clear")
        .command("cache is_not_empty || echo empty")
        .command("cache restore deps-master-1");
    let ran = run(&agent, &second);
    ran.assert_passed();
    assert_eq!(
        masked(&ran.ok("cache restore nope,deps-master-")),
        "MISS: 'nope'.\n\
         HIT: 'deps-master-', using key 'deps-master-1'.\n\
         Downloading key 'deps-master-1'...\n\
         Download complete. Duration: D. Size: S bytes.\n\
         Unpacking 'TMP/deps-master-1-N'...\n\
         Unpack complete. Duration: D.\n\
         Restored: deps/.\n"
    );
    assert_eq!(
        ran.ok(SHOW_TREE),
        "deps/sub/a.txt 751 1000000000\nsub/a.txt\nhello\n"
    );
    let list = masked(&ran.ok("cache list"));
    let lines: Vec<&str> = list.split('\n').collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert_eq!(
        lines[0],
        format!(
            "{:<60} {:<12} {:<22} {:<22}",
            "NAME", "SIZE", "STORED AT", "ACCESSED AT"
        )
    );
    assert!(lines[1].starts_with("deps-master-1 "), "{list}");
    assert!(lines[1].contains(" DATE "), "{list}");
    assert_eq!(lines[2..], ["", ""], "{list}");
    let usage = ran.ok("cache usage");
    assert!(
        usage.starts_with("FREE SPACE: ") && usage.contains("\nUSED SPACE: "),
        "{usage}"
    );
    assert_eq!(
        ran.ok("cache delete deps-master-1"),
        "Key 'deps-master-1' is deleted.\n"
    );
    assert_eq!(
        ran.ok("cache delete deps-master-1; echo \"exit $?\""),
        "Key 'deps-master-1' doesn't exist in the cache store.\nexit 0\n"
    );
    assert!(masked(&ran.ok("cache store other deps && cache clear"))
        .ends_with("Upload complete. Duration: D.\nDeleted all caches.\n"));
    assert_eq!(ran.ok("cache is_not_empty || echo empty"), "empty\n");
    // A miss is not a failure.
    assert_eq!(
        ran.ok("cache restore deps-master-1"),
        "MISS: 'deps-master-1'.\n"
    );
}

#[test]
fn a_fallback_key_restores_the_newest_match() {
    let agent = TestAgent::start_default();
    let job = Job::new("cache-fallback")
        .command("mkdir -p v && echo old > v/f && cache store gems-master-aaa v")
        .command("echo new > v/f && cache store gems-master-bbb v")
        .command("echo other > v/f && cache store npm-master-ccc v")
        .command("rm -rf v && cache restore gems-feature-x-123,gems-feature-x-,gems-master-")
        .command("cat v/f");
    let ran = run(&agent, &job);
    ran.assert_passed();
    let out = ran.ok("rm -rf v && cache restore gems-feature-x-123,gems-feature-x-,gems-master-");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "MISS: 'gems-feature-x-123'.",
            "MISS: 'gems-feature-x-'.",
            "HIT: 'gems-master-', using key 'gems-master-bbb'."
        ],
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"Restored: v/."), "{out}");
    assert_eq!(ran.ok("cat v/f"), "new\n");
}

/// A store that finds its key taken when it commits (another store won
/// the race) prints the toolbox's line, and the winner's archive stays.
/// The store is paused (SIGSTOP) while its archive is on its way, and the
/// key appears meanwhile.
#[test]
fn a_store_that_loses_a_race_says_the_key_exists() {
    let agent = TestAgent::start_default();
    let cache = cache_dir(&agent);
    let c = cache.display();
    let race = format!(
        "(cache store raced big & p=$!; \
          until ls -A {c} | grep -q '^.incoming-'; do sleep 0.01; done; \
          kill -STOP $p; echo theirs > {c}/raced; kill -CONT $p; wait $p)"
    );
    let job = Job::new("cache-race")
        .command("mkdir -p big && head -c 100000000 /dev/urandom > big/f")
        .command(&race);
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert_eq!(
        masked(&ran.ok(&race)),
        "Compressing big...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Key 'raced' already exists.\n"
    );
    assert_eq!(fs::read_to_string(cache.join("raced")).unwrap(), "theirs\n");
}

/// A key with a comma is stored, as the toolbox stores it; `restore` splits
/// its argument on commas, as the toolbox does, so the key is reached by a
/// part of it (an unanchored expression), and the line says which.
#[test]
fn a_key_with_a_comma_is_stored_and_restored_as_the_toolbox_does() {
    let agent = TestAgent::start_default();
    let job = Job::new("cache-comma")
        .command("echo c > f && cache store 'a,b' f && rm f")
        .command("cache restore 'a,b' && cat f");
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert!(cache_dir(&agent).join("a,b").is_file());
    let out = ran.ok("cache restore 'a,b' && cat f");
    assert!(
        out.starts_with("HIT: 'a', using key 'a,b'.\n") && out.ends_with("Restored: f.\nc\n"),
        "{out}"
    );
}

#[test]
fn a_path_among_the_job_s_env_vars_keeps_cache() {
    let agent = TestAgent::start_default();
    let job = Job::new("cache-path")
        .env("PATH", "/usr/bin:/bin")
        .command("cache is_not_empty || echo empty");
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert_eq!(ran.ok("cache is_not_empty || echo empty"), "empty\n");
}

#[test]
fn an_absolute_path_comes_back_where_it_was() {
    let agent = TestAgent::start_default();
    let dir = agent.root().join("abs");
    let d = dir.display();
    let job = Job::new("cache-absolute")
        .command(&format!(
            "mkdir -p {d} && echo x > {d}/f && cache store abs {d}"
        ))
        .command(&format!(
            "rm -rf {d} && cd / && cache restore abs && cat {d}/f"
        ));
    let ran = run(&agent, &job);
    ran.assert_passed();
    assert!(ran
        .ok(&format!(
            "rm -rf {d} && cd / && cache restore abs && cat {d}/f"
        ))
        .ends_with("x\n"));
}

#[test]
fn storing_past_the_limit_removes_the_oldest_and_a_too_large_archive_is_refused() {
    let agent = TestAgent::builder()
        .arg("--cache-max-bytes")
        .arg("300000")
        .start();
    // Random bytes do not compress: each archive is about 100 kB.
    let job = Job::new("cache-limit")
        .command("for k in k1 k2 k3 k4; do head -c 90000 /dev/urandom > blob && cache store $k blob; done")
        .command("cache list")
        .command("head -c 400000 /dev/urandom > big && cache store big big")
        .command("cache has_key big || echo refused");
    let ran = run(&agent, &job);
    ran.assert_passed();
    let stores = ran.ok(
        "for k in k1 k2 k3 k4; do head -c 90000 /dev/urandom > blob && cache store $k blob; done",
    );
    assert!(
        stores.contains(
            "Not enough space, deleting keys based on STORE_TIME...\nKey 'k1' is deleted.\n"
        ),
        "{stores}"
    );
    let list = ran.ok("cache list");
    let keys: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys, ["k4", "k3", "k2"], "{list}");
    let big = masked(&ran.ok("head -c 400000 /dev/urandom > big && cache store big big"));
    assert_eq!(
        big,
        "Compressing big...\n\
         Compression complete. Duration: D. Size: S bytes.\n\
         Archive exceeds allocated 293.0K for cache.\n"
    );
    assert_eq!(
        ran.ok("cache has_key big || echo refused"),
        "Key 'big' doesn't exist in the cache store.\nrefused\n"
    );
    // Nothing half-written is left in the cache directory.
    let mut names: Vec<String> = fs::read_dir(cache_dir(&agent))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["k2", "k3", "k4"]);
}

#[test]
fn a_corrupt_archive_is_reported_and_the_files_stay_untouched() {
    let agent = TestAgent::start_default();
    let store = Job::new("cache-corrupt-store")
        .command("mkdir -p s && cd s")
        .command("mkdir -p c && head -c 200000 /dev/urandom > c/data && echo v1 > c/version && cache store broken c");
    run(&agent, &store).assert_passed();
    let archive = cache_dir(&agent).join("broken");
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&archive, bytes).unwrap();

    let restore = Job::new("cache-corrupt-restore")
        .command("mkdir -p c && echo mine > c/version")
        .command("cache restore broken")
        .command("cat c/version && ls c");
    let ran = run(&agent, &restore);
    ran.assert_passed();
    let out = ran.cmd("cache restore broken").output;
    let last = out.lines().last().unwrap_or_default();
    assert!(
        out.starts_with("HIT: 'broken', using key 'broken'.\nDownloading key 'broken'...\n")
            && last.starts_with("error: the archive of 'broken' is corrupt (")
            && last.ends_with("); nothing was restored"),
        "{out}"
    );
    assert_eq!(ran.ok("cat c/version && ls c"), "mine\nversion\n");
}

#[test]
fn lock_files_choose_what_to_store_and_restore() {
    let agent = TestAgent::start_default();
    let store = Job::new("cache-detect-store")
        .env("SEMAPHORE_GIT_BRANCH", "feature/x")
        .command("mkdir -p app && cd app")
        .command(
            "echo 'GEM' > Gemfile.lock && mkdir -p vendor/bundle && echo gem > vendor/bundle/g",
        )
        .command(
            "echo '{}' > package-lock.json && mkdir -p node_modules && echo mod > node_modules/m",
        )
        .command("cache store")
        .command("cache list")
        .command("md5sum Gemfile.lock");
    let ran = run(&agent, &store);
    ran.assert_passed();
    // The key's checksum is md5sum's, as the toolbox makes it.
    let md5 = ran.ok("md5sum Gemfile.lock");
    let md5 = md5.split_whitespace().next().unwrap();
    let out = masked(&ran.ok("cache store"));
    // md5sum of "{}\n".
    let npm = "8a80554c91d9fca8acb82f023de02f11";
    // The toolbox's order of lock files, its lines, and its keys: the
    // branch as it is, normalised when the key is.
    assert_eq!(
        out,
        format!(
            "Detected Gemfile.lock.\n\
             Using default cache path 'vendor/bundle'.\n\
             Key 'gems-feature/x-{md5}' is normalized to 'gems-feature-x-{md5}'.\n\
             Compressing vendor/bundle...\n\
             Compression complete. Duration: D. Size: S bytes.\n\
             Uploading 'vendor/bundle' with cache key 'gems-feature-x-{md5}'...\n\
             Upload complete. Duration: D.\n\
             Detected package-lock.json.\n\
             Using default cache path 'node_modules'.\n\
             Key 'node-modules-feature/x-{npm}' is normalized to 'node-modules-feature-x-{npm}'.\n\
             Compressing node_modules...\n\
             Compression complete. Duration: D. Size: S bytes.\n\
             Uploading 'node_modules' with cache key 'node-modules-feature-x-{npm}'...\n\
             Upload complete. Duration: D.\n"
        )
    );

    // A changed lock file misses its own key and falls back to the branch's.
    let restore = Job::new("cache-detect-restore")
        .env("SEMAPHORE_GIT_BRANCH", "feature/x")
        .command("mkdir -p app2 && cd app2")
        .command("echo 'GEM2' > Gemfile.lock && echo '{}' > package-lock.json")
        .command("cache restore")
        .command("cat vendor/bundle/g node_modules/m");
    let ran = run(&agent, &restore);
    ran.assert_passed();
    let out = ran.ok("cache restore");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| {
            ["Detected", "Fetching", "MISS", "HIT", "Restored"]
                .iter()
                .any(|w| l.starts_with(w))
        })
        .collect();
    let gem2 = "082cf9fca5389778577b9f59ace5d03e";
    let npm = "8a80554c91d9fca8acb82f023de02f11";
    assert_eq!(
        lines,
        [
            "Detected Gemfile.lock.".to_string(),
            format!("Fetching 'vendor/bundle' directory with cache keys 'gems-feature/x-{gem2},gems-feature/x,gems-master,gems-main'..."),
            format!("MISS: 'gems-feature-x-{gem2}'."),
            "HIT: 'gems-feature-x', using key 'gems-feature-x-dd52c420c970637b96a4c6092bb648c3'.".to_string(),
            "Restored: vendor/bundle/.".to_string(),
            "Detected package-lock.json.".to_string(),
            format!("Fetching 'node_modules' directory with cache keys 'node-modules-feature/x-{npm},node-modules-feature/x,node-modules-master,node-modules-main'..."),
            format!("HIT: 'node-modules-feature-x-{npm}', using key 'node-modules-feature-x-{npm}'."),
            "Restored: node_modules/.".to_string(),
        ],
        "{out}"
    );
    assert_eq!(ran.ok("cat vendor/bundle/g node_modules/m"), "gem\nmod\n");
}

/// An agent whose compose jobs get the static build of the agent as `cache`.
fn compose_agent() -> TestAgent {
    compose_agent_with(&[])
}

fn compose_agent_with(args: &[&str]) -> TestAgent {
    let binary = static_agent();
    let mut builder = TestAgent::builder()
        .arg("--cache-static-binary")
        .arg(binary.to_str().expect("a UTF-8 path"));
    for arg in args {
        builder = builder.arg(arg);
    }
    builder.start()
}

/// The lines of one command's output.
fn lines_of(ran: &crate::support::cache::Ran, command: &str) -> Vec<String> {
    ran.ok(command).lines().map(String::from).collect()
}

/// The same subcommands as the shell jobs above, in compose jobs' main
/// container: lock files, a key that exists, fallback keys and a miss, a
/// damaged archive, the size limit, usage, delete, clear.
#[test]
fn a_compose_job_has_every_subcommand() {
    if !docker::ready() {
        return;
    }
    let agent = compose_agent_with(&["--cache-max-bytes", "300000"]);
    const APP: &str = "mkdir -p /w/app && cd /w/app && echo GEM > Gemfile.lock && mkdir -p vendor/bundle && echo gem > vendor/bundle/g && echo '{}' > package-lock.json && mkdir -p node_modules && echo mod > node_modules/m";
    const TWICE: &str = "cache store dup vendor && cache store dup vendor";
    const BROKEN: &str = "mkdir -p c && head -c 20000 /dev/urandom > c/data && echo v1 > c/version && cache store broken c";
    const FALLBACK: &str = "cache restore nope-,gems-";
    let first = ComposeJob::new("cache-compose-all-1", Container::new("main", BASH_IMAGE))
        .env("SEMAPHORE_GIT_BRANCH", "main")
        .command(APP)
        .command("cache store")
        .command(TWICE)
        .command(BROKEN)
        .command("rm -rf vendor")
        .command(FALLBACK)
        .command("cat vendor/bundle/g");
    let ran = run_value(&agent, &first.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    let stored = lines_of(&ran, "cache store");
    assert_eq!(stored[0], "Detected Gemfile.lock.", "{stored:?}");
    // md5sum of "GEM\n".
    assert_eq!(
        stored[4],
        "Uploading 'vendor/bundle' with cache key 'gems-main-dd52c420c970637b96a4c6092bb648c3'...",
        "{stored:?}"
    );
    assert_eq!(stored[6], "Detected package-lock.json.", "{stored:?}");
    assert_eq!(
        lines_of(&ran, TWICE).last().map(String::as_str),
        Some("Key 'dup' already exists.")
    );
    let fallback = lines_of(&ran, FALLBACK);
    assert_eq!(fallback[0], "MISS: 'nope-'.", "{fallback:?}");
    assert!(
        fallback[1].starts_with("HIT: 'gems-', using key 'gems-main-"),
        "{fallback:?}"
    );
    assert_eq!(ran.ok("cat vendor/bundle/g"), "gem\n");

    // Damaged on the host, between the jobs.
    let archive = cache_dir(&agent).join("broken");
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&archive, bytes).unwrap();

    const CORRUPT: &str =
        "mkdir -p /w/r/c && cd /w/r && echo mine > c/version && cache restore broken";
    const LIMIT: &str =
        "for k in k1 k2 k3 k4; do head -c 90000 /dev/urandom > blob && cache store $k blob; done";
    const BIG: &str = "head -c 400000 /dev/urandom > big && cache store big big";
    const END: &str = "cache delete k4 && cache clear && (cache is_not_empty || echo empty)";
    let second = ComposeJob::new("cache-compose-all-2", Container::new("main", BASH_IMAGE))
        .command(CORRUPT)
        .command("cat c/version && ls c")
        .command(LIMIT)
        .command(BIG)
        .command("cache usage")
        .command(END);
    let ran = run_value(&agent, &second.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    let out = ran.cmd(CORRUPT).output;
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: the archive of 'broken' is corrupt ("),
        "{out}"
    );
    assert_eq!(ran.ok("cat c/version && ls c"), "mine\nversion\n");
    let limit = ran.ok(LIMIT);
    assert!(
        limit.contains("Not enough space, deleting keys based on STORE_TIME...\nKey 'gems-main-"),
        "{limit}"
    );
    assert!(
        ran.ok(BIG)
            .ends_with("Archive exceeds allocated 293.0K for cache.\n"),
        "{}",
        ran.render()
    );
    assert!(
        ran.ok("cache usage").starts_with("FREE SPACE: "),
        "{}",
        ran.render()
    );
    let end = lines_of(&ran, END);
    assert_eq!(
        end,
        ["Key 'k4' is deleted.", "Deleted all caches.", "empty"]
    );
}

#[test]
fn a_compose_job_uses_the_cache_without_seeing_its_directory() {
    if !docker::ready() {
        return;
    }
    let agent = compose_agent();
    let hidden = format!("ls {} || echo hidden", cache_dir(&agent).display());
    let store = ComposeJob::new("cache-compose-store", Container::new("main", BASH_IMAGE))
        .command("mkdir -p /w/deps/sub && cd /w && echo hi > deps/sub/a && chmod 640 deps/sub/a")
        .command("cache store compose-deps deps")
        .command(&hidden);
    let ran = run_value(&agent, &store.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert!(
        ran.ok("cache store compose-deps deps")
            .contains("\nUploading 'deps' with cache key 'compose-deps'...\n"),
        "{}",
        ran.render()
    );
    assert!(ran.ok(&hidden).ends_with("hidden\n"), "{}", ran.render());
    assert!(cache_dir(&agent).join("compose-deps").is_file());

    let restore = ComposeJob::new("cache-compose-restore", Container::new("main", BASH_IMAGE))
        .command("mkdir -p /w && cd /w && cache restore compose-deps")
        .command("stat -c '%a' /w/deps/sub/a && cat /w/deps/sub/a")
        .command("cache has_key compose-deps && cache list");
    let ran = run_value(&agent, &restore.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert!(ran
        .ok("mkdir -p /w && cd /w && cache restore compose-deps")
        .starts_with("HIT: 'compose-deps', using key 'compose-deps'.\n"));
    assert_eq!(
        ran.ok("stat -c '%a' /w/deps/sub/a && cat /w/deps/sub/a"),
        "640\nhi\n"
    );
}

#[test]
fn an_image_with_bash_alone_stores_and_restores() {
    if !docker::ready() {
        return;
    }
    let image = bash_only_image();
    let agent = compose_agent();
    let store = ComposeJob::new("cache-bash-only-store", Container::new("main", image))
        .command("command -v tar || command -v ssh || echo no-tar-no-ssh")
        .command("cd /tmp && printf 'only bash\\n' > note && cache store bash-only note");
    let ran = run_value(&agent, &store.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert!(ran
        .ok("command -v tar || command -v ssh || echo no-tar-no-ssh")
        .contains("no-tar-no-ssh"));
    let out = ran.ok("cd /tmp && printf 'only bash\\n' > note && cache store bash-only note");
    assert!(out.contains("\nUpload complete. Duration: "), "{out}");

    let restore = ComposeJob::new("cache-bash-only-restore", Container::new("main", image))
        .command(
            "cd /tmp && cache restore bash-only && read -r line < note && echo \"read: $line\"",
        );
    let ran = run_value(&agent, &restore.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    let out =
        ran.ok("cd /tmp && cache restore bash-only && read -r line < note && echo \"read: $line\"");
    assert!(
        out.contains("HIT: 'bash-only', using key 'bash-only'.\n"),
        "{out}"
    );
    assert!(out.contains("\nRestored: note.\n"), "{out}");
    assert!(out.contains("read: only bash\n"), "{out}");
}
