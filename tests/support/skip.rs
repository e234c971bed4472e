//! The one gate of tests that need what a machine may lack (Docker, a
//! compose tool, sshd). A test that cannot run here says why on stderr and
//! returns; under `AGENT_REQUIRE_DOCKER=1` (CI) that is a failure instead.
//!
//! A skipped test still counts as passed for the test runner, so each skip
//! is also recorded: with `AGENT_SKIP_LOG=<dir>` (set by `make test`) one
//! file per skip, holding the test's name and the reason, which
//! `tests/summary.sh` counts and lists after the run.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// True when CI demands that every environment-dependent test runs.
pub fn required() -> bool {
    std::env::var("AGENT_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The running test's name: libtest names the thread of each test after it.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned()
}

/// Gives up the running test for `reason`: fails it under
/// `AGENT_REQUIRE_DOCKER=1`, else records the skip and returns false, which
/// the test returns on.
pub fn skip(reason: &str) -> bool {
    let test = current_test();
    if required() {
        panic!("{test}: {reason}, and AGENT_REQUIRE_DOCKER=1 requires this test to run");
    }
    eprintln!("skipped {test}: {reason}");
    record(&test, reason);
    false
}

fn record(test: &str, reason: &str) {
    let Some(dir) = std::env::var_os("AGENT_SKIP_LOG").map(PathBuf::from) else {
        return;
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{}.skip",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // One line: the reason may not hold a tab or a newline.
    let reason = reason.replace(['\t', '\n'], " ");
    let _ = fs::create_dir_all(&dir);
    if let Err(e) = fs::write(dir.join(name), format!("{test}\t{reason}\n")) {
        eprintln!("cannot record the skip in {}: {e}", dir.display());
    }
}
