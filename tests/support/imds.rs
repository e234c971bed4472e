//! A small EC2 instance metadata service (IMDSv2) for the S3 cache tests:
//! a session token by `PUT /latest/api/token` (with its TTL header), the
//! role's name and its temporary credentials for requests that carry the
//! token, expiring `lifetime` after each fetch. It counts the credential
//! fetches, so that a test sees them cached and refreshed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

const TOKEN: &str = "imds-session-token";
const ROLE: &str = "agent-cache-role";

pub struct Imds {
    port: u16,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Imds {
    /// Serves `key` and `secret` as the role's credentials.
    pub fn start(key: &str, secret: &str, lifetime: Duration) -> Imds {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind the metadata service");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (key, secret) = (key.to_string(), secret.to_string());
        let thread = {
            let (fetches, stop) = (Arc::clone(&fetches), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50)) else {
                        continue;
                    };
                    let header = |name: &str| {
                        request
                            .headers()
                            .iter()
                            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                            .map(|h| h.value.as_str().to_string())
                    };
                    let authorized = header("x-aws-ec2-metadata-token").as_deref() == Some(TOKEN);
                    let url = request.url().to_string();
                    let (status, body) = match (request.method().as_str(), url.as_str()) {
                        ("PUT", "/latest/api/token")
                            if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                        {
                            (200, TOKEN.to_string())
                        }
                        ("GET", "/latest/meta-data/iam/security-credentials/") if authorized => {
                            (200, format!("{ROLE}\n"))
                        }
                        ("GET", path)
                            if authorized
                                && path
                                    == format!(
                                        "/latest/meta-data/iam/security-credentials/{ROLE}"
                                    ) =>
                        {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let expires = SystemTime::now() + lifetime;
                            (200, credentials(&key, &secret, expires))
                        }
                        (_, _) if !authorized => (401, String::new()),
                        _ => (404, String::new()),
                    };
                    let _ = request
                        .respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
            })
        };
        Imds {
            port,
            fetches,
            stop,
            thread: Some(thread),
        }
    }

    /// The endpoint, as `AWS_EC2_METADATA_SERVICE_ENDPOINT` names it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many times the role's credentials were fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The JSON the metadata service answers, expiring at `expires`.
fn credentials(key: &str, secret: &str, expires: SystemTime) -> String {
    let secs = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let when = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    serde_json::json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": "",
        "Expiration": when,
    })
    .to_string()
}
