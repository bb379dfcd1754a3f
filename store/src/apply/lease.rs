//! apply::lease: the replicated lease table (which leases exist, their
//! granted TTL, checkpointed remaining TTL and attached keys).
//!
//! This is state-machine data: it changes only by applying raft entries and
//! is part of every snapshot. Wall-clock expiry lives outside, in
//! [`crate::lessor`], because only the leader's clock decides expiry.

use std::collections::{BTreeMap, BTreeSet};

/// One lease as replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// Granted TTL in seconds (after the minimum-TTL adjustment).
    pub ttl: i64,
    /// Last checkpointed remaining TTL in seconds, 0 if never checkpointed.
    pub remaining_ttl: i64,
    /// Attached keys.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The lease table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    map: BTreeMap<i64, LeaseState>,
}

impl Leases {
    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.map.contains_key(&id)
    }

    /// Look up a lease.
    pub fn get(&self, id: i64) -> Option<&LeaseState> {
        self.map.get(&id)
    }

    /// Create a lease.
    pub fn grant(&mut self, id: i64, ttl: i64) {
        self.map.insert(
            id,
            LeaseState {
                ttl,
                ..Default::default()
            },
        );
    }

    /// Remove a lease, returning its state.
    pub fn remove(&mut self, id: i64) -> Option<LeaseState> {
        self.map.remove(&id)
    }

    /// Record a remaining-TTL checkpoint.
    pub fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(l) = self.map.get_mut(&id) {
            l.remaining_ttl = remaining;
        }
    }

    /// Attach `key` to lease `id`.
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
    }

    /// Detach `key` from lease `id`.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// All leases, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &LeaseState)> {
        self.map.iter()
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
