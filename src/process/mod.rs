//! Processes of the agent and of its jobs: the persistent bash session on a
//! pseudo-terminal, the job's subreaper it runs under, host commands,
//! finding and killing every process of a job, the chunking of terminal
//! output, and the raw OS calls they need (`sys`, the only module with
//! `unsafe`).

pub mod hostcmd;
pub mod output;
pub mod procs;
pub mod reaper;
pub mod session;
pub mod sys;
pub mod terminal;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A process's status as a shell reports it: the exit code, or 128 plus the
/// signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
