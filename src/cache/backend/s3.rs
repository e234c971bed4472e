//! The S3 backend: archives as objects `PROJECT_ID/KEY` of a bucket, as the
//! toolbox keeps them (one namespace per project), on AWS or on an
//! S3-compatible service (path-style addressing, several endpoints to fail
//! over between). Requests are signed with `rusty-s3` (SigV4, presigned
//! URLs, no I/O of its own) and sent with the agent's blocking `ureq`.
//!
//! A store uploads the staged archive by multipart upload, one part at a
//! time read straight from the staged file (nothing held in memory, nothing
//! written twice). An object only appears once complete, so a key never
//! names a partial archive; a key found meanwhile (another agent stored it)
//! is kept and the upload aborted. An upload that fails is aborted; one a
//! crash cut short is aborted by the next store or the next start: at once
//! when this agent's spool has its record (`mpu-*`, held with `flock` while
//! the upload runs, like the staged files), else once it is older than any
//! upload can take (ListMultipartUploads). A restore streams the object
//! into the job's socket as it arrives, resuming where a broken download
//! stopped (a `Range` request bound to the object's ETag).
//!
//! Every request has a deadline and is tried a bounded number of times,
//! with backoff, moving to the next endpoint when one does not answer. S3
//! shows no access times: `ACCESS_TIME` orders keys by their store time.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::staging::{self, Staged};
use super::{Call, Entry, Fetched, Listing};
use crate::cache::aws::{self, InstanceProfile};
use crate::cache::cancel::Cancel;
use crate::cache::config::{S3Config, S3Credentials};
use crate::cache::error::CacheError;
use crate::process::sys;

/// The size of an upload's parts: few requests, and a part read from the
/// staged file as it is sent, never held.
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3's most parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Connecting to an endpoint: loopback or the same region.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a listing page, a HEAD, a delete or a multipart call takes.
const SHORT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest one part's upload takes.
const PART_DEADLINE: Duration = Duration::from_secs(300);
/// The longest a whole upload or download takes.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(3600);
/// The longest a download waits for its next bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An incomplete upload older than this was cut short by a crash.
const ABANDONED_UPLOAD: Duration = Duration::from_secs(3600 + 120);
/// How often a request is tried, and the first pause between tries
/// (doubled each time).
const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(200);
/// How long a signed URL is valid: longer than any one request.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// The most a listing page or an error body may be.
const MAX_XML: u64 = 16 * 1024 * 1024;
/// The spool's names: archives on their way up, records of running
/// multipart uploads.
const UP: &str = "up-";
const UPLOAD_RECORD: &str = "mpu-";

pub struct S3 {
    cfg: S3Config,
    /// One per endpoint, in the configured order.
    buckets: Vec<Bucket>,
    /// The endpoint tried first: the last that answered.
    preferred: AtomicUsize,
    http: ureq::Agent,
    spool: PathBuf,
    instance: Option<InstanceProfile>,
}

/// How a request's body is sent.
enum Body<'b> {
    Empty,
    Bytes(&'b [u8]),
    /// `len` bytes of `file` from `offset`, read as they are sent.
    Part {
        file: &'b File,
        offset: u64,
        len: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

/// One request, signed again for each try.
struct Req<'b> {
    /// For messages: `list`, `upload part 3`, ...
    what: &'b str,
    verb: Verb,
    sign: &'b dyn Fn(&Bucket, &Credentials) -> String,
    body: Body<'b>,
    /// A download: no overall deadline but `TRANSFER_DEADLINE`, and one
    /// between reads.
    streaming: bool,
    deadline: Duration,
    headers: Vec<(&'static str, String)>,
}

type Response = ureq::http::Response<ureq::Body>;

/// Reads `len` bytes of a file from `offset`, without moving a cursor.
struct PartReader<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the staged archive is shorter than it was",
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl S3 {
    pub fn new(cfg: &S3Config, spool: &Path) -> Result<S3, CacheError> {
        fs::create_dir_all(spool)
            .map_err(|e| CacheError::io("cannot create the cache spool directory", spool, e))?;
        let fail = |detail: String| CacheError::S3 {
            bucket: cfg.describe(),
            detail,
        };
        let mut buckets = Vec::new();
        if cfg.endpoints.is_empty() {
            let url = format!("https://s3.{}.amazonaws.com", cfg.region);
            let endpoint = url.parse().map_err(|e| fail(format!("{url}: {e}")))?;
            buckets.push(
                Bucket::new(
                    endpoint,
                    UrlStyle::VirtualHost,
                    cfg.bucket.clone(),
                    cfg.region.clone(),
                )
                .map_err(|e| fail(e.to_string()))?,
            );
        }
        for url in &cfg.endpoints {
            let endpoint = url.parse().map_err(|e| fail(format!("{url}: {e}")))?;
            buckets.push(
                Bucket::new(
                    endpoint,
                    UrlStyle::Path,
                    cfg.bucket.clone(),
                    cfg.region.clone(),
                )
                .map_err(|e| fail(e.to_string()))?,
            );
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Small requests would otherwise wait on Nagle's algorithm
            // for the server's delayed ACK (some 40 ms each).
            .no_delay(true)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .max_redirects(0)
            // Archives are sent and read as they are: never decoded.
            .accept_encoding("identity")
            .build();
        let instance = match &cfg.credentials {
            S3Credentials::InstanceProfile { endpoint } => Some(InstanceProfile::new(endpoint)),
            _ => None,
        };
        Ok(S3 {
            cfg: cfg.clone(),
            buckets,
            preferred: AtomicUsize::new(0),
            http: ureq::Agent::new_with_config(config),
            spool: spool.to_path_buf(),
            instance,
        })
    }

    fn fail(&self, detail: impl Into<String>) -> CacheError {
        CacheError::S3 {
            bucket: self.cfg.describe(),
            detail: detail.into(),
        }
    }

    /// The credentials a request is signed with: the agent's, or for a
    /// job's own bucket those its `cache` handed over.
    fn credentials(&self, call: &Call<'_>) -> Result<Credentials, CacheError> {
        let keys = match &self.cfg.credentials {
            S3Credentials::Static { key, secret, token } => aws::Keys {
                key: key.clone(),
                secret: secret.0.clone(),
                token: token.as_ref().map(|t| t.0.clone()),
            },
            S3Credentials::InstanceProfile { .. } => match &self.instance {
                Some(p) => p.keys().map_err(|e| self.fail(e.to_string()))?,
                None => return Err(self.fail("no instance profile")),
            },
            S3Credentials::FromJob => call.s3_keys.cloned().ok_or_else(|| {
                CacheError::Usage(
                    "this job's S3 cache needs the job's credentials, which its `cache` did not hand over"
                        .into(),
                )
            })?,
        };
        Ok(match keys.token {
            Some(token) => Credentials::new_with_token(keys.key, keys.secret, token),
            None => Credentials::new(keys.key, keys.secret),
        })
    }

    /// The object of `key` in the request's project.
    fn object(&self, key: &str, call: &Call<'_>) -> Result<String, CacheError> {
        Ok(format!("{}{key}", self.prefix(call)?))
    }

    fn prefix(&self, call: &Call<'_>) -> Result<String, CacheError> {
        match call.project {
            Some(p) => Ok(format!("{p}/")),
            None => Err(CacheError::Usage(
                "the S3 cache keeps each project's keys apart: the job needs SEMAPHORE_PROJECT_ID"
                    .into(),
            )),
        }
    }

    /// Sends `req`, trying again (with backoff, on the next endpoint when
    /// one does not answer) on a transport error, a 5xx or a 429. Any
    /// other answer is returned for the caller to read. `cancel` is not
    /// looked at when `always` (an abort after a failed upload).
    fn send(
        &self,
        req: &Req<'_>,
        creds: &Credentials,
        cancel: &Cancel,
        always: bool,
    ) -> Result<Response, CacheError> {
        let n = self.buckets.len();
        let mut last_error = String::new();
        let mut reached = false;
        // No try starts once twice one try's deadline has gone: a service
        // that answers slowly does not hold the job for every try's whole
        // deadline.
        let first = Instant::now();
        for attempt in 0..ATTEMPTS {
            if !always && cancel.is_set() {
                return Err(CacheError::Abandoned);
            }
            if attempt > 0 && first.elapsed() > 2 * req.deadline {
                break;
            }
            if attempt > 0 {
                let pause = BACKOFF * 2u32.pow(attempt - 1);
                let until = Instant::now() + pause;
                while Instant::now() < until {
                    if !always && cancel.is_set() {
                        return Err(CacheError::Abandoned);
                    }
                    std::thread::sleep(Duration::from_millis(20).min(pause));
                }
            }
            let index = self.preferred.load(Ordering::Relaxed) % n;
            let bucket = &self.buckets[index];
            let url = (req.sign)(bucket, creds);
            match self.send_once(req, &url) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status < 500 && status != 429 {
                        return Ok(response);
                    }
                    reached = true;
                    last_error = describe_status(response, req.verb);
                }
                Err(e) => {
                    last_error = e.to_string();
                    // The next try goes to the next endpoint.
                    let _ = self.preferred.compare_exchange(
                        index,
                        (index + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            log::debug!("s3 {} failed (try {}): {last_error}", req.what, attempt + 1);
        }
        let detail = format!("{}: {last_error}", req.what);
        Err(if reached {
            self.fail(detail)
        } else {
            CacheError::S3Unreachable {
                bucket: self.cfg.describe(),
                detail,
            }
        })
    }

    fn send_once(&self, req: &Req<'_>, url: &str) -> Result<Response, ureq::Error> {
        macro_rules! configure {
            ($builder:expr) => {{
                let mut b = $builder
                    // The signature covers no payload: presigned URLs.
                    .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
                for (name, value) in &req.headers {
                    b = b.header(*name, value);
                }
                let c = b.config();
                let c = if req.streaming {
                    c.timeout_recv_response(Some(SHORT_DEADLINE))
                        .timeout_per_read(Some(READ_TIMEOUT))
                        .timeout_global(Some(TRANSFER_DEADLINE))
                } else {
                    c.timeout_global(Some(req.deadline))
                };
                c.build()
            }};
        }
        match (req.verb, &req.body) {
            (Verb::Get, _) => configure!(self.http.get(url)).call(),
            (Verb::Head, _) => configure!(self.http.head(url)).call(),
            (Verb::Delete, _) => configure!(self.http.delete(url)).call(),
            (verb, body) => {
                let builder = if verb == Verb::Put {
                    self.http.put(url)
                } else {
                    self.http.post(url)
                };
                match body {
                    Body::Empty => configure!(builder).send_empty(),
                    Body::Bytes(bytes) => configure!(builder).send(*bytes),
                    Body::Part { file, offset, len } => {
                        let mut reader = PartReader {
                            file,
                            pos: *offset,
                            end: offset + len,
                        };
                        configure!(builder.header("content-length", len.to_string()))
                            .send(ureq::SendBody::from_reader(&mut reader))
                    }
                }
            }
        }
    }

    /// Sends a request whose answer must be a success: its body, read.
    fn expect_ok(
        &self,
        req: &Req<'_>,
        creds: &Credentials,
        cancel: &Cancel,
    ) -> Result<(Response, String), CacheError> {
        let mut response = self.send(req, creds, cancel, false)?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.fail(format!(
                "{}: {}",
                req.what,
                describe_status(response, req.verb)
            )));
        }
        let text = if req.verb == Verb::Head {
            String::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(MAX_XML)
                .read_to_string()
                .map_err(|e| self.fail(format!("{}: {e}", req.what)))?
        };
        Ok((response, text))
    }

    fn short<'b>(
        what: &'b str,
        verb: Verb,
        sign: &'b dyn Fn(&Bucket, &Credentials) -> String,
    ) -> Req<'b> {
        Req {
            what,
            verb,
            sign,
            body: Body::Empty,
            streaming: false,
            deadline: SHORT_DEADLINE,
            headers: Vec::new(),
        }
    }

    pub fn listing(&self, call: &Call<'_>) -> Result<Listing, CacheError> {
        let creds = self.credentials(call)?;
        let prefix = self.prefix(call)?;
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let sign = |b: &Bucket, c: &Credentials| {
                let mut action = b.list_objects_v2(Some(c));
                action.with_prefix(prefix.as_str());
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                action.sign(SIGNED_FOR).to_string()
            };
            let (_, text) =
                self.expect_ok(&Self::short("list", Verb::Get, &sign), &creds, call.cancel)?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| self.fail(format!("list: cannot read the answer: {e}")))?;
            for object in page.contents {
                let Some(key) = object.key.strip_prefix(&prefix) else {
                    continue;
                };
                // Not an archive of this agent's or a toolbox's.
                if key.is_empty() || key.contains('/') {
                    continue;
                }
                let stored_ms = aws::iso8601_ms(&object.last_modified).unwrap_or(0);
                listing.entries.push(Entry {
                    key: key.to_string(),
                    size: object.size,
                    stored_ms,
                    accessed_ms: stored_ms,
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        listing
            .entries
            .sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
        Ok(listing)
    }

    /// The size of the object of `key`, if there is one.
    pub fn head(&self, key: &str, call: &Call<'_>) -> Result<Option<u64>, CacheError> {
        let creds = self.credentials(call)?;
        let object = self.object(key, call)?;
        self.head_object(&object, &creds, call.cancel)
    }

    fn head_object(
        &self,
        object: &str,
        creds: &Credentials,
        cancel: &Cancel,
    ) -> Result<Option<u64>, CacheError> {
        let sign = |b: &Bucket, c: &Credentials| {
            b.head_object(Some(c), object).sign(SIGNED_FOR).to_string()
        };
        let response = self.send(
            &Self::short("head", Verb::Head, &sign),
            creds,
            cancel,
            false,
        )?;
        match response.status().as_u16() {
            404 => Ok(None),
            s if (200..300).contains(&s) => Ok(Some(
                response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.fail(format!("head: {}", describe_status(response, Verb::Head)))),
        }
    }

    pub fn stage(&self) -> Result<(File, Staged), CacheError> {
        staging::remove_abandoned(&self.spool, UP);
        staging::create(&self.spool, UP)
    }

    /// Uploads the staged archive under `key` by multipart upload. False,
    /// and the upload aborted, when the key is there by the time it would
    /// be completed.
    pub fn commit(&self, key: &str, staged: &Path, call: &Call<'_>) -> Result<bool, CacheError> {
        let creds = self.credentials(call)?;
        let object = self.object(key, call)?;
        let file = File::open(staged).map_err(|e| CacheError::io("cannot open", staged, e))?;
        let size = file
            .metadata()
            .map_err(|e| CacheError::io("cannot read", staged, e))?
            .len();
        let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS));
        if self.head_object(&object, &creds, call.cancel)?.is_some() {
            return Ok(false);
        }
        let sign = |b: &Bucket, c: &Credentials| {
            b.create_multipart_upload(Some(c), &object)
                .sign(SIGNED_FOR)
                .to_string()
        };
        let (_, text) = self.expect_ok(
            &Self::short("create upload", Verb::Post, &sign),
            &creds,
            call.cancel,
        )?;
        let upload_id = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| self.fail(format!("create upload: cannot read the answer: {e}")))?
            .upload_id()
            .to_string();
        let record = self.record_upload(&object, &upload_id)?;
        let started = Instant::now();
        let uploaded = (|| {
            let mut etags = Vec::new();
            let parts = size.div_ceil(part_size).max(1);
            for n in 0..parts {
                if started.elapsed() > TRANSFER_DEADLINE {
                    return Err(self.fail(format!(
                        "the upload took longer than {}s",
                        TRANSFER_DEADLINE.as_secs()
                    )));
                }
                let offset = n * part_size;
                let number = u16::try_from(n + 1).map_err(|_| self.fail("too many parts"))?;
                let what = format!("upload part {number}");
                let sign = |b: &Bucket, c: &Credentials| {
                    b.upload_part(Some(c), &object, number, &upload_id)
                        .sign(SIGNED_FOR)
                        .to_string()
                };
                let req = Req {
                    what: &what,
                    verb: Verb::Put,
                    sign: &sign,
                    body: Body::Part {
                        file: &file,
                        offset,
                        len: part_size.min(size - offset),
                    },
                    streaming: false,
                    deadline: PART_DEADLINE,
                    headers: Vec::new(),
                };
                let (response, _) = self.expect_ok(&req, &creds, call.cancel)?;
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.fail(format!("{what}: no ETag in the answer")))?;
                etags.push(etag.to_string());
            }
            if self.head_object(&object, &creds, call.cancel)?.is_some() {
                return Ok(false);
            }
            let body = rusty_s3::actions::CompleteMultipartUpload::new(
                &self.buckets[0],
                Some(&creds),
                &object,
                &upload_id,
                etags.iter().map(String::as_str),
            )
            .body();
            let sign = |b: &Bucket, c: &Credentials| {
                b.complete_multipart_upload(
                    Some(c),
                    &object,
                    &upload_id,
                    etags.iter().map(String::as_str),
                )
                .sign(SIGNED_FOR)
                .to_string()
            };
            let mut req = Self::short("complete upload", Verb::Post, &sign);
            req.body = Body::Bytes(body.as_bytes());
            let (_, text) = self.expect_ok(&req, &creds, call.cancel)?;
            // S3 may answer 200 with an error in the body.
            if text.contains("<Error>") {
                return Err(self.fail(format!("complete upload: {}", xml_error(&text))));
            }
            Ok(true)
        })();
        match uploaded {
            Ok(true) => {
                drop(record);
                Ok(true)
            }
            other => {
                if self.abort(&object, &upload_id, &creds, call.cancel) {
                    drop(record);
                } else {
                    // The next store or start aborts it.
                    record.keep();
                }
                other
            }
        }
    }

    /// Aborts an upload, whatever the request's state. True when it is
    /// gone.
    fn abort(&self, object: &str, upload_id: &str, creds: &Credentials, cancel: &Cancel) -> bool {
        let sign = |b: &Bucket, c: &Credentials| {
            b.abort_multipart_upload(Some(c), object, upload_id)
                .sign(SIGNED_FOR)
                .to_string()
        };
        match self.send(
            &Self::short("abort upload", Verb::Delete, &sign),
            creds,
            cancel,
            true,
        ) {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => true,
            Ok(r) => {
                log::warn!(
                    "cannot abort an upload to {}: {}",
                    self.cfg.describe(),
                    describe_status(r, Verb::Delete)
                );
                false
            }
            Err(e) => {
                log::warn!("cannot abort an upload: {e}");
                false
            }
        }
    }

    /// A record of a running upload in the spool, held while it runs.
    fn record_upload(&self, object: &str, upload_id: &str) -> Result<Staged, CacheError> {
        let (file, record) = staging::create(&self.spool, UPLOAD_RECORD)?;
        let text = serde_json::json!({
            "bucket": self.cfg.bucket,
            "object": object,
            "upload_id": upload_id,
        })
        .to_string();
        file.write_all_at(text.as_bytes(), 0)
            .map_err(|e| CacheError::io("cannot write", record.path(), e))?;
        Ok(record)
    }

    /// Aborts the uploads a crash cut short: those this agent's spool
    /// records and no process holds, and those of the request's project
    /// (the whole bucket without one) older than any upload can take.
    pub fn remove_abandoned(&self, call: &Call<'_>) {
        let creds = match self.credentials(call) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot look for uploads a crash left in the cache: {e}");
                return;
            }
        };
        self.abort_recorded(&creds, call.cancel);
        let prefix = call.project.map(|p| format!("{p}/")).unwrap_or_default();
        let sign = |b: &Bucket, c: &Credentials| {
            // The bucket's own URL (`/bucket/`), with `?uploads`.
            let mut action = b.get_object(Some(c), "");
            action.query_mut().insert("uploads", "");
            if !prefix.is_empty() {
                action.query_mut().insert("prefix", prefix.as_str());
            }
            action.sign(SIGNED_FOR).to_string()
        };
        let text = match self.expect_ok(
            &Self::short("list uploads", Verb::Get, &sign),
            &creds,
            call.cancel,
        ) {
            Ok((_, text)) => text,
            Err(e) => {
                log::warn!("cannot look for uploads a crash left in the cache: {e}");
                return;
            }
        };
        let now = unix_ms_now();
        for upload in parse_uploads(&text) {
            let old = upload
                .initiated_ms
                .is_some_and(|t| now.saturating_sub(t) > ABANDONED_UPLOAD.as_millis() as u64);
            if old && self.abort(&upload.key, &upload.upload_id, &creds, call.cancel) {
                log::info!(
                    "aborted an upload of {} to {} that a crash left",
                    upload.key,
                    self.cfg.describe()
                );
            }
        }
    }

    /// Aborts the uploads of this bucket recorded in the spool by a
    /// process that is gone.
    fn abort_recorded(&self, creds: &Credentials, cancel: &Cancel) {
        let Ok(read) = fs::read_dir(&self.spool) else {
            return;
        };
        for entry in read.flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_RECORD)
            {
                continue;
            }
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if !sys::try_lock_exclusive(&file).unwrap_or(false) {
                continue;
            }
            let mut text = String::new();
            let record: Option<(String, String, String)> = (&file)
                .take(64 * 1024)
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| {
                    let s = |k: &str| v.get(k)?.as_str().map(str::to_string);
                    Some((s("bucket")?, s("object")?, s("upload_id")?))
                });
            let Some((bucket, object, upload_id)) = record else {
                let _ = fs::remove_file(&path);
                continue;
            };
            if bucket != self.cfg.bucket {
                continue;
            }
            if self.abort(&object, &upload_id, creds, cancel) {
                log::info!("aborted an upload of {object} that a crash cut short");
                let _ = fs::remove_file(&path);
            }
        }
    }

    pub fn fetch<'a>(&'a self, key: &str, call: &'a Call<'a>) -> Result<Fetched<'a>, CacheError> {
        let creds = self.credentials(call)?;
        let object = self.object(key, call)?;
        let mut download = Download {
            s3: self,
            cancel: call.cancel,
            creds,
            object,
            etag: None,
            pos: 0,
            body: None,
            resumes: 0,
            started: Instant::now(),
        };
        download.open()?;
        Ok(Fetched::stream(Box::new(download)))
    }

    pub fn delete(&self, key: &str, call: &Call<'_>) -> Result<(), CacheError> {
        let creds = self.credentials(call)?;
        let object = self.object(key, call)?;
        let sign = |b: &Bucket, c: &Credentials| {
            b.delete_object(Some(c), &object)
                .sign(SIGNED_FOR)
                .to_string()
        };
        let response = self.send(
            &Self::short("delete", Verb::Delete, &sign),
            &creds,
            call.cancel,
            false,
        )?;
        match response.status().as_u16() {
            404 => Err(CacheError::NotFound(key.to_string())),
            s if (200..300).contains(&s) => Ok(()),
            _ => Err(self.fail(format!(
                "delete: {}",
                describe_status(response, Verb::Delete)
            ))),
        }
    }
}

/// An object being read, resumed from where it broke (bounded).
struct Download<'a> {
    s3: &'a S3,
    cancel: &'a Cancel,
    creds: Credentials,
    object: String,
    /// The object read: a resumed read must be of the same one.
    etag: Option<String>,
    pos: u64,
    body: Option<ureq::BodyReader<'static>>,
    resumes: u32,
    started: Instant,
}

impl Download<'_> {
    fn open(&mut self) -> Result<(), CacheError> {
        let object = self.object.clone();
        let sign = |b: &Bucket, c: &Credentials| {
            b.get_object(Some(c), &object).sign(SIGNED_FOR).to_string()
        };
        let mut headers = Vec::new();
        if self.pos > 0 {
            headers.push(("range", format!("bytes={}-", self.pos)));
        }
        if let Some(etag) = &self.etag {
            headers.push(("if-match", etag.clone()));
        }
        let req = Req {
            what: "download",
            verb: Verb::Get,
            sign: &sign,
            body: Body::Empty,
            streaming: true,
            deadline: TRANSFER_DEADLINE,
            headers,
        };
        let response = self.s3.send(&req, &self.creds, self.cancel, false)?;
        match response.status().as_u16() {
            200 | 206 => {}
            404 => {
                let key = self.object.rsplit('/').next().unwrap_or_default();
                return Err(CacheError::NotFound(key.to_string()));
            }
            _ => {
                return Err(self.s3.fail(format!(
                    "download: {}",
                    describe_status(response, Verb::Get)
                )))
            }
        }
        if self.etag.is_none() {
            self.etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        self.body = Some(response.into_body().into_reader());
        Ok(())
    }
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Err(io::Error::other("the download was given up"));
            };
            match body.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => {
                    self.body = None;
                    if self.resumes >= ATTEMPTS
                        || self.cancel.is_set()
                        || self.started.elapsed() > TRANSFER_DEADLINE
                    {
                        return Err(e);
                    }
                    self.resumes += 1;
                    log::debug!(
                        "s3 download of {} broke at byte {} ({e}); resuming",
                        self.object,
                        self.pos
                    );
                    self.open().map_err(io::Error::other)?;
                }
            }
        }
    }
}

/// An upload in progress, as ListMultipartUploads shows it.
#[derive(Debug, PartialEq, Eq)]
struct Upload {
    key: String,
    upload_id: String,
    initiated_ms: Option<u64>,
}

/// The `<Upload>` elements of a ListMultipartUploads answer.
fn parse_uploads(xml: &str) -> Vec<Upload> {
    let mut uploads = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Upload>") {
        let after = &rest[start + "<Upload>".len()..];
        let Some(end) = after.find("</Upload>") else {
            break;
        };
        let element = &after[..end];
        if let (Some(key), Some(upload_id)) = (tag(element, "Key"), tag(element, "UploadId")) {
            uploads.push(Upload {
                key,
                upload_id,
                initiated_ms: tag(element, "Initiated").and_then(|t| aws::iso8601_ms(&t)),
            });
        }
        rest = &after[end..];
    }
    uploads
}

/// The text of the first `<name>` element of `xml`, entities decoded.
fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(unescape(&xml[start..end]))
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An S3 error body's code and message.
fn xml_error(xml: &str) -> String {
    match (tag(xml, "Code"), tag(xml, "Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => "an error without a code".into(),
    }
}

/// An answer that is not a success, for a message: its status and S3's
/// error code and message (a HEAD answer has no body).
fn describe_status(mut response: Response, verb: Verb) -> String {
    let status = response.status().as_u16();
    if verb == Verb::Head {
        return format!("HTTP {status}");
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if body.contains("<Code>") {
        format!("HTTP {status}, {}", xml_error(&body))
    } else {
        format!("HTTP {status}")
    }
}

fn unix_ms_now() -> u64 {
    super::unix_ms(Ok(SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_in_a_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Bucket>cache</Bucket><Upload><Key>p1/a&amp;b</Key><UploadId>u1</UploadId>
<Initiated>1970-01-01T00:00:01.000Z</Initiated></Upload>
<Upload><Key>p1/c</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>"#;
        assert_eq!(
            parse_uploads(xml),
            [
                Upload {
                    key: "p1/a&b".into(),
                    upload_id: "u1".into(),
                    initiated_ms: Some(1000)
                },
                Upload {
                    key: "p1/c".into(),
                    upload_id: "u2".into(),
                    initiated_ms: None
                }
            ]
        );
    }

    #[test]
    fn entities() {
        assert_eq!(unescape("a&lt;b&gt;&#38;&#x41;&bogus;"), "a<b>&A&bogus;");
        assert_eq!(unescape("tail &amp"), "tail &amp");
    }

    #[test]
    fn errors_read_as_code_and_message() {
        let xml = "<Error><Code>NoSuchKey</Code><Message>Key not found</Message></Error>";
        assert_eq!(xml_error(xml), "NoSuchKey: Key not found");
    }

    #[test]
    fn a_part_is_read_from_its_offset() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        let mut part = PartReader {
            file: &file,
            pos: 3,
            end: 7,
        };
        let mut out = String::new();
        part.read_to_string(&mut out).unwrap();
        assert_eq!(out, "3456");
    }
}
