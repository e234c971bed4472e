//! The terminal a job's commands read from (docs/protocol.md §4): a second
//! pseudo-terminal per session whose slave is every command's stdin, so
//! `[ -t 0 ]`, `stty`, `tput` and `docker run -it` work, while a read gives
//! end-of-file at once, as from /dev/null.
//!
//! Nobody types into it. Before each command its modes are reset to
//! non-canonical with `VMIN=0, VTIME=0` (a read with nothing to read returns
//! 0) and its input is flushed. A command may put it back in canonical mode
//! (`stty sane`, `stty icanon`), where a read would wait for a line: a keeper
//! thread then hands it the end-of-file character whenever nothing is left
//! to read, so such a read returns 0 too, within one tick. Only a
//! non-canonical mode with `MIN > 0` (`stty raw`, `stty -icanon min 1`) makes
//! a read wait; nothing ends that wait but the job's time limit or a stop.
//! What commands write to their stdin is read and discarded, so a writer
//! never blocks.
//!
//! This file knows nothing of bash or containers: it owns the pair, its
//! modes and the keeper.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::sys::{self, TermMode, TermSize};

/// The size of a job's terminals, stdin and stdout alike; `COLUMNS` and
/// `LINES` say the same.
pub const TERM_SIZE: TermSize = TermSize {
    rows: 40,
    cols: 160,
};

/// How often the keeper looks at the terminal's modes: the longest a read in
/// canonical mode waits for its end-of-file.
const TICK: Duration = Duration::from_millis(10);

/// What the keeper thread and the session share.
struct Shared {
    master: File,
    slave: OwnedFd,
    /// Held while the modes are reset and while the keeper hands over an
    /// end-of-file, so that one never lands in the reset terminal.
    lock: Mutex<()>,
    closing: AtomicBool,
}

/// The stdin terminal of one session.
pub struct StdinTerminal {
    shared: Arc<Shared>,
    path: PathBuf,
    mode: TermMode,
    keeper: Option<JoinHandle<()>>,
}

impl StdinTerminal {
    /// Opens the pair in the reset state and starts its keeper.
    pub fn open() -> std::io::Result<StdinTerminal> {
        let pty = sys::open_pty(TERM_SIZE)?;
        let mode = TermMode::of(pty.slave.as_raw_fd())?
            .without_echo()
            .reads_never_wait();
        mode.apply(pty.slave.as_raw_fd())?;
        let shared = Arc::new(Shared {
            master: pty.master,
            slave: pty.slave,
            lock: Mutex::new(()),
            closing: AtomicBool::new(false),
        });
        let keeper = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("session-stdin".into())
                .spawn(move || keep(&shared))?
        };
        Ok(StdinTerminal {
            shared,
            path: pty.path,
            mode,
            keeper: Some(keeper),
        })
    }

    /// The slave's path on this host (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the terminal back in the state every command starts with: its
    /// modes and size, and nothing left to read.
    pub fn reset(&self) -> std::io::Result<()> {
        let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        let fd = self.shared.slave.as_raw_fd();
        self.mode.apply(fd)?;
        sys::set_term_size(fd, TERM_SIZE)?;
        sys::flush_input(fd)
    }

    /// Lets the user `uid` open the terminal (a container's user).
    pub fn give_to(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }
}

impl Drop for StdinTerminal {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(keeper) = self.keeper.take() {
            // Bounded: the keeper looks at `closing` every tick.
            let _ = keeper.join();
        }
    }
}

/// The keeper: drains what commands write to their stdin, and in canonical
/// mode keeps one end-of-file waiting for the next read.
fn keep(shared: &Shared) {
    let master = shared.master.as_raw_fd();
    let slave = shared.slave.as_raw_fd();
    let mut sink = [0u8; 4096];
    while !shared.closing.load(Ordering::Relaxed) {
        let mut fds = [sys::pollfd(master, sys::POLLIN)];
        if sys::poll(&mut fds, Some(Instant::now() + TICK)).is_err() {
            break;
        }
        if fds[0].revents & sys::POLLIN != 0 && (&shared.master).read(&mut sink).is_err() {
            break;
        }
        let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mode) = TermMode::of(slave) else { break };
        // `readable_now` on the slave also waits until what was written to
        // the master has reached the line discipline, so the end-of-file is
        // taken in the mode it was meant for, before the lock is released.
        if let Some(eof) = mode.canonical_eof() {
            if !sys::readable_now(slave) && (&shared.master).write_all(&[eof]).is_ok() {
                sys::readable_now(slave);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn run_on(term: &StdinTerminal, script: &str) -> (String, Duration) {
        term.reset().unwrap();
        let started = Instant::now();
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::from(File::open(term.path()).unwrap()))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed(),
        )
    }

    #[test]
    fn reads_end_at_once_in_any_mode_but_raw() {
        let term = StdinTerminal::open().unwrap();
        let (out, _) = run_on(
            &term,
            "[ -t 0 ] && echo tty; stty size; cat; echo cat=$?; read x || echo eof",
        );
        assert_eq!(out, "tty\n40 160\ncat=0\neof\n");
        let (out, took) = run_on(
            &term,
            "stty sane; read x || echo eof1; read y || echo eof2; stty icanon min 1; cat; echo cat=$?",
        );
        assert_eq!(out, "eof1\neof2\ncat=0\n");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn a_reset_undoes_what_a_command_changed() {
        let term = StdinTerminal::open().unwrap();
        run_on(&term, "stty sane echo cols 20 rows 5");
        let (out, _) = run_on(
            &term,
            "stty size; stty -a | grep -o -- '-icanon\\|-echo ' | sort",
        );
        assert_eq!(out, "40 160\n-echo \n-icanon\n");
    }
}
