//! The agent binary a bench measures: the one `cargo bench` built (bench
//! profile, i.e. release), or another named by `AGENT_BENCH_BIN` (say, an
//! older build, to compare two in the same hour). Both benches use it
//! (`benches/cache.rs` by path).

const AGENT: &str = env!("CARGO_BIN_EXE_agent");

/// Names another agent binary to measure instead.
const AGENT_OVERRIDE_VAR: &str = "AGENT_BENCH_BIN";

pub fn agent_binary() -> String {
    std::env::var(AGENT_OVERRIDE_VAR).unwrap_or_else(|_| AGENT.to_owned())
}

/// The line a bench starts with: which binary it measures.
pub fn binary_line() -> String {
    format!(
        "  binary: {} (override with {AGENT_OVERRIDE_VAR})",
        agent_binary()
    )
}
