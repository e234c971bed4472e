//! `make bench`: measures the release `agent` binary against plain bash doing
//! the same work, in the same process, and checks the figures against the
//! performance targets.
//!
//! Each `bench_*` function prints a titled block and returns rows for the
//! summary table printed at the end. Every figure is the median of `RUNS`
//! runs (fewer if a benchmark exceeds its time budget); agent and baseline
//! runs are interleaved so that drift in machine load affects both alike. A
//! missed target prints `MISSED` but does not fail the process, so that every
//! figure is always printed. A benchmark that could not
//! measure at all (the agent failed the job, timed out, or wrote an event log
//! that does not show the work done) prints `ERROR`, and the process exits 1
//! after the summary: a figure taken from a failing job would be worthless.
//!
//! The first three benchmarks run the agent as `agent run --json --data-dir
//! <tmp> <job.json>` with stdout discarded and `HOME` in a scratch directory
//! that is removed afterwards. Its wall time is measured from spawn to
//! reaping; its peak RSS comes from `wait4`'s `ru_maxrss`.
//!
//! The others start `agent serve` on 127.0.0.1 port 0 with the integration
//! tests' `TestAgent` (a certificate made with rcgen, a JWT signed with the
//! server's secret, HOME, data dir and agent log in a directory of its own)
//! and drive it over HTTPS with its `ApiClient`, as a control plane would:
//! `POST /jobs`, then `GET /jobs/{id}/log?start_from=N` until
//! `job_finished`. Every job's whole log is then read through the API and
//! must show the job passed with the work done; dropping the server checks
//! that no process of its jobs is left. The docker compose benchmark
//! runs only when a compose tool and the image `agent-test/bash:1` exist,
//! and prints `SKIPPED` with the reason otherwise.
//!
//! `cargo bench --bench bench -- <word>...` runs only the benchmarks whose
//! title contains one of the words.
//!
//! The listen-mode benchmarks run `agent start` against the tests' control
//! plane (`support::control_plane`).
//!
//! The first row is the size of the static release binary, which `make
//! bench` builds and names in `AGENT_STATIC_BIN` (`size`).
//!
//! This file runs the benchmarks and prints the summary. Each benchmark has
//! a file by subject (`size`, `throughput`, `big_writes`, `serve`,
//! `latency`, `pollers`, `compose`, `gate`, `hostile`, `listen`);
//! `measure`, `agent_run`, `server`, `events`, `scratch` and `report` are
//! what they share.

mod agent_run;
mod big_writes;
mod binary;
mod compose;
mod events;
mod gate;
mod hostile;
mod latency;
mod listen;
mod measure;
mod pollers;
mod report;
mod scratch;
mod serve;
mod server;
mod size;
mod throughput;

/// The integration tests' support: the benchmarks start `agent serve` with
/// its `TestAgent` and talk to it with its `ApiClient`.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, reason = "the benchmarks use a part of it")]
mod support;

use std::panic;
use std::time::Duration;

use report::{print_summary, Failure, Outcome, Row};

pub use binary::agent_binary;

/// How many times each measurement is repeated; the median is reported.
pub const RUNS: usize = 3;

/// Once a benchmark has spent this long, it takes no further runs and reports
/// the median of those it has, so that a slow engine cannot make `make bench`
/// take many minutes.
pub const BENCH_BUDGET: Duration = Duration::from_secs(45);

/// Upper bound for one run of anything; a run that takes longer is stopped
/// and the benchmark reports an error instead of hanging `make bench`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// After SIGTERM on timeout, how long the agent gets before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

type BenchFn = fn() -> Result<Vec<Row>, Failure>;

fn main() {
    println!("agent benchmarks");
    println!("{}", binary::binary_line());
    println!("  each figure is the median of {RUNS} runs; baselines run in this process");
    println!();

    let benches: [(&str, BenchFn); 16] = [
        ("static release binary size", size::bench_binary_size),
        ("per-command overhead", throughput::bench_command_overhead),
        ("throughput", throughput::bench_throughput),
        ("big writes", big_writes::bench_big_writes),
        ("idle RSS of agent serve", serve::bench_idle_rss),
        (
            "per-command overhead via the API",
            serve::bench_serve_overhead,
        ),
        ("job start via the API", serve::bench_serve_start),
        ("log tail latency", latency::bench_log_tail),
        ("GET /is_alive under 64 log pollers", pollers::bench_pollers),
        ("docker compose executor", compose::bench_compose),
        ("docker gate", gate::bench_gate),
        (
            "memory under large request bodies",
            hostile::bench_large_bodies,
        ),
        (
            "GET /is_alive during a connection flood",
            hostile::bench_flood,
        ),
        ("cache socket flood", hostile::bench_cache_flood),
        ("idle agent start (listen mode)", listen::bench_idle),
        ("log push latency (listen mode)", listen::bench_latency),
    ];
    // `cargo bench --bench bench -- log` runs the benchmarks whose title
    // contains `log`; cargo itself passes `--bench`, which is not a filter.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let mut rows = Vec::new();
    for (title, bench) in benches {
        if !filters.is_empty() && !filters.iter().any(|f| title.contains(f.as_str())) {
            continue;
        }
        println!("== {title} ==");
        match run_caught(bench) {
            Ok(bench_rows) => rows.extend(bench_rows),
            Err(failure) => {
                println!("  ERROR: {failure}");
                rows.push(Row::error(title));
            }
        }
        println!();
    }

    print_summary(&rows);
    if rows.iter().any(|row| row.outcome == Outcome::Error) {
        std::process::exit(1);
    }
}

/// Runs one benchmark. The tests' support, which starts `agent serve`,
/// reports a problem by panicking, as a test would; here that panic becomes
/// the benchmark's failure, so that the other benchmarks still run.
fn run_caught(bench: BenchFn) -> Result<Vec<Row>, Failure> {
    panic::catch_unwind(bench).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "no message".to_owned());
        Err(Failure::new(format!("panicked: {message}")))
    })
}
