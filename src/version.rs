//! The agent's version: the crate version, plus the git commit when the
//! binary was built from a checkout (set by build.rs).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, if known.
pub const COMMIT: Option<&str> = option_env!("AGENT_GIT_COMMIT");

/// `agent 0.1.0 (1f43f0d919d9)`, or `agent 0.1.0` outside a checkout.
pub fn long() -> String {
    match COMMIT {
        Some(commit) if !commit.is_empty() => format!("agent {VERSION} ({commit})"),
        _ => format!("agent {VERSION}"),
    }
}
