//! The one integration test binary of the agent (`autotests = false`): every
//! test module is listed here and shares `support`, which runs the real
//! `agent` binary and checks what every run must satisfy.

mod cache;
mod cache_archives;
mod cache_hostile;
mod cache_leftovers;
mod cache_s3;
mod cache_sftp;
mod cache_stops;
mod cache_toolbox;
mod checkout;
mod cli;
mod compose;
mod crash;
mod credentials;
mod curl;
mod disk;
mod hostile;
mod imports;
mod install;
mod isolation;
mod job_file;
mod job_user;
mod latency;
mod listen;
mod listen_compose;
mod listen_config;
mod listen_crash;
mod listen_faults;
mod local_control_plane;
mod retention;
mod run;
mod secrets;
mod serve;
mod skips;
mod ssh;
mod stops;
mod stubborn;
mod support;
mod terminal;
mod validation;
