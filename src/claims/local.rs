//! What this host last wrote or read of its own claims, for the bus (Volume1's ClaimHolder,
//! ClaimEpoch and Migration) and for the migration windows it runs. Never used for a
//! decision: every decision reads the server.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::record::Claim;

pub struct Local {
    held: Mutex<HashMap<String, Claim>>,
    windows: Mutex<HashSet<String>>,
    changes: broadcast::Sender<String>,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            held: Mutex::default(),
            windows: Mutex::default(),
            changes: broadcast::channel(256).0,
        }
    }
}

impl Local {
    /// `volume_id`'s claim as last seen, or None once this host holds no part of it.
    pub fn set(&self, volume_id: &str, claim: Option<Claim>) {
        let changed = {
            let mut held = self.held.lock().unwrap();
            let before = held.get(volume_id).cloned();
            match &claim {
                Some(c) => held.insert(volume_id.to_string(), c.clone()),
                None => held.remove(volume_id),
            };
            before != claim
        };
        if changed {
            // No subscriber is fine.
            let _ = self.changes.send(volume_id.to_string());
        }
    }

    pub fn get(&self, volume_id: &str) -> Option<Claim> {
        self.held.lock().unwrap().get(volume_id).cloned()
    }

    /// Volume ids whose claim changed.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Marks a migration window open; false if one is open already for `volume_id`.
    pub fn open_window(&self, volume_id: &str) -> bool {
        self.windows.lock().unwrap().insert(volume_id.to_string())
    }

    pub fn close_window(&self, volume_id: &str) {
        self.windows.lock().unwrap().remove(volume_id);
    }
}
