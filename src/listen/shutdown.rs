//! The ways out of listen mode: the disconnect from the control plane
//! (bounded retries) and the shutdown hook (bash, with the reason in
//! `SEMAPHORE_AGENT_SHUTDOWN_REASON`, under a deadline). Why the agent
//! shuts down is the protocol's `client::ShutdownReason`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{describe, retry, Client, ShutdownReason};
use super::config::Limits;

/// Tells the control plane the agent is gone (bounded retries; a failure
/// is logged, never fatal).
pub fn disconnect(client: &Client, limits: &Limits, reason: ShutdownReason) {
    // After ten minutes without an answer, one attempt is enough.
    let attempts = if reason == ShutdownReason::UnableToSync {
        1
    } else {
        limits.disconnect_attempts
    };
    log::info!("disconnecting from the control plane");
    match retry(
        "POST /disconnect",
        attempts,
        limits.disconnect_delay,
        &|| false,
        || client.disconnect(),
    ) {
        Ok(()) => log::info!("disconnected"),
        Err(e) => log::error!("could not disconnect: {}", describe(&e)),
    }
}

/// Runs the shutdown hook with bash; its output goes to the agent log. A
/// hook still running after `timeout` is killed.
pub fn run_hook(path: &Path, reason: ShutdownReason, timeout: Duration) {
    log::info!(
        "running the shutdown hook {} (reason {})",
        path.display(),
        reason.hook_value()
    );
    let output =
        std::env::temp_dir().join(format!("agent-shutdown-hook-{}.log", std::process::id()));
    let file = match std::fs::File::create(&output) {
        Ok(f) => f,
        Err(e) => {
            log::error!(
                "shutdown hook not run: cannot create {}: {e}",
                output.display()
            );
            return;
        }
    };
    let stderr = file
        .try_clone()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let child = Command::new("bash")
        .arg(path)
        .env("SEMAPHORE_AGENT_SHUTDOWN_REASON", reason.hook_value())
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(stderr)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot run the shutdown hook {}: {e}", path.display());
            return;
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    let _ = std::fs::remove_file(&output);
    match status {
        Some(s) if s.success() => log::info!("shutdown hook done; output:\n{text}"),
        Some(s) => log::error!("shutdown hook failed ({s}); output:\n{text}"),
        None => log::error!("shutdown hook killed after {timeout:?}; output:\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_the_api() {
        let reason = |text: &str| serde_json::from_str::<ShutdownReason>(text).unwrap();
        assert_eq!(reason(r#""idle""#), ShutdownReason::Idle);
        assert_eq!(reason(r#""job-finished""#).hook_value(), "JOB_FINISHED");
        assert_eq!(reason(r#""?""#), ShutdownReason::Unknown);
        assert_eq!(ShutdownReason::UnableToSync.exit_code(), 1);
        assert_eq!(ShutdownReason::Requested.exit_code(), 0);
    }
}
