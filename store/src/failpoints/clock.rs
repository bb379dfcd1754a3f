//! failpoints::clock: the skewable clock behind lease logic (test builds).
//!
//! Every lease computation (expiry, KeepAlive renewal, TimeToLive's
//! remaining TTL, checkpoints, the revoke retry) reads time through the
//! lessor's [`Clock`]; in a `failpoints` build that clock is the one
//! process-wide [`SkewClock`] here. It reads the monotonic clock and skews
//! it: `now = real + offset`, where the offset drifts at `rate - 1` (a rate
//! of 1.5 runs the lease clock 50% fast, 0 freezes it). The machine's clock is
//! never touched, and nothing else (raft ticks, timeouts, request deadlines)
//! reads this clock.
//!
//! `PUT /debug/clock` with `{"offset_ms": N}` makes the lease clock exactly
//! `N` ms ahead of the real one from now on (negative: behind; a jump
//! backwards is allowed), `{"rate": R}` changes the drift from now on,
//! keeping the current offset; both may be given (offset first).
//! `GET /debug/clock` answers `{"offset_ms": …, "rate": …}` with the current
//! offset.
//!
//! What skew means for leases (etcd's lease model, and its known caveat):
//! only the leader's clock decides expiry. A leader whose clock runs fast (or
//! jumps ahead) revokes leases early: a client that kept a lease alive until
//! time t believes it holds the lease until t + TTL, but a fast leader
//! revokes it sooner and the lease's keys disappear while the client still
//! relies on them. A slow leader revokes late. A follower's skew matters
//! only once it becomes leader (a new leader restarts every lease's timer
//! with its full TTL, or with the checkpointed remaining TTL, which a fast
//! old leader computed too small). This is the same as in etcd, whose
//! leases also assume bounded clock drift; Jepsen-style checkers should
//! record early expiry under skew as the lease caveat, not as a safety
//! violation. What skew must never do, and cannot here: expiry is only ever
//! acted on through a revoke proposed and committed by raft, so every member
//! deletes the lease's keys at the same log index; KV reads and writes use
//! ReadIndex and the raft log, never this clock, so linearizability does not
//! depend on it; and skew cannot revive a revoked lease.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::lessor::Clock;

/// The real monotonic clock, skewed by an offset that drifts at a rate.
pub struct SkewClock {
    state: Mutex<Skew>,
}

#[derive(Debug, Clone, Copy)]
struct Skew {
    /// Real time at which `offset_ns` held.
    anchor: Instant,
    /// Lease clock minus real clock at `anchor`, in nanoseconds.
    offset_ns: i128,
    /// Lease-clock seconds per real second.
    rate: f64,
}

impl Skew {
    /// The offset at real time `t`.
    fn offset_at(&self, t: Instant) -> i128 {
        let elapsed = t.saturating_duration_since(self.anchor).as_nanos() as f64;
        self.offset_ns + (elapsed * (self.rate - 1.0)) as i128
    }
}

/// `t` shifted by `ns` (earlier when negative; never before the boot time
/// the monotonic clock starts at).
fn shift(t: Instant, ns: i128) -> Instant {
    let d = Duration::from_nanos(ns.unsigned_abs().min(u64::MAX as u128) as u64);
    if ns >= 0 {
        t + d
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

impl Default for SkewClock {
    fn default() -> Self {
        SkewClock {
            state: Mutex::new(Skew {
                anchor: Instant::now(),
                offset_ns: 0,
                rate: 1.0,
            }),
        }
    }
}

impl SkewClock {
    /// (current offset in ms, rate).
    pub fn get(&self) -> (f64, f64) {
        let s = *self.state.lock();
        (s.offset_at(Instant::now()) as f64 / 1e6, s.rate)
    }

    /// Set the offset (ms, from now on) and/or the rate. A rate must be
    /// finite and at least 0.
    pub fn set(&self, offset_ms: Option<f64>, rate: Option<f64>) -> Result<(f64, f64), String> {
        if let Some(r) = rate {
            if !r.is_finite() || r < 0.0 {
                return Err(format!("rate must be a finite number >= 0, not {r}"));
            }
        }
        if let Some(o) = offset_ms {
            if !o.is_finite() || o.abs() > 1e12 {
                return Err(format!(
                    "offset_ms must be a finite number of milliseconds, not {o}"
                ));
            }
        }
        let now = Instant::now();
        let mut s = self.state.lock();
        let offset_ns = match offset_ms {
            Some(o) => (o * 1e6) as i128,
            None => s.offset_at(now),
        };
        *s = Skew {
            anchor: now,
            offset_ns,
            rate: rate.unwrap_or(s.rate),
        };
        let got = (s.offset_ns as f64 / 1e6, s.rate);
        drop(s);
        tracing::warn!(
            offset_ms = got.0,
            rate = got.1,
            "lease clock skewed (fault injection)"
        );
        Ok(got)
    }
}

impl Clock for SkewClock {
    fn now(&self) -> Instant {
        let t = Instant::now();
        let s = *self.state.lock();
        shift(t, s.offset_at(t))
    }
}

static CLOCK: LazyLock<Arc<SkewClock>> = LazyLock::new(Default::default);

/// The process-wide lease clock.
pub fn global() -> Arc<SkewClock> {
    CLOCK.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_rate_skew_the_clock_without_jumps_on_rate_change() {
        let c = SkewClock::default();
        let ahead = c.now().saturating_duration_since(Instant::now());
        assert!(ahead < Duration::from_millis(50));
        c.set(Some(5000.0), None).unwrap();
        let ahead = c.now().saturating_duration_since(Instant::now());
        assert!(
            ahead >= Duration::from_millis(4900) && ahead <= Duration::from_millis(5100),
            "{ahead:?}"
        );
        // A rate change keeps the current offset.
        let (off, rate) = c.set(None, Some(3.0)).unwrap();
        assert!((off - 5000.0).abs() < 100.0, "{off}");
        assert_eq!(rate, 3.0);
        std::thread::sleep(Duration::from_millis(100));
        let (off, _) = c.get();
        // 100 ms at rate 3 adds 200 ms of offset (give or take scheduling).
        assert!(off >= 5150.0, "{off}");
        // Behind the real clock.
        c.set(Some(-2000.0), Some(1.0)).unwrap();
        let behind = Instant::now().saturating_duration_since(c.now());
        assert!(
            behind >= Duration::from_millis(1900) && behind <= Duration::from_millis(2100),
            "{behind:?}"
        );
        // A frozen clock does not advance.
        c.set(Some(0.0), Some(0.0)).unwrap();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now(), a);
        assert!(c.set(None, Some(-1.0)).is_err());
        assert!(c.set(Some(f64::NAN), None).is_err());
    }
}
