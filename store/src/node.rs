//! node: one running member. It recovers state from disk (newest valid
//! snapshot + raft log), starts the raft and apply threads and the leader's
//! lease-expiry task, and offers the gRPC services the three primitives
//! they need: [`Node::propose`] (replicated write), [`Node::linearizable`]
//! (ReadIndex barrier) and read access to the state machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use parking_lot::RwLock;
use prost::Message;
use proto::etcdserverpb as pb;
use proto::raftpb::raft_client::RaftClient;
use raft::eraftpb::ConfState;
use raft::RawNode;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyConfig, StateMachine};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lessor::{Lessor, SystemClock};
use crate::membership::{self, Member};
use crate::metrics::METRICS;
use crate::raft::apply::{run_apply, Applied, ApplyLoop, SnapshotPolicy, Waiters};
use crate::raft::storage::RaftStorage;
use crate::raft::transport::{PeerService, Transport};
use crate::raft::{run_raft, RaftLoop, RaftMsg, RaftStatus};
use crate::request::{ApplyResult, InternalRequest, Op};
use crate::snapshot::SnapDir;

/// Extra bytes gRPC may carry beyond `--max-request-bytes` (etcd's grpcOverheadBytes).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Unique request ids: 16 bits of member id, then a time-seeded counter (as etcd's idutil).
struct IdGen(AtomicU64);

impl IdGen {
    fn new(member: u64) -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        IdGen(AtomicU64::new(
            ((member & 0xffff) << 48) | ((ms & 0xff_ffff_ffff) << 8),
        ))
    }
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A running member.
pub struct Node {
    /// Configuration.
    pub cfg: Config,
    /// This member's ID.
    pub member_id: u64,
    /// The cluster ID.
    pub cluster_id: u64,
    /// Cluster members.
    pub members: RwLock<Vec<Member>>,
    /// The replicated state machine.
    pub state: Arc<RwLock<StateMachine>>,
    /// Raft status.
    pub status: Arc<RaftStatus>,
    /// Applied progress (wakes watchers and readers).
    pub applied: watch::Receiver<Applied>,
    /// Lease expiry clock.
    pub lessor: Arc<Lessor>,
    /// The raft log.
    pub storage: RaftStorage,
    /// Snapshot files.
    pub snaps: Arc<SnapDir>,
    raft_tx: flume::Sender<RaftMsg>,
    waiters: Arc<Waiters>,
    ids: IdGen,
    /// Peer clients to the current leader, for forwarded KeepAlives.
    leader_clients: parking_lot::Mutex<HashMap<u64, RaftClient<tonic::transport::Channel>>>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
}

impl Node {
    /// Recover from `cfg.data_dir` (or bootstrap a new member) and start.
    pub fn start(cfg: Config) -> anyhow::Result<Arc<Node>> {
        let members = membership::initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
        let me = members
            .iter()
            .find(|m| m.name == cfg.name)
            .cloned()
            .context("local member missing from --initial-cluster")?;
        let cluster_id = membership::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
        let member_dir = cfg.data_dir.join("member");
        std::fs::create_dir_all(&member_dir)
            .with_context(|| format!("cannot create data dir {}", member_dir.display()))?;
        let storage = RaftStorage::open(&cfg.wal_dir, !cfg.unsafe_no_fsync)
            .with_context(|| format!("cannot open raft log in {}", cfg.wal_dir.display()))?;
        let snaps = Arc::new(SnapDir::open(member_dir.join("snap"), cfg.max_snapshots)?);
        let mut sm = snaps
            .load_newest(|p, e| {
                tracing::error!(path = %p.display(), error = %e, "skipping corrupt snapshot file")
            })
            .context("no usable state-machine snapshot")?
            .unwrap_or_default();
        if storage.is_empty() {
            if sm.applied_index != 0 {
                bail!(
                    "snapshot at index {} exists but the raft log in {} is empty: refusing to start \
                     (restore the raft log or start from an empty data dir)",
                    sm.applied_index,
                    cfg.wal_dir.display()
                );
            }
            let cs = ConfState {
                voters: members.iter().map(|m| m.id).collect(),
                ..Default::default()
            };
            storage.set_conf_state(cs);
            tracing::info!(member = %format!("{:x}", me.id), cluster = %format!("{cluster_id:x}"), "bootstrapped new cluster");
        } else {
            let first = storage.first_log_index();
            if sm.applied_index + 1 < first {
                bail!(
                    "the raft log starts at index {first} but the newest valid snapshot covers only up to {}: \
                     entries in between are missing, refusing to start with possibly lost data",
                    sm.applied_index
                );
            }
            if sm.applied_index > storage.last_log_index() {
                bail!(
                    "snapshot at index {} is ahead of the raft log (last index {}): the raft log lost entries",
                    sm.applied_index,
                    storage.last_log_index()
                );
            }
            // Applied entries were committed; an unsynced commit index may lag.
            let mut hs = storage.hard_state();
            if hs.commit < sm.applied_index {
                hs.commit = sm.applied_index;
                storage.append(&[], Some(&hs));
            }
        }
        sm.voters = storage.conf_state().voters;
        sm.learners = storage.conf_state().learners;
        let applied_index = sm.applied_index;
        let heartbeat_ms = cfg.heartbeat_interval.as_millis().max(1) as u64;
        let election_tick =
            (cfg.election_timeout.as_millis() as u64 / heartbeat_ms).max(2) as usize;
        let rcfg = raft::Config {
            id: me.id,
            election_tick,
            heartbeat_tick: 1,
            applied: applied_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            ..Default::default()
        };
        let logger = slog::Logger::root(crate::logging::SlogToTracing, slog::o!());
        let mut raw = RawNode::new(&rcfg, storage.clone(), &logger).context("raft init")?;
        if members.len() == 1 {
            // A single voter need not wait an election timeout.
            raw.campaign().context("raft campaign")?;
        }
        let min_lease_ttl = ((3 * cfg.election_timeout.as_millis() as i64) / 2 + 999) / 1000;
        let apply_cfg = ApplyConfig { min_lease_ttl };
        let lessor = Arc::new(
            Lessor::new(Arc::new(SystemClock)).with_checkpoints(
                cfg.lease_checkpoint
                    .then_some(cfg.lease_checkpoint_interval),
            ),
        );
        lessor.refresh_all(
            sm.leases
                .iter()
                .map(|(id, l)| (*id, l.ttl, l.remaining_ttl)),
        );
        let initial = Applied {
            index: sm.applied_index,
            rev: sm.mvcc.current_rev(),
            compact: sm.mvcc.compact_rev(),
        };
        let state = Arc::new(RwLock::new(sm));
        let (applied_tx, applied_rx) = watch::channel(initial);
        let (raft_tx, raft_rx) = flume::bounded(65536);
        let (apply_tx, apply_rx) = flume::bounded(1024);
        let waiters = Arc::new(Waiters::default());
        let status = Arc::new(RaftStatus::default());
        let w2 = waiters.clone();
        let transport = Transport::start(
            me.id,
            cluster_id,
            members
                .iter()
                .map(|m| (m.id, m.peer_urls.clone()))
                .collect(),
            raft_tx.clone(),
            &tokio::runtime::Handle::current(),
        );
        let rl = RaftLoop {
            transport,
            raw,
            rx: raft_rx,
            apply_tx,
            status: status.clone(),
            tick: cfg.heartbeat_interval,
            fail: Box::new(move |id, e| w2.complete(id, Err(e))),
        };
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || run_raft(rl))?;
        let al = ApplyLoop {
            rx: apply_rx,
            state: state.clone(),
            waiters: waiters.clone(),
            applied_tx,
            cfg: apply_cfg,
            lessor: lessor.clone(),
            status: status.clone(),
            snap: SnapshotPolicy {
                dir: snaps.clone(),
                count: cfg.snapshot_count,
                sync: !cfg.unsafe_no_fsync,
                storage: storage.clone(),
            },
        };
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || run_apply(al))?;
        let members: Vec<Member> = members
            .into_iter()
            .map(|mut m| {
                if m.id == me.id {
                    m.client_urls = cfg.advertise_client_urls.clone();
                }
                m
            })
            .collect();
        let node = Arc::new(Node {
            member_id: me.id,
            cluster_id,
            members: RwLock::new(members),
            state,
            status,
            applied: applied_rx,
            lessor,
            storage,
            snaps,
            raft_tx,
            waiters,
            ids: IdGen::new(rcfg.id),
            leader_clients: parking_lot::Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            cfg,
        });
        Ok(node)
    }

    /// Spawn background tasks (lease expiry, metrics refresh) on the runtime.
    pub fn spawn_background(self: &Arc<Self>) {
        let n = self.clone();
        tokio::spawn(async move { n.lease_loop().await });
        let n = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = n.shutdown.cancelled() => return,
                    _ = t.tick() => {}
                }
                let (size, keys) = {
                    let s = n.state.read();
                    (s.mvcc.size_bytes(), s.mvcc.live_keys())
                };
                METRICS.db_size.set(size);
                METRICS.keys_total.set(keys as i64);
            }
        });
    }

    async fn lease_loop(self: Arc<Self>) {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = t.tick() => {}
            }
            // New leadership gives every lease a fresh TTL when the apply
            // thread applies the leader's first entry of its term, as in
            // etcd (`raft::apply`); refreshing here, later and unordered
            // with grants, would drop the timers of leases granted meanwhile.
            if !self.status.is_leader() {
                continue;
            }
            self.propose_lease_checkpoints();
            for id in self.lessor.take_expired(Duration::from_secs(3)) {
                let n = self.clone();
                tokio::spawn(async move {
                    let r = n
                        .propose(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }))
                        .await;
                    match r {
                        Ok(_) | Err(Error::LeaseNotFound) => {}
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "failed to revoke expired lease")
                        }
                    }
                });
            }
        }
    }

    /// Propose the lease checkpoints that are due (etcd's
    /// checkpointScheduledLeases): batches of at most 1000, at most 500
    /// batches per lease-loop turn. A periodic checkpoint whose proposal is
    /// lost is retried one interval later (the lessor reschedules it).
    fn propose_lease_checkpoints(self: &Arc<Self>) {
        const MAX_BATCH: usize = 1000;
        for _ in 0..500 {
            let cps = self.lessor.take_checkpoints(MAX_BATCH);
            if cps.is_empty() {
                return;
            }
            let full = cps.len() == MAX_BATCH;
            let req = pb::LeaseCheckpointRequest {
                checkpoints: cps
                    .into_iter()
                    .map(|(id, remaining_ttl)| pb::LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            };
            let n = self.clone();
            tokio::spawn(async move {
                if let Err(e) = n.propose(Op::LeaseCheckpoint(req)).await {
                    tracing::debug!(error = %e, "lease checkpoint not applied");
                }
            });
            if !full {
                return;
            }
        }
    }

    /// Publish this member's name and client URLs through raft (etcd's
    /// publish), retrying until it applies or the node stops.
    pub async fn publish(self: Arc<Self>) {
        let me = self
            .members
            .read()
            .iter()
            .find(|m| m.id == self.member_id)
            .cloned();
        let Some(me) = me else { return };
        let attr = pb::Member {
            id: me.id,
            name: me.name.clone(),
            client_ur_ls: me.client_urls.clone(),
            ..Default::default()
        };
        loop {
            if self.state.read().member_attrs.get(&me.id) == Some(&attr) {
                return;
            }
            match self.propose(Op::MemberAttr(attr.clone())).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// A fresh unique id (request ids, server-chosen lease ids).
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Replicate `op` through raft and wait until it is applied here.
    pub async fn propose(&self, op: Op) -> Result<ApplyResult> {
        let id = self.next_id();
        let data = InternalRequest { id, op: Some(op) }.encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        if self
            .raft_tx
            .send_async(RaftMsg::Propose { id, data })
            .await
            .is_err()
        {
            self.waiters.remove(id);
            return Err(Error::Stopped);
        }
        // etcd: 5 s plus two election timeouts.
        let timeout = Duration::from_secs(5) + 2 * self.cfg.election_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.waiters.remove(id);
                Err(Error::Timeout)
            }
        }
    }

    /// Wait until this member has applied everything committed before now
    /// (a ReadIndex barrier). After it returns, local reads are linearizable.
    pub async fn linearizable(&self) -> Result<()> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(5) + 2 * self.cfg.election_timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            self.raft_tx
                .send_async(RaftMsg::ReadIndex(tx))
                .await
                .map_err(|_| Error::Stopped)?;
            let idx = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(Error::Timeout),
                Ok(Err(_)) => return Err(Error::Stopped),
                // A leader change invalidates the round: ask again with a fresh context.
                Ok(Ok(Err(Error::LeaderChanged))) => continue,
                // No leader yet: wait for an election, bounded by the deadline.
                Ok(Ok(Err(Error::NoLeader))) => {
                    if tokio::time::Instant::now() + Duration::from_millis(20) >= deadline {
                        return Err(Error::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Ok(r)) => r?,
            };
            let mut rx = self.applied.clone();
            return match tokio::time::timeout_at(deadline, rx.wait_for(|a| a.index >= idx)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Error::Stopped),
                Err(_) => Err(Error::Timeout),
            };
        }
    }

    /// The receiving side of the peer transport, for the peer listener.
    pub fn peer_service(self: &Arc<Self>) -> PeerService {
        let n = self.clone();
        let n2 = self.clone();
        PeerService::new(
            self.cluster_id,
            self.raft_tx.clone(),
            Arc::new(move |id| n.renew_local(id)),
        )
        .with_remaining(Arc::new(move |id| n2.remaining_local(id)))
    }

    /// Renew a lease on this member, which must lead. TTL 0 means the lease
    /// does not exist (etcd answers KeepAlive that way).
    pub fn renew_local(&self, id: i64) -> Result<i64> {
        if !self.status.is_leader() {
            return Err(if self.status.leader() == 0 {
                Error::NoLeader
            } else {
                Error::NotLeader
            });
        }
        if !self.state.read().leases.contains(id) {
            return Ok(0);
        }
        Ok(self.lessor.renew(id).unwrap_or(0))
    }

    /// Renew a lease: locally on the leader, otherwise forwarded to the
    /// leader over the peer transport (followers accept KeepAlive too).
    pub async fn renew_lease(&self, id: i64) -> Result<i64> {
        let leader = self.status.leader();
        if leader == 0 || leader == self.member_id {
            return self.renew_local(id);
        }
        let mut client = self.leader_client(leader)?;
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.lease_renew(proto::raftpb::LeaseRenewRequest { id }),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r.into_inner().ttl),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Err(Error::LeaseNotFound),
            Ok(Err(_)) => Err(Error::LeaderChanged),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// A peer client to `leader` (cached per leader).
    fn leader_client(&self, leader: u64) -> Result<RaftClient<tonic::transport::Channel>> {
        let urls = self
            .members
            .read()
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.peer_urls.clone())
            .unwrap_or_default();
        let Some(url) = urls.first() else {
            return Err(Error::NoLeader);
        };
        let mut clients = self.leader_clients.lock();
        if let Some(c) = clients.get(&leader) {
            return Ok(c.clone());
        }
        let ep = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        let c = RaftClient::new(ep.connect_lazy());
        clients.insert(leader, c.clone());
        Ok(c)
    }

    /// A lease's remaining TTL on this member, which must lead; -1 if the
    /// lease does not exist.
    pub fn remaining_local(&self, id: i64) -> Result<i64> {
        if !self.status.is_leader() {
            return Err(if self.status.leader() == 0 {
                Error::NoLeader
            } else {
                Error::NotLeader
            });
        }
        let Some(ttl) = self.state.read().leases.get(id).map(|l| l.ttl) else {
            return Ok(-1);
        };
        Ok(self.lessor.remaining(id).unwrap_or(ttl))
    }

    /// A lease's remaining TTL by the leader's clock (etcd's TimeToLive
    /// forwards to the leader too): only the leader sees renewals.
    pub async fn lease_remaining(&self, id: i64) -> Result<i64> {
        let leader = self.status.leader();
        if leader == 0 || leader == self.member_id {
            return self.remaining_local(id);
        }
        let mut client = self.leader_client(leader)?;
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.lease_remaining(proto::raftpb::LeaseRenewRequest { id }),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r.into_inner().ttl),
            Ok(Err(_)) => Err(Error::LeaderChanged),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Ask raft to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) -> Result<()> {
        self.raft_tx
            .try_send(RaftMsg::TransferLeader(to))
            .map_err(|_| Error::Stopped)
    }

    /// A response header with this member's identity and `rev`.
    pub fn header(&self, rev: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: rev,
            raft_term: self.status.term(),
        }
    }

    /// Fill identity fields into a header produced by apply.
    pub fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    /// Current revision as applied here.
    pub fn current_rev(&self) -> i64 {
        self.applied.borrow().rev
    }

    /// Stop: fail waiters and signal tasks.
    pub fn stop(&self) {
        self.shutdown.cancel();
        let _ = self.raft_tx.try_send(RaftMsg::Stop);
        self.waiters.fail_all(Error::Stopped);
    }
}
