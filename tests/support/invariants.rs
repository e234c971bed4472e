//! The rules every event log must follow: each event's fields in order, one job_started first and one job_finished last, steps that open and close, timestamps in range.

use super::*;

pub(crate) fn field_names(event: &Map<String, Value>) -> Vec<&str> {
    let mut names: Vec<&str> = event.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// The invariants of docs/protocol.md §6.1 (plus integer times within the run):
/// `job_started` first, `job_finished` last and unique, each `cmd_started`
/// closed by a `cmd_finished` with the same directive before anything else
/// starts, `cmd_output` only inside a step, `started_at <= finished_at`,
/// timestamps never going back.
/// The fields of each event, in the wire order of docs/protocol.md §6.1.
pub fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "job_started" => &["event", "timestamp"],
        "cmd_started" => &["event", "timestamp", "directive"],
        "cmd_output" => &["event", "timestamp", "output"],
        "cmd_finished" => &[
            "event",
            "timestamp",
            "directive",
            "exit_code",
            "started_at",
            "finished_at",
        ],
        "job_finished" => &["event", "timestamp", "result"],
        _ => return None,
    })
}

pub fn check_invariants(events: &[Value], earliest: i64, latest: i64) -> Result<(), String> {
    let mut open_step: Option<String> = None;
    let mut last_timestamp = i64::MIN;
    if events.is_empty() {
        return Err("the log is empty".into());
    }
    for (index, event) in events.iter().enumerate() {
        let object = event
            .as_object()
            .ok_or(format!("line {index} is not an object"))?;
        let kind = event["event"]
            .as_str()
            .ok_or(format!("line {index} has no event"))?;
        let mut expected = fields_of(kind)
            .ok_or(format!("line {index}: unknown event {kind:?}"))?
            .to_vec();
        expected.sort_unstable();
        if field_names(object) != expected {
            return Err(format!(
                "line {index}: {kind} has fields {:?}, expected {expected:?}",
                field_names(object)
            ));
        }
        let integer = |key: &str| -> Result<i64, String> {
            let value = &event[key];
            match value.as_i64() {
                Some(n) if value.is_i64() || value.is_u64() => Ok(n),
                _ => Err(format!("line {index}: {key} is not an integer: {value}")),
            }
        };
        let string = |key: &str| -> Result<String, String> {
            event[key]
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("line {index}: {key} is not a string"))
        };
        let timestamp = integer("timestamp")?;
        let mut times = vec![("timestamp", timestamp)];
        if kind == "cmd_finished" {
            times.push(("started_at", integer("started_at")?));
            times.push(("finished_at", integer("finished_at")?));
        }
        for (key, time) in times {
            if time < earliest || time > latest {
                return Err(format!(
                    "line {index}: {key} {time} is not unix seconds within the run \
                     [{earliest}, {latest}]"
                ));
            }
        }
        if timestamp < last_timestamp {
            return Err(format!(
                "line {index}: timestamp {timestamp} is before the previous {last_timestamp}"
            ));
        }
        last_timestamp = timestamp;
        if (index == 0) != (kind == "job_started") {
            return Err(format!(
                "line {index}: job_started must be the first line and only it"
            ));
        }
        if (index == events.len() - 1) != (kind == "job_finished") {
            return Err(format!(
                "line {index}: job_finished must be the last line and only it"
            ));
        }
        match kind {
            "cmd_started" => {
                if let Some(open) = &open_step {
                    return Err(format!("line {index}: cmd_started while {open:?} is open"));
                }
                open_step = Some(string("directive")?);
            }
            "cmd_output" => {
                string("output")?;
                if open_step.is_none() {
                    return Err(format!("line {index}: cmd_output outside a step"));
                }
            }
            "cmd_finished" => {
                let directive = string("directive")?;
                match open_step.take() {
                    Some(open) if open == directive => {}
                    Some(open) => {
                        return Err(format!(
                            "line {index}: cmd_finished {directive:?} closes {open:?}"
                        ))
                    }
                    None => return Err(format!("line {index}: cmd_finished without cmd_started")),
                }
                integer("exit_code")?;
                let (started_at, finished_at) = (integer("started_at")?, integer("finished_at")?);
                if started_at > finished_at {
                    return Err(format!(
                        "line {index}: started_at {started_at} > finished_at {finished_at}"
                    ));
                }
            }
            "job_finished" => {
                if let Some(open) = &open_step {
                    return Err(format!("line {index}: job_finished while {open:?} is open"));
                }
                let result = string("result")?;
                if !["passed", "failed", "stopped"].contains(&result.as_str()) {
                    return Err(format!("line {index}: unknown result {result:?}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
