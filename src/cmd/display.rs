//! The readable rendering of a job for a person at a terminal (`agent run`):
//! a header per command, its output as printed, its exit code and duration,
//! and a result line. Colors only when stdout is a terminal.

use std::io::Write;
use std::time::Instant;

use crate::job::eventlog::Event;

pub struct Display {
    color: bool,
    job_started: Instant,
    cmd_started: Instant,
    /// Whether the last byte printed was a newline (or nothing was printed).
    at_line_start: bool,
    out: std::io::Stdout,
}

impl Display {
    pub fn new(color: bool) -> Display {
        Display {
            color,
            job_started: Instant::now(),
            cmd_started: Instant::now(),
            at_line_start: true,
            out: std::io::stdout(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn show(&mut self, event: &Event<'_>) {
        let text = match event {
            Event::JobStarted { .. } => {
                self.job_started = Instant::now();
                return;
            }
            Event::CmdStarted { directive, .. } => {
                self.cmd_started = Instant::now();
                let header = format!("$ {}", directive.trim_end());
                format!("{}\n", self.paint("1;36", &header))
            }
            Event::CmdOutput { output, .. } => output.to_string(),
            Event::CmdFinished { exit_code, .. } => {
                let secs = self.cmd_started.elapsed().as_secs_f64();
                let code = if *exit_code == 0 { "2;32" } else { "1;31" };
                let line = self.paint(code, &format!("exit {exit_code} in {secs:.2}s"));
                let sep = if self.at_line_start { "" } else { "\n" };
                format!("{sep}{line}\n\n")
            }
            Event::JobFinished { result, .. } => {
                let secs = self.job_started.elapsed().as_secs_f64();
                let code = match *result {
                    "passed" => "1;32",
                    "failed" => "1;31",
                    _ => "1;33",
                };
                format!(
                    "{}\n",
                    self.paint(code, &format!("Job {result} in {secs:.2}s"))
                )
            }
        };
        self.print(&text);
    }

    /// A remark of the agent (`EventLog::remark`), on lines of its own.
    pub fn remark(&mut self, text: &str) {
        let sep = if self.at_line_start { "" } else { "\n" };
        let body = format!("agent: {}", text.trim_end());
        let text = format!("{sep}{}\n", self.paint("1;33", &body));
        self.print(&text);
    }

    fn print(&mut self, text: &str) {
        if let Some(last) = text.as_bytes().last() {
            self.at_line_start = *last == b'\n';
        }
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}
