//! Callbacks to the control plane (docs/protocol.md §7.1): a POST with a fixed body,
//! a bearer token when given, our User-Agent, a deadline per attempt, and a
//! bounded number of attempts one second apart, given up early when the
//! agent is stopping.

use std::fmt;
use std::time::{Duration, Instant};

/// How callbacks are sent.
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    pub attempts: u32,
    pub timeout: Duration,
    pub retry_delay: Duration,
}

impl Default for CallbackPolicy {
    fn default() -> CallbackPolicy {
        CallbackPolicy {
            attempts: 300,
            timeout: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
pub enum CallbackError {
    Status {
        url: String,
        status: u16,
        attempts: u32,
    },
    Transport {
        url: String,
        reason: String,
        attempts: u32,
    },
    /// The agent is stopping: no further attempt after `attempts`.
    GaveUp { url: String, attempts: u32 },
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::Status {
                url,
                status,
                attempts,
            } => write!(
                f,
                "callback {url} answered {status} (gave up after {attempts} attempts)"
            ),
            CallbackError::Transport {
                url,
                reason,
                attempts,
            } => write!(
                f,
                "callback {url} failed: {reason} (gave up after {attempts} attempts)"
            ),
            CallbackError::GaveUp { url, attempts } => write!(
                f,
                "callback {url} not delivered: the agent is stopping (after {attempts} attempts)"
            ),
        }
    }
}

impl std::error::Error for CallbackError {}

/// The finished callback body: exactly `{"result": "<result>"}`.
pub fn finished_body(result: &str) -> String {
    format!("{{\"result\": \"{result}\"}}")
}

/// POSTs `body` to `url`; an empty URL is skipped without a request.
/// `give_up` is polled between attempts and while waiting to retry, so that
/// a stopping agent makes no further attempt; one attempt is always made.
pub fn send(
    url: &str,
    token: &str,
    body: &str,
    policy: &CallbackPolicy,
    give_up: &dyn Fn() -> bool,
) -> Result<(), CallbackError> {
    if url.is_empty() {
        return Ok(());
    }
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(policy.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("SemaphoreAgent/{}", crate::version::VERSION))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let attempts = policy.attempts.max(1);
    let mut last = None;
    for attempt in 1..=attempts {
        let mut request = agent.post(url);
        if !token.is_empty() {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        match request.send(body.as_bytes()) {
            Ok(response) if response.status().is_success() => {
                log::info!(
                    "callback {url} answered {} (attempt {attempt})",
                    response.status()
                );
                return Ok(());
            }
            Ok(response) => {
                let status = response.status().as_u16();
                log::warn!("callback {url} answered {status} (attempt {attempt}/{attempts})");
                last = Some(CallbackError::Status {
                    url: url.into(),
                    status,
                    attempts,
                });
            }
            Err(e) => {
                log::warn!("callback {url} failed: {e} (attempt {attempt}/{attempts})");
                last = Some(CallbackError::Transport {
                    url: url.into(),
                    reason: e.to_string(),
                    attempts,
                });
            }
        }
        if attempt < attempts && !wait_to_retry(policy.retry_delay, give_up) {
            return Err(CallbackError::GaveUp {
                url: url.into(),
                attempts: attempt,
            });
        }
    }
    Err(last.expect("at least one attempt was made"))
}

/// Sleeps `delay` in short slices; false as soon as `give_up` says so.
fn wait_to_retry(delay: Duration, give_up: &dyn Fn() -> bool) -> bool {
    const SLICE: Duration = Duration::from_millis(50);
    let deadline = Instant::now() + delay;
    loop {
        if give_up() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_body_is_exact() {
        assert_eq!(finished_body("passed"), "{\"result\": \"passed\"}");
    }

    #[test]
    fn empty_url_is_skipped() {
        let policy = CallbackPolicy {
            attempts: 3,
            timeout: Duration::from_millis(10),
            retry_delay: Duration::from_secs(60),
        };
        assert!(send("", "", "{}", &policy, &|| false).is_ok());
    }

    #[test]
    fn a_stopping_agent_makes_no_further_attempt() {
        // Nothing listens on this port: every attempt fails at once.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let policy = CallbackPolicy {
            attempts: 100,
            timeout: Duration::from_secs(5),
            retry_delay: Duration::from_secs(60),
        };
        let started = Instant::now();
        let asked = std::cell::Cell::new(0);
        let err = send(
            &format!("http://127.0.0.1:{port}/finished"),
            "",
            "{}",
            &policy,
            &|| {
                asked.set(asked.get() + 1);
                asked.get() > 2
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, CallbackError::GaveUp { attempts: 1, .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
