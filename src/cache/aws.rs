//! AWS credentials as the SDKs find them, for the S3 cache backend: a
//! profile of the shared credentials file (an INI file), and the EC2
//! instance's role through IMDSv2 (a session token by `PUT`, then the role's
//! name and its temporary credentials, fetched again shortly before they
//! expire). Also the ISO 8601 times S3 and the metadata service write.
//!
//! A leaf: it knows nothing of the cache above it.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A key, its secret and the session token of temporary credentials.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keys {
    pub key: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys {{ key: {:?}, .. }}", self.key)
    }
}

/// The profile `profile` of a shared credentials file's text; None when
/// the file has no such profile or it lacks a key or secret.
pub fn profile_keys(text: &str, profile: &str) -> Option<Keys> {
    let mut in_profile = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[profile x]` is the config file's spelling; some write it
            // in the credentials file too.
            let name = name.trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            in_profile = name == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match name.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    Some(Keys {
        key: key?,
        secret: secret?,
        token,
    })
}

/// Unix milliseconds of `2024-05-01T12:30:00Z` or `...00.123Z` (UTC
/// only, as S3 and the metadata service write them).
pub fn iso8601_ms(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || *b.last()? != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        std::str::from_utf8(&b[from..to]).ok()?.parse().ok()
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let millis = match b.get(19) {
        Some(b'.') => {
            let frac = std::str::from_utf8(&b[20..b.len() - 1]).ok()?;
            let digits: String = frac.chars().chain("000".chars()).take(3).collect();
            digits.parse::<i64>().ok()?
        }
        _ => 0,
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis;
    u64::try_from(ms).ok()
}

/// What went wrong asking the metadata service.
#[derive(Debug)]
pub struct ImdsError {
    /// The step: `token`, `role`, `credentials`.
    pub step: &'static str,
    pub detail: String,
}

impl fmt::Display for ImdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot get the instance role's credentials ({}): {}",
            self.step, self.detail
        )
    }
}

impl std::error::Error for ImdsError {}

/// How long a metadata request may take: the service is on the host's
/// own link.
const IMDS_TIMEOUT: Duration = Duration::from_secs(5);
/// Credentials are fetched again this long before they expire, so that no
/// request is signed with keys that die on its way.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The session token's life asked for.
const TOKEN_TTL_SECONDS: &str = "21600";

/// The instance role's credentials, kept until shortly before they expire.
pub struct InstanceProfile {
    endpoint: String,
    http: ureq::Agent,
    cached: Mutex<Option<(Keys, u64)>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: String,
}

impl InstanceProfile {
    pub fn new(endpoint: &str) -> InstanceProfile {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(IMDS_TIMEOUT))
            .http_status_as_error(false)
            .no_delay(true)
            // A proxy must never see the role's credentials.
            .proxy(None)
            .build();
        InstanceProfile {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http: ureq::Agent::new_with_config(config),
            cached: Mutex::new(None),
        }
    }

    /// The role's credentials, fetched when there are none or they expire
    /// within `REFRESH_BEFORE`.
    pub fn keys(&self) -> Result<Keys, ImdsError> {
        let now = now_ms();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((keys, expires_ms)) = cached.as_ref() {
            if now + (REFRESH_BEFORE.as_millis() as u64) < *expires_ms {
                return Ok(keys.clone());
            }
        }
        let fresh = self.fetch()?;
        *cached = Some(fresh.clone());
        Ok(fresh.0)
    }

    fn fetch(&self) -> Result<(Keys, u64), ImdsError> {
        let token = self.call("token", |h| {
            h.put(format!("{}/latest/api/token", self.endpoint))
                .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
                .send_empty()
        })?;
        let token = token.trim().to_string();
        let base = format!(
            "{}/latest/meta-data/iam/security-credentials/",
            self.endpoint
        );
        let roles = self.call("role", |h| {
            h.get(&base)
                .header("x-aws-ec2-metadata-token", &token)
                .call()
        })?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| ImdsError {
                step: "role",
                detail: "the instance has no role".into(),
            })?
            .to_string();
        let body = self.call("credentials", |h| {
            h.get(format!("{base}{role}"))
                .header("x-aws-ec2-metadata-token", &token)
                .call()
        })?;
        let creds: RoleCredentials = serde_json::from_str(&body).map_err(|e| ImdsError {
            step: "credentials",
            detail: format!("cannot read the answer: {e}"),
        })?;
        let expires_ms = iso8601_ms(&creds.expiration).ok_or_else(|| ImdsError {
            step: "credentials",
            detail: format!("bad Expiration '{}'", creds.expiration),
        })?;
        Ok((
            Keys {
                key: creds.access_key_id,
                secret: creds.secret_access_key,
                token: creds.token.filter(|t| !t.is_empty()),
            },
            expires_ms,
        ))
    }

    fn call(
        &self,
        step: &'static str,
        send: impl Fn(&ureq::Agent) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ImdsError> {
        let fail = |detail: String| ImdsError { step, detail };
        let mut response = send(&self.http).map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("HTTP {}", status.as_u16())));
        }
        Ok(body)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_of_a_credentials_file() {
        let text = "[default]\naws_access_key_id = AK1\naws_secret_access_key=S1\n\n\
                    # a comment\n[profile ci]\nAWS_ACCESS_KEY_ID = AK2\naws_secret_access_key = S2\naws_session_token = T2\n\
                    [broken]\naws_access_key_id = AK3\n";
        let d = profile_keys(text, "default").unwrap();
        assert_eq!(
            (d.key.as_str(), d.secret.as_str(), d.token),
            ("AK1", "S1", None)
        );
        let ci = profile_keys(text, "ci").unwrap();
        assert_eq!(ci.token.as_deref(), Some("T2"));
        assert_eq!(profile_keys(text, "broken"), None);
        assert_eq!(profile_keys(text, "missing"), None);
        assert!(!format!("{ci:?}").contains("S2"));
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso8601_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(iso8601_ms("2000-03-01T00:00:01.5Z"), Some(951_868_801_500));
        assert_eq!(
            iso8601_ms("2024-02-29T23:59:59.123Z"),
            Some(1_709_251_199_123)
        );
        assert_eq!(iso8601_ms("2024-02-29 23:59:59Z"), None);
        assert_eq!(iso8601_ms("2024-13-01T00:00:00Z"), None);
    }
}
