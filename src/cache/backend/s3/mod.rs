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
//!
//! Here: the backend's operations. `request.rs` sends one request (signed
//! again for each try, retried, failed over) and reads an object as it
//! arrives; `xml.rs` reads what `rusty-s3` does not parse.

mod request;
mod xml;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::staging::{self, Staged};
use super::{Call, Entry, Fetched, Listing};
use crate::cache::aws::{self, InstanceProfile};
use crate::cache::cancel::Cancel;
use crate::cache::config::{S3Config, S3Credentials};
use crate::cache::error::CacheError;
use crate::process::sys;
use request::{describe_status, Body, Download, Req, Verb};
use xml::{parse_uploads, xml_error};

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

impl S3 {
    pub fn new(cfg: &S3Config, spool: &Path) -> Result<S3, CacheError> {
        fs::create_dir_all(spool)
            .map_err(|e| CacheError::io("cannot create the cache spool directory", spool, e))?;
        let fail = |detail: String| CacheError::S3 {
            bucket: cfg.describe(),
            detail,
        };
        let bucket = |url: &str, style| {
            let endpoint = url.parse().map_err(|e| fail(format!("{url}: {e}")))?;
            Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
                .map_err(|e| fail(e.to_string()))
        };
        let buckets = if cfg.endpoints.is_empty() {
            let aws = format!("https://s3.{}.amazonaws.com", cfg.region);
            vec![bucket(&aws, UrlStyle::VirtualHost)?]
        } else {
            cfg.endpoints
                .iter()
                .map(|url| bucket(url, UrlStyle::Path))
                .collect::<Result<Vec<_>, _>>()?
        };
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

fn unix_ms_now() -> u64 {
    super::unix_ms(Ok(SystemTime::now()))
}
