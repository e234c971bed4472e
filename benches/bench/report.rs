//! Results and their report: why a benchmark failed (`Failure`), one line
//! of the summary table (`Row`) with its outcome, the table itself, and the
//! formatting of times and sizes every benchmark prints. It knows nothing
//! of what is measured.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// Why a benchmark could not produce a figure.
pub struct Failure {
    pub message: String,
}

impl Failure {
    pub fn new(message: String) -> Self {
        Failure { message }
    }

    pub fn io(what: impl fmt::Display, source: io::Error) -> Self {
        Failure::new(format!("{what}: {source}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Missed,
    Error,
    /// The benchmark cannot run on this host (it says why).
    Skipped,
    /// A figure for context, with no target.
    Info,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "OK",
            Outcome::Missed => "MISSED",
            Outcome::Error => "ERROR",
            Outcome::Skipped => "SKIPPED",
            Outcome::Info => "info",
        })
    }
}

/// One line of the summary table.
pub struct Row {
    pub check: String,
    /// Median agent time, or empty when the check has no timed comparison.
    pub agent: String,
    /// Median baseline (bash) time, likewise.
    pub baseline: String,
    /// Agent time over baseline time, likewise.
    pub ratio: String,
    /// The figure the target applies to, with its unit.
    pub figure: String,
    pub target: String,
    pub outcome: Outcome,
}

impl Row {
    /// A check passing when `value <= limit`; `times` is (agent, baseline).
    pub fn at_most(
        check: &str,
        times: Option<(Duration, Duration)>,
        value: f64,
        limit: f64,
        unit: &str,
        decimals: usize,
    ) -> Row {
        let (agent, baseline, ratio_text) = match times {
            Some((agent, baseline)) => (
                fmt_duration(agent),
                fmt_duration(baseline),
                format!("{:.2}x", ratio(agent, baseline)),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let space = if unit == "x" { "" } else { " " };
        Row {
            check: check.to_owned(),
            agent,
            baseline,
            ratio: ratio_text,
            figure: format!("{value:.decimals$}{space}{unit}"),
            target: format!("<= {limit}{space}{unit}"),
            outcome: if value <= limit {
                Outcome::Ok
            } else {
                Outcome::Missed
            },
        }
    }

    /// A timed comparison for context; `times` is (agent, reference).
    pub fn info(check: &str, times: (Duration, Duration)) -> Row {
        let (agent, reference) = times;
        Row {
            check: check.to_owned(),
            agent: fmt_duration(agent),
            baseline: fmt_duration(reference),
            ratio: format!("{:.2}x", ratio(agent, reference)),
            figure: format!("{:.2}x", ratio(agent, reference)),
            target: "-".to_owned(),
            outcome: Outcome::Info,
        }
    }

    /// A figure for context, with no target and no timed comparison.
    pub fn note(check: &str, figure: String) -> Row {
        Row {
            check: check.to_owned(),
            agent: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            figure,
            target: "-".to_owned(),
            outcome: Outcome::Info,
        }
    }

    pub fn skipped(check: &str) -> Row {
        Row {
            outcome: Outcome::Skipped,
            ..Row::error(check)
        }
    }

    pub fn error(check: &str) -> Row {
        Row {
            check: check.to_owned(),
            agent: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            figure: "see above".to_owned(),
            target: String::new(),
            outcome: Outcome::Error,
        }
    }
}

pub fn print_summary(rows: &[Row]) {
    let header = [
        "check", "agent", "baseline", "ratio", "figure", "target", "status",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.check.clone(),
                row.agent.clone(),
                row.baseline.clone(),
                row.ratio.clone(),
                row.figure.clone(),
                row.target.clone(),
                row.outcome.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print_line = |line: &[String]| {
        let text: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", text.join("  ").trim_end());
    };

    println!("== summary ==");
    print_line(&header.map(str::to_owned));
    print_line(&widths.map(|width| "-".repeat(width)));
    for line in &cells {
        print_line(line);
    }
    let count = |outcome: Outcome| rows.iter().filter(|r| r.outcome == outcome).count();
    let (ok, missed, errors, skipped) = (
        count(Outcome::Ok),
        count(Outcome::Missed),
        count(Outcome::Error),
        count(Outcome::Skipped),
    );
    println!();
    println!(
        "  {} checks: {ok} OK, {missed} MISSED, {errors} ERROR, {skipped} SKIPPED",
        ok + missed + errors + skipped
    );
}

pub fn median<T: Copy + Ord>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

pub fn ratio(agent: Duration, baseline: Duration) -> f64 {
    agent.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

/// Like `fmt_duration`, with microseconds below 10 ms.
pub fn fmt_duration_fine(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.3} ms", d.as_secs_f64() * 1000.0)
    } else {
        fmt_duration(d)
    }
}

pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn fmt_bytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The last `max` bytes of a file, lossily decoded.
pub fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
