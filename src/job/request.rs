//! The job request of docs/protocol.md §3: serde types for the wire schema, the
//! YAML/JSON job file of `agent run`, and the decoding of its base64 fields.
//!
//! This module knows nothing of sessions or logs: it turns bytes into a
//! `JobRequest` and answers questions about it (decoded env vars, file modes).

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::RequestError;
use crate::job::job_id::is_valid_job_id;

/// A missing or `null` list is an empty list (§3.1).
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_id: String,
    /// Legacy name of `job_id`, used only when `job_id` is absent.
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub executor: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub compose: Compose,
    #[serde(default, deserialize_with = "null_as_default")]
    pub commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub epilogue_always_commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub epilogue_on_pass_commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub epilogue_on_fail_commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env_vars: Vec<EnvVar>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<File>,
    /// The YAML form of the reference reads files from `file` (§3.4); we take both.
    #[serde(default, deserialize_with = "null_as_default")]
    file: Vec<File>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ssh_public_keys: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub callbacks: Callbacks,
    #[serde(default, deserialize_with = "null_as_default")]
    pub logger: Logger,
    #[serde(default, deserialize_with = "null_as_default")]
    pub execution_time_limit_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Command {
    #[serde(default, deserialize_with = "null_as_default")]
    pub directive: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub alias: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvVar {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub secret: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct File {
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub mode: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Callbacks {
    #[serde(default, deserialize_with = "null_as_default")]
    pub finished: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub teardown_finished: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Logger {
    #[serde(default, deserialize_with = "null_as_default")]
    pub method: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub max_size_in_bytes: i64,
    /// Where the push logger sends lines (listen mode only).
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Compose {
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub image_pull_credentials: Vec<Credentials>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub host_setup_commands: Vec<Command>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub image: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub command: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub entrypoint: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env_vars: Vec<EnvVar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Credentials {
    #[serde(default, deserialize_with = "null_as_default")]
    pub env_vars: Vec<EnvVar>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<File>,
}

/// Which executor a request asks for (§3.1: absent or empty means shell).
/// What differs between executors is asked of it by `match`, never by
/// comparing with one of them, so that a new one is a compile error at
/// every place that must handle it (`executor/mod.rs`, "Adding an
/// executor").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Shell,
    DockerCompose,
}

impl ExecutorKind {
    /// The job's commands run in a container, not on this host: its
    /// `cache` is the agent's static binary mounted there.
    pub fn in_container(self) -> bool {
        match self {
            ExecutorKind::Shell => false,
            ExecutorKind::DockerCompose => true,
        }
    }

    /// The agent's `files` (host paths) are mounted into the job.
    pub fn mounts_host_files(self) -> bool {
        match self {
            ExecutorKind::Shell => false,
            ExecutorKind::DockerCompose => true,
        }
    }
}

/// How a request body or a job file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// JSON when the first non-blank byte is `{`, YAML otherwise. YAML is a
    /// superset of JSON, but serde_json gives clearer errors for JSON.
    Guess,
}

/// A decoded request and the keys in it that this agent does not know
/// (as paths such as `commands.0.alais`).
#[derive(Debug)]
pub struct Decoded {
    pub request: JobRequest,
    pub unknown_keys: Vec<String>,
}

/// Names the unknown keys of a job from the API or a control plane in the
/// agent log, one line for the job. Such a job is still accepted, as the
/// reference accepts it (a newer control plane may send fields this agent
/// does not know), but a misspelt `comands` would otherwise pass green
/// having run nothing, with no word about why.
pub fn warn_unknown_keys(job_id: &str, unknown_keys: &[String]) {
    if !unknown_keys.is_empty() {
        log::warn!(
            "job {job_id}: keys this agent does not know are ignored: {}",
            unknown_keys.join(", ")
        );
    }
}

/// Records the path of a key `serde_ignored` reports. It writes `?` for
/// each Option on the way (the lists accept `null`); a reader wants only
/// keys and indices (`commands.0.alais`).
fn note_unknown(keys: &mut Vec<String>, path: &serde_ignored::Path<'_>) {
    let path = path.to_string();
    let parts: Vec<&str> = path.split('.').filter(|p| *p != "?").collect();
    keys.push(parts.join("."));
}

impl JobRequest {
    /// Parses a request body as it is read (the API form). JSON (declared,
    /// or guessed from a first non-blank `{`) is parsed as it streams: only
    /// the request's own strings are held, never the whole body. YAML is
    /// read whole first (its parser needs the document), within the limit
    /// the caller puts on `body`. Unknown keys are accepted and reported,
    /// as by `decode`.
    pub fn from_body(body: impl std::io::Read, format: Format) -> Result<Decoded, RequestError> {
        use std::io::{BufRead, Read};
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, body);
        let format = match format {
            Format::Guess => {
                let buf = reader.fill_buf().map_err(RequestError::Body)?;
                match buf.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') | None => Format::Json,
                    Some(_) => Format::Yaml,
                }
            }
            f => f,
        };
        if format == Format::Yaml {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(RequestError::Body)?;
            return JobRequest::decode(&bytes, Format::Yaml);
        }
        let json_error = |e: serde_json::Error| {
            if e.is_io() {
                RequestError::Body(e.into())
            } else {
                RequestError::Syntax(e.to_string())
            }
        };
        let mut unknown_keys = Vec::new();
        let mut de = serde_json::Deserializer::from_reader(reader);
        let request: JobRequest =
            serde_ignored::deserialize(&mut de, |path| note_unknown(&mut unknown_keys, &path))
                .map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(Decoded {
            request: request.normalized(),
            unknown_keys,
        })
    }

    /// Parses a JSON request from memory.
    #[cfg(test)]
    pub fn from_json(body: &[u8]) -> Result<JobRequest, RequestError> {
        JobRequest::decode(body, Format::Json).map(|d| d.request)
    }

    /// Parses a job file (`Format::Guess`).
    #[cfg(test)]
    pub fn from_file_bytes(bytes: &[u8]) -> Result<JobRequest, RequestError> {
        JobRequest::decode(bytes, Format::Guess).map(|d| d.request)
    }

    /// Parses a request written as `format`. Unknown keys are accepted (a
    /// newer control plane may send fields this agent does not know) and
    /// reported; a document with nothing in it (empty, blank, only
    /// comments, or `null`) is refused.
    pub fn decode(bytes: &[u8], format: Format) -> Result<Decoded, RequestError> {
        let format = match format {
            Format::Guess => {
                let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
                if first == Some(&b'{') {
                    Format::Json
                } else {
                    Format::Yaml
                }
            }
            f => f,
        };
        let mut unknown_keys = Vec::new();
        let mut note = |path: serde_ignored::Path<'_>| note_unknown(&mut unknown_keys, &path);
        let request: Option<JobRequest> = match format {
            Format::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let request = serde_ignored::deserialize(&mut de, &mut note)
                    .map_err(|e| RequestError::Syntax(e.to_string()))?;
                de.end().map_err(|e| RequestError::Syntax(e.to_string()))?;
                request
            }
            _ => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Err(RequestError::Empty);
                }
                let de = serde_yaml_ng::Deserializer::from_slice(bytes);
                serde_ignored::deserialize(de, &mut note)
                    .map_err(|e| RequestError::Syntax(e.to_string()))?
            }
        };
        let request = request.ok_or(RequestError::Empty)?.normalized();
        Ok(Decoded {
            request,
            unknown_keys,
        })
    }

    fn normalized(mut self) -> JobRequest {
        if self.job_id.is_empty() {
            self.job_id = std::mem::take(&mut self.id);
        }
        if self.files.is_empty() {
            self.files = std::mem::take(&mut self.file);
        }
        self
    }

    /// Checks what can be checked before a job is accepted (§2.3 outcome 4,
    /// answered with 422 by the server).
    pub fn validate(&self) -> Result<ExecutorKind, RequestError> {
        // Absent is for the caller to decide: the API requires an id,
        // `agent run` names the job `job`.
        if !self.job_id.is_empty() && !is_valid_job_id(&self.job_id) {
            return Err(RequestError::JobId);
        }
        let kind = self.executor_kind()?;
        match self.logger.method.as_str() {
            "" | "pull" => {}
            "push" => return Err(RequestError::PushLogger),
            other => return Err(RequestError::UnknownLogger(other.to_string())),
        }
        let cb = &self.callbacks;
        for (field, url) in [
            ("finished", &cb.finished),
            ("teardown_finished", &cb.teardown_finished),
        ] {
            check_callback_url(url).map_err(|reason| RequestError::CallbackUrl {
                field,
                url: url.clone(),
                reason,
            })?;
        }
        self.validate_executor(kind)
    }

    /// `validate` for listen mode, where the log is pushed: any logger but
    /// `push` with a URL is refused.
    pub fn validate_pushed(&self) -> Result<ExecutorKind, RequestError> {
        if self.logger.method != "push" || self.logger.url.is_empty() {
            return Err(RequestError::NotPushLogger(self.logger.method.clone()));
        }
        check_callback_url(&self.logger.url).map_err(|reason| RequestError::LoggerUrl {
            url: self.logger.url.clone(),
            reason,
        })?;
        if !is_valid_job_id(&self.job_id) {
            return Err(RequestError::JobId);
        }
        let kind = self.executor_kind()?;
        self.validate_executor(kind)
    }

    fn executor_kind(&self) -> Result<ExecutorKind, RequestError> {
        match self.executor.as_str() {
            "" | "shell" => Ok(ExecutorKind::Shell),
            "dockercompose" => Ok(ExecutorKind::DockerCompose),
            other => Err(RequestError::UnknownExecutor(other.to_string())),
        }
    }

    fn validate_executor(&self, kind: ExecutorKind) -> Result<ExecutorKind, RequestError> {
        if kind == ExecutorKind::DockerCompose {
            if self.compose.containers.is_empty() {
                return Err(RequestError::NoContainers);
            }
            validate_compose(&self.compose).map_err(RequestError::Compose)?;
        }
        Ok(kind)
    }

    /// Checks every file's mode, for `agent run`, which refuses a bad job
    /// file before anything runs.
    pub fn validate_modes(&self) -> Result<(), RequestError> {
        match self.files.iter().find(|f| parse_mode(&f.mode).is_none()) {
            Some(f) => Err(RequestError::FileMode {
                path: f.path.clone(),
                mode: f.mode.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Looks up an env var the agent itself interprets (§3.2), decoded.
    pub fn env_value(&self, name: &str) -> Option<Vec<u8>> {
        self.env_vars
            .iter()
            .rev()
            .find(|v| v.name == name)
            .and_then(|v| decode_b64(&v.value).ok())
    }
}

/// A callback URL (and listen mode's log URL) must be empty (no callback)
/// or an `http` or `https` URL with a host (§7.1): anything else could
/// never be called, and would only be retried until the attempts run out.
fn check_callback_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() {
        return Ok(());
    }
    let uri: ureq::http::Uri = url.parse().map_err(|_| "not a valid URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the scheme must be http or https");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host");
    }
    Ok(())
}

/// Decodes standard base64, ignoring CR and LF inside the text (§3.1).
pub fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let clean: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    base64::engine::general_purpose::STANDARD.decode(clean)
}

/// Is `name` usable as a shell variable name?
pub fn is_shell_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b == b'_' || b.is_ascii_alphabetic() => {}
        _ => return false,
    }
    bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// Parses a file mode given in octal ("0644", "644", "755"). Only permission
/// and set-id/sticky bits are allowed.
pub fn parse_mode(mode: &str) -> Option<u32> {
    if mode.is_empty() || mode.len() > 5 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

/// Is `name` usable as a compose service and container name?
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Checks what the compose file needs before a job is accepted (§9.4).
fn validate_compose(compose: &Compose) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for c in &compose.containers {
        if !is_service_name(&c.name) {
            return Err(format!(
                "invalid container name '{}': use letters, digits, '_', '.' and '-'",
                c.name
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(format!("container name '{}' is used twice", c.name));
        }
        if c.image.is_empty() {
            return Err(format!("container '{}' has no image", c.name));
        }
        for v in &c.env_vars {
            if !is_shell_identifier(&v.name) {
                return Err(format!(
                    "invalid environment variable name '{}' in container '{}'",
                    v.name, c.name
                ));
            }
            if decode_b64(&v.value).is_err() {
                return Err(format!(
                    "the value of environment variable '{}' in container '{}' is not valid base64",
                    v.name, c.name
                ));
            }
        }
    }
    Ok(())
}

/// Request values for unit tests of the modules that read requests.
#[cfg(test)]
pub mod test_values {
    use super::EnvVar;
    use base64::Engine;

    pub fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// Env vars from `(name, value)` pairs, values encoded.
    pub fn env_vars(vars: &[(&str, &str)]) -> Vec<EnvVar> {
        vars.iter()
            .map(|(n, v)| EnvVar {
                name: n.to_string(),
                value: b64(v),
                secret: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_follow_one_rule() {
        let ok = JobRequest::from_json(br#"{"job_id":"0b5a7d0e-54b3.x_y"}"#).unwrap();
        assert!(ok.validate().is_ok());
        for body in [
            &br#"{"job_id":"space id"}"#[..],
            br#"{"id":"a/b"}"#,
            br#"{"job_id":"nul\u0000"}"#,
        ] {
            let request = JobRequest::from_json(body).unwrap();
            assert!(matches!(request.validate(), Err(RequestError::JobId)));
        }
        let file = JobRequest::from_file_bytes(b"job_id: 'quote\"'\n").unwrap();
        assert!(matches!(file.validate(), Err(RequestError::JobId)));
    }

    #[test]
    fn id_is_an_alias_of_job_id() {
        let r = JobRequest::from_json(br#"{"id":"legacy"}"#).unwrap();
        assert_eq!(r.job_id, "legacy");
        let r = JobRequest::from_json(br#"{"id":"legacy","job_id":"new"}"#).unwrap();
        assert_eq!(r.job_id, "new");
    }

    #[test]
    fn yaml_accepts_file_and_files() {
        let r = JobRequest::from_file_bytes(
            b"job_id: a\nfile:\n  - path: x\n    content: eA==\n    mode: '0644'\n",
        )
        .unwrap();
        assert_eq!(r.files.len(), 1);
        let r = JobRequest::from_file_bytes(b"job_id: a\nfiles:\n  - path: x\n").unwrap();
        assert_eq!(r.files[0].path, "x");
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let d = JobRequest::decode(
            b"job_id: a\ncommands:\n  - directive: ls\n    alais: x\ncolor: red\n",
            Format::Guess,
        )
        .unwrap();
        assert_eq!(d.unknown_keys, ["commands.0.alais", "color"]);
        let d =
            JobRequest::decode(br#"{"job_id":"a","logger":{"url":"u"}}"#, Format::Json).unwrap();
        assert!(d.unknown_keys.is_empty(), "{:?}", d.unknown_keys);
    }

    #[test]
    fn a_streamed_body_reports_its_unknown_keys_too() {
        let json = br#"{"job_id":"a","comands":[{"directive":"ls"}],"commands":[{"directive":"ls","alais":"x"}]}"#;
        let d = JobRequest::from_body(&json[..], Format::Guess).unwrap();
        assert_eq!(d.unknown_keys, ["comands", "commands.0.alais"]);
        assert_eq!(d.request.commands.len(), 1);
        let yaml = b"job_id: a\ncomands: []\n";
        let d = JobRequest::from_body(&yaml[..], Format::Yaml).unwrap();
        assert_eq!(d.unknown_keys, ["comands"]);
        // Trailing text after the object is still refused.
        assert!(JobRequest::from_body(&br#"{"job_id":"a"} x"#[..], Format::Json).is_err());
    }

    #[test]
    fn empty_documents_are_refused() {
        for text in ["", "  \n", "# nothing\n", "null", "~\n"] {
            assert!(
                matches!(
                    JobRequest::decode(text.as_bytes(), Format::Guess),
                    Err(RequestError::Empty)
                ),
                "{text:?}"
            );
        }
        assert!(matches!(
            JobRequest::decode(b"null", Format::Json),
            Err(RequestError::Empty)
        ));
    }

    #[test]
    fn yaml_and_json_bodies_decode_alike() {
        let yaml = JobRequest::decode(b"job_id: y\ncommands:\n  - directive: ls\n", Format::Yaml)
            .unwrap()
            .request;
        let json = JobRequest::decode(
            br#" {"job_id":"y","commands":[{"directive":"ls"}]}"#,
            Format::Guess,
        )
        .unwrap()
        .request;
        assert_eq!((yaml.job_id, yaml.commands.len()), (json.job_id, 1));
    }

    #[test]
    fn modes_are_validated_up_front() {
        let r = JobRequest::from_file_bytes(
            b"files:\n  - {path: a, content: eA==, mode: '0644'}\n  - {path: b, content: eA==, mode: '999'}\n",
        )
        .unwrap();
        assert!(matches!(
            r.validate_modes(),
            Err(RequestError::FileMode { path, mode }) if path == "b" && mode == "999"
        ));
    }

    #[test]
    fn the_yaml_and_json_examples_are_the_same_job() {
        let yaml =
            JobRequest::decode(include_bytes!("../../examples/hello.yaml"), Format::Guess).unwrap();
        let json =
            JobRequest::decode(include_bytes!("../../examples/hello.json"), Format::Guess).unwrap();
        assert!(yaml.unknown_keys.is_empty() && json.unknown_keys.is_empty());
        assert_eq!(format!("{:?}", yaml.request), format!("{:?}", json.request));
        assert!(yaml.request.callbacks.finished.is_empty());
    }

    #[test]
    fn null_lists_are_empty() {
        let r = JobRequest::from_json(br#"{"commands":null,"env_vars":null}"#).unwrap();
        assert!(r.commands.is_empty() && r.env_vars.is_empty());
    }

    #[test]
    fn wrong_types_are_syntax_errors() {
        assert!(JobRequest::from_json(br#"{"commands":"ls"}"#).is_err());
        assert!(JobRequest::from_json(b"").is_err());
    }

    #[test]
    fn validation() {
        let r = JobRequest::from_json(br#"{"executor":"kubernetes"}"#).unwrap();
        assert!(matches!(
            r.validate(),
            Err(RequestError::UnknownExecutor(_))
        ));
        let r = JobRequest::from_json(br#"{"logger":{"method":"push"}}"#).unwrap();
        assert!(matches!(r.validate(), Err(RequestError::PushLogger)));
        let r = JobRequest::from_json(br#"{"executor":"dockercompose"}"#).unwrap();
        assert!(matches!(r.validate(), Err(RequestError::NoContainers)));
        let r = JobRequest::from_json(br#"{}"#).unwrap();
        assert_eq!(r.validate().unwrap(), ExecutorKind::Shell);
    }

    #[test]
    fn callback_urls_must_be_callable() {
        for good in [
            "",
            "http://127.0.0.1:9/x",
            "https://cp.example.com/finished?a=1",
        ] {
            assert_eq!(check_callback_url(good), Ok(()), "{good}");
        }
        for bad in [
            "file:///etc/passwd",
            "ht tp://x",
            "http://[::1",
            "/relative",
            "ftp://h/x",
        ] {
            assert!(check_callback_url(bad).is_err(), "{bad}");
        }
        let r =
            JobRequest::from_json(br#"{"callbacks":{"teardown_finished":"file:///x"}}"#).unwrap();
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid callbacks.teardown_finished"),
            "{err}"
        );
    }

    #[test]
    fn base64_ignores_line_breaks() {
        assert_eq!(decode_b64("aGVs\r\nbG8=").unwrap(), b"hello");
        assert!(decode_b64("%%%").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(is_shell_identifier("A_1"));
        assert!(is_shell_identifier("_x"));
        assert!(!is_shell_identifier("1A"));
        assert!(!is_shell_identifier("A-B"));
        assert!(!is_shell_identifier(""));
        assert!(!is_shell_identifier("A B"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0600"), Some(0o600));
        assert_eq!(parse_mode("888"), None);
        assert_eq!(parse_mode("rw"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(parse_mode("77777"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(is_service_name("main"));
        assert!(is_service_name("db-1.x_y"));
        assert!(!is_service_name("a b"));
        assert!(!is_service_name("-x"));
        assert!(!is_service_name("a:b"));
        let main = Container {
            name: "main".into(),
            image: "agent-test/bash:1".into(),
            ..Container::default()
        };
        let compose = Compose {
            containers: vec![main.clone(), main],
            ..Compose::default()
        };
        assert!(validate_compose(&compose).unwrap_err().contains("twice"));
    }
}
