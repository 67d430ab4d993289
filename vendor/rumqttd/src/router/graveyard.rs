use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::{
    scheduler::{PauseReason, Tracker},
    ConnectionEvents,
};

pub struct Graveyard {
    connections: HashMap<String, SavedState>,
    /// WARMHOUSE PATCH (17): when saved sessions expire, soonest first.
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
    /// WARMHOUSE PATCH (20): subscriptions of the sessions dropped here
    /// (expired or replaced), for the router to release their filters.
    released: Vec<String>,
}

impl Graveyard {
    pub fn new() -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
            expiries: BinaryHeap::new(),
            released: Vec::new(),
        }
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let saved = self.connections.remove(id)?;
        // WARMHOUSE PATCH (17): an expired session is gone.
        let expired = saved.expires_at.is_some_and(|at| at <= Instant::now());
        if expired {
            self.release(saved);
            return None;
        }
        Some(saved)
    }

    /// WARMHOUSE PATCH (20): the saved state of `id`, left in place.
    pub fn get(&self, id: &str) -> Option<&SavedState> {
        self.connections.get(id)
    }

    /// WARMHOUSE PATCH (20): subscriptions of the sessions dropped since
    /// the last call; their filters have one user fewer.
    pub fn take_released(&mut self) -> Vec<String> {
        std::mem::take(&mut self.released)
    }

    fn release(&mut self, saved: SavedState) {
        if let Some(session) = saved.session_state {
            self.released.extend(session.subscriptions);
        }
    }

    /// WARMHOUSE PATCH (17): drops the sessions whose Session Expiry
    /// Interval has passed since their client left.
    pub fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.expiries.pop() else {
                break;
            };
            // Only if it was not retrieved (and saved again) since.
            if self.connections.get(&id).is_some_and(|s| s.expires_at == Some(at)) {
                if let Some(saved) = self.connections.remove(&id) {
                    self.release(saved);
                }
            }
        }
    }


    /// Save connection tracker
    pub fn save_state(
        &mut self,
        mut tracker: Tracker,
        subscriptions: HashSet<String>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
        // WARMHOUSE PATCH (17): when the session expires (None: never).
        expires_at: Option<Instant>,
    ) {
        tracker.pause(PauseReason::Busy);
        let id = tracker.id.clone();

        let session_state = SessionState {
            tracker,
            subscriptions,
            unacked_pubrels,
        };

        if let Some(at) = expires_at {
            self.expiries.push(Reverse((at, id.clone())));
        }
        let replaced = self.connections.insert(
            id,
            SavedState {
                session_state: Some(session_state),
                metrics,
                expires_at,
            },
        );
        // WARMHOUSE PATCH (20)
        if let Some(saved) = replaced {
            self.release(saved);
        }
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// WARMHOUSE PATCH (17)
    pub expires_at: Option<Instant>,
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
}
