//! Large request bodies take turns. A job request is parsed from the body as
//! it streams in, so its memory is about the size of what it holds; several
//! large ones at once would still add up. [`BodyTurns`] lets bodies of at
//! least [`LARGE_BODY_BYTES`] be read only while the bytes of those in
//! progress stay within a budget (one maximal body always fits), makes the
//! others wait, unread, for a bounded time, and gives the freed memory back
//! to the kernel when a large body is done. Small bodies never wait.
//!
//! Waiting happens before the body is read, so before the `100 Continue`
//! that releases it at the front (docs/protocol.md §2.1): a waiting body
//! costs a worker thread, not memory.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::process::sys;

/// Bodies this large or larger take turns.
pub const LARGE_BODY_BYTES: u64 = 1024 * 1024;

/// Why a body may not be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// As many large bodies already wait as may.
    TooManyWaiting,
    /// The body waited its whole allowance.
    Timeout,
}

pub struct BodyTurns {
    budget: u64,
    max_waiting: usize,
    max_wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    in_use: u64,
    waiting: usize,
}

/// The right to read one body; dropping it frees its share of the budget.
pub struct Turn<'a> {
    turns: &'a BodyTurns,
    bytes: u64,
}

impl BodyTurns {
    /// `budget`: bytes of large bodies read at once; `max_waiting`: large
    /// bodies that may wait at once (the others are refused at once);
    /// `max_wait`: how long one may wait.
    pub fn new(budget: u64, max_waiting: usize, max_wait: Duration) -> BodyTurns {
        BodyTurns {
            budget,
            max_waiting,
            max_wait,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a body of `len` bytes may be read.
    pub fn take(&self, len: u64) -> Result<Turn<'_>, Busy> {
        if len < LARGE_BODY_BYTES {
            return Ok(Turn {
                turns: self,
                bytes: 0,
            });
        }
        let bytes = len.min(self.budget);
        let mut state = self.lock();
        let fits = |state: &State| state.in_use == 0 || state.in_use + bytes <= self.budget;
        if !fits(&state) {
            if state.waiting >= self.max_waiting {
                return Err(Busy::TooManyWaiting);
            }
            state.waiting += 1;
            let give_up = Instant::now() + self.max_wait;
            while !fits(&state) {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    state.waiting -= 1;
                    return Err(Busy::Timeout);
                }
                state = self
                    .freed
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.waiting -= 1;
        }
        state.in_use += bytes;
        Ok(Turn { turns: self, bytes })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.turns.lock();
        state.in_use -= self.bytes;
        let idle = state.in_use == 0;
        drop(state);
        self.turns.freed.notify_all();
        // The parsed request was many small strings, which malloc keeps
        // for reuse; with no large body in progress, hand them back.
        if idle {
            sys::release_free_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_take_turns_and_small_ones_never_wait() {
        let turns = BodyTurns::new(8 << 20, 1, Duration::from_millis(50));
        let first = turns.take(8 << 20).unwrap();
        assert!(turns.take(100).is_ok());
        // A second large one waits, and gives up at its deadline.
        let started = Instant::now();
        assert_eq!(turns.take(2 << 20).err(), Some(Busy::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(first);
        let a = turns.take(4 << 20).unwrap();
        let b = turns.take(4 << 20).unwrap();
        drop((a, b));
        // Larger than the budget: it waits for the others, then runs alone.
        assert!(turns.take(64 << 20).is_ok());
    }

    #[test]
    fn a_waiting_body_runs_when_room_is_made() {
        let turns = BodyTurns::new(8 << 20, 1, Duration::from_secs(10));
        let first = turns.take(8 << 20).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| turns.take(8 << 20).map(|_| ()));
            while turns.lock().waiting == 0 {
                std::thread::yield_now();
            }
            assert_eq!(turns.take(8 << 20).err(), Some(Busy::TooManyWaiting));
            drop(first);
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
    }
}
