//! Commands the agent runs on the host for a job (compose pulls, registry
//! logins, host setup commands): stdout and stderr merged in one pipe, read
//! on a thread of its own and handed on line by line, with a stop that kills
//! the command and everything it started. Their output never crosses a
//! terminal, so it is handed on byte-exact, `\r\n` included (docs/protocol.md
//! §6.2); only bytes that are not UTF-8 change.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crossbeam_channel::{bounded, select_biased, Receiver};

use crate::process::exit_code;
use crate::process::output::decode;
use crate::process::procs::{JobProcesses, MARK_VAR};
use crate::process::sys;

#[derive(Debug)]
pub enum HostOutcome {
    Exited(i32),
    Stopped,
    SpawnFailed(std::io::Error),
}

enum Msg {
    Line(String),
    Eof,
}

/// Runs `cmd`, calling `on_line` with each line of its merged output as it
/// was printed, its `\n` or `\r\n` included (a last line without one too).
pub fn run_lines(
    mut cmd: Command,
    mark: &str,
    stop: &Receiver<()>,
    grace: Duration,
    on_line: &mut dyn FnMut(&str),
) -> HostOutcome {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    cmd.stdout(writer)
        .stderr(writer2)
        .env(MARK_VAR, mark)
        .process_group(0);
    let child = cmd.spawn();
    // Our copies of the pipe's write end must go, or the reader never ends.
    drop(cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    let (tx, rx) = bounded::<Msg>(64);
    let reader_thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Msg::Line(decode(&line))).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    });
    loop {
        select_biased! {
            recv(stop) -> _ => {
                let procs = JobProcesses::new(-1, mark);
                sys::kill(-(child.id() as i32), sys::SIGTERM);
                procs.kill_all(grace);
                sys::kill(-(child.id() as i32), sys::SIGKILL);
                let _ = child.wait();
                drop(rx);
                let _ = reader_thread.join();
                return HostOutcome::Stopped;
            }
            recv(rx) -> msg => match msg {
                Ok(Msg::Line(line)) => on_line(&line),
                Ok(Msg::Eof) | Err(_) => break,
            }
        }
    }
    let _ = reader_thread.join();
    match child.wait() {
        Ok(status) => HostOutcome::Exited(exit_code(status)),
        Err(e) => HostOutcome::SpawnFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_merged_byte_exact_and_the_last_partial_line_kept() {
        let (_tx, stop) = bounded::<()>(1);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("echo one; echo two >&2; printf 'three\\r\\nfour'; exit 3");
        let mut lines = Vec::new();
        let outcome = run_lines(
            cmd,
            "hostcmd-test",
            &stop,
            Duration::from_secs(1),
            &mut |l| lines.push(l.to_string()),
        );
        assert!(matches!(outcome, HostOutcome::Exited(3)), "{outcome:?}");
        assert_eq!(lines, ["one\n", "two\n", "three\r\n", "four"]);
    }

    #[test]
    fn a_stop_kills_the_command() {
        let (tx, stop) = bounded::<()>(1);
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg("echo started; sleep 1000");
        let mut first = true;
        let outcome = run_lines(
            cmd,
            "hostcmd-stop-test",
            &stop,
            Duration::from_secs(1),
            &mut |_| {
                if first {
                    tx.send(()).unwrap();
                    first = false;
                }
            },
        );
        assert!(matches!(outcome, HostOutcome::Stopped), "{outcome:?}");
    }
}
