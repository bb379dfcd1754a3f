//! raft::apply: the apply stage, normally its own thread (small batches
//! that arrive while it is idle are applied by the raft thread, see
//! [`ApplyQueue`]). It decodes committed entries in log order,
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

/// Everything the apply side needs.
pub struct ApplyLoop {
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

/// Most committed entries the raft thread applies itself (see
/// [`ApplyQueue::dispatch`]); larger batches go to the apply thread.
const MAX_INLINE: usize = 16;

/// The raft thread's side of the apply stage.
///
/// Committed entries normally go to the apply thread, which applies them
/// while the raft thread writes and fsyncs the next batch. When that
/// thread is idle with nothing queued, and the batch is a few cheap
/// single-key operations, the raft thread applies it itself: a sequential
/// client (one write in flight) then does not pay a second thread wake-up
/// per request. Order is kept: a batch is applied inline only when every
/// batch handed over before it has been applied (`sent == done`, checked
/// under the applier's lock), and never while the state machine is locked
/// by a reader (the raft thread must not wait behind a long range read).
pub struct ApplyQueue {
    tx: flume::Sender<ApplyTask>,
    /// The applier shared with the apply thread (None: queue only).
    shared: Option<Arc<Mutex<Applier>>>,
    /// Tasks handed over so far (queued or applied inline).
    sent: u64,
}

/// Results of an applied batch, handed to the waiters after the applier's
/// lock is released.
#[must_use]
pub struct Completions {
    results: Vec<(u64, Result<ApplyResult>)>,
    waiters: Arc<Waiters>,
}

impl Completions {
    /// Answer every proposer.
    pub fn deliver(self) {
        for (id, r) in self.results {
            self.waiters.complete(id, r);
        }
    }
}

/// What [`ApplyQueue::dispatch`] did with a task.
pub enum Dispatched {
    /// Queued for the apply thread.
    Queued,
    /// Applied on the calling thread; deliver the completions.
    Inline(Completions),
    /// The apply thread is gone (shutdown).
    Closed,
}

impl ApplyQueue {
    /// A queue with no inline path (tests of the raft loop alone).
    pub fn detached(tx: flume::Sender<ApplyTask>) -> Self {
        ApplyQueue {
            tx,
            shared: None,
            sent: 0,
        }
    }

    /// Apply `task` here if `may_inline` (the caller has nothing more
    /// urgent to do), the apply thread is idle and the task is small and
    /// cheap; else queue it for the apply thread.
    pub fn dispatch(&mut self, task: ApplyTask, may_inline: bool) -> Dispatched {
        if !may_inline {
            return self.queue(task);
        }
        let task = match self.try_inline(task) {
            Ok(c) => return Dispatched::Inline(c),
            Err(task) => task,
        };
        self.queue(task)
    }

    fn queue(&mut self, task: ApplyTask) -> Dispatched {
        self.sent += 1;
        match self.tx.send(task) {
            Ok(()) => Dispatched::Queued,
            Err(_) => Dispatched::Closed,
        }
    }

    fn try_inline(&mut self, task: ApplyTask) -> std::result::Result<Completions, ApplyTask> {
        let Some(shared) = &self.shared else {
            return Err(task);
        };
        let ApplyTask::Entries(entries, confs) = task else {
            return Err(task);
        };
        // The apply-stage failpoint belongs to the apply thread (its
        // `sleep`/`pause` must not stall the raft loop).
        #[cfg(feature = "failpoints")]
        if crate::failpoints::is_set(crate::failpoints::APPLY_BEFORE_APPLY) {
            return Err(ApplyTask::Entries(entries, confs));
        }
        let cheap =
            confs.is_empty() && entries.len() <= MAX_INLINE && entries.iter().all(cheap_to_apply);
        let guard = if cheap { shared.try_lock() } else { None };
        let Some(mut a) = guard.filter(|a| a.done == self.sent) else {
            return Err(ApplyTask::Entries(entries, confs));
        };
        let state = a.l.state.clone();
        let Some(mut sm) = state.try_write() else {
            return Err(ApplyTask::Entries(entries, confs));
        };
        let batch = a.apply_entries(&mut sm, entries, confs, false);
        drop(sm);
        let c = a.finish(batch);
        a.done += 1;
        self.sent += 1;
        Ok(c)
    }
}

/// Whether applying `e` is bounded and small: an empty entry, or a put,
/// single-key delete, single-key txn or lease grant/checkpoint. Ranges,
/// compactions, revokes (which delete every attached key), auth and
/// membership changes go to the apply thread.
fn cheap_to_apply(e: &Entry) -> bool {
    if e.get_entry_type() != EntryType::EntryNormal {
        return false;
    }
    if e.data.is_empty() {
        return true;
    }
    match InternalRequest::decode(e.data.as_ref()) {
        Ok(InternalRequest { op: Some(op), .. }) => match op {
            Op::Put(_) | Op::LeaseGrant(_) | Op::LeaseCheckpoint(_) => true,
            Op::DeleteRange(d) => d.range_end.is_empty(),
            Op::Txn(t) => single_key_txn(&t),
            _ => false,
        },
        _ => false,
    }
}

/// A txn whose every branch operation touches one key.
fn single_key_txn(t: &proto::etcdserverpb::TxnRequest) -> bool {
    use proto::etcdserverpb::request_op::Request;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.range_end.is_empty(),
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestDeleteRange(d)) => d.range_end.is_empty(),
            Some(Request::RequestTxn(t)) => single_key_txn(t),
            None => true,
        })
}

/// The apply stage's state, shared by the apply thread and (for inline
/// applies) the raft thread.
pub struct Applier {
    l: ApplyLoop,
    /// Applied index at which the last snapshot was started (saved or
    /// not): the next one is due `snapshot-count` entries later.
    last_snap: u64,
    /// Index of the newest snapshot saved (written by the snapshot
    /// thread). After the next one is written, the raft log is compacted
    /// only up to this one, so a corrupt newest snapshot can still fall
    /// back to the older file plus the log. A failed save leaves it alone:
    /// compacting past a snapshot that was never written would leave the
    /// older file without the entries that follow it.
    last_saved: Arc<std::sync::atomic::AtomicU64>,
    /// A background snapshot is being written.
    snapshotting: Arc<std::sync::atomic::AtomicBool>,
    /// Tasks applied so far.
    done: u64,
}

/// One applied batch, before its side effects outside the state machine.
struct Batch {
    applied: Applied,
    results: Vec<(u64, Result<ApplyResult>)>,
    lease_events: Vec<(i64, bool, i64)>,
    checkpoints: Vec<(i64, i64)>,
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

/// Start the apply thread; the raft thread hands it work through the
/// returned queue.
pub fn spawn(l: ApplyLoop) -> std::io::Result<ApplyQueue> {
    let (tx, rx) = flume::bounded(1024);
    let last_snap = l.state.read().applied_index;
    let shared = Arc::new(Mutex::new(Applier {
        l,
        last_snap,
        last_saved: Arc::new(last_snap.into()),
        snapshotting: Default::default(),
        done: 0,
    }));
    let a = shared.clone();
    std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || run_apply(&a, rx))?;
    Ok(ApplyQueue {
        tx,
        shared: Some(shared),
        sent: 0,
    })
}

/// Run until the task channel closes.
fn run_apply(shared: &Mutex<Applier>, rx: flume::Receiver<ApplyTask>) {
    while let Ok(task) = rx.recv() {
        let mut a = shared.lock();
        let c = a.apply_task(task);
        a.done += 1;
        drop(a);
        if let Some(c) = c {
            c.deliver();
        }
    }
}

impl Applier {
    /// Apply one task; the completions of applied entries (none for a
    /// snapshot) are returned for delivery outside the applier's lock.
    fn apply_task(&mut self, task: ApplyTask) -> Option<Completions> {
        match task {
            ApplyTask::Entries(entries, confs) => {
                // Fault injection (before the state lock, so `sleep` and
                // `pause` delay apply without blocking reads): `return`
                // applies the batch but answers its proposers "request
                // timed out" (an indefinite failure).
                #[cfg(feature = "failpoints")]
                let time_out =
                    crate::failpoints::eval(crate::failpoints::APPLY_BEFORE_APPLY).is_some();
                #[cfg(not(feature = "failpoints"))]
                let time_out = false;
                let state = self.l.state.clone();
                let batch = self.apply_entries(&mut state.write(), entries, confs, time_out);
                Some(self.finish(batch))
            }
            ApplyTask::Snapshot(index) => {
                self.install(index);
                None
            }
        }
    }

    /// Replace the state machine by the snapshot installed at `index`.
    fn install(&mut self, index: u64) {
        let l = &self.l;
        let sm = load_received(l, index);
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
        self.last_snap = index;
        self.last_saved
            .store(index, std::sync::atomic::Ordering::Release);
        tracing::info!(
            index,
            rev = applied.rev,
            "state machine replaced by the leader's snapshot"
        );
        l.applied_tx.send_replace(applied);
    }

    /// Apply committed entries to the locked state machine; with
    /// `time_out`, answer their proposers "request timed out" anyway.
    fn apply_entries(
        &self,
        sm: &mut StateMachine,
        entries: Vec<Entry>,
        confs: HashMap<u64, Option<ConfState>>,
        time_out: bool,
    ) -> Batch {
        let l = &self.l;
        let mut members_changed = false;
        let mut results = Vec::with_capacity(entries.len());
        let mut lease_events = Vec::new();
        let mut checkpoints: Vec<(i64, i64)> = Vec::new();
        let mut promote = false;
        let applied = {
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
                (l.on_members)(sm);
            }
            Applied {
                index: sm.applied_index,
                rev: sm.mvcc.current_rev(),
                compact: sm.mvcc.compact_rev(),
            }
        };
        let results = if time_out {
            results
                .into_iter()
                .map(|(id, _)| (id, Err(Error::Timeout)))
                .collect()
        } else {
            results
        };
        Batch {
            applied,
            results,
            lease_events,
            checkpoints,
        }
    }

    /// After a batch: lease timers, the published applied index, and a
    /// background snapshot every `snapshot_count` entries.
    fn finish(&mut self, batch: Batch) -> Completions {
        let l = &self.l;
        let Batch {
            applied,
            results,
            lease_events,
            checkpoints,
        } = batch;
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
        if l.snap.count > 0
            && applied.index >= self.last_snap + l.snap.count
            && !self
                .snapshotting
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.snapshot_in_background();
        }
        Completions {
            results,
            waiters: self.l.waiters.clone(),
        }
    }

    fn snapshot_in_background(&mut self) {
        let l = &self.l;
        let view = l.state.read().view();
        let dir = l.snap.dir.clone();
        let storage = l.snap.storage.clone();
        let flag = self.snapshotting.clone();
        let sync = l.snap.sync;
        // Keep the older snapshot's entries (so a corrupt newest file can
        // fall back) and `catchup_entries` more for slow followers, who
        // would otherwise need a whole snapshot.
        let last_saved = self.last_saved.clone();
        let compact_to = last_saved
            .load(std::sync::atomic::Ordering::Acquire)
            .min(view.applied_index.saturating_sub(l.snap.catchup_entries));
        self.last_snap = view.applied_index;
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
                        last_saved.store(view.applied_index, std::sync::atomic::Ordering::Release);
                    }
                    Err(e) => tracing::error!(error = %e, "state-machine snapshot failed"),
                }
                flag.store(false, std::sync::atomic::Ordering::Release);
            })
            .expect("invariant: can spawn the snapshot thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::etcdserverpb as pb;

    /// An apply stage over an empty state machine (no snapshots).
    fn stage(dir: &std::path::Path) -> (ApplyQueue, Arc<RwLock<StateMachine>>, Arc<Waiters>) {
        let (q, state, waiters, _) = stage_snapshotting(dir, 0);
        (q, state, waiters)
    }

    /// An apply stage taking a snapshot every `count` entries (0: never),
    /// keeping no entries behind it for followers; also its raft log.
    fn stage_snapshotting(
        dir: &std::path::Path,
        count: u64,
    ) -> (
        ApplyQueue,
        Arc<RwLock<StateMachine>>,
        Arc<Waiters>,
        RaftStorage,
    ) {
        let state = Arc::new(RwLock::new(StateMachine::default()));
        let waiters = Arc::new(Waiters::default());
        let storage = RaftStorage::open(&dir.join("log"), false).unwrap();
        let (applied_tx, _) = watch::channel(Applied::default());
        let l = ApplyLoop {
            state: state.clone(),
            waiters: waiters.clone(),
            applied_tx,
            cfg: ApplyConfig {
                min_lease_ttl: 1,
                tokens: None,
            },
            lessor: Arc::new(Lessor::new(crate::lessor::lease_clock())),
            status: Arc::new(RaftStatus::default()),
            snap: SnapshotPolicy {
                dir: Arc::new(SnapDir::open(dir.join("snap"), 2).unwrap()),
                count,
                sync: false,
                storage: storage.clone(),
                catchup_entries: 0,
            },
            received: Default::default(),
            on_members: Box::new(|_| {}),
        };
        (spawn(l).unwrap(), state, waiters, storage)
    }

    fn entry(index: u64, id: u64, op: Op) -> Entry {
        let data = InternalRequest {
            id,
            op: Some(op),
            auth: None,
        }
        .encode_to_vec();
        Entry {
            index,
            term: 1,
            data: data.into(),
            ..Default::default()
        }
    }

    fn put(key: &str) -> Op {
        Op::Put(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn task(entries: Vec<Entry>) -> ApplyTask {
        ApplyTask::Entries(entries, HashMap::new())
    }

    fn waiter(w: &Waiters, id: u64) -> oneshot::Receiver<Result<ApplyResult>> {
        let (tx, rx) = oneshot::channel();
        w.insert(id, tx);
        rx
    }

    fn mod_rev(state: &RwLock<StateMachine>, key: &str) -> Option<i64> {
        let sm = state.read();
        let r = sm
            .mvcc
            .range(
                &crate::mvcc::KeyRange::Single(key.as_bytes().to_vec().into()),
                0,
                0,
                false,
            )
            .unwrap();
        r.kvs.first().map(|m| m.mod_revision)
    }

    #[test]
    fn an_idle_stage_applies_a_small_write_batch_on_the_calling_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, state, waiters) = stage(dir.path());
        let mut rx = waiter(&waiters, 7);
        let Dispatched::Inline(done) = q.dispatch(task(vec![entry(1, 7, put("a"))]), true) else {
            panic!("an idle stage should apply a single put inline");
        };
        // Applied before the call returned, answered only on delivery.
        assert_eq!(mod_rev(&state, "a"), Some(2));
        assert!(rx.try_recv().is_err());
        done.deliver();
        assert!(matches!(rx.try_recv(), Ok(Ok(ApplyResult::Put(_)))));
        // Not when the caller has more to do.
        assert!(matches!(
            q.dispatch(task(vec![entry(2, 8, put("b"))]), false),
            Dispatched::Queued
        ));
    }

    #[test]
    fn range_deletes_and_batches_behind_a_reader_go_to_the_apply_thread_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, state, waiters) = stage(dir.path());
        let big = Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        });
        let rx1 = waiter(&waiters, 1);
        let rx2 = waiter(&waiters, 2);
        let rx3 = waiter(&waiters, 3);
        // A reader holds the state: the raft thread must not wait behind
        // it, and a cheap batch must not overtake what is queued.
        let reader = state.read();
        assert!(matches!(
            q.dispatch(task(vec![entry(1, 1, put("k"))]), true),
            Dispatched::Queued
        ));
        assert!(matches!(
            q.dispatch(task(vec![entry(2, 2, big)]), true),
            Dispatched::Queued
        ));
        assert!(matches!(
            q.dispatch(task(vec![entry(3, 3, put("k"))]), true),
            Dispatched::Queued
        ));
        drop(reader);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (r1, r2, r3) = rt.block_on(async { (rx1.await, rx2.await, rx3.await) });
        assert!(matches!(r1, Ok(Ok(ApplyResult::Put(_)))));
        match r2 {
            Ok(Ok(ApplyResult::DeleteRange(d))) => assert_eq!(d.deleted, 1),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(r3, Ok(Ok(ApplyResult::Put(_)))));
        // Put, delete, put: applied in log order.
        assert_eq!(mod_rev(&state, "k"), Some(4));
        // Everything handed over has been applied: inline again.
        assert!(matches!(
            q.dispatch(task(vec![entry(4, 4, put("m"))]), true),
            Dispatched::Inline(_)
        ));
    }

    #[test]
    fn only_bounded_single_key_operations_count_as_cheap() {
        let cheap = |op| cheap_to_apply(&entry(1, 1, op));
        assert!(cheap(put("a")));
        assert!(cheap_to_apply(&Entry::default()));
        assert!(cheap(Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })));
        assert!(!cheap(Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })));
        assert!(!cheap(Op::Compaction(pb::CompactionRequest {
            revision: 1,
            ..Default::default()
        })));
        assert!(!cheap(Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 1 })));
        let txn = |range_end: Vec<u8>| {
            Op::Txn(pb::TxnRequest {
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(Default::default())),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key: b"a".to_vec(),
                        range_end,
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            })
        };
        assert!(cheap(txn(vec![])));
        assert!(!cheap(txn(b"b".to_vec())));
    }

    /// A snapshot that fails to save must not count as saved: the log is
    /// later compacted only up to the newest snapshot that exists, so that
    /// the older file plus the log can still stand in for a corrupt newest
    /// one. (The failed save used to advance that point, and the next
    /// snapshot compacted away the entries the older file needs.)
    #[test]
    fn a_failed_snapshot_save_does_not_move_the_compaction_point() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _state, _waiters, storage) = stage_snapshotting(dir.path(), 10);
        let snap_dir = dir.path().join("snap");
        let applier = q.shared.clone().unwrap();
        let idle = || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while applier
                .lock()
                .snapshotting
                .load(std::sync::atomic::Ordering::Acquire)
            {
                assert!(std::time::Instant::now() < deadline, "snapshot never ended");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // Apply (and log) entries from..=to, one batch each, then wait for
        // any snapshot they started.
        let mut apply = |from: u64, to: u64| {
            for i in from..=to {
                let e = entry(i, 0, put(&format!("k{i}")));
                storage.append(std::slice::from_ref(&e), None);
                let _ = q.dispatch(task(vec![e]), false);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while applier.lock().done < q.sent {
                assert!(std::time::Instant::now() < deadline, "apply stalled");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            idle();
        };
        let first = |s: &RaftStorage| raft::Storage::first_index(s).unwrap();
        apply(1, 10);
        assert!(snap_dir.join(format!("{:016x}.snap", 10)).exists());
        // The snapshot at 20 cannot be written.
        std::fs::rename(&snap_dir, dir.path().join("away")).unwrap();
        apply(11, 20);
        std::fs::rename(dir.path().join("away"), &snap_dir).unwrap();
        assert!(!snap_dir.join(format!("{:016x}.snap", 20)).exists());
        // The snapshot at 30 is written; the log keeps what follows 10.
        apply(21, 30);
        assert!(snap_dir.join(format!("{:016x}.snap", 30)).exists());
        assert!(first(&storage) <= 11, "log starts at {}", first(&storage));
        // The next one compacts up to 30, the newest saved.
        apply(31, 40);
        assert_eq!(first(&storage), 31);
    }
}
