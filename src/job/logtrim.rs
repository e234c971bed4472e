//! The part of a job's event log past half its limit (docs/protocol.md
//! §6.7): held back in segment files next to the log, unreadable for now,
//! the oldest segment dropped whenever the log would otherwise outgrow its
//! limit, and handed back in order when the job ends.
//!
//! Lines that are already served can never be taken back (a poller counts
//! them for `start_from`), which is why the tail is held back instead of
//! written: only at the end is it known which lines are the last ones.
//! Only output is dropped. The step lines of a dropped segment are kept (in
//! memory, a few hundred bytes each, as many as the job has steps), so every
//! `cmd_started` keeps its `cmd_finished`; and the place of the first output
//! dropped is where the trim line goes, inside the step that printed it.
//!
//! This module knows lines and whether each one is output; `eventlog`
//! encodes the events, writes the head and writes what this hands back.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The prefix of a segment's file name in the job's directory.
pub const SEGMENT_PREFIX: &str = "events.held.";

/// What was left out, for the trim line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeftOut {
    /// Bytes of output text, as the `output` fields held them.
    pub output_bytes: u64,
    /// `cmd_output` lines.
    pub events: u64,
    /// The timestamp of the first output left out.
    pub timestamp: u64,
}

/// A piece of the log handed back by `Held::release`, in log order.
pub enum Piece<'a> {
    /// A complete line, with its newline.
    Line(&'a [u8]),
    /// The trim line goes here.
    Trim(LeftOut),
}

/// One segment file: lines in order, as written.
struct Segment {
    path: PathBuf,
    file: File,
    bytes: u64,
    output_bytes: u64,
    output_events: u64,
    first_output_at: Option<u64>,
    /// Each line that is not output, with the number of output lines
    /// before it in this segment: what survives when the segment goes.
    steps: Vec<(u64, Vec<u8>)>,
}

enum GapItem {
    Line(Vec<u8>),
    Trim,
}

/// The held-back part of one job's log.
pub struct Held {
    dir: PathBuf,
    /// The most bytes the whole log may take (the trim line aside).
    limit: u64,
    /// A segment is closed once it holds this much; a quarter of the limit,
    /// so that the tail kept is between a quarter and a half of it.
    segment_bytes: u64,
    next_segment: u64,
    segments: VecDeque<Segment>,
    /// What is left of the dropped segments: their step lines, and where
    /// the trim line goes.
    gap: Vec<GapItem>,
    gap_bytes: u64,
    left_out: Option<LeftOut>,
}

impl Held {
    pub fn new(dir: &Path, limit: u64) -> Held {
        Held {
            dir: dir.to_path_buf(),
            limit,
            segment_bytes: (limit / 4).max(1),
            next_segment: 0,
            segments: VecDeque::new(),
            gap: Vec::new(),
            gap_bytes: 0,
            left_out: None,
        }
    }

    /// Bytes that will follow the head: the gap's step lines and the
    /// segments.
    fn kept(&self) -> u64 {
        self.gap_bytes + self.segments.iter().map(|s| s.bytes).sum::<u64>()
    }

    /// Holds back one line (with its newline). `output` is, for a
    /// `cmd_output`, the length of its text and its timestamp; `head` is
    /// the size of the log on disk. On failure nothing of the line is kept.
    pub fn hold(&mut self, line: &[u8], output: Option<(u64, u64)>, head: u64) -> io::Result<()> {
        let len = line.len() as u64;
        while head + self.kept() + len > self.limit && self.segments.len() > 1 {
            self.drop_oldest();
        }
        let full = match self.segments.back() {
            None => true,
            Some(s) => s.bytes > 0 && s.bytes + len > self.segment_bytes,
        };
        if full {
            let segment = self.open_segment()?;
            self.segments.push_back(segment);
        }
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        if let Err(e) = segment.file.write_all(line) {
            // Back to the last complete line, so that what is handed back
            // is whole lines.
            let _ = segment.file.set_len(segment.bytes);
            return Err(e);
        }
        segment.bytes += len;
        match output {
            Some((text_len, timestamp)) => {
                segment.output_bytes += text_len;
                segment.output_events += 1;
                segment.first_output_at.get_or_insert(timestamp);
            }
            None => segment.steps.push((segment.output_events, line.to_vec())),
        }
        Ok(())
    }

    fn open_segment(&mut self) -> io::Result<Segment> {
        let path = self
            .dir
            .join(format!("{SEGMENT_PREFIX}{}", self.next_segment));
        self.next_segment += 1;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        Ok(Segment {
            path,
            file,
            bytes: 0,
            output_bytes: 0,
            output_events: 0,
            first_output_at: None,
            steps: Vec::new(),
        })
    }

    /// Drops the oldest segment: its output is left out, its step lines
    /// join the gap.
    fn drop_oldest(&mut self) {
        let Some(segment) = self.segments.pop_front() else {
            return;
        };
        let _ = fs::remove_file(&segment.path);
        let mut trim_placed = self.left_out.is_some();
        for (outputs_before, line) in segment.steps {
            if !trim_placed && outputs_before > 0 {
                self.gap.push(GapItem::Trim);
                trim_placed = true;
            }
            self.gap_bytes += line.len() as u64;
            self.gap.push(GapItem::Line(line));
        }
        if segment.output_events == 0 {
            return;
        }
        if !trim_placed {
            self.gap.push(GapItem::Trim);
        }
        let left_out = self.left_out.get_or_insert(LeftOut {
            timestamp: segment.first_output_at.unwrap_or_default(),
            ..LeftOut::default()
        });
        left_out.output_bytes += segment.output_bytes;
        left_out.events += segment.output_events;
    }

    /// What was left out so far; `None` while nothing was.
    pub fn left_out(&self) -> Option<LeftOut> {
        self.left_out
    }

    /// Hands back, in order, what follows the head: the step lines of the
    /// gap with the trim line at its place, then every line of the kept
    /// segments. The segment files are removed.
    pub fn release(mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        let left_out = self.left_out.unwrap_or_default();
        for item in std::mem::take(&mut self.gap) {
            match item {
                GapItem::Line(line) => emit(Piece::Line(&line)),
                GapItem::Trim => emit(Piece::Trim(left_out)),
            }
        }
        for segment in std::mem::take(&mut self.segments) {
            release_segment(&segment, emit);
            let _ = fs::remove_file(&segment.path);
        }
    }
}

/// The complete lines of a segment. Should it not open, its step lines
/// still go out (its output is then lost), so the log stays well-formed.
fn release_segment(segment: &Segment, emit: &mut dyn FnMut(Piece<'_>)) {
    let file = match File::open(&segment.path) {
        Ok(f) => f,
        Err(e) => {
            log::error!(
                "cannot read back {}: {e}; its output is lost",
                segment.path.display()
            );
            for (_, line) in &segment.steps {
                emit(Piece::Line(line));
            }
            return;
        }
    };
    let mut reader = BufReader::new(io::Read::take(file, segment.bytes));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => emit(Piece::Line(&line)),
            Ok(_) => return,
            Err(e) => {
                log::error!("cannot read back {}: {e}", segment.path.display());
                return;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for segment in &self.segments {
            let _ = fs::remove_file(&segment.path);
        }
    }
}

/// Removes the segments a crash left in a job's directory (their lines
/// are lost: the log is ended after its head, docs/protocol.md §7.3).
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SEGMENT_PREFIX))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(held: Held) -> Vec<String> {
        let mut out = Vec::new();
        held.release(&mut |piece| match piece {
            Piece::Line(l) => out.push(String::from_utf8(l.to_vec()).unwrap()),
            Piece::Trim(left) => out.push(format!("TRIM {} {}\n", left.output_bytes, left.events)),
        });
        out
    }

    #[test]
    fn below_the_limit_everything_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::new(dir.path(), 100);
        held.hold(b"s1\n", None, 40).unwrap();
        for _ in 0..10 {
            held.hold(b"o\n", Some((1, 7)), 40).unwrap();
        }
        assert_eq!(held.left_out(), None);
        let got = lines(held);
        assert_eq!(got.len(), 11);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn past_the_limit_old_output_goes_and_steps_stay() {
        let dir = tempfile::tempdir().unwrap();
        // Limit 400 with a head of 200: segments of 100 bytes.
        let mut held = Held::new(dir.path(), 400);
        let out = |i: u32| format!("out-{i:04}\n"); // 10 bytes
        for i in 0..5 {
            held.hold(out(i).as_bytes(), Some((9, 1)), 200).unwrap();
        }
        held.hold(b"end-a\n", None, 200).unwrap();
        held.hold(b"start-b\n", None, 200).unwrap();
        for i in 5..200 {
            held.hold(out(i).as_bytes(), Some((9, 2)), 200).unwrap();
        }
        held.hold(b"end-b\n", None, 200).unwrap();
        let left = held.left_out().unwrap();
        assert_eq!(left.timestamp, 1);
        let got = lines(held);
        let bytes: usize = got
            .iter()
            .filter(|l| !l.starts_with("TRIM"))
            .map(String::len)
            .sum();
        assert!(bytes <= 200, "{bytes}: {got:?}");
        assert!(bytes >= 100, "too little tail: {got:?}");
        // The trim line where output first went, the steps kept in order,
        // the last lines whole.
        assert_eq!(
            got[0],
            format!("TRIM {} {}\n", left.output_bytes, left.events)
        );
        assert_eq!(got[1..3], ["end-a\n", "start-b\n"]);
        assert_eq!(got.last().unwrap(), "end-b\n");
        assert_eq!(got[got.len() - 2], out(199));
        let kept = got.iter().filter(|l| l.starts_with("out-")).count() as u64;
        assert_eq!(left.events + kept, 200);
        assert_eq!(left.output_bytes, 9 * left.events);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dropped_segments_leave_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::new(dir.path(), 400);
        for _ in 0..1000 {
            held.hold(b"123456789\n", Some((9, 1)), 200).unwrap();
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 3);
        drop(held);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
