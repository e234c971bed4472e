//! The job cache: `cache store KEY PATH`, `cache restore KEY,...` and the
//! other commands of the toolbox's cache CLI, built into the agent.
//!
//! The agent on the host owns the backend (a local directory, or an SFTP
//! server reached with OpenSSH's `sftp` and the agent's key). Each job gets a
//! Unix socket in its work directory, served by `service.rs` (requests by
//! `handler.rs`); the `cache` program inside the job (this binary under
//! that name, `cli.rs`) packs and unpacks archives itself (`archive/`, tar
//! and zstd in-process, so the job's image needs no tool) and moves them
//! over the socket (`protocol.rs`). The job never sees the backend's
//! credentials or files.
//!
//! This module knows nothing of job lifecycles: the job's lifecycle starts
//! a service per job through `host` (the cache's host side: the agent's
//! cache, a job's service and the script that puts the program on the
//! session's PATH).

pub mod archive;
pub mod args;
pub mod autodetect;
pub mod aws;
pub mod backend;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod format;
pub mod handler;
pub mod host;
pub mod keys;
pub mod output;
pub mod protocol;
pub mod service;
pub mod transfer;

/// The environment variable that tells `cache` where the job's socket is.
pub const SOCKET_ENV: &str = "AGENT_CACHE_SOCKET";
/// The socket's name in the job's work directory.
pub const SOCKET_NAME: &str = "cache.sock";
