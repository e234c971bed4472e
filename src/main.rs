//! The `agent` binary: parses arguments, sets up logging, runs the command,
//! and is the only place that turns an error into a message and an exit code.

mod callbacks;
mod cli;
mod config;
mod display;
mod error;
mod eventlog;
mod job;
mod output;
mod procs;
mod request;
mod run;
mod shell;
mod version;
mod workspace;

use std::process::ExitCode;

use eventlog::JobResult;

/// Exit code of `agent run` when the job could not run at all.
const EXIT_AGENT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli: cli::Cli = argh::from_env();
    init_logging();
    match cli.command {
        cli::Sub::Version(_) => {
            println!("{}", version::long());
            ExitCode::SUCCESS
        }
        cli::Sub::Run(args) => match run::run(args) {
            Ok(JobResult::Passed) => ExitCode::SUCCESS,
            Ok(JobResult::Failed) => ExitCode::from(1),
            Ok(JobResult::Stopped) => ExitCode::from(3),
            Err(e) => {
                eprintln!("agent: {e}");
                ExitCode::from(EXIT_AGENT_ERROR)
            }
        },
    }
}

fn init_logging() {
    let level = std::env::var("SEMAPHORE_AGENT_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    env_logger::Builder::new()
        .parse_filters(&level)
        .format_timestamp_millis()
        .init();
}
