//! Archives shared between `cache` and GNU tar, both ways, on the local
//! backend and on SFTP: what `tar czf` and `tar czPf` made restores as the
//! toolbox restores it; what a store makes in the toolbox's format has
//! `tar czf`'s member names and restores with `tar xzf`; hostile archives
//! are refused before anything is written. And the toolbox's metrics file.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::support::toolbox::{job, out, restored, step, Cache};

/// A gzip archive of raw entries: (name, type, link target, content).
fn raw_tgz(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(enc);
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Member names of a tar.gz, as `tar tzf` lists them, sorted.
fn members(archive: &Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "tar tzf {}", archive.display());
    let mut names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// Archives go both ways between `cache` and GNU tar: what `tar czf` and
/// `tar czPf` made restores as the toolbox restores it; what a store makes
/// in the toolbox's format (asked for by the job's
/// SEMAPHORE_CACHE_ARCHIVE_METHOD, or by the agent) has `tar czf`'s member
/// names and restores with `tar xzf`; hostile archives are refused.
fn sharing(cache: &Cache, gzip_agent: &Cache) {
    cache.clear();
    let home = cache.home();
    let abs = home.join("abs");
    let a = abs.display();
    let make = format!(
        "mkdir -p rel/d {a} && echo r > rel/d/f && ln -s d/f rel/l && echo a > {a}/f && \
         tar czf rel.tgz rel && tar czPf abs.tgz {a}"
    );
    cache.run(&job("tb-tar-make", &[&make]));
    cache.raw_store(
        "tar-rel",
        &fs::read(home.join("rel.tgz")).unwrap(),
        Duration::ZERO,
    );
    cache.raw_store(
        "tar-abs",
        &fs::read(home.join("abs.tgz")).unwrap(),
        Duration::ZERO,
    );
    let cmds = [
        "rm -rf rel && cache restore tar-rel && cat rel/d/f rel/l".to_string(),
        format!("rm -rf {a} && cd / && cache restore tar-abs && cat {a}/f"),
    ];
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let ran = cache.run(&job("tb-tar-restore", &refs));
    assert_eq!(
        out(&ran, &cmds[0]),
        format!(
            "HIT: 'tar-rel', using key 'tar-rel'.\n{}r\nr\nexit 0\n",
            restored("tar-rel", "rel/")
        )
    );
    assert_eq!(
        out(&ran, &cmds[1]),
        format!(
            "HIT: 'tar-abs', using key 'tar-abs'.\n{}a\nexit 0\n",
            restored("tar-abs", &format!("{a}/"))
        )
    );

    // Stored in the toolbox's format, by the job's choice and by the
    // agent's.
    let store = format!(
        "SEMAPHORE_CACHE_ARCHIVE_METHOD=native cache store gz-rel rel >/dev/null && \
         SEMAPHORE_CACHE_ARCHIVE_METHOD=shell-out cache store gz-abs {a} >/dev/null && \
         cache store zstd-rel rel >/dev/null"
    );
    let ran = cache.run(&job("tb-gz-store", &[&store]));
    assert_eq!(out(&ran, &store), "exit 0\n", "{}", ran.render());
    gzip_agent.run(&job(
        "tb-gz-agent",
        &["mkdir -p rel/d && echo r > rel/d/f && ln -s d/f rel/l && cache store gz-agent rel >/dev/null"],
    ));
    let gz_agent = gzip_agent.dir().join("gz-agent");
    for (path, tgz) in [
        (cache.dir().join("gz-rel"), home.join("rel.tgz")),
        (cache.dir().join("gz-abs"), home.join("abs.tgz")),
        (gz_agent.clone(), home.join("rel.tgz")),
    ] {
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes[..2], [0x1f, 0x8b], "{}", path.display());
        assert_eq!(members(&path), members(&tgz), "{}", path.display());
    }
    let zstd = fs::read(cache.dir().join("zstd-rel")).unwrap();
    assert_eq!(zstd[..4], [0x28, 0xb5, 0x2f, 0xfd]);
    let x = home.join("x");
    fs::create_dir_all(&x).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(cache.dir().join("gz-rel"))
        .current_dir(&x)
        .status()
        .unwrap();
    assert!(untar.success());
    assert_eq!(fs::read_to_string(x.join("rel/d/f")).unwrap(), "r\n");
    assert_eq!(fs::read_link(x.join("rel/l")).unwrap(), Path::new("d/f"));

    // Hostile archives: nothing is written.
    let outside = home.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = outside.display().to_string();
    cache.raw_store(
        "evil-up",
        &raw_tgz(&[("../outside/planted", tar::EntryType::Regular, "", b"evil")]),
        Duration::ZERO,
    );
    cache.raw_store(
        "evil-link",
        &raw_tgz(&[
            ("link", tar::EntryType::Symlink, &target, b""),
            ("link/planted", tar::EntryType::Regular, "", b"evil"),
        ]),
        Duration::ZERO,
    );
    cache.raw_store("garbage", b"not an archive at all", Duration::ZERO);
    let cmds = [
        "mkdir -p job && cd job && CACHE_FAIL_ON_ERROR=true cache restore evil-up",
        "cache restore evil-link",
        "cache restore garbage",
        "ls",
    ];
    let ran = cache.run(&job("tb-hostile", &cmds));
    let last = |cmd: &str| {
        let o = out(&ran, cmd);
        let lines: Vec<&str> = o.lines().collect();
        (
            lines[lines.len() - 2].to_string(),
            lines[lines.len() - 1].to_string(),
        )
    };
    assert_eq!(
        last(cmds[0]),
        (
            "error: the archive of 'evil-up' is refused (it holds a name with '..': ../outside/planted); nothing was restored".to_string(),
            "exit 1".to_string()
        )
    );
    let (line, code) = last(cmds[1]);
    assert!(
        line.starts_with("error: the archive of 'evil-link' is refused (it holds a name under a symlink it made itself: ") && code == "exit 0",
        "{line}"
    );
    let (line, _) = last(cmds[2]);
    assert!(
        line.starts_with("error: the archive of 'garbage' is corrupt ("),
        "{line}"
    );
    assert_eq!(out(&ran, "ls"), "exit 0\n");
    assert!(!outside.join("planted").exists());
}

#[test]
fn archives_are_shared_with_gnu_tar_on_the_local_backend() {
    let cache = Cache::local(&[]);
    let gzip_agent = Cache::local(&["--cache-archive-format", "gzip"]);
    sharing(&cache, &gzip_agent);
}

#[test]
fn archives_are_shared_with_gnu_tar_on_sftp() {
    let Some(cache) = Cache::sftp(&[]) else {
        return;
    };
    let Some(gzip_agent) = Cache::sftp(&["--cache-archive-format", "gzip"]) else {
        return;
    };
    sharing(&cache, &gzip_agent);
}

/// SEMAPHORE_TOOLBOX_METRICS_ENABLED=true: one line per upload and
/// download in /tmp/toolbox_metrics (a fixed path, as the toolbox's), and
/// one for an archive that cannot be read.
#[test]
fn metrics_lines_go_to_the_toolbox_s_file() {
    let cache = Cache::local(&[]);
    cache.raw_store("garbage", b"not an archive at all", Duration::ZERO);
    let guard = crate::support::metrics_file::MetricsFile::take();
    let metrics = Path::new(crate::support::metrics_file::PATH);
    let existed = guard.existed();
    let before = fs::read_to_string(metrics).unwrap_or_default();
    let cmds = [
        "printf x > m && cache store metrics-k m && cache restore metrics-k",
        "cache restore garbage",
    ];
    let ran = cache.run(
        &job("tb-metrics", &cmds)
            .env("SEMAPHORE_TOOLBOX_METRICS_ENABLED", "true")
            .env("SEMAPHORE_CACHE_URL", "10.0.0.5:29920")
            .env("SEMAPHORE_CACHE_USERNAME", "tester"),
    );
    assert!(ran
        .ok(&step(cmds[1]))
        .contains("error: the archive of 'garbage' is corrupt ("));
    let after = fs::read_to_string(metrics).unwrap();
    let new: Vec<&str> = after
        .strip_prefix(before.as_str())
        .unwrap_or(&after)
        .lines()
        .filter(|l| l.contains("server=10.0.0.5,user=tester,"))
        .collect();
    let shape = |l: &&str| {
        let (tags, fields) = l.split_once(' ').unwrap();
        let sized = fields.starts_with("size=") && fields.contains(",duration=");
        (tags.to_string(), sized)
    };
    let shapes: Vec<(String, bool)> = new.iter().map(shape).collect();
    let tags = |c: &str, corrupt: u8| {
        (
            format!("usercache,server=10.0.0.5,user=tester,command={c},corrupt={corrupt}"),
            true,
        )
    };
    assert_eq!(
        shapes,
        [
            tags("store", 0),
            tags("restore", 0),
            tags("restore", 0),
            tags("restore", 1)
        ],
        "{new:?}"
    );
    assert!(new[3].ends_with(" size=0,duration=0"), "{new:?}");
    let mode = fs::metadata(metrics).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    if !existed {
        assert_eq!(mode.ok(), Some(0o600));
    }
}

/// Without `TMPDIR` the toolbox logs to `/tmp/cache_log`; a shell job here
/// shares the host's `/tmp` with every other job, so the log goes to the
/// job's own work directory (removed with the job) instead, and nothing is
/// added to `/tmp/cache_log`.
#[test]
fn without_tmpdir_the_cache_log_is_the_job_s_own() {
    let cache = Cache::local(&[]);
    let shared = Path::new("/tmp/cache_log");
    let before = fs::metadata(shared).map(|m| m.len()).ok();
    let cmds = [
        "printf x > no-tmpdir && env -u TMPDIR cache store no-tmpdir-key no-tmpdir >/dev/null",
        "cat \"$(dirname \"$AGENT_CACHE_SOCKET\")/cache_log\"",
    ];
    let ran = cache.run(&job("cache-log-own", &cmds));
    let own = out(&ran, cmds[1]);
    assert!(
        own.contains("Uploading 'no-tmpdir' with cache key 'no-tmpdir-key'...\n"),
        "{own}"
    );
    assert_eq!(fs::metadata(shared).map(|m| m.len()).ok(), before);
}
