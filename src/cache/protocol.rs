//! The framing on a job's cache socket. Every frame is a kind byte, a
//! 32-bit big-endian length and that many bytes:
//!
//! - `J`: one JSON message, a `Request` from `cache` or a `Reply` from the
//!   agent;
//! - `D`: a piece of an archive;
//! - `E`: the end of an archive.
//!
//! A frame's bytes are taken as they arrive, never allocated ahead on the
//! word of its length, and each side bounds what it reads (`Limits`): the
//! agent takes requests of a few hundred KiB and archive pieces of one
//! `CHUNK`, so a job that claims larger frames is cut off at the head.
//!
//! A connection carries one request. `store`: the client sends `Store`, the
//! agent answers `Ready` with the archive format to use (or `Exists`, or an
//! error), the client sends the archive as `D` frames and an `E`, the agent
//! answers `Stored`, `TooLarge` or an error. `restore`: the client sends
//! `Restore`, the agent answers `Hit` followed by the archive (`D`... `E`),
//! or `Miss`. A `J` frame where data was expected is an error `Reply` that
//! ends the transfer. Every other request gets one reply. Fields added
//! since the first version have defaults, so that an older static binary
//! mounted into a compose job still speaks to a newer agent. A request
//! travels in an `Envelope`, which adds what the job hands over with it:
//! the content of the SFTP key its variables name.
//!
//! This module knows the bytes, not what the commands do.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::archive::ArchiveFormat;
use super::backend::Entry;
use super::config::CleanupBy;

/// Archive bytes per `D` frame.
pub const CHUNK: usize = 1024 * 1024;
/// A `D` frame that has waited this long is sent, however small: a store
/// of very compressible files makes its first megabyte slowly, and the
/// agent gives up on a client silent for `handler::IDLE_TIMEOUT`.
const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// The largest frames one side reads from the other.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A `J` frame.
    pub json: u32,
    /// A `D` frame.
    pub data: u32,
}

/// What the agent reads from a job: a request (with an SFTP key of at
/// most `MAX_KEY_BYTES`, escaped) and archive pieces as `DataWriter` makes
/// them.
pub const FROM_JOB: Limits = Limits {
    json: 256 * 1024,
    data: CHUNK as u32,
};

/// What `cache` reads from the agent: a listing of many keys, and archive
/// pieces.
pub const FROM_AGENT: Limits = Limits {
    json: 64 * 1024 * 1024,
    data: CHUNK as u32,
};

/// The largest SFTP key `cache` hands over: OpenSSH's largest keys (RSA of
/// 16384 bits) take 13 KiB.
pub const MAX_KEY_BYTES: u64 = 64 * 1024;

const JSON: u8 = b'J';
const DATA: u8 = b'D';
const END: u8 = b'E';

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Store {
        key: String,
        /// The job's `--cleanup-by`; the agent's order when absent.
        #[serde(default)]
        cleanup_by: Option<CleanupBy>,
        /// The job's `CACHE_SIZE` in bytes, which the agent's own limit caps.
        #[serde(default)]
        capacity: Option<i64>,
        /// The job asked for archives the toolbox can read
        /// (`SEMAPHORE_CACHE_ARCHIVE_METHOD`).
        #[serde(default)]
        gzip: bool,
    },
    Restore {
        key: String,
    },
    HasKey {
        key: String,
    },
    List,
    /// Whether any key is there (`cache is_not_empty`); answered with
    /// `HasKey`. An older `cache` asks for the `List` instead.
    IsNotEmpty,
    Delete {
        key: String,
    },
    Clear,
    Usage {
        #[serde(default)]
        capacity: Option<i64>,
    },
}

/// A request with what the job hands over with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    #[serde(flatten)]
    pub request: Request,
    /// The SFTP key the job's variables name, as `cache` read it in the
    /// job; used only when the job has its own SFTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sftp_key: Option<JobKey>,
    /// The S3 credentials in the job's environment; used only when the
    /// job has its own bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_keys: Option<crate::cache::aws::Keys>,
}

/// The key file a job names, as `cache` found it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKey {
    Content(String),
    /// Why it cannot be used, as a line for the job.
    Unusable(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Send the archive, in this format.
    Ready {
        #[serde(default)]
        format: ArchiveFormat,
    },
    Exists,
    Stored {
        size: u64,
        /// Keys removed to make room, in the order they went.
        evicted: Vec<String>,
        /// The order they were chosen by.
        #[serde(default)]
        cleanup_by: CleanupBy,
    },
    /// The archive is larger than the whole cache may be; not stored.
    TooLarge {
        capacity: i64,
    },
    /// The archive of `key` follows (or an error in its place).
    Hit {
        key: String,
        size: u64,
    },
    Miss,
    HasKey {
        exists: bool,
    },
    List {
        entries: Vec<Entry>,
    },
    Deleted {
        /// False when there was no such key (nothing was deleted).
        #[serde(default = "yes")]
        existed: bool,
    },
    Cleared {
        keys: usize,
    },
    Usage {
        used: u64,
        /// The capacity left (negative when over it); None when the cache
        /// has no limit and the disk's free space is unknown.
        free: Option<i64>,
    },
    Error {
        message: String,
    },
}

fn yes() -> bool {
    true
}

/// What a frame was; its bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Json,
    Data,
    End,
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

pub fn write_json(w: &mut impl Write, message: &impl Serialize) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    write_frame(w, JSON, &bytes)?;
    w.flush()
}

pub fn write_end(w: &mut impl Write) -> io::Result<()> {
    write_frame(w, END, &[])?;
    w.flush()
}

/// Reads one frame into `payload` (cleared first), which grows only as
/// the frame's bytes arrive: a length is a claim, not an allocation.
pub fn read_frame(r: &mut impl Read, limits: Limits, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let (frame, max) = match head[0] {
        JSON => (Frame::Json, limits.json),
        DATA => (Frame::Data, limits.data),
        END => (Frame::End, 0),
        _ => return Err(invalid("unknown frame")),
    };
    if len > max {
        return Err(invalid("frame too large"));
    }
    payload.clear();
    let got = r.take(u64::from(len)).read_to_end(payload)?;
    if got < len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the frame stopped short",
        ));
    }
    Ok(frame)
}

/// Reads one JSON message; anything else is an error.
pub fn read_json<T: for<'de> Deserialize<'de>>(r: &mut impl Read, limits: Limits) -> io::Result<T> {
    let mut payload = Vec::new();
    match read_frame(r, limits, &mut payload)? {
        Frame::Json => serde_json::from_slice(&payload).map_err(io::Error::other),
        _ => Err(invalid("expected a message")),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes an archive as `D` frames of up to `CHUNK` bytes, and sends a
/// smaller one when bytes have waited `FLUSH_AFTER`; `finish` sends the
/// `E`.
pub struct DataWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    /// When the last frame went.
    sent_at: Instant,
}

impl<W: Write> DataWriter<W> {
    pub fn new(inner: W) -> DataWriter<W> {
        DataWriter {
            inner,
            buf: Vec::with_capacity(CHUNK),
            sent_at: Instant::now(),
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(&mut self.inner, DATA, &self.buf)?;
            self.buf.clear();
        }
        self.sent_at = Instant::now();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunk()?;
        write_end(&mut self.inner)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for DataWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK || self.sent_at.elapsed() >= FLUSH_AFTER {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_chunk()?;
        self.inner.flush()
    }
}

/// Reads an archive sent as `D` frames, up to its `E`. A message in its
/// place (the sender's error) ends the read with that message. One buffer
/// serves every frame.
pub struct DataReader<R: Read> {
    inner: R,
    limits: Limits,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> DataReader<R> {
    pub fn new(inner: R, limits: Limits) -> DataReader<R> {
        DataReader {
            inner,
            limits,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for DataReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            self.pos = 0;
            match read_frame(&mut self.inner, self.limits, &mut self.chunk)? {
                Frame::Data => {}
                Frame::End => self.done = true,
                Frame::Json => {
                    let message = match serde_json::from_slice::<Reply>(&self.chunk) {
                        Ok(Reply::Error { message }) => message,
                        _ => "the archive stopped short".to_string(),
                    };
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_in_frames() {
        let payload: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut w = DataWriter::new(Vec::new());
        w.write_all(&payload).unwrap();
        let wire = w.finish().unwrap();
        let mut r = DataReader::new(&wire[..], FROM_JOB);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, payload);
        assert!(r.done);
    }

    #[test]
    fn an_error_in_place_of_data_is_read_as_one() {
        let mut wire = Vec::new();
        write_json(
            &mut wire,
            &Reply::Error {
                message: "disk gone".into(),
            },
        )
        .unwrap();
        let err = DataReader::new(&wire[..], FROM_AGENT)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.to_string(), "disk gone");
    }

    #[test]
    fn messages_are_tagged_json() {
        let mut wire = Vec::new();
        write_json(&mut wire, &Request::HasKey { key: "k".into() }).unwrap();
        assert_eq!(&wire[5..], br#"{"op":"has_key","key":"k"}"#);
        let back: Request = read_json(&mut &wire[..], FROM_JOB).unwrap();
        assert_eq!(back, Request::HasKey { key: "k".into() });
    }

    #[test]
    fn an_envelope_is_the_request_with_the_key_beside_it() {
        let plain = Envelope {
            request: Request::HasKey { key: "k".into() },
            sftp_key: None,
            s3_keys: None,
        };
        let mut wire = Vec::new();
        write_json(&mut wire, &plain).unwrap();
        // What a client without envelopes sends reads the same.
        assert_eq!(&wire[5..], br#"{"op":"has_key","key":"k"}"#);
        let with_key = Envelope {
            request: Request::Usage { capacity: None },
            sftp_key: Some(JobKey::Content("-----BEGIN".into())),
            s3_keys: None,
        };
        let mut wire = Vec::new();
        write_json(&mut wire, &with_key).unwrap();
        let back: Envelope = read_json(&mut &wire[..], FROM_JOB).unwrap();
        assert_eq!(back, with_key);
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_at_its_head() {
        let mut wire = vec![b'J'];
        wire.extend((FROM_JOB.json + 1).to_be_bytes());
        let err = read_json::<Request>(&mut &wire[..], FROM_JOB).unwrap_err();
        assert_eq!(err.to_string(), "frame too large");
        // A claimed length is not allocated before its bytes come.
        let mut wire = vec![b'D'];
        wire.extend((CHUNK as u32).to_be_bytes());
        wire.extend([7u8; 10]);
        let mut payload = Vec::new();
        let err = read_frame(&mut &wire[..], FROM_JOB, &mut payload).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(payload.capacity() < 4096, "{}", payload.capacity());
    }
}
