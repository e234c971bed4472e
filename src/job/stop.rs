//! Stopping a job from another thread: a `StopHandle` for whoever asks (the
//! API, a signal handler, the time limit) and a `StopSignal` for the job,
//! whose channel wakes every wait of the session at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

/// Asks a running job to stop, from any thread. Cheap to clone.
#[derive(Clone)]
pub struct StopHandle {
    requested: Arc<AtomicBool>,
    /// Why, when the agent itself stopped the job (the time limit).
    reason: Arc<Mutex<Option<String>>>,
    tx: Sender<()>,
}

/// The job's side of a `StopHandle`.
#[derive(Clone)]
pub struct StopSignal {
    handle: StopHandle,
    pub(crate) rx: Receiver<()>,
}

pub fn stop_pair() -> (StopHandle, StopSignal) {
    // One slot: further stops coalesce with the first.
    let (tx, rx) = bounded(1);
    let handle = StopHandle {
        requested: Arc::new(AtomicBool::new(false)),
        reason: Arc::default(),
        tx,
    };
    (handle.clone(), StopSignal { handle, rx })
}

impl StopHandle {
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(());
    }

    /// A stop with a line for the log of the command it interrupts.
    pub fn stop_because(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.stop();
    }
}

impl StopSignal {
    /// A handle that stops the job this signal belongs to.
    pub fn handle(&self) -> StopHandle {
        self.handle.clone()
    }

    pub fn is_requested(&self) -> bool {
        self.handle.requested.load(Ordering::SeqCst)
    }

    /// The reason given with `stop_because`, if any.
    pub fn reason(&self) -> Option<String> {
        self.handle
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
