//! raft::apply: the apply thread. It decodes committed entries in log order,
//! applies each batch to the state machine under one write-lock hold,
//! publishes the new applied index/revision (which wakes watchers and
//! linearizable readers), completes the proposers' waiters by request id,
//! and triggers background state-machine snapshots every `snapshot_count`
//! entries. Membership-change entries arrive with the configuration raft
//! produced for them and update the member table; a snapshot installed from
//! the leader replaces the whole state machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use prost::Message;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType};
use tokio::sync::{oneshot, watch};

use crate::apply::{ApplyConfig, StateMachine};
use crate::error::{Error, Result};
use crate::lessor::Lessor;
use crate::metrics::METRICS;
use crate::request::{ApplyResult, InternalRequest, Op};
use crate::snapshot::SnapDir;

use super::storage::RaftStorage;
use super::RaftStatus;

/// Work for the apply thread.
pub enum ApplyTask {
    /// Committed entries, in order, with raft's configuration after each
    /// membership-change entry (by index; `None` if raft refused it).
    Entries(Vec<Entry>, HashMap<u64, Option<ConfState>>),
    /// Replace the state machine by the snapshot at this index (received
    /// from the leader and installed in the raft log).
    Snapshot(u64),
}

/// What has been applied so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Last applied raft index.
    pub index: u64,
    /// MVCC revision after it.
    pub rev: i64,
    /// Compacted revision after it.
    pub compact: i64,
}

/// A proposer waiting for its entry to be applied.
pub type Waiter = oneshot::Sender<Result<ApplyResult>>;

/// Waiters by request id.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, Waiter>>,
}

impl Waiters {
    /// Register a waiter.
    pub fn insert(&self, id: u64, w: Waiter) {
        self.map.lock().insert(id, w);
    }
    /// Complete (or fail) a waiter; unknown ids are ignored (another
    /// member proposed them, or the proposer gave up).
    pub fn complete(&self, id: u64, r: Result<ApplyResult>) {
        if let Some(w) = self.map.lock().remove(&id) {
            METRICS.proposals_pending.dec();
            let _ = w.send(r);
        }
    }
    /// Drop a waiter without completing it (caller timed out).
    pub fn remove(&self, id: u64) {
        if self.map.lock().remove(&id).is_some() {
            METRICS.proposals_pending.dec();
        }
    }
    /// Fail every waiter (shutdown).
    pub fn fail_all(&self, e: Error) {
        for (_, w) in self.map.lock().drain() {
            let _ = w.send(Err(e.clone()));
        }
    }
}

/// Snapshot settings for the apply thread.
pub struct SnapshotPolicy {
    /// Where snapshot files go.
    pub dir: Arc<SnapDir>,
    /// Entries between snapshots.
    pub count: u64,
    /// fsync snapshot files.
    pub sync: bool,
    /// The raft log (compacted after a snapshot).
    pub storage: RaftStorage,
    /// Entries kept behind the compaction point for slow followers.
    pub catchup_entries: u64,
}

/// Everything the apply thread needs.
pub struct ApplyLoop {
    /// Incoming committed entries.
    pub rx: flume::Receiver<ApplyTask>,
    /// The state machine.
    pub state: Arc<RwLock<StateMachine>>,
    /// Waiters.
    pub waiters: Arc<Waiters>,
    /// Publishes progress.
    pub applied_tx: watch::Sender<Applied>,
    /// Apply settings.
    pub cfg: ApplyConfig,
    /// Lease expiry clock.
    pub lessor: Arc<Lessor>,
    /// Raft status (whether this member leads).
    pub status: Arc<RaftStatus>,
    /// Snapshot policy.
    pub snap: SnapshotPolicy,
    /// Snapshots received from the leader, already verified and decoded.
    pub received: super::transport::Received,
    /// Told about every change of the member table.
    pub on_members: Box<dyn Fn(&StateMachine) + Send>,
}

/// Decode the request carried in a membership-change entry.
fn conf_change_request(e: &Entry) -> Option<InternalRequest> {
    let data: &[u8] = e.data.as_ref();
    let context = match e.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            protobuf::Message::merge_from_bytes(&mut cc, data).ok()?;
            cc.context
        }
        EntryType::EntryConfChange => {
            let mut cc = raft::eraftpb::ConfChange::default();
            protobuf::Message::merge_from_bytes(&mut cc, data).ok()?;
            cc.context
        }
        _ => return None,
    };
    InternalRequest::decode(context.as_ref()).ok()
}

/// Load the snapshot the raft thread installed at `index`.
fn load_received(l: &ApplyLoop, index: u64) -> StateMachine {
    if let Some(sm) = l.received.lock().remove(&index) {
        return sm;
    }
    match l.snap.dir.load(index) {
        Ok(sm) => sm,
        Err(e) => panic!("the snapshot installed at index {index} cannot be loaded: {e}"),
    }
}

/// Run until the task channel closes.
pub fn run_apply(l: ApplyLoop) {
    // Index of the newest snapshot. After the next one is written, the raft
    // log is compacted only up to this one, so a corrupt newest snapshot can
    // still fall back to the older file plus the log.
    let mut last_snap = l.state.read().applied_index;
    let snapshotting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    while let Ok(task) = l.rx.recv() {
        let (entries, confs) = match task {
            ApplyTask::Entries(e, c) => (e, c),
            ApplyTask::Snapshot(index) => {
                let sm = load_received(&l, index);
                l.received.lock().retain(|i, _| *i > index);
                let applied = Applied {
                    index: sm.applied_index,
                    rev: sm.mvcc.current_rev(),
                    compact: sm.mvcc.compact_rev(),
                };
                l.lessor.refresh_all(
                    sm.leases
                        .iter()
                        .map(|(id, ls)| (*id, ls.ttl, ls.remaining_ttl)),
                );
                {
                    let mut st = l.state.write();
                    *st = sm;
                    (l.on_members)(&st);
                }
                last_snap = index;
                tracing::info!(
                    index,
                    rev = applied.rev,
                    "state machine replaced by the leader's snapshot"
                );
                l.applied_tx.send_replace(applied);
                continue;
            }
        };
        // Fault injection: `return` applies the batch but answers its
        // proposers "request timed out" (an indefinite failure).
        #[cfg(feature = "failpoints")]
        let time_out = crate::failpoints::eval(crate::failpoints::APPLY_BEFORE_APPLY).is_some();
        let mut members_changed = false;
        let mut results = Vec::with_capacity(entries.len());
        let mut lease_events = Vec::new();
        let mut checkpoints: Vec<(i64, i64)> = Vec::new();
        let mut promote = false;
        let applied = {
            let mut sm = l.state.write();
            let mut last_op: Option<Op> = None;
            for e in entries {
                if e.get_entry_type() == EntryType::EntryNormal
                    && e.data.is_empty()
                    && l.status.is_leader()
                {
                    // etcd promotes its lessor when the leader applies the
                    // empty entry of its term; leases granted or renewed
                    // later in the term keep their own timers.
                    lease_events.clear();
                    checkpoints.clear();
                    promote = true;
                }
                if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                    match InternalRequest::decode(e.data.as_ref()) {
                        Ok(req) => {
                            if let Some(op) = req.op {
                                last_op = match &op {
                                    Op::MemberUpdate(_) | Op::MemberAttr(_) => Some(op.clone()),
                                    _ => None,
                                };
                                let lease_ev = match &op {
                                    Op::LeaseGrant(g) => Some((g.id, true)),
                                    Op::LeaseRevoke(r) => Some((r.id, false)),
                                    _ => None,
                                };
                                // Checkpoints of leases that exist (apply skips the others).
                                let cps: Vec<(i64, i64)> = match &op {
                                    Op::LeaseCheckpoint(c) => c
                                        .checkpoints
                                        .iter()
                                        .filter(|cp| sm.leases.contains(cp.id))
                                        .map(|cp| (cp.id, cp.remaining_ttl))
                                        .collect(),
                                    _ => Vec::new(),
                                };
                                let r = sm.apply_as(op, req.auth.as_ref(), e.index, &l.cfg);
                                if r.is_ok() {
                                    checkpoints.extend(cps);
                                }
                                if let (Some(ev), Ok(res)) = (lease_ev, &r) {
                                    let ttl = match res {
                                        ApplyResult::LeaseGrant(g) => g.ttl,
                                        _ => 0,
                                    };
                                    lease_events.push((ev.0, ev.1, ttl));
                                }
                                results.push((req.id, r));
                            }
                        }
                        Err(err) => panic!(
                            "committed entry {} does not decode ({err}); the log is corrupt",
                            e.index
                        ),
                    }
                } else if e.get_entry_type() != EntryType::EntryNormal {
                    let cs = confs.get(&e.index).cloned().flatten();
                    match conf_change_request(&e) {
                        Some(InternalRequest {
                            id, op: Some(op), ..
                        }) => {
                            let r = sm.apply_conf_change(op, cs);
                            results.push((id, r));
                        }
                        // A change without a request (none of ours): follow raft.
                        _ => {
                            if let Some(cs) = cs {
                                sm.set_conf_state(cs);
                            }
                        }
                    }
                    members_changed = true;
                }
                if let Some(Op::MemberUpdate(_) | Op::MemberAttr(_)) = last_op.take() {
                    members_changed = true;
                }
                sm.applied_index = e.index;
                sm.applied_term = e.term;
            }
            METRICS.proposals_applied.inc_by(results.len() as u64);
            if promote {
                // Every lease gets a fresh TTL, under the state lock so that
                // no grant or revoke can interleave with the refresh.
                l.lessor.refresh_all(
                    sm.leases
                        .iter()
                        .map(|(id, ls)| (*id, ls.ttl, ls.remaining_ttl)),
                );
            }
            if members_changed {
                (l.on_members)(&sm);
            }
            Applied {
                index: sm.applied_index,
                rev: sm.mvcc.current_rev(),
                compact: sm.mvcc.compact_rev(),
            }
        };
        for (id, granted, ttl) in lease_events {
            if granted {
                l.lessor.granted(id, ttl);
            } else {
                l.lessor.revoked(id);
            }
        }
        // Lease checkpoints: followers restart their timers from them.
        let follower = !l.status.is_leader();
        for (id, remaining) in checkpoints {
            l.lessor.checkpointed(id, remaining, follower);
        }
        l.applied_tx.send_replace(applied);
        for (id, r) in results {
            #[cfg(feature = "failpoints")]
            let r = if time_out { Err(Error::Timeout) } else { r };
            l.waiters.complete(id, r);
        }
        if l.snap.count > 0
            && applied.index >= last_snap + l.snap.count
            && !snapshotting.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let view = l.state.read().view();
            let dir = l.snap.dir.clone();
            let storage = l.snap.storage.clone();
            let flag = snapshotting.clone();
            let sync = l.snap.sync;
            // Keep the older snapshot's entries (so a corrupt newest file can
            // fall back) and `catchup_entries` more for slow followers, who
            // would otherwise need a whole snapshot.
            let compact_to =
                last_snap.min(view.applied_index.saturating_sub(l.snap.catchup_entries));
            last_snap = view.applied_index;
            std::thread::Builder::new()
                .name("snapshot".into())
                .spawn(move || {
                    let t = Instant::now();
                    match dir.save(&view, sync) {
                        Ok((path, bytes)) => {
                            tracing::info!(index = view.applied_index, bytes, path = %path.display(),
                                took_ms = t.elapsed().as_millis() as u64, "saved state-machine snapshot");
                            METRICS.snapshot_save.observe(t.elapsed().as_secs_f64());
                            storage.compact_to(compact_to);
                        }
                        Err(e) => tracing::error!(error = %e, "state-machine snapshot failed"),
                    }
                    flag.store(false, std::sync::atomic::Ordering::Release);
                })
                .expect("invariant: can spawn the snapshot thread");
        }
    }
}
