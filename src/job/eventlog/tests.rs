//! Unit tests of the event log: encoding, chunked output, reading from an
//! offset, write failures and recovery (docs/protocol.md §6).

use super::*;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;

#[test]
fn directives_are_masked() {
    let dir = temp_dir("mask");
    let mut log = EventLog::create(&dir).unwrap();
    log.set_secrets(Arc::new(vec![b"hunter22".to_vec()]));
    log.write(&Event::CmdStarted {
        timestamp: 1,
        directive: "echo hunter22",
    });
    log.write(&Event::CmdFinished {
        timestamp: 1,
        directive: "echo hunter22",
        exit_code: 0,
        started_at: 1,
        finished_at: 1,
    });
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(text.matches("echo [MASKED]").count(), 2, "{text}");
    assert!(!text.contains("hunter22"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_write_keeps_steps_and_the_reason_in_memory() {
    let dir = temp_dir("full");
    let full = || OpenOptions::new().write(true).open("/dev/full").unwrap();
    let files = LogFiles::new(dir.join("none"), dir.join("none.idx"), Published::default());
    let mut log = EventLog::with_files(full(), full(), files, None);
    let broken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&broken);
    log.on_broken(Box::new(move || {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    log.write(&Event::JobStarted { timestamp: 1 });
    log.write(&Event::CmdStarted {
        timestamp: 1,
        directive: "yes",
    });
    for _ in 0..3 {
        log.write(&Event::CmdOutput {
            timestamp: 1,
            output: "y\n",
        });
    }
    log.write(&Event::CmdFinished {
        timestamp: 2,
        directive: "yes",
        exit_code: 130,
        started_at: 1,
        finished_at: 2,
    });
    log.write(&Event::JobFinished {
        timestamp: 2,
        result: "failed",
    });
    assert!(log.is_broken());
    assert_eq!(broken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let files = log.files();
    let events = events_of(&files, 0);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "job_started",
            "cmd_started",
            "cmd_output",
            "cmd_finished",
            "job_finished"
        ]
    );
    assert!(events[2]["output"]
        .as_str()
        .unwrap()
        .contains("could not write the log of this job (No space left on device"));
    assert!(files.progress().finished);
    assert_eq!(events_of(&files, 3).len(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agent-eventlog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn output_lines_are_what_serde_writes() {
    let event = Event::CmdOutput {
        timestamp: 1_700_000_000,
        output: "line \"one\"\r\n\u{1}é\\",
    };
    let mut line = Vec::new();
    encode(&mut line, &event);
    assert_eq!(line, serde_json::to_vec(&event).unwrap());
}

#[test]
fn lines_have_wire_field_order() {
    let dir = temp_dir("order");
    let mut log = EventLog::create(&dir).unwrap();
    log.write(&Event::CmdFinished {
        timestamp: 3,
        directive: "echo <a>",
        exit_code: 0,
        started_at: 1,
        finished_at: 2,
    });
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(
        text,
        "{\"event\":\"cmd_finished\",\"timestamp\":3,\"directive\":\"echo <a>\",\"exit_code\":0,\"started_at\":1,\"finished_at\":2}\n"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failure_closes_the_open_step_and_adds_no_line() {
    let dir = temp_dir("failure");
    let mut log = EventLog::create(&dir).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shown = Arc::clone(&seen);
    log.on_remark(Box::new(move |text| {
        shown.lock().unwrap().push(text.to_string())
    }));
    log.write(&Event::CmdStarted {
        timestamp: 5,
        directive: "make",
    });
    log.close_after_failure("\nboom\n");
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let events: Vec<&str> = text
        .lines()
        .map(|l| &l[..l.find(",\"timestamp").unwrap()])
        .collect();
    assert_eq!(
        events,
        [
            "{\"event\":\"cmd_started\"",
            "{\"event\":\"cmd_finished\"",
            "{\"event\":\"job_finished\""
        ]
    );
    assert!(text.contains("\"directive\":\"make\",\"exit_code\":1,\"started_at\":5"));
    assert!(text.contains("\"result\":\"failed\""));
    // The reason is a remark: for the API and `agent run`, not the log.
    assert_eq!(log.files().remarks(), ["boom"]);
    assert_eq!(*seen.lock().unwrap(), ["boom"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn remarks_are_bounded_and_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::create(dir.path()).unwrap();
    log.remark("  \n");
    assert!(log.files().remarks().is_empty());
    for i in 0..MAX_REMARKS + 5 {
        log.remark(&format!("remark {i}"));
    }
    let remarks = log.files().remarks();
    assert_eq!(remarks.len(), MAX_REMARKS);
    assert_eq!(remarks[0], "remark 0");
    assert_eq!(std::fs::read(dir.path().join("events.jsonl")).unwrap(), b"");
}

#[test]
fn read_from_any_event() {
    let dir = temp_dir("read");
    let mut log = EventLog::create(&dir).unwrap();
    for i in 0..10 {
        log.write(&Event::CmdOutput {
            timestamp: i,
            output: &format!("line {i}\n"),
        });
    }
    let files = log.files();
    let mut all = String::new();
    files
        .read_from(0)
        .unwrap()
        .read_to_string(&mut all)
        .unwrap();
    assert_eq!(all.lines().count(), 10);
    let mut tail = String::new();
    files
        .read_from(8)
        .unwrap()
        .read_to_string(&mut tail)
        .unwrap();
    assert_eq!(tail.lines().count(), 2);
    assert!(tail.starts_with("{\"event\":\"cmd_output\",\"timestamp\":8,"));
    let mut none = String::new();
    files
        .read_from(99)
        .unwrap()
        .read_to_string(&mut none)
        .unwrap();
    assert!(none.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

fn lines_of(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn results_and_timestamps_are_the_wire_values() {
    let results = [JobResult::Passed, JobResult::Failed, JobResult::Stopped];
    assert_eq!(
        results.map(JobResult::as_str),
        ["passed", "failed", "stopped"]
    );
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now = now_secs();
    assert!(before <= now && now <= before + 60, "{before} {now}");
}

#[test]
fn progress_and_the_observer_follow_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::create(dir.path()).unwrap();
    let files = log.files();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    log.set_observer(Box::new(move |event, line| {
        let finished = matches!(event, Event::JobFinished { .. });
        sink.lock().unwrap().push((finished, line.to_vec()));
    }));
    log.write(&Event::JobStarted { timestamp: 7 });
    let progress = files.progress();
    let first = br#"{"event":"job_started","timestamp":7}"#;
    assert_eq!(
        (progress.bytes, progress.finished),
        (first.len() as u64 + 1, false)
    );
    log.write(&Event::JobFinished {
        timestamp: 8,
        result: JobResult::Passed.as_str(),
    });
    let text = std::fs::read(dir.path().join("events.jsonl")).unwrap();
    let progress = files.progress();
    assert_eq!(
        (progress.bytes, progress.finished),
        (text.len() as u64, true)
    );
    let lines: Vec<(bool, Vec<u8>)> = text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| (i == 1, line.to_vec()))
        .collect();
    assert_eq!(*seen.lock().unwrap(), lines);
}

#[test]
fn a_failure_after_a_finished_step_ends_the_job_without_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::create(dir.path()).unwrap();
    log.write(&Event::JobStarted { timestamp: 4 });
    log.write(&Event::CmdStarted {
        timestamp: 5,
        directive: "make",
    });
    log.write(&Event::CmdFinished {
        timestamp: 6,
        directive: "make",
        exit_code: 0,
        started_at: 5,
        finished_at: 6,
    });
    log.close_after_failure("boom\n");
    let events = lines_of(dir.path());
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (
                text("event"),
                text("directive") + &text("output") + &text("result"),
            )
        })
        .collect();
    let expected = [
        ("job_started", ""),
        ("cmd_started", "make"),
        ("cmd_finished", "make"),
        ("job_finished", "failed"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(summary, expected);
    assert_eq!(events[2]["exit_code"], 0);
    assert_eq!(log.files().remarks(), ["boom"]);
}

/// Each event a log keeps when no write reaches its disk (/dev/full),
/// as "event directive|output|result"; the reason for the failure
/// reads `<why>`. `open_step` is a step left open by an earlier agent.
fn kept_on_a_full_disk(open_step: Option<&str>, events: &[Event<'_>]) -> Vec<String> {
    let full = || OpenOptions::new().write(true).open("/dev/full").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = LogFiles::new(
        dir.path().join("events.jsonl"),
        dir.path().join("events.idx"),
        Published::default(),
    );
    let open_step = open_step.map(|step| (step.to_string(), 1));
    let mut log = EventLog::with_files(full(), full(), files, open_step);
    assert!(!log.is_broken());
    for event in events {
        log.write(event);
    }
    assert!(log.is_broken());
    events_of(&log.files(), 0)
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            let mut detail = text("directive") + &text("output") + &text("result");
            if detail.contains("could not write the log of this job") {
                detail = "<why>".to_string();
            }
            format!("{} {detail}", text("event")).trim_end().to_string()
        })
        .collect()
}

#[test]
fn the_reason_for_a_failed_write_goes_into_the_open_step_once() {
    let finished = |directive| Event::CmdFinished {
        timestamp: 2,
        directive,
        exit_code: 1,
        started_at: 1,
        finished_at: 2,
    };
    let started = |directive| Event::CmdStarted {
        timestamp: 1,
        directive,
    };
    let output = || Event::CmdOutput {
        timestamp: 1,
        output: "x\n",
    };
    let job_finished = || Event::JobFinished {
        timestamp: 2,
        result: "failed",
    };
    // Output is the first write to fail: the reason follows at once.
    assert_eq!(
        kept_on_a_full_disk(Some("make"), &[output(), finished("make"), job_finished()]),
        [
            "cmd_output <why>",
            "cmd_finished make",
            "job_finished failed"
        ]
    );
    // The end of the step is: the reason comes before it.
    assert_eq!(
        kept_on_a_full_disk(Some("make"), &[finished("make"), job_finished()]),
        [
            "cmd_output <why>",
            "cmd_finished make",
            "job_finished failed"
        ]
    );
    // No step to put it in: one of its own, before `job_finished`.
    assert_eq!(
        kept_on_a_full_disk(None, &[job_finished()]),
        [
            "cmd_started Agent error",
            "cmd_output <why>",
            "cmd_finished Agent error",
            "job_finished failed"
        ]
    );
    // Only the first step after the failure says why.
    assert_eq!(
        kept_on_a_full_disk(
            None,
            &[
                Event::JobStarted { timestamp: 1 },
                started("a"),
                finished("a"),
                started("b"),
                output(),
                finished("b"),
                job_finished()
            ]
        ),
        [
            "job_started",
            "cmd_started a",
            "cmd_output <why>",
            "cmd_finished a",
            "cmd_started b",
            "cmd_finished b",
            "job_finished failed"
        ]
    );
}

/// Everything `reader` can read now.
fn read_available(reader: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
            Err(e) => panic!("reading the log's socket: {e}"),
        }
    }
}

fn line_of(event: &Event<'_>) -> Vec<u8> {
    let mut line = Vec::new();
    encode(&mut line, event);
    line.push(b'\n');
    line
}

#[test]
fn lines_kept_in_memory_reach_the_log_once_it_can_be_written_again() {
    // The log is one end of a non-blocking socket pair: a write fails
    // (would block) while nobody reads the other end, and works again
    // once the other end has read what waits there. The index is a file.
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader) = UnixStream::pair().unwrap();
    writer.set_nonblocking(true).unwrap();
    reader.set_nonblocking(true).unwrap();
    let index_path = dir.path().join("events.idx");
    let files = LogFiles::new(
        dir.path().join("events.jsonl"),
        index_path.clone(),
        Published::default(),
    );
    let index = File::create(&index_path).unwrap();
    let mut log = EventLog::with_files(File::from(OwnedFd::from(writer)), index, files, None);
    let started = Event::CmdStarted {
        timestamp: 1,
        directive: "yes",
    };
    let written = [Event::JobStarted { timestamp: 1 }, started];
    for event in &written {
        log.write(event);
    }
    let offsets = |bytes: &[u8]| -> Vec<u64> {
        bytes
            .chunks(8)
            .map(|entry| u64::from_le_bytes(entry.try_into().unwrap()))
            .collect()
    };
    let first = line_of(&written[0]).len() as u64;
    let second = first + line_of(&written[1]).len() as u64;
    assert_eq!(offsets(&std::fs::read(&index_path).unwrap()), [0, first]);

    // More than the socket holds: this write fails half-way.
    let flood = "y\n".repeat(4 << 20);
    log.write(&Event::CmdOutput {
        timestamp: 1,
        output: &flood,
    });
    assert!(log.is_broken());
    // The index is cut back to the lines the log had before.
    assert_eq!(offsets(&std::fs::read(&index_path).unwrap()), [0, first]);
    let finished = Event::CmdFinished {
        timestamp: 2,
        directive: "yes",
        exit_code: 1,
        started_at: 1,
        finished_at: 2,
    };
    log.write(&finished);
    let before = read_available(&mut reader);
    assert!(before.len() < flood.len(), "the flood was written whole");

    // The socket has room again; the last attempt, when the log is
    // dropped, writes what was kept: the reason, then `cmd_finished`.
    drop(log);
    let text = String::from_utf8(read_available(&mut reader)).unwrap();
    let (reason, rest) = text.split_once('\n').expect("a whole line");
    assert!(
        reason.contains("could not write the log of this job"),
        "{text}"
    );
    assert_eq!(rest.as_bytes(), line_of(&finished), "{text}");
    let reason = reason.len() as u64 + 1;
    assert_eq!(
        offsets(&std::fs::read(&index_path).unwrap()),
        [0, first, second, second + reason]
    );
}

/// A job of three steps whose middle one prints `chunks` outputs of 1000
/// bytes, written to a log limited to `limit` bytes.
fn limited_job(dir: &Path, limit: u64, chunks: usize) -> Arc<LogFiles> {
    let mut log = EventLog::create(dir).unwrap();
    log.limit_to(limit);
    log.write(&Event::JobStarted { timestamp: 1 });
    let chunk = "x".repeat(999) + "\n";
    for (step, n) in [("first", 3), ("flood", chunks), ("last", 3)] {
        log.write(&Event::CmdStarted {
            timestamp: 2,
            directive: step,
        });
        for i in 0..n {
            let output = format!("{step}-{i:06}-{}", &chunk[14 + step.len()..]);
            log.write(&Event::CmdOutput {
                timestamp: 3,
                output: &output,
            });
        }
        log.write(&Event::CmdFinished {
            timestamp: 4,
            directive: step,
            exit_code: 0,
            started_at: 2,
            finished_at: 4,
        });
    }
    log.write(&Event::JobFinished {
        timestamp: 5,
        result: "passed",
    });
    log.files()
}

#[test]
fn a_log_within_its_limit_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let files = limited_job(dir.path(), 100_000, 50);
    let events = events_of(&files, 0);
    assert_eq!(events.len(), 1 + 3 * 2 + 3 + 50 + 3 + 1);
    assert!(events
        .iter()
        .all(|e| !e["output"].as_str().unwrap_or("").contains("left out")));
    assert!(files.remarks().is_empty());
    // Nothing held back is left beside the log.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 2);
}

#[test]
fn past_its_limit_a_log_keeps_its_start_and_end_and_says_what_went() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 100_000;
    let files = limited_job(dir.path(), limit, 1000);
    let size = std::fs::metadata(dir.path().join("events.jsonl"))
        .unwrap()
        .len();
    let events = events_of(&files, 0);
    let trim: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["output"].as_str().is_some_and(|o| o.contains("left out")))
        .collect();
    assert_eq!(trim.len(), 1, "one trim line");
    let trim_text = trim[0]["output"].as_str().unwrap();
    assert!(size <= limit + serde_json::to_string(trim[0]).unwrap().len() as u64 + 1);
    // Well-formed: every step has its start and end, in order.
    let kinds: Vec<String> = events
        .iter()
        .filter(|e| e["event"] != "cmd_output")
        .map(|e| format!("{} {}", e["event"], e["directive"]))
        .collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    assert_eq!(events.last().unwrap()["event"], "job_finished");
    // The head and the tail of the flood are there; the trim line says how
    // much went, and that is what is missing.
    let flood: Vec<&str> = events
        .iter()
        .filter_map(|e| e["output"].as_str())
        .filter(|o| o.starts_with("flood-"))
        .collect();
    assert!(flood[0].starts_with("flood-000000-"));
    assert!(flood.last().unwrap().starts_with("flood-000999-"));
    let left_out: u64 = trim_text
        .split(" bytes, ")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .unwrap()
        .parse()
        .unwrap();
    let per_chunk = flood[0].len() as u64;
    assert_eq!(
        left_out,
        (1000 - flood.len() as u64) * per_chunk,
        "{trim_text}"
    );
    assert!(trim_text.starts_with('\n') && trim_text.ends_with('\n'));
    // The trim line sits in the flood's step, right after its head.
    let at = events
        .iter()
        .position(|e| e["output"].as_str() == Some(trim_text))
        .unwrap();
    assert!(events[at - 1]["output"]
        .as_str()
        .is_some_and(|o| o.starts_with("flood-")));
    assert_eq!(files.remarks().len(), 1);
    // Paging: reading from any line gives the same lines as the whole read.
    for from in [0, at as u64 - 1, at as u64, at as u64 + 1] {
        assert_eq!(events_of(&files, from), events[from as usize..]);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_held_back_line_is_not_served_until_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::create(dir.path()).unwrap();
    log.limit_to(10_000);
    log.write(&Event::JobStarted { timestamp: 1 });
    log.write(&Event::CmdStarted {
        timestamp: 1,
        directive: "yes",
    });
    let chunk = "y\n".repeat(500);
    for _ in 0..4 {
        log.write(&Event::CmdOutput {
            timestamp: 1,
            output: &chunk,
        });
    }
    let files = log.files();
    let served = files.progress().events;
    assert!(
        served < 6,
        "lines past half the limit were served: {served}"
    );
    assert!(files.progress().bytes <= 5_000);
    log.close_after_failure("stopped");
    let events = events_of(&files, 0);
    assert_eq!(events.len(), 2 + 4 + 2, "nothing was left out");
    assert_eq!(
        events_of(&files, served).len(),
        events.len() - served as usize
    );
}
