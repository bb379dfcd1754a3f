//! lessor: wall-clock lease expiry, owned by the leader.
//!
//! The lease table itself is replicated state ([`crate::apply::lease`]);
//! this module only tracks *when* each lease expires on this member. Only
//! the leader acts on it: it renews leases on KeepAlive and proposes a
//! revoke through raft when one expires. When a member becomes leader every
//! lease gets a fresh TTL, as in etcd, or its checkpointed remaining TTL.
//!
//! With lease checkpoints enabled (etcd's
//! `--experimental-enable-lease-checkpoint`) the lessor also schedules, per
//! lease, when the leader should next replicate the lease's remaining TTL
//! ([`Lessor::take_checkpoints`]), and a renewal of a lease with a
//! checkpointed remaining TTL queues a checkpoint of 0 that clears it. On
//! followers (which never see renewals; TimeToLive and KeepAlive are
//! forwarded to the leader) an applied checkpoint restarts the local timer
//! from the checkpointed remaining TTL, keeping their local view, e.g. the
//! order of LeaseLeases, close to the leader's.
//! The clock is injectable ([`Clock`]) so tests and fault injection can
//! skew it without touching the machine's clock: every lease computation
//! reads [`lease_clock`], which in a `failpoints` build is the skewable
//! clock of `failpoints::clock` (what skew means for leases is documented
//! there).

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

/// The clock a member's lessor runs on: the monotonic clock.
#[cfg(not(feature = "failpoints"))]
pub fn lease_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// The clock a member's lessor runs on: in a `failpoints` build, the
/// process-wide skewable one.
#[cfg(feature = "failpoints")]
pub fn lease_clock() -> Arc<dyn Clock> {
    crate::failpoints::clock::global()
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl: i64,
    expiry: Instant,
    /// When a revoke was last proposed (to avoid proposing it every tick).
    revoking: Option<Instant>,
    /// The replicated (checkpointed) remaining TTL as last applied, 0 if none.
    remaining_ttl: i64,
    /// When the leader should next checkpoint this lease.
    checkpoint_at: Option<Instant>,
    /// A renewal asked for the checkpointed remaining TTL to be cleared.
    clear_pending: bool,
}

/// Per-member lease expiry tracking.
pub struct Lessor {
    clock: Arc<dyn Clock>,
    /// Lease checkpoint interval; None when checkpoints are disabled.
    checkpoint_interval: Option<Duration>,
    timers: Mutex<HashMap<i64, Timer>>,
}

/// Whole seconds left until `expiry`, rounded up (etcd's checkpoint value).
fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() as i64;
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

impl Lessor {
    /// A lessor on `clock`, without lease checkpoints.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Lessor {
            clock,
            checkpoint_interval: None,
            timers: Mutex::new(HashMap::new()),
        }
    }

    /// Enable lease checkpoints every `interval` (None or zero disables).
    pub fn with_checkpoints(mut self, interval: Option<Duration>) -> Self {
        self.checkpoint_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Whether lease checkpoints are enabled.
    pub fn checkpoints_enabled(&self) -> bool {
        self.checkpoint_interval.is_some()
    }

    /// When a lease with `remaining` seconds left should next be
    /// checkpointed: one interval from now, unless it expires by then anyway
    /// (etcd's scheduleCheckpointIfNeeded).
    fn schedule(&self, now: Instant, remaining: i64) -> Option<Instant> {
        let iv = self.checkpoint_interval?;
        (remaining > iv.as_secs() as i64).then(|| now + iv)
    }

    /// A lease was granted (applied): it expires `ttl` seconds from now.
    pub fn granted(&self, id: i64, ttl: i64) {
        let now = self.clock.now();
        let checkpoint_at = self.schedule(now, ttl);
        self.timers.lock().insert(
            id,
            Timer {
                ttl,
                expiry: now + Duration::from_secs(ttl.max(0) as u64),
                revoking: None,
                remaining_ttl: 0,
                checkpoint_at,
                clear_pending: false,
            },
        );
    }

    /// A lease was revoked (applied).
    pub fn revoked(&self, id: i64) {
        self.timers.lock().remove(&id);
    }

    /// A remaining-TTL checkpoint of lease `id` was applied. `follower`
    /// restarts the local timer from it (a leader's own timer is live and
    /// more precise than any checkpoint it proposed).
    pub fn checkpointed(&self, id: i64, remaining: i64, follower: bool) {
        let now = self.clock.now();
        let mut t = self.timers.lock();
        let Some(timer) = t.get_mut(&id) else { return };
        timer.remaining_ttl = remaining;
        if follower {
            let secs = if remaining > 0 { remaining } else { timer.ttl };
            timer.expiry = now + Duration::from_secs(secs.max(0) as u64);
        }
    }

    /// Renew a lease (KeepAlive on the leader). Returns its TTL, or None if
    /// the lease is unknown or already expired. With checkpoints enabled, a
    /// lease that has a checkpointed remaining TTL gets a checkpoint of 0
    /// queued, so a later leader does not cut the renewed lease short (as
    /// etcd's Renew does).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let now = self.clock.now();
        let mut t = self.timers.lock();
        let timer = t.get_mut(&id)?;
        if timer.expiry <= now {
            return None;
        }
        timer.expiry = now + Duration::from_secs(timer.ttl.max(0) as u64);
        if self.checkpoint_interval.is_some() {
            if timer.remaining_ttl > 0 {
                timer.clear_pending = true;
                // Queued once: the clear applies as remaining_ttl = 0.
                timer.remaining_ttl = 0;
            }
            if timer.checkpoint_at.is_none() {
                timer.checkpoint_at = self.schedule(now, timer.ttl);
            }
        }
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
                    remaining_ttl: remaining,
                    checkpoint_at: self.schedule(now, secs),
                    clear_pending: false,
                },
            );
        }
    }

    /// Checkpoints the leader should propose now, at most `limit`, as
    /// (lease, remaining TTL) pairs: first the clears queued by renewals
    /// (remaining 0), then leases whose checkpoint is due and whose
    /// remaining TTL (rounded up) is below their TTL. A due lease is
    /// rescheduled one interval later while it has more than an interval
    /// left, so a lost proposal is retried.
    pub fn take_checkpoints(&self, limit: usize) -> Vec<(i64, i64)> {
        if self.checkpoint_interval.is_none() || limit == 0 {
            return Vec::new();
        }
        let now = self.clock.now();
        let mut t = self.timers.lock();
        let mut out: Vec<(i64, i64)> = Vec::new();
        let mut ids: Vec<i64> = t
            .iter()
            .filter(|(_, x)| x.clear_pending)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        for id in ids.into_iter().take(limit) {
            let timer = t.get_mut(&id).expect("invariant: id taken from the map");
            timer.clear_pending = false;
            out.push((id, 0));
        }
        let mut due: Vec<(Instant, i64)> = t
            .iter()
            .filter_map(|(id, x)| x.checkpoint_at.filter(|at| *at <= now).map(|at| (at, *id)))
            .collect();
        due.sort();
        for (_, id) in due {
            if out.len() >= limit {
                break;
            }
            let timer = t.get_mut(&id).expect("invariant: id taken from the map");
            if timer.expiry <= now {
                timer.checkpoint_at = None;
                continue;
            }
            let remaining = ceil_secs(timer.expiry - now);
            timer.checkpoint_at = self.schedule(now, remaining);
            if remaining < timer.ttl && out.iter().all(|(o, _)| *o != id) {
                out.push((id, remaining));
            }
        }
        out
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
        assert!(
            l.take_checkpoints(1000).is_empty(),
            "checkpoints are off by default"
        );
    }

    #[test]
    fn checkpoints_are_scheduled_per_interval_and_skip_fresh_leases() {
        let c = Arc::new(FakeClock(Mutex::new(Instant::now())));
        let l = Lessor::new(c.clone()).with_checkpoints(Some(Duration::from_secs(5)));
        l.granted(1, 20);
        l.granted(2, 4); // expires before one interval: never checkpointed
        assert!(l.take_checkpoints(1000).is_empty(), "nothing due yet");
        *c.0.lock() += Duration::from_millis(5500);
        // 14.5 s left, rounded up.
        assert_eq!(l.take_checkpoints(1000), vec![(1, 15)]);
        assert!(l.take_checkpoints(1000).is_empty(), "rescheduled");
        *c.0.lock() += Duration::from_secs(5);
        assert_eq!(l.take_checkpoints(1000), vec![(1, 10)]);
        // A lease renewed just before its checkpoint is due is not
        // checkpointed (its remaining TTL is its TTL) but stays scheduled.
        *c.0.lock() += Duration::from_secs(5);
        assert_eq!(l.renew(1), Some(20));
        assert!(l.take_checkpoints(1000).is_empty());
        *c.0.lock() += Duration::from_secs(5);
        assert_eq!(l.take_checkpoints(1000), vec![(1, 15)]);
    }

    #[test]
    fn renewal_queues_a_clear_of_the_checkpointed_remaining_ttl() {
        let c = Arc::new(FakeClock(Mutex::new(Instant::now())));
        let l = Lessor::new(c.clone()).with_checkpoints(Some(Duration::from_secs(60)));
        l.refresh_all([(7, 100, 30), (8, 100, 0)].into_iter());
        assert_eq!(
            l.remaining(7),
            Some(30),
            "new leader honours the checkpoint"
        );
        assert_eq!(l.remaining(8), Some(100));
        assert_eq!(l.renew(8), Some(100));
        assert!(l.take_checkpoints(1000).is_empty(), "nothing to clear");
        assert_eq!(l.renew(7), Some(100));
        assert_eq!(l.renew(7), Some(100));
        assert_eq!(l.take_checkpoints(1000), vec![(7, 0)], "one clear");
        assert!(l.take_checkpoints(1000).is_empty());
        // Without checkpoints a renewal queues nothing.
        let l = Lessor::new(c.clone());
        l.refresh_all([(7, 100, 30)].into_iter());
        assert_eq!(l.renew(7), Some(100));
        assert!(l.take_checkpoints(1000).is_empty());
    }

    #[test]
    fn followers_restart_timers_from_applied_checkpoints() {
        let c = Arc::new(FakeClock(Mutex::new(Instant::now())));
        let l = Lessor::new(c.clone()).with_checkpoints(Some(Duration::from_secs(1)));
        l.granted(1, 20);
        l.granted(2, 20);
        *c.0.lock() += Duration::from_secs(10);
        l.checkpointed(1, 17, true);
        assert_eq!(l.remaining(1), Some(17), "follower: from the checkpoint");
        l.checkpointed(2, 17, false);
        assert_eq!(l.remaining(2), Some(10), "leader: its own live timer");
        l.checkpointed(1, 0, true);
        assert_eq!(l.remaining(1), Some(20), "cleared: a full TTL");
    }

    #[test]
    fn checkpoint_batches_are_bounded() {
        let c = Arc::new(FakeClock(Mutex::new(Instant::now())));
        let l = Lessor::new(c.clone()).with_checkpoints(Some(Duration::from_secs(1)));
        for id in 0..25 {
            l.granted(id, 60);
        }
        *c.0.lock() += Duration::from_millis(1500);
        let a = l.take_checkpoints(10);
        let b = l.take_checkpoints(10);
        let d = l.take_checkpoints(10);
        assert_eq!((a.len(), b.len(), d.len()), (10, 10, 5));
        let mut all: Vec<i64> = a.iter().chain(&b).chain(&d).map(|x| x.0).collect();
        all.sort();
        assert_eq!(all, (0..25).collect::<Vec<_>>());
        assert!(a.iter().all(|x| x.1 == 59));
    }
}
