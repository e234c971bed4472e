//! The reading side of a job's event log (docs/protocol.md §6.3): the log
//! and index files, how much of them is complete, and the lines the writer
//! could not put on disk yet (§6.8). Readers see the lines on disk followed
//! by those kept in memory, so a job whose disk filled up still serves a
//! complete log ending in `job_finished`.
//!
//! This module reads; `eventlog` is the one writer.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// How much of the log is complete: readers never see a half-written line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Lines on disk and in memory.
    pub events: u64,
    /// Bytes on disk and in memory.
    pub bytes: u64,
    /// `job_finished` is in the log.
    pub finished: bool,
}

/// What the writer publishes to readers.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// Complete lines in the log file, and their bytes.
    pub(crate) disk_events: u64,
    pub(crate) disk_bytes: u64,
    /// Lines after those on disk, kept in memory until they can be written.
    pub(crate) tail: Vec<u8>,
    /// The end of each line in `tail`.
    pub(crate) tail_ends: Vec<usize>,
    pub(crate) finished: bool,
    /// What the agent knows of the job that the log does not say (why it
    /// was stopped, why it could not start), for the API and the agent
    /// log; never part of the log itself.
    pub(crate) remarks: Vec<String>,
}

/// What readers share with the writer.
#[derive(Debug)]
pub struct LogFiles {
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    published: Mutex<Published>,
}

/// A reader over complete lines, with its length known in advance.
pub struct LogReader {
    inner: Box<dyn Read + Send>,
    len: u64,
}

impl LogReader {
    /// How many bytes the reader yields.
    pub fn size(&self) -> u64 {
        self.len
    }
}

impl Read for LogReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl LogFiles {
    pub(crate) fn new(log_path: PathBuf, index_path: PathBuf, published: Published) -> LogFiles {
        LogFiles {
            log_path,
            index_path,
            published: Mutex::new(published),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn progress(&self) -> Progress {
        let p = self.lock();
        Progress {
            events: p.disk_events + p.tail_ends.len() as u64,
            bytes: p.disk_bytes + p.tail.len() as u64,
            finished: p.finished,
        }
    }

    /// What the agent knows of the job beyond its log, oldest first.
    pub fn remarks(&self) -> Vec<String> {
        self.lock().remarks.clone()
    }

    /// Opens a reader over the complete lines from event `start_from` to the
    /// current end. Costs two small reads, whatever the log's length.
    pub fn read_from(&self, start_from: u64) -> io::Result<LogReader> {
        let (disk_events, disk_bytes, tail, tail_ends) = {
            let p = self.lock();
            (
                p.disk_events,
                p.disk_bytes,
                p.tail.clone(),
                p.tail_ends.clone(),
            )
        };
        if start_from >= disk_events {
            let skip = (start_from - disk_events) as usize;
            let start = match skip {
                0 => 0,
                n if n <= tail_ends.len() => tail_ends[n - 1],
                _ => tail.len(),
            };
            let rest = tail[start..].to_vec();
            return Ok(LogReader {
                len: rest.len() as u64,
                inner: Box::new(Cursor::new(rest)),
            });
        }
        let mut log = File::open(&self.log_path)?;
        let index = File::open(&self.index_path)?;
        let mut offset = [0u8; 8];
        index.read_exact_at(&mut offset, start_from * 8)?;
        let offset = u64::from_le_bytes(offset);
        log.seek(SeekFrom::Start(offset))?;
        let on_disk = disk_bytes.saturating_sub(offset);
        Ok(LogReader {
            len: on_disk + tail.len() as u64,
            inner: Box::new(log.take(on_disk).chain(Cursor::new(tail))),
        })
    }
}
