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
    /// Why the job was stopped: a line for the log of the command it
    /// interrupts. The first stop's reason is kept.
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
    /// Stops the job; `reason` says who or what stopped it, as a sentence
    /// for the job's log ("The job was stopped by ..."). Returns whether
    /// this was the first stop (later ones change nothing).
    pub fn stop(&self, reason: &str) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| reason.to_string());
        let first = !self.requested.swap(true, Ordering::SeqCst);
        let _ = self.tx.try_send(());
        first
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

    /// The reason the first stop gave, once the job was asked to stop.
    pub fn reason(&self) -> Option<String> {
        self.handle
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
