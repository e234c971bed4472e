//! The size of the static release binary (`make release`, crt-static for
//! the host), the file `make install` copies. `cargo bench` builds only the
//! bench profile, so the Makefile's `bench` target builds the release
//! binary first and names it in `AGENT_STATIC_BIN`; without that variable
//! the row is skipped and says how to get it.

use std::fs;

use crate::report::{Failure, Row};

/// Names the static release binary whose size is checked.
const STATIC_BIN_VAR: &str = "AGENT_STATIC_BIN";

/// Target: at most 7.5 MiB, with room left under it for the code still to
/// come (README, Performance).
const SIZE_TARGET_MIB: f64 = 7.5;

const TITLE: &str = "static release binary size";

pub fn bench_binary_size() -> Result<Vec<Row>, Failure> {
    let Some(path) = std::env::var_os(STATIC_BIN_VAR) else {
        println!(
            "  SKIPPED: {STATIC_BIN_VAR} is not set; `make bench` builds the binary and sets it"
        );
        return Ok(vec![Row::skipped(TITLE)]);
    };
    let path = std::path::PathBuf::from(path);
    let bytes = fs::metadata(&path)
        .map_err(|e| Failure::io(format!("stat {}", path.display()), e))?
        .len();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "  static release binary: {bytes} bytes ({mib:.2} MiB): {}",
        path.display()
    );
    let row = Row::at_most(TITLE, None, mib, SIZE_TARGET_MIB, "MiB", 2);
    println!("  target {}   {}", row.target, row.outcome);
    Ok(vec![row])
}
