//! raft: the consensus layer. One dedicated thread owns `raft::RawNode`
//! ([`run_raft`]); a second thread applies committed entries to the state
//! machine ([`apply::spawn`]), except small batches that arrive while it
//! is idle, which the raft thread applies itself.
//!
//! The raft thread never awaits network I/O and never waits for the state
//! machine (it applies a batch itself only when it can take the state lock
//! at once, see [`apply::ApplyQueue`]). It drains every queued proposal
//! before handling a Ready, so many client writes share one raft-engine
//! write and one fsync (group commit). Linearizable reads are batched into
//! one ReadIndex round per loop turn; each round uses a fresh context
//! that names the member (the leader keeps every member's rounds by context),
//! never reused across retries or leader changes. Committed entries go to
//! the apply stage in order; under load the apply thread pipelines apply
//! with the next fsync.

pub mod apply;
pub mod storage;
pub mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::METRICS;
use storage::RaftStorage;

/// Messages to the raft thread.
pub enum RaftMsg {
    /// Propose an encoded [`InternalRequest`](crate::request::InternalRequest).
    Propose {
        /// The request id (to fail its waiter if the proposal is dropped).
        id: u64,
        /// Encoded request.
        data: Vec<u8>,
    },
    /// Ask for a linearizable read index.
    ReadIndex(oneshot::Sender<Result<u64>>),
    /// Propose a membership change (its context is an encoded
    /// [`InternalRequest`](crate::request::InternalRequest)).
    ProposeConfChange {
        /// The request id.
        id: u64,
        /// The change.
        cc: ConfChangeV2,
    },
    /// The leader's view of each member's replicated index (None if this
    /// member does not lead).
    Progress(oneshot::Sender<Option<HashMap<u64, u64>>>),
    /// How streaming a snapshot to a member ended (true = delivered).
    SnapshotStatus(u64, bool),
    /// Transfer leadership to a member.
    TransferLeader(u64),
    /// A raft message from a peer.
    Step(raft::eraftpb::Message),
    /// A peer could not be reached.
    Unreachable(u64),
    /// Stop the raft loop (shutdown): no more messages to peers.
    Stop,
}

/// Raft status shared with the rest of the node (lock-free reads).
#[derive(Default)]
pub struct RaftStatus {
    /// Current leader id (0 = none).
    pub leader: AtomicU64,
    /// Current term.
    pub term: AtomicU64,
    /// Commit index.
    pub commit: AtomicU64,
    /// Last log index.
    pub last_index: AtomicU64,
    /// Whether this member leads.
    pub is_leader: AtomicBool,
    /// Whether this member leads a configuration in which it is the only
    /// voter and has committed an entry of its own term. raft-rs answers
    /// such a leader's ReadIndex with its commit index at once, asking no
    /// one, so a reader may take `commit` itself instead of a round trip
    /// through the raft thread ([`RaftStatus::local_read_index`]).
    pub sole_voter_leader: AtomicBool,
}

impl RaftStatus {
    /// Current leader (0 = none).
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    /// The read index raft-rs would give a ReadIndex right now, when it
    /// needs no other member for it: this member is the only voter, leads,
    /// and has committed an entry of its term (raft-rs's own conditions
    /// for answering from its commit index alone). Every write answered so
    /// far is at or below it: the raft thread publishes a commit index
    /// before it hands those entries to the apply stage. None: ask the
    /// raft thread (`RaftMsg::ReadIndex`).
    ///
    /// The flag lags the raft thread by at most one loop turn. That is
    /// safe: the raft thread clears it after handling the messages of a
    /// turn and before sending any, so no other member can have won an
    /// election or committed a write with this member's vote or
    /// acknowledgement before it is cleared; a reader that still saw it
    /// set started before any such write was answered.
    pub fn local_read_index(&self) -> Option<u64> {
        self.sole_voter_leader
            .load(Ordering::Acquire)
            .then(|| self.commit.load(Ordering::Acquire))
    }
}

/// Failure callbacks for proposals the raft thread could not accept.
pub type FailFn = Box<dyn Fn(u64, Error) + Send>;

/// Everything the raft thread needs.
pub struct RaftLoop {
    /// The raft node.
    pub raw: RawNode<RaftStorage>,
    /// Incoming messages.
    pub rx: flume::Receiver<RaftMsg>,
    /// Committed entries to the apply stage.
    pub apply: apply::ApplyQueue,
    /// Shared status.
    pub status: Arc<RaftStatus>,
    /// Tick interval (the heartbeat interval).
    pub tick: Duration,
    /// Fails a proposal's waiter.
    pub fail: FailFn,
    /// Outbound messages to peers.
    pub transport: Arc<transport::Transport>,
    /// Snapshot files (received snapshots are made regular on install).
    pub snaps: Arc<crate::snapshot::SnapDir>,
    /// fsync snapshot renames.
    pub sync: bool,
}

/// A caller waiting for a read index.
type ReadWaiter = oneshot::Sender<Result<u64>>;

/// Upper bound of messages drained per loop turn, to bound latency.
const MAX_DRAIN: usize = 8192;

/// The context of this member's `seq`-th ReadIndex round. It names the
/// member too: the leader keeps the rounds of every member (followers
/// forward theirs) in one table keyed by context, and raft-rs silently
/// drops a round whose context is already pending there. With a bare
/// per-member counter, the leader's and the followers' rounds collided
/// under load, and the dropped ones waited for the retry (p99 ≈ 325 ms
/// on range-l 100/1000 with 3 members).
fn read_ctx(member_id: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&member_id.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

/// Run the raft loop until the message channel closes.
pub fn run_raft(mut l: RaftLoop) {
    let mut next_tick = Instant::now() + l.tick;
    let mut pending_reads: Vec<ReadWaiter> = Vec::new();
    // ReadIndex rounds in flight: context → (issued at, waiters).
    let mut inflight_reads: HashMap<Vec<u8>, (Instant, Vec<ReadWaiter>)> = HashMap::new();
    // raft-rs drops a ReadIndex silently (e.g. a leader that has not yet
    // committed an entry of its term); rounds unanswered this long are
    // re-issued with a fresh context.
    let read_retry = (l.tick * 3).max(Duration::from_millis(150));
    let mut read_seq: u64 = 0;
    let mut last_leader = 0u64;
    let mut stop = false;
    while !stop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let mut msgs = Vec::new();
        match l.rx.recv_timeout(timeout) {
            Ok(m) => msgs.push(m),
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        while msgs.len() < MAX_DRAIN {
            match l.rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        for m in msgs {
            match m {
                RaftMsg::Propose { id, data } => {
                    if let Err(e) = l.raw.propose(vec![], data) {
                        let err = if l.raw.raft.leader_id == 0 {
                            Error::NoLeader
                        } else {
                            Error::Internal(format!("proposal dropped: {e}"))
                        };
                        METRICS.proposals_failed.inc();
                        (l.fail)(id, err);
                    } else {
                        METRICS.proposals_pending.inc();
                    }
                }
                RaftMsg::ProposeConfChange { id, cc } => {
                    // raft-rs turns a second pending change into an empty
                    // entry silently; refuse it here instead.
                    let r = if l.raw.raft.has_pending_conf() {
                        Err(Error::Unhealthy)
                    } else if l.raw.raft.leader_id == 0 {
                        Err(Error::NoLeader)
                    } else {
                        l.raw
                            .propose_conf_change(vec![], cc)
                            .map_err(|e| Error::Internal(format!("proposal dropped: {e}")))
                    };
                    match r {
                        Ok(()) => METRICS.proposals_pending.inc(),
                        Err(e) => {
                            METRICS.proposals_failed.inc();
                            (l.fail)(id, e);
                        }
                    }
                }
                RaftMsg::Progress(tx) => {
                    let p = (l.raw.raft.state == StateRole::Leader).then(|| {
                        l.raw
                            .raft
                            .prs()
                            .iter()
                            .map(|(id, pr)| (*id, pr.matched))
                            .collect()
                    });
                    let _ = tx.send(p);
                }
                RaftMsg::SnapshotStatus(to, ok) => {
                    let st = if ok {
                        raft::SnapshotStatus::Finish
                    } else {
                        raft::SnapshotStatus::Failure
                    };
                    l.raw.report_snapshot(to, st);
                }
                RaftMsg::ReadIndex(tx) => pending_reads.push(tx),
                RaftMsg::TransferLeader(to) => l.raw.transfer_leader(to),
                RaftMsg::Step(m) => {
                    if let Err(e) = l.raw.step(m) {
                        tracing::debug!(error = %e, "dropped raft message");
                    }
                }
                RaftMsg::Unreachable(id) => l.raw.report_unreachable(id),
                RaftMsg::Stop => stop = true,
            }
        }
        if Instant::now() >= next_tick {
            l.raw.tick();
            next_tick = Instant::now() + l.tick;
        }
        // Before anything of this turn is sent (a vote, an append
        // response): see `RaftStatus::local_read_index`.
        publish_sole_voter_leader(&l);
        let now = Instant::now();
        let stale: Vec<Vec<u8>> = inflight_reads
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) >= read_retry)
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in stale {
            if let Some((_, txs)) = inflight_reads.remove(&ctx) {
                METRICS.slow_read_indexes.inc();
                pending_reads.extend(txs);
            }
        }
        if !pending_reads.is_empty() && l.raw.raft.leader_id == 0 {
            // raft-rs silently drops a ReadIndex without a known leader;
            // answer now so callers retry instead of waiting for a timeout.
            for tx in pending_reads.drain(..) {
                let _ = tx.send(Err(Error::NoLeader));
            }
        }
        if !pending_reads.is_empty() {
            read_seq += 1;
            let ctx = read_ctx(l.raw.raft.id, read_seq);
            l.raw.read_index(ctx.clone());
            inflight_reads.insert(ctx, (now, std::mem::take(&mut pending_reads)));
        }
        if !l.raw.has_ready() {
            continue;
        }
        let mut ready = l.raw.ready();
        // Published before the messages that tell followers about it: a
        // follower may apply and answer a client before our fsync ends, and
        // a lease renewal forwarded here must then wait for our apply.
        if l.raw.raft.state == StateRole::Leader {
            l.status
                .commit
                .fetch_max(l.raw.raft.raft_log.committed, Ordering::AcqRel);
        }
        // Messages that need no local persistence go out first, so peers
        // work in parallel with our fsync.
        l.transport.send(ready.take_messages());
        if let Some(ss) = ready.ss() {
            l.status.leader.store(ss.leader_id, Ordering::Release);
            l.status
                .is_leader
                .store(ss.raft_state == StateRole::Leader, Ordering::Release);
            if ss.leader_id != last_leader {
                if ss.leader_id != 0 {
                    METRICS.leader_changes.inc();
                }
                // Reads waiting on the old leader's ReadIndex must be retried
                // by their callers with a fresh index.
                for (_, (_, txs)) in inflight_reads.drain() {
                    for tx in txs {
                        let _ = tx.send(Err(Error::LeaderChanged));
                    }
                }
                last_leader = ss.leader_id;
            }
            METRICS.has_leader.set((ss.leader_id != 0) as i64);
        }
        for rs in ready.take_read_states() {
            if let Some((_, txs)) = inflight_reads.remove(&rs.request_ctx) {
                for tx in txs {
                    let _ = tx.send(Ok(rs.index));
                }
            }
        }
        if !ready.snapshot().is_empty() {
            install_snapshot(&mut l, ready.snapshot().get_metadata().clone());
        }
        let committed = ready.take_committed_entries();
        if dispatch_committed(&mut l, committed) {
            break;
        }
        let started = Instant::now();
        // A Ready that changes only the commit index needs no fsync (raft's
        // must_sync); entries, term, vote and snapshots always do.
        let must_sync = ready.must_sync();
        // Fault injection around the write (see `failpoints`): `return`
        // before it writes this Ready without fsync (a planted bug: a disk
        // that lies about fsync).
        #[cfg(feature = "failpoints")]
        let writes = !ready.entries().is_empty() || ready.hs().is_some();
        #[cfg(feature = "failpoints")]
        let must_sync = must_sync
            && !(writes
                && crate::failpoints::eval(crate::failpoints::RAFT_BEFORE_PERSIST).is_some());
        l.raw
            .mut_store()
            .append_sync(ready.entries(), ready.hs(), must_sync);
        if must_sync {
            METRICS.wal_fsync.observe(started.elapsed().as_secs_f64());
        }
        if let Some(hs) = ready.hs() {
            l.status.term.store(hs.term, Ordering::Release);
            l.status.commit.store(hs.commit, Ordering::Release);
        }
        // `return` after it drops the messages that waited for the write
        // (votes, append responses), as a lossy network would.
        #[cfg(feature = "failpoints")]
        let persisted =
            if writes && crate::failpoints::eval(crate::failpoints::RAFT_AFTER_PERSIST).is_some() {
                drop(ready.take_persisted_messages());
                Vec::new()
            } else {
                ready.take_persisted_messages()
            };
        #[cfg(not(feature = "failpoints"))]
        let persisted = ready.take_persisted_messages();
        l.transport.send(persisted);
        let mut light = l.raw.advance(ready);
        if let Some(c) = light.commit_index() {
            l.raw.mut_store().set_commit(c);
            l.status.commit.store(c, Ordering::Release);
        }
        l.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        if dispatch_committed(&mut l, committed) {
            break;
        }
        l.raw.advance_apply();
        l.status
            .last_index
            .store(l.raw.raft.raft_log.last_index(), Ordering::Release);
        // A membership change applied or an entry of the term committed
        // in this turn.
        publish_sole_voter_leader(&l);
    }
    for (_, (_, txs)) in inflight_reads.drain() {
        for tx in txs {
            let _ = tx.send(Err(Error::Stopped));
        }
    }
    l.raw.store().flush_commit();
}

/// Publish whether a ReadIndex needs no other member (see
/// [`RaftStatus::local_read_index`]).
fn publish_sole_voter_leader(l: &RaftLoop) {
    let r = &l.raw.raft;
    let sole = r.state == StateRole::Leader && r.prs().is_singleton() && r.commit_to_current_term();
    l.status.sole_voter_leader.store(sole, Ordering::Release);
}

/// A snapshot from the leader replaces the log: record it durably, make the
/// verified received file the newest snapshot, and have the apply thread
/// load it (in order with the committed entries that follow).
fn install_snapshot(l: &mut RaftLoop, meta: raft::eraftpb::SnapshotMetadata) {
    let t = Instant::now();
    l.raw.mut_store().install_snapshot(&meta);
    if let Err(e) = l.snaps.promote_received(meta.index, l.sync) {
        panic!(
            "cannot keep the received snapshot at index {}: {e}",
            meta.index
        );
    }
    tracing::info!(
        index = meta.index,
        term = meta.term,
        took_ms = t.elapsed().as_millis() as u64,
        "installed snapshot from the leader"
    );
    if let apply::Dispatched::Closed = l
        .apply
        .dispatch(apply::ApplyTask::Snapshot(meta.index), false)
    {
        tracing::error!("apply thread is gone; stopping");
    }
}

/// Whether `id` is a voter or learner (incoming or outgoing) of `cs`.
fn in_conf(cs: &raft::eraftpb::ConfState, id: u64) -> bool {
    [
        cs.get_voters(),
        cs.get_learners(),
        cs.get_voters_outgoing(),
        cs.get_learners_next(),
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

/// Apply membership changes on the raft thread (raft-rs requires it), then
/// hand every committed entry, with raft's configuration after each
/// membership change, to the apply stage in order (which applies a small
/// batch right here when the apply thread is idle, see
/// [`apply::ApplyQueue`]). Returns true when a
/// change removed this member: raft-rs must not be driven any further then
/// (a removed leader has no progress entry of its own, and raft-rs unwraps
/// it on the next persisted write or append response), so the raft loop
/// stops and the apply thread, applying the removal, ends the process.
fn dispatch_committed(l: &mut RaftLoop, entries: Vec<raft::eraftpb::Entry>) -> bool {
    if entries.is_empty() {
        return false;
    }
    let me = l.raw.raft.id;
    let mut was_member = in_conf(&l.raw.raft.prs().conf().to_conf_state(), me);
    let mut removed = false;
    let mut entries = entries;
    let mut confs = HashMap::new();
    for (pos, e) in entries.iter().enumerate() {
        let r = match e.get_entry_type() {
            EntryType::EntryConfChange if !e.data.is_empty() => {
                let mut cc = ConfChange::default();
                protobuf::Message::merge_from_bytes(&mut cc, &e.data)
                    .expect("invariant: committed ConfChange decodes");
                l.raw.apply_conf_change(&cc)
            }
            EntryType::EntryConfChangeV2 if !e.data.is_empty() => {
                let mut cc = ConfChangeV2::default();
                protobuf::Message::merge_from_bytes(&mut cc, &e.data)
                    .expect("invariant: committed ConfChangeV2 decodes");
                l.raw.apply_conf_change(&cc)
            }
            _ => continue,
        };
        match r {
            Ok(cs) => {
                l.raw.mut_store().set_conf_state(cs.clone());
                // Removed: in the configuration before this change, not
                // after it. (A joining member replaying the log is in no
                // configuration until its own addition is applied.)
                removed = was_member && !in_conf(&cs, me);
                was_member = in_conf(&cs, me);
                confs.insert(e.index, Some(cs));
                if removed {
                    // Nothing after our own removal is ours to apply.
                    entries.truncate(pos + 1);
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(index = e.index, error = %err, "raft refused a membership change");
                confs.insert(e.index, None);
            }
        }
    }
    let n = entries.len() as i64;
    METRICS.proposals_committed.inc_by(n as u64);
    // With more proposals waiting, the raft thread should get on with the
    // next write while the apply thread applies this batch.
    let idle = l.rx.is_empty();
    match l
        .apply
        .dispatch(apply::ApplyTask::Entries(entries, confs), idle)
    {
        apply::Dispatched::Queued => {}
        // Applied here (the apply thread was idle): answer the proposers,
        // as the apply thread would have.
        apply::Dispatched::Inline(done) => done.deliver(),
        apply::Dispatched::Closed => tracing::error!("apply thread is gone; stopping"),
    }
    if removed {
        tracing::warn!("this member was removed from the cluster; the raft loop stops");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    /// The raft loop of member 1 of `voters` (the others never answer),
    /// ticking every `tick`: its message sender, its status and the apply
    /// stage's queue (kept open, never read).
    fn test_loop(
        dir: &std::path::Path,
        rt: &tokio::runtime::Runtime,
        voters: Vec<u64>,
        tick: Duration,
    ) -> (
        flume::Sender<RaftMsg>,
        Arc<RaftStatus>,
        flume::Receiver<apply::ApplyTask>,
    ) {
        let storage = RaftStorage::open(dir, false).unwrap();
        storage.set_conf_state(ConfState {
            voters,
            ..Default::default()
        });
        let cfg = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&cfg, storage.clone(), &logger).unwrap();
        let (tx, rx) = flume::bounded(16);
        let (apply_tx, apply_rx) = flume::bounded(1024);
        let transport = transport::Transport::start(
            1,
            7,
            vec![],
            tx.clone(),
            storage.clone(),
            rt.handle(),
            Default::default(),
        );
        let status = Arc::new(RaftStatus::default());
        let l = RaftLoop {
            raw,
            rx,
            apply: apply::ApplyQueue::detached(apply_tx),
            status: status.clone(),
            tick,
            fail: Box::new(|_, _| {}),
            transport,
            snaps: Arc::new(crate::snapshot::SnapDir::open(dir.join("snap"), 2).unwrap()),
            sync: false,
        };
        std::thread::spawn(move || run_raft(l));
        (tx, status, apply_rx)
    }

    /// Polls `f` every 5 ms for up to 10 s.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_sole_voter_leader_reads_locally_until_a_second_voter_joins() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, status, _apply) = test_loop(dir.path(), &rt, vec![1], Duration::from_millis(10));
        // Elected, and its first entry of the term committed.
        eventually("a local read index", || status.local_read_index().is_some());
        assert!(status.is_leader());
        // At least the leader's first entry of its term.
        let idx = status.local_read_index().unwrap();
        assert!(idx >= 1, "read index {idx}");
        // With a second voter, a read index needs member 2's heartbeat
        // answers: no more local reads, though member 1 still leads.
        let mut cc = ConfChangeV2::default();
        let mut c = raft::eraftpb::ConfChangeSingle::default();
        c.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
        c.node_id = 2;
        cc.mut_changes().push(c);
        tx.send(RaftMsg::ProposeConfChange { id: 1, cc }).unwrap();
        eventually("local reads to stop", || {
            status.local_read_index().is_none()
        });
        assert!(status.is_leader());
        tx.send(RaftMsg::Stop).unwrap();
    }

    #[test]
    fn read_index_without_a_leader_fails_fast_instead_of_hanging() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A member of a 3-voter group whose peers never answer: no leader.
        let (tx, status, _apply) =
            test_loop(dir.path(), &rt, vec![1, 2, 3], Duration::from_millis(100));
        let (rtx, rrx) = oneshot::channel();
        tx.send(RaftMsg::ReadIndex(rtx)).unwrap();
        // raft-rs drops a ReadIndex without a leader; the loop must answer
        // it itself (the bound only guards against a hang).
        let got = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), rrx).await });
        assert!(
            matches!(got, Ok(Ok(Err(Error::NoLeader)))),
            "expected NoLeader, got {got:?}"
        );
        assert_eq!(status.local_read_index(), None);
        tx.send(RaftMsg::Stop).unwrap();
    }
}
