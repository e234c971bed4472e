//! The terminal a job's commands read from (docs/protocol.md §4): a second
//! pseudo-terminal per session whose slave is every command's stdin, so
//! `[ -t 0 ]`, `stty`, `tput` and `docker run -it` work, while it reads as
//! /dev/null does: a read gives end-of-file at once, and a program that
//! waits for input with `select`, `poll` or `epoll` is told at once that
//! there is something to read, which is that end-of-file.
//!
//! Nobody types into it. Before each command its modes are reset to
//! canonical with `EXTPROC` (`TermMode::reads_end_of_file`), its input is
//! flushed, and one end-of-file character (^D) is put in it: in that mode
//! a lone ^D makes the terminal readable and a read return 0. (A terminal
//! in non-canonical mode with `VMIN=0` also returns 0 from a read, but
//! never polls readable: event loops would wait for ever.) A keeper thread
//! puts the next ^D in once a read took one, and does the same in plain
//! canonical mode (`stty sane`), where ^D is an end-of-file of its own.
//! In a non-canonical mode (`stty raw`, `docker run -it`) the ^D waiting
//! there is read as the character itself, as when a person types Ctrl-D
//! (`docker run -it` hands it to its container's terminal, where it is an
//! end-of-file again), and nothing more is put in: a second read waits,
//! and nothing but the job's time limit or a stop ends that wait. What
//! commands write to their stdin is read and discarded, so a writer never
//! blocks.
//!
//! The master is in packet mode, so a change of the slave's modes made
//! from `EXTPROC` wakes the keeper at once, before the next command
//! reads.
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

use crate::process::sys::{self, Input, TermMode, TermSize};

/// The size of a job's terminals, stdin and stdout alike; `COLUMNS` and
/// `LINES` say the same.
pub const TERM_SIZE: TermSize = TermSize {
    rows: 40,
    cols: 160,
};

/// How often the keeper looks at the terminal's modes: at most how long a
/// read after one that took an end-of-file waits for the next.
const TICK: Duration = Duration::from_millis(10);

/// What the keeper thread and the session share.
struct Shared {
    master: File,
    slave: OwnedFd,
    /// Held while the modes are reset and while the keeper hands over an
    /// end-of-file, so that there is never more than one.
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
            .reads_end_of_file();
        sys::set_packet_mode(pty.master.as_raw_fd())?;
        let shared = Arc::new(Shared {
            master: pty.master,
            slave: pty.slave,
            lock: Mutex::new(()),
            closing: AtomicBool::new(false),
        });
        let keeper = {
            let shared = Arc::clone(&shared);
            reset(&shared, &mode)?;
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
    /// modes and size, and an end-of-file, and nothing else, to read.
    pub fn reset(&self) -> std::io::Result<()> {
        reset(&self.shared, &self.mode)
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

/// `StdinTerminal::reset`.
fn reset(shared: &Shared, mode: &TermMode) -> std::io::Result<()> {
    let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
    let fd = shared.slave.as_raw_fd();
    // Most commands leave their stdin alone: it is then as the last reset
    // left it, its end-of-file (one byte in this mode) still waiting or put
    // back, and nothing is changed, which also leaves the keeper asleep.
    if TermMode::of(fd)?.same_as(mode)
        && sys::term_size(fd)? == TERM_SIZE
        && sys::input_pending(fd)? == 1
    {
        return Ok(());
    }
    mode.apply(fd)?;
    sys::set_term_size(fd, TERM_SIZE)?;
    sys::flush_input(fd)?;
    arm(shared, mode)
}

/// The keeper: drains what commands write to their stdin (and the master's
/// packet-mode news of mode changes), and keeps an end-of-file waiting.
fn keep(shared: &Shared) {
    let master = shared.master.as_raw_fd();
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
        let armed = TermMode::of(shared.slave.as_raw_fd()).and_then(|mode| arm(shared, &mode));
        if armed.is_err() {
            break;
        }
    }
}

/// Puts an end-of-file in the input, in the modes that read it as one,
/// unless one is waiting there already. The caller holds the lock.
fn arm(shared: &Shared, mode: &TermMode) -> std::io::Result<()> {
    let slave = shared.slave.as_raw_fd();
    let eof = match mode.input() {
        Input::Raw => return Ok(()),
        Input::External { eof } => {
            if sys::input_pending(slave)? > 0 {
                return Ok(());
            }
            eof
        }
        Input::Canonical { eof } => {
            // An end-of-file put in with `EXTPROC`, still there when a
            // command turned that off, reads as a line holding ^D here: it
            // makes way for a real one. A real one counts as no input.
            if sys::input_pending(slave)? > 0 {
                sys::flush_input(slave)?;
            }
            if sys::readable_now(slave) {
                return Ok(());
            }
            eof
        }
    };
    (&shared.master).write_all(&[eof])?;
    // `readable_now` on the slave also waits until what was written to the
    // master has reached the line discipline, so the end-of-file is taken
    // in the mode it was meant for, and counted, before the lock is
    // released.
    sys::readable_now(slave);
    Ok(())
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
        run_on(&term, "stty raw echo -extproc cols 20 rows 5");
        let (out, _) = run_on(
            &term,
            "stty size; stty -a | grep -o -e ' -*icanon' -e ' -*echo ' -e ' -*extproc'",
        );
        assert_eq!(out, "40 160\n icanon\n -echo \n extproc\n");
    }

    #[test]
    fn a_program_that_polls_its_stdin_is_told_at_once_of_the_end_of_file() {
        let term = StdinTerminal::open().unwrap();
        // `read -t` waits with `select`; each read takes one end-of-file
        // and finds the next.
        let script = "for i in 1 2 3; do read -t 5 x; echo $?; done; \
                      stty sane; read -t 5 x; echo $?; cat; echo cat=$?";
        let (out, took) = run_on(&term, script);
        assert_eq!(out, "1\n1\n1\n1\ncat=0\n");
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }

    #[test]
    fn raw_mode_reads_the_end_of_file_character_once() {
        let term = StdinTerminal::open().unwrap();
        let (out, took) = run_on(
            &term,
            "stty raw min 0 time 2; dd bs=1 count=1 2>/dev/null | od -An -c; \
             dd bs=1 count=1 2>/dev/null | wc -c",
        );
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["004", "0"]);
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }
}
