//! Jobs: the request and its validation, the lifecycle of one job over an
//! executor, the event log, callbacks, the log upload, the job directory and
//! the runner pool that runs several jobs at once.

pub mod account;
pub mod artifact;
pub mod callbacks;
pub mod env;
pub mod eventlog;
pub mod files;
pub mod job_id;
pub mod json_text;
pub mod lifecycle;
pub mod logfiles;
pub mod logtrim;
pub mod recovery;
pub mod reopen;
pub mod request;
pub mod retention;
pub mod runner;
pub mod spec;
pub mod steps;
pub mod stop;
pub mod workspace;
