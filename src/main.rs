//! The `agent` binary: parses arguments, sets up logging, runs the command,
//! and is the only place that turns an error into a message and an exit code.
#![deny(unsafe_code)]

mod api;
mod cache;
mod checkout;
mod cli;
mod cmd;
mod config;
mod dockergate;
mod error;
mod executor;
mod http;
mod job;
mod listen;
mod logging;
mod metrics;
mod process;
mod usage;
mod util;
mod version;

use std::process::ExitCode;

/// Exit code of `agent run` when the job could not run at all.
const EXIT_AGENT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // The job's `cache` program is this binary under another name.
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str());
    // Hidden: how a session without `stty` turns echo off (docs/protocol.md §4).
    if called == Some(process::session::ECHO_OFF_NAME) {
        return process::session::echo_off_main();
    }
    // Hidden: the job's subreaper, which starts its session (docs/protocol.md §4).
    if called == Some(process::reaper::REAPER_NAME) {
        return process::reaper::main(&args[1..]);
    }
    if called == Some("cache") {
        return cache::cli::main(&args[1..]);
    }
    if args.get(1).map(String::as_str) == Some("cache") {
        return cache::cli::main(&args[2..]);
    }
    let cli = parse_args();
    if cli.version {
        println!("{}", version::long());
        return ExitCode::SUCCESS;
    }
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
        cli::Sub::Start(args) => match listen::run(&args) {
            Ok(reason) => ExitCode::from(reason.exit_code()),
            Err(e) => fail(&e),
        },
        cli::Sub::Run(args) => match cmd::run::run(args) {
            Ok(result) => ExitCode::from(cmd::run::exit_code(result)),
            Err(e) => fail(&e),
        },
    }
}

/// A secret given on the command line is readable by every process of the
/// host (`ps`, `/proc/PID/cmdline`), the agent's own jobs included: its
/// value is overwritten there, and the user is told to use a file or the
/// environment instead.
fn hide_secret_flags() {
    match process::sys::hide_arg_values(cli::SECRET_FLAGS) {
        Ok(found) => {
            for flag in found {
                let instead = if flag == "--token" {
                    "--token-file, token-file in the config file, or $SEMAPHORE_AGENT_TOKEN"
                } else {
                    "--auth-token-secret-file or $AGENT_AUTH_TOKEN_SECRET"
                };
                eprintln!(
                    "agent: warning: {flag} on the command line can be read by every process of this host; \
                     it was hidden from this process's command line, but give it with {instead}"
                );
            }
        }
        Err(e) => eprintln!("agent: warning: cannot hide secret flags from /proc: {e}"),
    }
}

fn fail(e: &error::Error) -> ExitCode {
    logging::fatal(&e.to_string());
    ExitCode::from(EXIT_AGENT_ERROR)
}

/// What `agent` accepts in front of its arguments, `start` included (§13.1).
const COMMANDS: [&str; 5] = ["run", "serve", "start", "token", "version"];

/// argh, plus what it does not do itself: `--version`/`-V`, `start` as
/// another name for `serve` unless it is given a flag of listen mode, a
/// hint after an unknown command, and messages without a trailing blank
/// line.
fn parse_args() -> cli::Cli {
    let args: Vec<String> = std::env::args().collect();
    let mut rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match rest.first().copied() {
        Some("--version" | "-V") => {
            println!("{}", version::long());
            std::process::exit(0);
        }
        None => {
            eprintln!("{}", top_level_help());
            std::process::exit(i32::from(EXIT_AGENT_ERROR));
        }
        Some("start") if !listen::wants_listen_mode(&rest[1..]) => rest[0] = "serve",
        Some(word) if !word.starts_with('-') && word != "help" && !COMMANDS.contains(&word) => {
            let hint = match usage::closest(word, &COMMANDS) {
                Some(near) => format!(" (did you mean '{near}'?)"),
                None => String::new(),
            };
            eprintln!(
                "agent: unknown command '{word}'{hint}; the commands are {}; `agent --help` says more",
                COMMANDS.join(", ")
            );
            std::process::exit(i32::from(EXIT_AGENT_ERROR));
        }
        _ => {}
    }
    match <cli::Cli as argh::FromArgs>::from_args(&["agent"], &rest) {
        Ok(cli) => {
            hide_secret_flags();
            cli.without_empty_paths().take_env_credentials()
        }
        Err(early) => {
            let output = usage::list_start(early.output.trim_end());
            if early.status.is_ok() {
                println!("{output}");
                std::process::exit(0);
            }
            let command = match rest.first() {
                Some(word) if COMMANDS.contains(word) => format!("agent {word}"),
                _ => "agent".to_string(),
            };
            eprintln!("{output}\nTry `{command} --help`.");
            std::process::exit(i32::from(EXIT_AGENT_ERROR));
        }
    }
}

/// `agent --help`, as argh writes it, with `start` listed.
fn top_level_help() -> String {
    match <cli::Cli as argh::FromArgs>::from_args(&["agent"], &["--help"]) {
        Ok(_) => String::new(),
        Err(early) => usage::list_start(early.output.trim_end()),
    }
}
