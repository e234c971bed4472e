//! Validated configuration shared by the commands: where data lives, whose
//! home the jobs use. Built once from the arguments and the environment.

use std::path::PathBuf;

/// The agent user's home: jobs start there and `~` in file paths means it.
pub fn home_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from("/"),
    }
}

/// `--data-dir`, else `$AGENT_DATA_DIR`, else `~/.local/state/agent`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("AGENT_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| home_dir().join(".local/state/agent"))
}
