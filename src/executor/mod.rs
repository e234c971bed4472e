//! Executors: where a job's session runs. The shell executor runs bash on
//! this host; the compose executor runs it in the main container of a
//! docker compose project. The SSH jump point leads into either.

pub mod compose;
pub mod jumppoint;
