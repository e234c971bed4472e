//! The steps of a job as the event log shows them: the names of the agent's
//! own steps, and `Steps`, which writes `cmd_started`, `cmd_output` and
//! `cmd_finished` for a synthetic step or for a command run in the session.

use std::sync::Arc;

use crate::job::eventlog::{now_secs, Event, EventLog};
use crate::job::request::Command;
use crate::job::spec::JobSpec;
use crate::process::session::{Outcome, Session};

pub const STEP_EXPORT_ENV: &str = "Exporting environment variables";
pub const STEP_INJECT_FILES: &str = "Injecting Files";
pub const STEP_CHECK_RESULT: &str = "Checking job result";
pub const STEP_PRE_JOB_HOOK: &str = "Running the pre-job hook configured in the agent";
pub const STEP_POST_JOB_HOOK: &str = "Running the post-job hook configured in the agent";

/// How starting the executor went.
pub(crate) enum Started {
    Ready(Box<Session>),
    Failed,
    Stopped,
}

/// How a command in the session ended.
pub(crate) enum Step {
    Done(i32),
    Stopped,
}

/// Writes the events of the job's steps to its log.
pub(crate) struct Steps<'a, 'b> {
    log: &'a mut EventLog,
    pub(crate) spec: &'a JobSpec<'b>,
}

impl<'a, 'b> Steps<'a, 'b> {
    pub(crate) fn new(log: &'a mut EventLog, spec: &'a JobSpec<'b>) -> Self {
        Steps { log, spec }
    }

    /// Masks `secrets` from now on in the output of commands and in the
    /// directives of steps (§13.3).
    pub(crate) fn set_secrets(&mut self, session: &mut Session, mut secrets: Vec<Vec<u8>>) {
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let secrets = Arc::new(secrets);
        session.set_secrets(Arc::clone(&secrets));
        self.log.set_secrets(secrets);
    }

    /// Whether the log could not be written: the job stops its commands
    /// and ends `failed` (§6.8).
    pub(crate) fn log_broken(&self) -> bool {
        self.log.is_broken()
    }

    /// What the agent knows that the log must not say (`EventLog::remark`),
    /// also put in the agent log.
    pub(crate) fn remark(&mut self, text: &str) {
        log::warn!("job {}: {}", self.spec.request.job_id, text.trim());
        self.log.remark(text);
    }

    pub(crate) fn output(&mut self, text: &str) {
        self.log.write(&Event::CmdOutput {
            timestamp: now_secs(),
            output: text,
        });
    }

    pub(crate) fn started(&mut self, directive: &str) -> u64 {
        let now = now_secs();
        self.log.write(&Event::CmdStarted {
            timestamp: now,
            directive,
        });
        now
    }

    pub(crate) fn finished(&mut self, directive: &str, exit_code: i32, started_at: u64) {
        let now = now_secs();
        self.log.write(&Event::CmdFinished {
            timestamp: now,
            directive,
            exit_code,
            started_at,
            finished_at: now,
        });
    }

    /// A step the agent performs itself, logged like a command.
    pub(crate) fn synthetic(
        &mut self,
        directive: &str,
        started_at: u64,
        lines: &[&str],
        exit_code: i32,
    ) {
        self.log.write(&Event::CmdStarted {
            timestamp: started_at,
            directive,
        });
        for line in lines {
            self.output(line);
        }
        self.finished(directive, exit_code, started_at);
    }

    /// Step 7 (and the epilogues): one command in the session.
    pub(crate) fn command(&mut self, session: &mut Session, command: &Command) -> Step {
        self.command_with_preamble(session, command, None)
    }

    pub(crate) fn command_with_preamble(
        &mut self,
        session: &mut Session,
        command: &Command,
        preamble: Option<&str>,
    ) -> Step {
        if self.spec.stop.is_requested() {
            return Step::Stopped;
        }
        let directive = if command.alias.is_empty() {
            &command.directive
        } else {
            &command.alias
        };
        let started_at = self.started(directive);
        if !command.alias.is_empty() {
            let shown = self.log.masked(&command.directive);
            self.output(&format!("Running: {shown}\n"));
        }
        if let Some(line) = preamble {
            self.output(line);
        }
        let log = &mut *self.log;
        let outcome = session.run(&command.directive, &mut |chunk| {
            log.write(&Event::CmdOutput {
                timestamp: now_secs(),
                output: &chunk,
            })
        });
        let status = outcome.exit_code();
        let step = if outcome == Outcome::Stopped {
            Step::Stopped
        } else {
            Step::Done(status)
        };
        self.finished(directive, status, started_at);
        step
    }
}
