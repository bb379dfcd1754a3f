//! compactor: auto-compaction (`--auto-compaction-mode`,
//! `--auto-compaction-retention`) with etcd 3.5's semantics.
//!
//! - **periodic** (retention `P`): every `min(P, 1h) / 10` the current
//!   revision is sampled, keeping the samples of the last `P`; the oldest is
//!   the revision current `P` ago. The first compaction happens `P` after
//!   start, later ones every `min(P, 1h)` after the last success, each to
//!   the oldest sample (skipped if it did not change). A failure is retried
//!   at the next sample.
//! - **revision** (retention `N`): every 5 minutes compact to
//!   `current - N` if that is positive and new. Tests shorten the 5 minutes
//!   with the hidden Strata-only `--strata-auto-compaction-revision-interval`.
//!
//! Every member runs the loop but only the leader compacts (etcd pauses
//! the compactor on followers; periodic sampling goes on meanwhile), by
//! proposing an ordinary Compaction through raft, so it is applied like a
//! client's. Each compaction is logged. The decision logic ([`Periodic`],
//! [`revision_target`]) is pure and unit-tested; [`run`] drives it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb as pb;

use crate::config::AutoCompaction;
use crate::error::Error;
use crate::node::Node;
use crate::request::Op;

/// etcd's retryDivisor: periodic samples per compaction interval.
const RETRY_DIVISOR: u32 = 10;

/// The periodic compactor's state (etcd's `v3compactor.Periodic`).
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    /// Revision samples, oldest first; `revs[0]` is the revision `period` ago.
    revs: VecDeque<i64>,
    retentions: usize,
    last_rev: i64,
    last_success: Instant,
    /// `period` until the first compaction, then the compaction interval.
    base: Duration,
}

impl Periodic {
    /// A compactor for retention `period` started at `now`.
    pub fn new(period: Duration, now: Instant) -> Self {
        let mut p = Periodic {
            period,
            revs: VecDeque::new(),
            retentions: 0,
            last_rev: 0,
            last_success: now,
            base: period,
        };
        p.retentions = (period.as_nanos() / p.retry_interval().as_nanos().max(1)) as usize + 1;
        p
    }

    /// Time between compactions after the first: the period, at most 1 h.
    pub fn compact_interval(&self) -> Duration {
        self.period.min(Duration::from_secs(3600))
    }

    /// Time between revision samples: a tenth of the compaction interval.
    pub fn retry_interval(&self) -> Duration {
        (self.compact_interval() / RETRY_DIVISOR).max(Duration::from_millis(1))
    }

    /// Record the current revision (once per retry interval, leader or not).
    pub fn sample(&mut self, rev: i64) {
        self.revs.push_back(rev);
        while self.revs.len() > self.retentions {
            self.revs.pop_front();
        }
    }

    /// After a retry interval: the revision to compact to now, if any.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        let rev = *self.revs.front()?;
        if now.duration_since(self.last_success) < self.base || rev == self.last_rev {
            return None;
        }
        // Wait the whole period only before the first compaction.
        self.base = self.compact_interval();
        Some(rev)
    }

    /// A compaction to `rev` succeeded (or `rev` was already compacted).
    pub fn succeeded(&mut self, rev: i64, now: Instant) {
        self.last_rev = rev;
        self.last_success = now;
    }
}

/// Revision mode: the revision to compact to, given the current revision,
/// the retention and the last revision compacted to.
pub fn revision_target(current: i64, retention: i64, prev: i64) -> Option<i64> {
    let rev = current.saturating_sub(retention);
    (rev > 0 && rev != prev).then_some(rev)
}

/// Propose a compaction to `rev`; Ok also when `rev` is already compacted.
async fn compact(node: &Node, rev: i64, mode: &'static str) -> bool {
    tracing::info!(revision = rev, mode, "starting auto compaction");
    let started = Instant::now();
    let r = node
        .propose(Op::Compaction(pb::CompactionRequest {
            revision: rev,
            physical: false,
        }))
        .await;
    match r {
        Ok(_) | Err(Error::Compacted) => {
            tracing::info!(revision = rev, mode, took = ?started.elapsed(), "completed auto compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision = rev, mode, error = %e, "failed auto compaction");
            false
        }
    }
}

/// Run the configured auto-compaction until the node shuts down.
pub async fn run(node: Arc<Node>) {
    match node.cfg.auto_compaction {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => {
            tracing::info!(retention = ?period, "auto periodic compaction enabled");
            let mut p = Periodic::new(period, Instant::now());
            loop {
                p.sample(node.current_rev());
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(p.retry_interval()) => {}
                }
                if !node.status.is_leader() {
                    continue;
                }
                if let Some(rev) = p.due(Instant::now()) {
                    if compact(&node, rev, "periodic").await {
                        p.succeeded(rev, Instant::now());
                    }
                }
            }
        }
        AutoCompaction::Revision(retention) => {
            let every = node.cfg.auto_compaction_revision_interval;
            tracing::info!(retention, interval = ?every, "auto revision compaction enabled");
            let mut prev = 0;
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if !node.status.is_leader() {
                    continue;
                }
                if let Some(rev) = revision_target(node.current_rev(), retention, prev) {
                    if compact(&node, rev, "revision").await {
                        prev = rev;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_intervals_follow_etcd() {
        let now = Instant::now();
        let p = Periodic::new(Duration::from_secs(3600), now);
        assert_eq!(p.retry_interval(), Duration::from_secs(360));
        assert_eq!(p.retentions, 11);
        let p = Periodic::new(Duration::from_secs(24 * 3600), now);
        assert_eq!(p.compact_interval(), Duration::from_secs(3600));
        assert_eq!(p.retry_interval(), Duration::from_secs(360));
        assert_eq!(p.retentions, 241, "24 h of 6-minute samples");
        let p = Periodic::new(Duration::from_secs(5), now);
        assert_eq!(p.retry_interval(), Duration::from_millis(500));
    }

    /// Drive a 10 s periodic compactor with one write per second.
    #[test]
    fn periodic_compacts_to_the_revision_of_one_period_ago() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(10), t0);
        let rev_at = |t: Duration| 1 + t.as_secs() as i64; // one write per second
        let mut done = Vec::new();
        let step = p.retry_interval();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(35) {
            p.sample(rev_at(t));
            t += step;
            let now = t0 + t;
            if let Some(rev) = p.due(now) {
                p.succeeded(rev, now);
                done.push((t, rev));
            }
        }
        // Nothing before one period; then every period, each to the revision
        // current one period earlier.
        assert!(done.len() >= 3, "{done:?}");
        for (t, rev) in &done {
            assert!(*t >= Duration::from_secs(10), "{done:?}");
            let expect = rev_at(t.saturating_sub(Duration::from_secs(10)));
            assert!(
                (rev - expect).abs() <= 1,
                "at {t:?} compacted to {rev}, want ~{expect}"
            );
        }
        for w in done.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= Duration::from_secs(10) && gap <= Duration::from_secs(11),
                "{done:?}"
            );
        }
    }

    #[test]
    fn periodic_skips_an_unchanged_revision_and_retries_failures() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(1), t0);
        for _ in 0..20 {
            p.sample(7);
        }
        let r = p.due(t0 + Duration::from_secs(2));
        assert_eq!(r, Some(7));
        // Failed (not recorded): due again at the next sample.
        assert_eq!(p.due(t0 + Duration::from_millis(2100)), Some(7));
        p.succeeded(7, t0 + Duration::from_millis(2100));
        // Idle store: the same revision is never compacted twice.
        assert_eq!(p.due(t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn revision_mode_target() {
        assert_eq!(revision_target(100, 10, 0), Some(90));
        assert_eq!(revision_target(100, 10, 90), None, "unchanged");
        assert_eq!(revision_target(5, 10, 0), None, "not enough history");
        assert_eq!(revision_target(10, 10, 0), None);
    }
}
