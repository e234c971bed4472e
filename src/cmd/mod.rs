//! The subcommands: `agent run` (one job from a file, shown live) and
//! `agent serve` (the HTTPS API), `agent token` (a JWT for curl). Each builds what it needs from the parsed
//! arguments and returns a typed error; `main` prints it.

pub mod display;
pub mod run;
pub mod serve;
pub mod token;
