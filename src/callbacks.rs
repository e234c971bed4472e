//! Callbacks to the control plane (PROTOCOL §7.1): a POST with a fixed body,
//! a bearer token when given, our User-Agent, a deadline per attempt, and a
//! bounded number of attempts one second apart.

use std::fmt;
use std::time::Duration;

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
        }
    }
}

impl std::error::Error for CallbackError {}

/// The finished callback body: exactly `{"result": "<result>"}`.
pub fn finished_body(result: &str) -> String {
    format!("{{\"result\": \"{result}\"}}")
}

/// POSTs `body` to `url`; an empty URL is skipped without a request.
/// `stop_early` is polled between attempts so a shutting-down agent can give up.
pub fn send(
    url: &str,
    token: &str,
    body: &str,
    policy: &CallbackPolicy,
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
        if attempt < attempts {
            std::thread::sleep(policy.retry_delay);
        }
    }
    Err(last.expect("at least one attempt was made"))
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
        assert!(send("", "", "{}", &policy).is_ok());
    }
}
