//! Why the work of a cache request stops before it is done: the job's
//! teardown, or the client that asked has gone. The service makes one
//! `Cancel` per request; the backends look at it wherever they wait (an
//! `sftp` run, the store lock), so that nothing a job does, to its socket
//! or through a slow server, holds the agent past the job's end, and no
//! work goes on for a client that has left.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::process::sys;

pub struct Cancel {
    /// Set when the job's cache goes (its teardown).
    teardown: Arc<AtomicBool>,
    /// The request's connection: a client that closed it is gone.
    client: Option<UnixStream>,
}

impl Cancel {
    pub fn new(teardown: Arc<AtomicBool>, client: Option<UnixStream>) -> Cancel {
        Cancel { teardown, client }
    }

    pub fn is_set(&self) -> bool {
        self.teardown.load(Ordering::SeqCst)
            || self
                .client
                .as_ref()
                .is_some_and(|c| sys::hung_up(c.as_raw_fd()))
    }
}
