//! One request to the S3 service: signed again for each try (presigned
//! URLs from `rusty-s3`), sent with `ureq` under its deadline, tried
//! `ATTEMPTS` times with backoff, on the next endpoint when one does not
//! answer; and an object read as it arrives, resumed where it broke.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action};

use super::xml::xml_error;
use super::{
    ATTEMPTS, BACKOFF, MAX_XML, READ_TIMEOUT, S3, SHORT_DEADLINE, SIGNED_FOR, TRANSFER_DEADLINE,
};
use crate::cache::cancel::Cancel;
use crate::cache::error::CacheError;

/// How a request's body is sent.
pub(super) enum Body<'b> {
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
pub(super) enum Verb {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

/// One request, signed again for each try.
pub(super) struct Req<'b> {
    /// For messages: `list`, `upload part 3`, ...
    pub(super) what: &'b str,
    pub(super) verb: Verb,
    pub(super) sign: &'b dyn Fn(&Bucket, &Credentials) -> String,
    pub(super) body: Body<'b>,
    /// A download: no overall deadline but `TRANSFER_DEADLINE`, and one
    /// between reads.
    pub(super) streaming: bool,
    pub(super) deadline: Duration,
    pub(super) headers: Vec<(&'static str, String)>,
}

pub(super) type Response = ureq::http::Response<ureq::Body>;

/// Reads `len` bytes of a file from `offset`, without moving a cursor.
pub(super) struct PartReader<'f> {
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
    /// Sends `req`, trying again (with backoff, on the next endpoint when
    /// one does not answer) on a transport error, a 5xx or a 429. Any
    /// other answer is returned for the caller to read. `cancel` is not
    /// looked at when `always` (an abort after a failed upload).
    pub(super) fn send(
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

    pub(super) fn send_once(&self, req: &Req<'_>, url: &str) -> Result<Response, ureq::Error> {
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
    pub(super) fn expect_ok(
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

    pub(super) fn short<'b>(
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
}

/// An object being read, resumed from where it broke (bounded).
pub(super) struct Download<'a> {
    pub(super) s3: &'a S3,
    pub(super) cancel: &'a Cancel,
    pub(super) creds: Credentials,
    pub(super) object: String,
    /// The object read: a resumed read must be of the same one.
    pub(super) etag: Option<String>,
    pub(super) pos: u64,
    pub(super) body: Option<ureq::BodyReader<'static>>,
    pub(super) resumes: u32,
    pub(super) started: Instant,
}

impl Download<'_> {
    pub(super) fn open(&mut self) -> Result<(), CacheError> {
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
        let status = response.status().as_u16();
        match status {
            206 if self.pos > 0 => {
                // The part must start where the read broke.
                let range = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !range.starts_with(&format!("bytes {}-", self.pos)) {
                    return Err(self.s3.fail(format!(
                        "download: resumed at byte {} but the answer's Content-Range is {range:?}",
                        self.pos
                    )));
                }
            }
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
        let mut body = response.into_body().into_reader();
        if status == 200 && self.pos > 0 {
            // A server (or a proxy) that ignores Range sends the object
            // from its start: what was read already is skipped.
            let skipped = io::copy(&mut (&mut body).take(self.pos), &mut io::sink())
                .map_err(|e| self.s3.fail(format!("download: {e}")))?;
            if skipped != self.pos {
                return Err(self.s3.fail(format!(
                    "download: the object is shorter ({skipped} bytes) than what was read of it"
                )));
            }
        }
        self.body = Some(body);
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

/// An answer that is not a success, for a message: its status and S3's
/// error code and message (a HEAD answer has no body).
pub(super) fn describe_status(mut response: Response, verb: Verb) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
