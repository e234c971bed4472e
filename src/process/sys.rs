//! The one module that talks to the operating system through raw `libc`
//! calls: `poll(2)`, pseudo-terminals, sessions, signals, the child
//! subreaper and its reaping, socket backlog, thread priority, file locks,
//! returning free memory to the kernel, a child's death with its parent.
//! Every `unsafe` block of the agent is here, each with the reason it is
//! sound; the rest of the crate is `#![deny(unsafe_code)]` and calls these
//! safe wrappers.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
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

pub use libc::{SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGTSTP};

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): a
/// descendant whose parent dies becomes this process's child, not init's,
/// whatever it did to its session or environment.
pub fn become_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names this process as `ps` and `/proc/PID/comm` show it (`PR_SET_NAME`,
/// at most 15 bytes; a longer name is cut). A failure keeps the old name.
pub fn set_process_name(name: &str) {
    let mut bytes = [0u8; 16];
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: `bytes` is a NUL-terminated buffer of 16 bytes that outlives
    // the call, which only reads it.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Makes `signals` do nothing to this process: each gets a handler that
/// returns at once (interrupted system calls restart). Unlike ignoring or
/// blocking them, this is not inherited by the programs it starts: an exec
/// puts a caught signal back to its default action.
pub fn disarm_signals(signals: &[i32]) -> io::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    for &signal in signals {
        // SAFETY: sigaction is plain data; zeroed is a valid empty value.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is a valid sigaction whose handler is an
        // async-signal-safe function that does nothing; the old action is
        // not asked for.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until any child of this process ends and reaps it
/// (`waitpid(-1)`): its pid and status, or None when this process has no
/// child left.
pub fn wait_any_child() -> io::Result<Option<(i32, std::process::ExitStatus)>> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, exclusively borrowed int for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            return Ok(Some((pid, std::process::ExitStatus::from_raw(status))));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Points this process's stdin at /dev/null, closing what it was.
pub fn stdin_from_null() -> io::Result<()> {
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 between two descriptors this process owns; fd 0 is
    // replaced atomically and nothing else holds a Rust handle that owns it.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child that `cmd` spawns the leader of a process group of its
/// own, started by fork and exec rather than `posix_spawn`: glibc's
/// `posix_spawn` leaves the child with its internal signals (32 and 33)
/// ignored, and an ignored signal stays ignored across exec, in every
/// process the child starts. Code to run between fork and exec makes std
/// fork, so the child's signal actions are the agent's.
pub fn spawn_in_own_process_group(cmd: &mut Command) {
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

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

/// Makes the child the leader of a new session without a terminal.
pub fn spawn_as_session_leader(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The size of a terminal, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// A pseudo-terminal pair and the path of its slave side.
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

/// Opens a pseudo-terminal pair of the given size, both ends close-on-exec
/// (a child gets the slave through dup2, which clears the flag), with the
/// kernel's default modes.
pub fn open_pty(size: TermSize) -> io::Result<Pty> {
    // SAFETY: plain libc calls; every returned descriptor is checked and owned.
    let (master, slave, path) = unsafe {
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
        let name = CStr::from_ptr(name.as_ptr());
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
        (master, OwnedFd::from_raw_fd(slave), path)
    };
    set_term_size(slave.as_raw_fd(), size)?;
    Ok(Pty {
        master: File::from(master),
        slave,
        path,
    })
}

/// Sets the size a terminal reports (`TIOCSWINSZ`).
pub fn set_term_size(fd: RawFd, size: TermSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize for the duration of the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size a terminal reports (`TIOCGWINSZ`).
pub fn term_size(fd: RawFd) -> io::Result<TermSize> {
    // SAFETY: winsize is plain data; the kernel fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: `ws` is a valid, exclusively borrowed winsize for the call.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Bytes a read from a terminal would return now (`FIONREAD`). In
/// canonical mode, an end-of-file waiting to be read counts as none.
pub fn input_pending(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is a valid, exclusively borrowed int for the kernel to fill.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Puts a pseudo-terminal's master in packet mode (`TIOCPKT`): each read
/// then starts with a status byte, and a change of the slave's modes made
/// while `EXTPROC` is set wakes a reader of the master at once.
pub fn set_packet_mode(master: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid int that outlives the call, which reads it.
    if unsafe { libc::ioctl(master, libc::TIOCPKT, &on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Discards what was written to a terminal and not read yet (`TCIFLUSH`).
pub fn flush_input(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns.
    if unsafe { libc::tcflush(fd, libc::TCIFLUSH) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The modes of a terminal (its `termios`). Set on a pseudo-terminal's
/// master, they apply to the slave.
#[derive(Clone, Copy)]
pub struct TermMode(libc::termios);

impl TermMode {
    /// The modes `fd` is in now.
    pub fn of(fd: RawFd) -> io::Result<TermMode> {
        // SAFETY: termios is plain data; the kernel fills it.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `tio` is a valid, exclusively borrowed termios.
        if unsafe { libc::tcgetattr(fd, &mut tio) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TermMode(tio))
    }

    /// Applies these modes to `fd` at once.
    pub fn apply(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: `self.0` is a valid termios for the duration of the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &self.0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The same modes without any echo of input.
    pub fn without_echo(mut self) -> TermMode {
        self.0.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
        self
    }

    /// The same modes without output post-processing: `\n` stays `\n`.
    pub fn without_output_processing(mut self) -> TermMode {
        self.0.c_oflag &= !libc::OPOST;
        self
    }

    /// The same modes, canonical with external processing (`ICANON |
    /// EXTPROC`) and `VMIN=0, VTIME=0`: input is taken as it arrives, with
    /// no line editing, and an end-of-file character alone in the input
    /// makes a read return 0 (end-of-file) and `select`, `poll` and `epoll`
    /// report the terminal readable. (Non-canonical modes with `VMIN=0`
    /// return 0 from a read too, but never poll readable.)
    pub fn reads_end_of_file(mut self) -> TermMode {
        self.0.c_lflag |= libc::ICANON | libc::EXTPROC;
        self.0.c_cc[libc::VMIN] = 0;
        self.0.c_cc[libc::VTIME] = 0;
        self
    }

    /// Whether these are the same modes as `other` (line speeds aside).
    pub fn same_as(&self, other: &TermMode) -> bool {
        let (a, b) = (&self.0, &other.0);
        (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_line, a.c_cc)
            == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_line, b.c_cc)
    }

    /// How a read takes the input in these modes.
    pub fn input(&self) -> Input {
        let eof = self.0.c_cc[libc::VEOF];
        let (canonical, external) = (
            self.0.c_lflag & libc::ICANON != 0,
            self.0.c_lflag & libc::EXTPROC != 0,
        );
        match (canonical && eof != 0, external) {
            (false, _) => Input::Raw,
            (true, true) => Input::External { eof },
            (true, false) => Input::Canonical { eof },
        }
    }
}

/// How a read takes a terminal's input (`TermMode::input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Canonical with `EXTPROC`: bytes are kept as they arrive, and the
    /// end-of-file character `eof`, when it is all there is, is read as
    /// end-of-file.
    External { eof: u8 },
    /// Canonical: lines, and the end-of-file character `eof` at the start
    /// of one is read as end-of-file.
    Canonical { eof: u8 },
    /// Non-canonical (or no end-of-file character): bytes as they are.
    Raw,
}

/// Bytes an unprivileged user may still write on the file system of `path`
/// (`statvfs(3)`: available blocks times the fragment size).
pub fn available_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and
    // `stat` is a valid, exclusively borrowed `statvfs` for it to fill.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail * stat.f_frsize)
}

/// The bounds of this process's argument and environment areas, the memory
/// the kernel reads for `/proc/PID/cmdline` and `/proc/PID/environ`
/// (fields 48 to 51 of `/proc/self/stat`, Linux 3.5 and later).
fn proc_areas() -> io::Result<[(usize, usize); 2]> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("no command name in /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<usize>().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/self/stat")))
    };
    Ok([(field(48)?, field(49)?), (field(50)?, field(51)?)])
}

/// Overwrites bytes of the argument or environment area (`which`: 0 or 1)
/// chosen by `pick`, which sees the area as NUL-separated entries and
/// returns the ranges to overwrite with `fill`. Returns how many ranges
/// were overwritten.
fn rewrite_area(
    which: usize,
    fill: u8,
    pick: &dyn Fn(&[u8]) -> Vec<std::ops::Range<usize>>,
) -> io::Result<usize> {
    let (start, end) = proc_areas()?[which];
    if start == 0 || end <= start {
        return Ok(0);
    }
    // SAFETY: [start, end) is this process's own argument or environment
    // area, mapped and writable for its whole life (the top of the initial
    // stack, laid out by the kernel at exec). No Rust reference points into
    // it: the standard library keeps only raw pointers there and copies
    // what it reads (`env::args`, `env::var` return owned strings). The
    // caller runs before any other thread of the agent starts, so nothing
    // reads the bytes while they change; they are only overwritten in
    // place, never moved or resized.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let ranges = pick(area);
    for range in &ranges {
        area[range.clone()].fill(fill);
    }
    Ok(ranges.len())
}

/// The NUL-separated entries of an area, with their ranges.
fn entries(area: &[u8]) -> Vec<(std::ops::Range<usize>, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    for entry in area.split(|b| *b == 0) {
        out.push((at..at + entry.len(), entry));
        at += entry.len() + 1;
    }
    out
}

/// Hides the value given after each of `flags` on the command line from
/// `/proc/PID/cmdline` (and so from `ps` and from every process of the same
/// user, jobs included): each byte of the value becomes `x`. Returns the
/// flags whose value was hidden. Must run before the agent starts threads.
pub fn hide_arg_values(flags: &[&str]) -> io::Result<Vec<String>> {
    let found = std::cell::RefCell::new(Vec::new());
    rewrite_area(0, b'x', &|area| {
        let list = entries(area);
        let mut ranges = Vec::new();
        for pair in list.windows(2) {
            let flag = pair[0].1;
            if let Some(name) = flags.iter().find(|f| f.as_bytes() == flag) {
                ranges.push(pair[1].0.clone());
                found.borrow_mut().push(name.to_string());
            }
        }
        ranges
    })?;
    Ok(found.into_inner())
}

/// Removes `name` from the environment and from `/proc/PID/environ`: the
/// value's bytes in the environment area become NUL. Returns the value.
/// Must run before the agent starts threads.
pub fn take_env(name: &str) -> io::Result<Option<String>> {
    let value = std::env::var(name).ok();
    if value.is_none() {
        return Ok(None);
    }
    std::env::remove_var(name);
    let prefix = format!("{name}=");
    rewrite_area(1, 0, &|area| {
        entries(area)
            .into_iter()
            .filter(|(_, entry)| entry.starts_with(prefix.as_bytes()))
            .map(|(range, _)| range.start + prefix.len()..range.end)
            .collect()
    })?;
    Ok(value)
}

/// A moment in the local time zone (`TZ`, else `/etc/localtime`), as the
/// C library sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Seconds east of UTC.
    pub offset_secs: i64,
    /// The zone's abbreviation (`UTC`, `CET`), empty when it has none.
    pub zone: String,
}

/// `localtime_r(3)` of Unix seconds; None when the C library cannot tell.
pub fn local_time(unix_secs: i64) -> Option<LocalTime> {
    // time_t is 64 bits on every target the agent builds for.
    #[allow(clippy::useless_conversion)]
    let t: libc::time_t = unix_secs.try_into().ok()?;
    // localtime_r reads TZ (or /etc/localtime) on its first call, which is
    // all a short-lived `cache` needs.
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct (its
    // `tm_zone` pointer is null until localtime_r sets it).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid, exclusively borrowed values that
    // outlive the call.
    let filled = unsafe { libc::localtime_r(&t, &mut tm) };
    if filled.is_null() {
        return None;
    }
    let zone = if tm.tm_zone.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `tm_zone` set by localtime_r points to a
        // NUL-terminated string in the C library's static zone data.
        unsafe { CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned()
    };
    Some(LocalTime {
        year: i64::from(tm.tm_year) + 1900,
        month: u32::try_from(tm.tm_mon + 1).ok()?,
        day: u32::try_from(tm.tm_mday).ok()?,
        hour: u32::try_from(tm.tm_hour).ok()?,
        minute: u32::try_from(tm.tm_min).ok()?,
        second: u32::try_from(tm.tm_sec).ok()?,
        offset_secs: tm.tm_gmtoff,
        zone,
    })
}

/// Whether the peer of a connected socket has closed it (or shut down its
/// writing side), without reading anything.
pub fn hung_up(fd: RawFd) -> bool {
    let mut fds = [pollfd(fd, libc::POLLRDHUP)];
    poll(&mut fds, Some(Instant::now())).is_ok() && fds[0].revents & (libc::POLLRDHUP | HANGUP) != 0
}

/// Makes the child that `cmd` spawns die (SIGKILL) when the thread that
/// spawns it ends, the agent's death included, so that a transfer never
/// outlives the agent that was waiting for it.
pub fn die_with_spawning_thread(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody
            // would send the signal.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Whether the child `pid` of this process has exited, without reaping
/// it: its owner still waits for it, and until then its pid (and process
/// group id) cannot be reused.
pub fn has_exited(pid: u32) -> bool {
    // SAFETY: an all-zero `siginfo_t` is a valid value of this plain C
    // struct, for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, exclusively borrowed `siginfo_t`; WNOWAIT
    // leaves the child as it is.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (si_pid stays 0 when nothing exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// Who a job's processes run as under `--job-user` (README, "What a job
/// can read"): a user id, its group, and its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A user of this host as the user database has it.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks `name` up in the user database (`getpwnam_r`): `Ok(None)` when
/// there is no such user.
pub fn user_by_name(name: &str) -> io::Result<Option<UserEntry>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf`'s length is
    // passed with it; the strings `entry` points at live in `buf`, which
    // outlives their use below.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Ok(None);
    }
    // SAFETY: on success the fields point at NUL-terminated strings in `buf`.
    let (name, home) = unsafe {
        (
            CStr::from_ptr(entry.pw_name).to_string_lossy().into_owned(),
            PathBuf::from(OsStr::from_bytes(CStr::from_ptr(entry.pw_dir).to_bytes())),
        )
    };
    Ok(Some(UserEntry {
        name,
        uid: entry.pw_uid,
        gid: entry.pw_gid,
        home,
    }))
}

/// The supplementary groups of a user (`getgrouplist`), its own group first.
pub fn groups_of(name: &str, gid: u32) -> io::Result<Vec<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
    let mut n: libc::c_int = 64;
    for _ in 0..4 {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` ids, and `n` says so.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return Ok(groups);
        }
        n = n.max(asked * 2);
    }
    Err(io::Error::other("too many groups"))
}

/// Makes the child take `creds` after everything else `pre_exec` does
/// (registered last): supplementary groups, group, then user, so that the
/// program runs with none of the agent's privileges.
pub fn spawn_as(cmd: &mut Command, creds: &Credentials) {
    let creds = creds.clone();
    // SAFETY: only async-signal-safe calls between fork and exec; the
    // vector was allocated before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) < 0
                || libc::setgid(creds.gid) < 0
                || libc::setuid(creds.uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// While it lives, the calling thread (and only it) opens, creates and
/// removes files with the file-system identity of `creds` and without the
/// agent's power to override permissions: a path a job controls (its home,
/// a symlink it planted) then leads nowhere its own user could not go, and
/// what is created belongs to that user. Linux keeps the file-system ids
/// and the supplementary groups per thread when they are set by the raw
/// system calls (the C library's wrappers would change every thread).
pub struct ActingAs {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl ActingAs {
    pub fn enter(creds: &Credentials) -> io::Result<ActingAs> {
        // SAFETY: getgroups with a zero size only counts.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: `groups` has room for `n` ids.
        let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        groups.truncate(n as usize);
        let saved = ActingAs {
            // SAFETY: no preconditions; they only read the ids.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            groups,
        };
        // SAFETY: raw system calls on this thread's credentials; the
        // pointer and length describe `creds.groups`.
        let ok = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                creds.groups.len(),
                creds.groups.as_ptr(),
            ) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above. setfsuid/setfsgid return the previous id and
        // cannot report failure, so the change is read back.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, creds.gid);
            libc::syscall(libc::SYS_setfsuid, creds.uid);
            let uid_now = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
            let gid_now = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
            if uid_now != creds.uid || gid_now != creds.gid {
                drop(saved);
                return Err(io::Error::other(
                    "cannot take the job user's file-system identity",
                ));
            }
        }
        Ok(saved)
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        // SAFETY: raw system calls restoring this thread's own credentials.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.uid);
            libc::syscall(libc::SYS_setfsgid, self.gid);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// `fchown(2)` on an open descriptor: never follows a path.
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown on a descriptor the caller holds open.
    if unsafe { libc::fchown(fd, uid, gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
