//! The `agent` binary: parses arguments, sets up logging, runs the command,
//! and is the only place that turns an error into a message and an exit code.
#![deny(unsafe_code)]

mod api;
mod cli;
mod cmd;
mod config;
mod error;
mod executor;
mod http;
mod job;
mod logging;
mod metrics;
mod process;
mod util;
mod version;

use std::process::ExitCode;

/// Exit code of `agent run` when the job could not run at all.
const EXIT_AGENT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = parse_args();
    match cli.command {
        cli::Sub::Version(_) => {
            println!("{}", version::long());
            ExitCode::SUCCESS
        }
        cli::Sub::Token(args) => match cmd::token::token(args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        cli::Sub::Serve(args) => match cmd::serve::serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        cli::Sub::Run(args) => match cmd::run::run(args) {
            Ok(result) => ExitCode::from(cmd::run::exit_code(result)),
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &error::Error) -> ExitCode {
    logging::fatal(&e.to_string());
    ExitCode::from(EXIT_AGENT_ERROR)
}

/// argh, with `start` accepted as another name for `serve` (§13.1).
fn parse_args() -> cli::Cli {
    let args: Vec<String> = std::env::args().collect();
    let program = args.first().map(String::as_str).unwrap_or("agent");
    let mut rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if rest.first() == Some(&"start") {
        rest[0] = "serve";
    }
    let name = std::path::Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("agent");
    match <cli::Cli as argh::FromArgs>::from_args(&[name], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            let failed = early.status.is_err();
            if failed {
                eprintln!("{}", early.output);
            } else {
                println!("{}", early.output);
            }
            std::process::exit(if failed {
                i32::from(EXIT_AGENT_ERROR)
            } else {
                0
            });
        }
    }
}
