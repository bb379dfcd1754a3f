//! lessor: wall-clock lease expiry, owned by the leader.
//!
//! The lease table itself is replicated state ([`crate::apply::lease`]);
//! this module only tracks *when* each lease expires on this member. Only
//! the leader acts on it: it renews leases on KeepAlive and proposes a
//! revoke through raft when one expires. When a member becomes leader every
//! lease gets a fresh TTL, as in etcd. The clock is injectable
//! ([`Clock`]) so tests and fault injection can skew it without touching
//! the machine's clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A monotonic clock.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl: i64,
    expiry: Instant,
    /// When a revoke was last proposed (to avoid proposing it every tick).
    revoking: Option<Instant>,
}

/// Per-member lease expiry tracking.
pub struct Lessor {
    clock: Arc<dyn Clock>,
    timers: Mutex<HashMap<i64, Timer>>,
}

impl Lessor {
    /// A lessor on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Lessor {
            clock,
            timers: Mutex::new(HashMap::new()),
        }
    }

    /// A lease was granted (applied): it expires `ttl` seconds from now.
    pub fn granted(&self, id: i64, ttl: i64) {
        let now = self.clock.now();
        self.timers.lock().insert(
            id,
            Timer {
                ttl,
                expiry: now + Duration::from_secs(ttl.max(0) as u64),
                revoking: None,
            },
        );
    }

    /// A lease was revoked (applied).
    pub fn revoked(&self, id: i64) {
        self.timers.lock().remove(&id);
    }

    /// Renew a lease (KeepAlive on the leader). Returns its TTL, or None if
    /// the lease is unknown or already expired.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let now = self.clock.now();
        let mut t = self.timers.lock();
        let timer = t.get_mut(&id)?;
        if timer.expiry <= now {
            return None;
        }
        timer.expiry = now + Duration::from_secs(timer.ttl.max(0) as u64);
        Some(timer.ttl)
    }

    /// Remaining whole seconds (etcd truncates), or None if unknown.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let now = self.clock.now();
        self.timers
            .lock()
            .get(&id)
            .map(|t| t.expiry.saturating_duration_since(now).as_secs() as i64)
    }

    /// Give every lease a fresh TTL (on becoming leader, and at startup).
    /// `remaining` overrides the TTL with a checkpointed remaining TTL.
    pub fn refresh_all(&self, leases: impl Iterator<Item = (i64, i64, i64)>) {
        let now = self.clock.now();
        let mut t = self.timers.lock();
        t.clear();
        for (id, ttl, remaining) in leases {
            let secs = if remaining > 0 { remaining } else { ttl };
            t.insert(
                id,
                Timer {
                    ttl,
                    expiry: now + Duration::from_secs(secs.max(0) as u64),
                    revoking: None,
                },
            );
        }
    }

    /// Leases that have expired and whose revoke is not already in flight
    /// (a revoke is re-proposed if it has not applied within `retry`).
    pub fn take_expired(&self, retry: Duration) -> Vec<i64> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for (id, t) in self.timers.lock().iter_mut() {
            if t.expiry <= now && t.revoking.is_none_or(|r| now.duration_since(r) >= retry) {
                t.revoking = Some(now);
                out.push(*id);
            }
        }
        out.sort();
        out
    }

    /// Leases ordered by expiry (for LeaseLeases).
    pub fn by_expiry(&self) -> Vec<i64> {
        let t = self.timers.lock();
        let mut v: Vec<(Instant, i64)> = t.iter().map(|(id, t)| (t.expiry, *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeClock(Mutex<Instant>);
    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock()
        }
    }

    #[test]
    fn expiry_renew_and_retry() {
        let c = Arc::new(FakeClock(Mutex::new(Instant::now())));
        let l = Lessor::new(c.clone());
        l.granted(1, 10);
        l.granted(2, 5);
        *c.0.lock() += Duration::from_secs(6);
        assert_eq!(l.take_expired(Duration::from_secs(3)), vec![2]);
        assert!(
            l.take_expired(Duration::from_secs(3)).is_empty(),
            "revoke in flight"
        );
        assert_eq!(l.renew(1), Some(10));
        assert_eq!(l.renew(2), None, "expired leases cannot be renewed");
        assert_eq!(l.remaining(1), Some(10));
        *c.0.lock() += Duration::from_secs(4);
        assert_eq!(l.take_expired(Duration::from_secs(3)), vec![2], "retried");
        l.revoked(2);
        assert_eq!(l.by_expiry(), vec![1]);
    }
}
