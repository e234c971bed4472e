//! Processes of the agent and of its jobs: the persistent bash session on a
//! pseudo-terminal, host commands, finding and killing every process of a
//! job, the chunking of terminal output, and the raw OS calls they need
//! (`sys`, the only module with `unsafe`).

pub mod hostcmd;
pub mod output;
pub mod procs;
pub mod session;
pub mod sys;
