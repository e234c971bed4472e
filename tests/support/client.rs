//! The control plane's side of the API (docs/protocol.md §2): JWTs signed
//! here, and `ApiClient`, a TLS client of one agent that trusts only that
//! agent's test certificate and sends its token. A reply is kept whole for a
//! test to check (`Reply`), or streamed to a sink with failures returned,
//! for the benchmarks. It knows the wire format, not the agent's insides.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

// Tokens (docs/protocol.md §2.2)

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS compact token with exactly this header and payload text, signed as
/// the header's `alg` says (`HS256`, `HS384`, `HS512`; anything else gets an
/// empty signature, as an `alg: none` token has).
pub fn sign_jwt(header: &str, payload: &str, secret: &[u8]) -> String {
    let alg = serde_json::from_str::<Value>(header)
        .ok()
        .and_then(|h| h["alg"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let signature = match alg.as_str() {
        "HS256" => hmac_sha256::HMAC::mac(input.as_bytes(), secret).to_vec(),
        "HS384" => hmac_sha512::sha384::HMAC::mac(input.as_bytes(), secret).to_vec(),
        "HS512" => hmac_sha512::HMAC::mac(input.as_bytes(), secret).to_vec(),
        _ => Vec::new(),
    };
    format!("{input}.{}", b64url(&signature))
}

/// The canonical Semaphore token: header `{"alg":"HS256","typ":"JWT"}`,
/// payload `{}`.
pub fn canonical_token(secret: &[u8]) -> String {
    sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, "{}", secret)
}

// The API client

/// One HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a {} reply whose body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The `message` of a `{"message": "..."}` body.
    pub fn message(&self) -> String {
        let body = self.json();
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {:?}", self.text()));
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["message"],
            "expected exactly {{\"message\": ...}}, got {:?}",
            self.text()
        );
        body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("message is not a string: {:?}", self.text()))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TLS client of one agent that trusts only the agent's test certificate.
#[derive(Clone)]
pub struct ApiClient {
    pub(super) base: String,
    pub(super) cert_pem: Arc<Vec<u8>>,
    http: ureq::Agent,
    token: String,
    timeout: Duration,
}

impl ApiClient {
    pub(super) fn new(
        base: String,
        cert_pem: Arc<Vec<u8>>,
        token: String,
        timeout: Duration,
    ) -> ApiClient {
        let cert = ureq::tls::Certificate::from_pem(&cert_pem)
            .expect("parse the test certificate")
            .to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build();
        ApiClient {
            base,
            cert_pem,
            http: ureq::Agent::new_with_config(config),
            token,
            timeout,
        }
    }

    /// A client of the same agent with no pooled connections of its own yet.
    pub fn fresh(&self) -> ApiClient {
        ApiClient::new(
            self.base.clone(),
            Arc::clone(&self.cert_pem),
            self.token.clone(),
            self.timeout,
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends a request with exactly the headers given.
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.to_vec()).expect("a valid request");
        self.http.run(request)
    }

    /// Any request, with exactly the headers given (no token added).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut response = self
            .send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"));
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("read the body of {method} {path}: {e}"));
        Reply {
            status: response.status().as_u16(),
            headers,
            body,
        }
    }

    #[allow(dead_code, reason = "the benchmarks use it; the tests do not")]
    /// Any request, with exactly the headers given, whose body goes to
    /// `sink` piece by piece as it arrives instead of being kept; returns
    /// the status. A failure is returned rather than a panic, for callers
    /// that report it and go on (the benchmarks), and a log of hundreds of
    /// megabytes is never held in memory.
    pub fn request_streamed(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u16, String> {
        let mut response = self
            .send(method, path, headers, body)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read the reply to {method} {path}: {e}")),
            };
            sink(&buf[..n]).map_err(|e| format!("keep the reply to {path}: {e}"))?;
        }
        Ok(status)
    }

    #[allow(dead_code, reason = "the benchmarks use it; the tests do not")]
    /// `GET` with the token and more headers, streamed as `request_streamed`.
    pub fn get_streamed(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u16, String> {
        let bearer = self.bearer();
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.request_streamed("GET", path, &all, b"", sink)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// `GET` with the token.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[("Authorization", &self.bearer())], b"")
    }

    /// `GET` with the token and more headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let bearer = self.bearer();
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.request("GET", path, &all, b"")
    }

    /// `GET` without any `Authorization` header.
    pub fn get_anon(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// `POST` with the token.
    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.request("POST", path, &[("Authorization", &self.bearer())], body)
    }

    /// `POST` without any `Authorization` header.
    pub fn post_anon(&self, path: &str, body: &[u8]) -> Reply {
        self.request("POST", path, &[], body)
    }

    /// `GET /jobs/{job_id}/log?start_from=<start_from>` (given as text so
    /// that tests can send what a broken client would).
    pub fn log(&self, job_id: &str, start_from: Option<&str>) -> Reply {
        match start_from {
            Some(n) => self.get(&format!("/jobs/{job_id}/log?start_from={n}")),
            None => self.get(&format!("/jobs/{job_id}/log")),
        }
    }

    /// The log read the archivator makes (§2.3, §11).
    pub fn archivator_read(&self, job_id: &str) -> Reply {
        self.get_with(
            &format!("/jobs/{job_id}/log"),
            &[("X-Client-Name", "archivator")],
        )
    }

    /// True when the complete log of the job has its `job_finished`.
    pub fn log_has_job_finished(&self, job_id: &str) -> bool {
        let reply = self.log(job_id, None);
        reply.status == 200
            && parse_log_lines(&reply.body)
                .iter()
                .any(|e| e["event"] == "job_finished")
    }
}

/// Splits a log body into events, checking that it holds only complete,
/// compact JSON lines (§2.3: only complete lines are returned).
pub fn parse_log_lines(body: &[u8]) -> Vec<Value> {
    if body.is_empty() {
        return Vec::new();
    }
    assert_eq!(
        body.last(),
        Some(&b'\n'),
        "a log response ends inside a line: ...{:?}",
        String::from_utf8_lossy(&body[body.len().saturating_sub(200)..])
    );
    body[..body.len() - 1]
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "log line {i} is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(line)
                )
            });
            assert!(value.is_object(), "log line {i} is not an object: {value}");
            value
        })
        .collect()
}
