//! A test that cannot run here is reported as such, never as a pass: the
//! Docker tests, run with a PATH that has no docker, leave one record each,
//! and `tests/summary.sh` names them and counts them as skipped.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::docker::run_bounded;

/// Set in the inner run, so that it cannot start this test again.
const INNER: &str = "AGENT_TEST_SKIP_SUMMARY_INNER";
/// Every compose test returns at its gate; the margin is for a loaded machine.
const INNER_TIMEOUT: Duration = Duration::from_secs(300);

/// A folder with a link to every program on PATH except the docker ones.
fn path_without_docker(dir: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for folder in std::env::split_paths(&path) {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("docker") || dir.join(&name).exists() {
                continue;
            }
            let _ = symlink(entry.path(), dir.join(&name));
        }
    }
}

#[test]
fn docker_tests_without_docker_are_named_and_counted_as_skipped() {
    if std::env::var_os(INNER).is_some() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    let skips = root.path().join("skips");
    fs::create_dir(&bin).unwrap();
    path_without_docker(&bin);

    // This very binary, on the compose module only (libtest's own filter,
    // which matches substrings: the listen-mode compose tests are skipped).
    let mut inner = Command::new(std::env::current_exe().unwrap());
    inner
        .args(["compose::", "--skip", "listen_compose::"])
        .env("PATH", &bin)
        .env("AGENT_SKIP_LOG", &skips)
        .env(INNER, "1")
        .env_remove("AGENT_REQUIRE_DOCKER")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let run = run_bounded(inner, b"", INNER_TIMEOUT).ok("the compose tests without docker");
    let output = root.path().join("output.txt");
    fs::write(&output, &run.stdout).unwrap();

    let recorded: BTreeSet<String> = fs::read_dir(&skips)
        .expect("the skips were recorded")
        .flatten()
        .flat_map(|e| {
            fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    // Every test of the module that runs Docker; the others passed.
    let gated = compose_tests_behind_the_gate();
    assert!(
        gated.len() >= 20,
        "the gated tests were not found: {gated:?}"
    );
    assert_eq!(gated.len(), recorded.len(), "recorded:\n{recorded:#?}");
    for line in &recorded {
        let (test, reason) = line.split_once('\t').expect("name, tab, reason");
        assert!(gated.contains(test), "{test} is not a gated compose test");
        assert_eq!(
            reason,
            "Docker is not usable: the docker CLI is missing or the engine does not answer"
        );
    }

    let mut summary = Command::new("bash");
    summary
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/summary.sh"))
        .arg(&skips)
        .arg(&output);
    let summary = run_bounded(summary, b"", Duration::from_secs(30)).ok("tests/summary.sh");
    let text = &summary.stdout;
    let n = gated.len();
    assert!(
        text.contains(&format!("!!! {n} tests could not run on this machine")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  {n} for: Docker is not usable: the docker CLI is missing or the engine does not answer"
        )),
        "{text}"
    );
    for test in &gated {
        assert!(
            text.contains(&format!("      {test}\n")),
            "{test} is not named:\n{text}"
        );
    }
    // The closing line counts them as skipped: libtest counted them passed.
    let passed: usize = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(
        text.lines().last(),
        Some(format!("{} passed, 0 failed, {n} skipped", passed - n).as_str()),
        "{text}"
    );
}

/// The compose tests that call the Docker gate, by libtest name, read from
/// the source: a test whose body starts with `if !docker::ready()`.
fn compose_tests_behind_the_gate() -> BTreeSet<String> {
    // Every file of the module, so that a new one is counted too.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose");
    let mut sources = Vec::new();
    for entry in fs::read_dir(&dir).expect("tests/compose").flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let module = match stem {
            "mod" => "compose::".to_owned(),
            _ => format!("compose::{stem}::"),
        };
        sources.push((module, fs::read_to_string(&path).expect("a test file")));
    }
    let mut gated = BTreeSet::new();
    for (module, source) in &sources {
        let mut name = None;
        for line in source.lines() {
            if let Some(rest) = line.strip_prefix("fn ") {
                name = rest.split('(').next().map(str::to_owned);
            } else if line.trim() == "if !docker::ready() {" {
                if let Some(name) = name.take() {
                    gated.insert(format!("{module}{name}"));
                }
            }
        }
    }
    gated
}

/// `tests/summary.sh` on nextest's closing line, which omits the counts
/// that are zero: the skips move from passed to skipped.
#[test]
fn the_summary_reads_nextest_counts() {
    let root = tempfile::tempdir().unwrap();
    let skips = root.path().join("skips");
    fs::create_dir(&skips).unwrap();
    fs::write(
        skips.join("1-0.skip"),
        "ssh::a\t/usr/sbin/sshd is not installed\n",
    )
    .unwrap();
    fs::write(
        skips.join("1-1.skip"),
        "ssh::b\t/usr/sbin/sshd is not installed\n",
    )
    .unwrap();
    for (closing, expected) in [
        (
            "     Summary [ 396.731s] 220 tests run: 220 passed (1 slow), 0 skipped",
            "218 passed, 0 failed, 2 skipped",
        ),
        (
            "     Summary [  12.000s] 20 tests run: 17 passed, 2 failed, 1 timed out, 5 skipped",
            "15 passed, 3 failed, 7 skipped",
        ),
    ] {
        let output = root.path().join("output.txt");
        fs::write(&output, format!("        PASS [ 0.1s] x\n{closing}\n")).unwrap();
        let mut summary = Command::new("bash");
        summary
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/summary.sh"))
            .arg(&skips)
            .arg(&output);
        let out = run_bounded(summary, b"", Duration::from_secs(30)).ok("tests/summary.sh");
        assert!(
            out.stdout
                .contains("  2 for: /usr/sbin/sshd is not installed\n      ssh::"),
            "{}",
            out.stdout
        );
        assert_eq!(out.stdout.lines().last(), Some(expected), "{}", out.stdout);
    }
}
