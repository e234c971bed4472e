//! Command-line arguments (argh structs only; validation lives in config.rs).

use argh::FromArgs;
use std::path::PathBuf;

/// A CI job runner that speaks the Semaphore 2.0 agent API.
#[derive(FromArgs, Debug)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Sub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Sub {
    Version(VersionArgs),
    Run(RunArgs),
}

/// Print the agent's version.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {}

/// Run one job from a YAML or JSON job file and show it live.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// print the raw event log lines instead of the readable rendering
    #[argh(switch)]
    pub json: bool,
    /// where job logs and per-job working files live
    /// (default: $AGENT_DATA_DIR, else ~/.local/state/agent)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// seconds between SIGTERM and SIGKILL when the job is stopped (default 10)
    #[argh(option, default = "10")]
    pub stop_grace_period: u64,
    /// attempts per callback when the job file has callback URLs (default 60)
    #[argh(option, default = "60")]
    pub callback_retry_attempts: u32,
    /// the job file (YAML or JSON, PROTOCOL §3)
    #[argh(positional)]
    pub job_file: PathBuf,
}
