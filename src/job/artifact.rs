//! The optional upload of a finished job's log as an artifact (docs/protocol.md
//! §6.7), through the `artifact` CLI when it is on PATH. Anything missing
//! (policy, token, URL, CLI) skips the upload with a line in the agent log;
//! an upload never fails or delays a job beyond the CLI's own run.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::job::eventlog::LogFiles;
use crate::job::request::JobRequest;

const DEFAULT_MAX_SIZE: u64 = 16 * 1024 * 1024;
const DEFAULT_COMPRESSION_SIZE: u64 = 100 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Policy {
    Never,
    Always,
    WhenTrimmed,
}

fn policy(request: &JobRequest) -> Policy {
    match request
        .env_value("SEMAPHORE_AGENT_UPLOAD_JOB_LOGS")
        .as_deref()
    {
        Some(b"always") => Policy::Always,
        Some(b"when-trimmed") => Policy::WhenTrimmed,
        _ => Policy::Never,
    }
}

fn compression_size() -> u64 {
    std::env::var("SEMAPHORE_AGENT_LOGS_COMPRESSION_SIZE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| (1024 * 1024..=1024 * 1024 * 1024).contains(v))
        .unwrap_or(DEFAULT_COMPRESSION_SIZE)
}

pub fn upload_job_log(request: &JobRequest, files: &LogFiles) {
    let policy = policy(request);
    if policy == Policy::Never {
        return;
    }
    let size = files.progress().bytes;
    let max = match request.logger.max_size_in_bytes {
        n if n > 0 => n as u64,
        _ => DEFAULT_MAX_SIZE,
    };
    if policy == Policy::WhenTrimmed && size < max {
        return;
    }
    upload(request, files);
}

/// Uploads the log whatever the policy (listen mode decides for itself).
pub fn upload(request: &JobRequest, files: &LogFiles) {
    let env = |name| {
        request
            .env_value(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|v| !v.is_empty())
    };
    let (Some(token), Some(url)) = (
        env("SEMAPHORE_ARTIFACT_TOKEN"),
        env("SEMAPHORE_ORGANIZATION_URL"),
    ) else {
        log::info!(
            "job {}: log upload skipped: no artifact token or organization URL",
            request.job_id
        );
        return;
    };
    let job_id = env("SEMAPHORE_JOB_ID").unwrap_or_else(|| request.job_id.clone());
    let dir = files.log_path.parent().unwrap_or(Path::new("/tmp"));
    let text_path = dir.join("job_logs.txt");
    if let Err(e) = render_plain(&files.log_path, &text_path) {
        log::warn!(
            "job {}: cannot render the log for upload: {e}",
            request.job_id
        );
        return;
    }
    let (path, name) = match maybe_gzip(&text_path) {
        Some(gz) => (gz, "agent/job_logs.txt.gz"),
        None => (text_path.clone(), "agent/job_logs.txt"),
    };
    let status = Command::new("artifact")
        .args(["push", "job", "--destination", name])
        .arg(&path)
        .env("SEMAPHORE_ARTIFACT_TOKEN", token)
        .env("SEMAPHORE_ORGANIZATION_URL", url)
        .env("SEMAPHORE_JOB_ID", job_id)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => log::info!("job {}: log uploaded as {name}", request.job_id),
        Ok(s) => log::warn!("job {}: artifact push exited with {s}", request.job_id),
        Err(e) => log::info!(
            "job {}: log upload skipped: artifact CLI: {e}",
            request.job_id
        ),
    }
    let _ = std::fs::remove_file(&text_path);
    let _ = std::fs::remove_file(text_path.with_extension("txt.gz"));
}

/// The plain-text rendering of §6.4, streamed line by line.
pub fn render_plain(log: &Path, out: &Path) -> std::io::Result<()> {
    let reader = BufReader::new(File::open(log)?);
    let mut writer = BufWriter::new(File::create(out)?);
    for line in reader.lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match event["event"].as_str() {
            Some("cmd_started") => {
                writer.write_all(event["directive"].as_str().unwrap_or("").as_bytes())?;
                writer.write_all(b"\n")?;
            }
            Some("cmd_output") => {
                writer.write_all(event["output"].as_str().unwrap_or("").as_bytes())?;
            }
            _ => {}
        }
    }
    writer.flush()
}

fn maybe_gzip(path: &Path) -> Option<PathBuf> {
    let size = std::fs::metadata(path).ok()?.len();
    if size < compression_size() {
        return None;
    }
    let status = Command::new("gzip").arg("-kf").arg(path).status().ok()?;
    status.success().then(|| path.with_extension("txt.gz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rendering() {
        let dir = std::env::temp_dir().join(format!("agent-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.jsonl");
        std::fs::write(
            &log,
            concat!(
                "{\"event\":\"job_started\",\"timestamp\":1}\n",
                "{\"event\":\"cmd_started\",\"timestamp\":1,\"directive\":\"echo hi\"}\n",
                "{\"event\":\"cmd_output\",\"timestamp\":1,\"output\":\"hi\\n\"}\n",
                "{\"event\":\"cmd_finished\",\"timestamp\":1,\"directive\":\"echo hi\",\"exit_code\":0,\"started_at\":1,\"finished_at\":1}\n",
            ),
        )
        .unwrap();
        let out = dir.join("plain.txt");
        render_plain(&log, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "echo hi\nhi\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn policy_comes_from_the_request() {
        let r = JobRequest::from_json(
            br#"{"env_vars":[{"name":"SEMAPHORE_AGENT_UPLOAD_JOB_LOGS","value":"YWx3YXlz"}]}"#,
        )
        .unwrap();
        assert_eq!(policy(&r), Policy::Always);
        assert_eq!(policy(&JobRequest::default()), Policy::Never);
    }
}
