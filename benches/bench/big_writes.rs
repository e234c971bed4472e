//! Big writes: `cat` of a 200 MB text file of 100-byte lines through `agent
//! run`, against util-linux `script -qfec 'cat FILE' /dev/null > out`, which
//! relays the same terminal into a file on the same disk. `cat` writes
//! 128 KiB at a time, so the terminal's cost per write is amortised and what
//! shows is the agent's own relay: its reads, the hand-offs between its
//! threads, chunking, JSON encoding, and the log and index writes. The
//! agent's peak RSS is checked meanwhile.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::agent_run::run_agent;
use crate::measure::{measure, Budget};
use crate::report::{fmt_duration, fmt_kib, median, ratio, Failure, Row};
use crate::scratch::Scratch;
use crate::RUNS;

/// The file: lines of 99 printable bytes and a newline.
const FILE_LINES: u64 = 2_000_000;
const LINE_BYTES: u64 = 100;

/// Target: agent wall time over `script`'s.
const TARGET_RATIO: f64 = 1.1;

/// Target: peak RSS of the agent process, in MiB.
const RSS_TARGET_MIB: f64 = 8.0;

pub fn bench_big_writes() -> Result<Vec<Row>, Failure> {
    let scratch = Scratch::new("big-writes")?;
    let file = scratch.path().join("lines.txt");
    write_lines(&file)?;
    let file_bytes = FILE_LINES * LINE_BYTES;
    let cat = format!("cat '{}'", file.display());
    println!("  job: `cat FILE` ({file_bytes} bytes, {LINE_BYTES}-byte lines) via `agent run`");
    println!("  baseline: `script -qfec 'cat FILE' /dev/null > out`, out on the same disk");
    if Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        println!("  SKIPPED: util-linux `script` is not installed");
        return Ok(vec![Row::skipped("big writes (agent/script)")]);
    }
    let job = json!({
        "job_id": "bench-big-writes",
        "commands": [{ "directive": cat }],
    });

    let mut script_times = Vec::new();
    let mut agent_times = Vec::new();
    let mut ratios = Vec::new();
    let mut agent_rss = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let out = scratch.path().join("script.out");
        let mut script = Command::new("script");
        script
            .args(["-qfec", &cat, "/dev/null"])
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .stdout(File::create(&out).map_err(|e| Failure::io("create script.out", e))?);
        let script_run = measure(script, false)?;
        let out_bytes = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let _ = fs::remove_file(&out);
        if !script_run.exit.is_success() || out_bytes < file_bytes {
            return Err(Failure::new(format!(
                "baseline script {} with {out_bytes} bytes out",
                script_run.exit
            )));
        }

        let agent_run = run_agent("big-writes", &job)?;
        let mut logged = 0u64;
        agent_run.summarize(|directive, output| {
            if directive == cat {
                logged += output.len() as u64;
            }
        })?;
        if logged != file_bytes {
            return Err(agent_run.failed(Failure::new(format!(
                "{logged} bytes of output logged, expected {file_bytes}"
            ))));
        }
        println!(
            "  run {run}: script {}, agent {} (ratio {:.2}x), agent peak RSS {}",
            fmt_duration(script_run.wall),
            fmt_duration(agent_run.measured.wall),
            ratio(agent_run.measured.wall, script_run.wall),
            fmt_kib(agent_run.measured.max_rss_kib),
        );
        println!(
            "         CPU (user+sys, with children): script {}, agent {}",
            fmt_duration(script_run.cpu),
            fmt_duration(agent_run.measured.cpu),
        );
        // Per mille, so that the median of the pairs can be taken on integers.
        ratios.push((ratio(agent_run.measured.wall, script_run.wall) * 1000.0) as u64);
        script_times.push(script_run.wall);
        agent_times.push(agent_run.measured.wall);
        agent_rss.push(agent_run.measured.max_rss_kib);
    }

    let script = median(&script_times);
    let agent = median(&agent_times);
    // The median of each run's ratio: the two commands of a run see the
    // same load, which on a shared machine drifts more than they differ.
    let row = Row::at_most(
        "big writes (agent/script)",
        Some((agent, script)),
        median(&ratios) as f64 / 1000.0,
        TARGET_RATIO,
        "x",
        2,
    );
    let rss = Row::at_most(
        "agent peak RSS (big writes)",
        None,
        median(&agent_rss) as f64 / 1024.0,
        RSS_TARGET_MIB,
        "MiB",
        1,
    );
    println!(
        "  median: script {}, agent {}   median ratio of the runs {}   target {}   {}",
        fmt_duration(script),
        fmt_duration(agent),
        row.figure,
        row.target,
        row.outcome,
    );
    println!(
        "  median agent peak RSS: {}   target {}   {}",
        rss.figure, rss.target, rss.outcome
    );
    Ok(vec![row, rss])
}

/// Writes `FILE_LINES` numbered lines of `LINE_BYTES` bytes each.
fn write_lines(path: &std::path::Path) -> Result<(), Failure> {
    let file = File::create(path).map_err(|e| Failure::io("create the big file", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(3);
    for i in 0..FILE_LINES {
        // 9 digits, a space, 89 bytes of text, a newline.
        writeln!(out, "{i:09} {}", &filler[..89])
            .map_err(|e| Failure::io("write the big file", e))?;
    }
    out.flush()
        .map_err(|e| Failure::io("write the big file", e))
}
