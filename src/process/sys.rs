//! The one module that talks to the operating system through raw `libc`
//! calls: `poll(2)`, pseudo-terminals, sessions, signals, socket backlog,
//! thread priority, file locks, returning free memory to the kernel. Every
//! `unsafe` block of the agent is here, each with the reason it is sound;
//! the rest of the crate is `#![deny(unsafe_code)]` and calls these safe
//! wrappers.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

pub use libc::{c_short, pollfd as PollFd, POLLIN, POLLOUT};

/// `revents` bits that mean the descriptor is closed or broken.
pub const HANGUP: c_short = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;

/// A `pollfd` asking for `events` on `fd`.
pub fn pollfd(fd: RawFd, events: c_short) -> PollFd {
    PollFd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll(2)` until `deadline` (forever if `None`). An interrupted call counts
/// as a wake-up; callers re-check their state after every return anyway.
pub fn poll(fds: &mut [PollFd], deadline: Option<Instant>) -> io::Result<()> {
    let timeout_ms: libc::c_int = match deadline {
        None => -1,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up, or a deadline less than 1 ms away would spin.
            let ms = left.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` for the
    // whole call, and its length is passed alongside.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Whether a read from `fd` would return data (or end-of-file) at once.
pub fn readable_now(fd: RawFd) -> bool {
    let mut fds = [pollfd(fd, POLLIN)];
    poll(&mut fds, Some(Instant::now())).is_ok() && fds[0].revents & POLLIN != 0
}

/// Listens again on a bound socket with a larger backlog. std listens with
/// 128; a failure leaves that backlog, which still works.
pub fn set_listen_backlog(fd: RawFd, backlog: i32) {
    // SAFETY: plain syscall on a socket the caller owns.
    let _ = unsafe { libc::listen(fd, backlog) };
}

/// Takes an exclusive `flock(2)` on an open file without waiting: true when
/// taken, false when another open file description holds a lock. The lock
/// goes when the file is closed, or when its process dies.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: plain syscall on a descriptor the borrowed file keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Gives the memory that `free` kept in malloc's arenas back to the kernel
/// (glibc's `malloc_trim(0)`, which also releases free pages in the middle of
/// every arena). Called after a large request body: freed, its many small
/// strings would otherwise stay resident for good. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks malloc's own structures, under its own
    // locks; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Lowers the scheduling priority of the calling thread only.
pub fn nice_current_thread(nice: i32) {
    // SAFETY: setpriority on this very thread (a tid is a valid PRIO_PROCESS
    // target on Linux); lowering needs no privilege.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// Signals a process (`pid > 0`) or a process group (`pid < 0`). Returns
/// whether the signal was delivered.
pub fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

pub use libc::{SIGCONT, SIGHUP, SIGKILL, SIGTERM};

/// Makes the child that `cmd` spawns a session leader whose controlling
/// terminal is its stdin (which must be a terminal slave), so job control
/// works and `[ -t 1 ]` is true.
pub fn spawn_as_session_leader_on_tty(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The size a pseudo-terminal reports (`TIOCGWINSZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Opens a pseudo-terminal pair, both ends close-on-exec (a child gets the
/// slave through dup2, which clears the flag), with echo off, no output
/// post-processing (`\n` stays `\n`, which saves the kernel and the chunker
/// work on every line) and the given size.
pub fn open_pty(size: TermSize) -> io::Result<(File, OwnedFd)> {
    // SAFETY: plain libc calls; every returned descriptor is checked and owned.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = libc::open(
            CStr::from_ptr(name.as_ptr()).as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        let mut tio: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut tio) == 0 {
            tio.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
            tio.c_oflag &= !libc::OPOST;
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio);
        }
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        Ok((File::from(master), slave))
    }
}
