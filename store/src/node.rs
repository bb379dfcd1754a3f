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
use crate::lessor::Lessor;
use crate::membership::{self, Member};
use crate::metrics::METRICS;
use crate::raft::apply::{self, Applied, ApplyLoop, SnapshotPolicy, Waiters};
use crate::raft::storage::RaftStorage;
use crate::raft::transport::{PeerService, Received, Transport};
use crate::raft::{run_raft, RaftLoop, RaftMsg, RaftStatus};
use crate::request::{ApplyResult, InternalRequest, Op};
use crate::server::tls::{PeerDialer, Tls};
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
    /// This member's client URLs (as bound: port 0 is resolved).
    pub local_client_urls: RwLock<Vec<String>>,
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
    /// This member's auth tokens.
    pub tokens: Arc<crate::auth::token::TokenProvider>,
    pub(crate) raft_tx: flume::Sender<RaftMsg>,
    pub(crate) waiters: Arc<Waiters>,
    ids: IdGen,
    /// Peer clients to the current leader, for forwarded KeepAlives.
    leader_clients: parking_lot::Mutex<HashMap<u64, RaftClient<tonic::transport::Channel>>>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Cancelled when the client listeners must stop accepting requests
    /// (graceful shutdown, before [`shutdown`](Self::shutdown)); a child of
    /// `shutdown`, so stopping the node stops them too.
    pub stop_serving: CancellationToken,
    /// Cancelled when this member has been removed from the cluster.
    pub removed: CancellationToken,
    /// Cancelled once this member's name and client URLs are applied
    /// ([`publish`](Self::publish)); the client listeners accept
    /// connections only then, as etcd's wait for its ReadyNotify.
    pub published: CancellationToken,
    /// Whether this member is a learner (kept by the apply thread; read on
    /// every client request).
    learner: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) transport: Arc<Transport>,
    received: Received,
    /// One membership change at a time from this member.
    pub(crate) conf_lock: tokio::sync::Mutex<()>,
    /// Whether this member started on an existing raft log (a restart),
    /// not a fresh bootstrap or join; etcd checks only such members at
    /// startup. Holds the commit index found on disk.
    pub(crate) restarted_commit: Option<u64>,
    /// TLS material of the listeners, and the peer dialer.
    pub tls: Tls,
}

/// How this member came to be: its identity and the peers it starts with.
struct Identity {
    member_id: u64,
    cluster_id: u64,
    /// Peers known before the member table is loaded (bootstrap or join).
    members: Vec<pb::Member>,
}

/// Ask the members in `--initial-cluster` for the cluster (etcd's
/// `--initial-cluster-state existing`): its ID, and this member's ID, found
/// by its peer URLs among the members someone added with MemberAdd.
async fn discover(cfg: &Config, dialer: &PeerDialer) -> anyhow::Result<Identity> {
    let mut mine: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    mine.sort();
    let mut errors = Vec::new();
    for (name, urls) in &cfg.initial_cluster {
        if *name == cfg.name {
            continue;
        }
        for url in urls {
            let ep = match PeerDialer::endpoint(url, Duration::from_secs(2)) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let r = async {
                let mut c = RaftClient::new(dialer.connect(&ep).await?);
                Ok::<_, anyhow::Error>(
                    c.members(proto::raftpb::MembersRequest {})
                        .await?
                        .into_inner(),
                )
            };
            match tokio::time::timeout(Duration::from_secs(5), r).await {
                Ok(Ok(resp)) => {
                    let me = resp.members.iter().find(|m| {
                        let mut u: Vec<String> = m
                            .peer_ur_ls
                            .iter()
                            .map(|u| u.trim_end_matches('/').to_string())
                            .collect();
                        u.sort();
                        u == mine
                    });
                    let Some(me) = me else {
                        bail!(
                            "error validating peerURLs: member with peer URLs {} is not in the cluster \
                             reported by {url} (add it first with `etcdctl member add`)",
                            mine.join(",")
                        );
                    };
                    return Ok(Identity {
                        member_id: me.id,
                        cluster_id: resp.cluster_id,
                        members: resp.members.clone(),
                    });
                }
                Ok(Err(e)) => errors.push(format!("{url}: {e:#}")),
                Err(_) => errors.push(format!("{url}: timed out")),
            }
        }
    }
    bail!(
        "cannot fetch the cluster's members from any peer in --initial-cluster \
         (--initial-cluster-state existing): {}",
        errors.join("; ")
    )
}

/// Pause between two compaction steps (etcd's default
/// `--experimental-compaction-sleep-interval`), so that requests queued on
/// the state lock get it in between.
const COMPACTION_PAUSE: Duration = Duration::from_millis(10);

/// The compaction thread: applies an applied compaction to the keys it
/// touched, [`crate::mvcc::COMPACT_STEP_KEYS`] at a time under the state
/// lock (see `Mvcc::compact_step`), until the node is gone. Idle, it looks
/// once per 100 ms.
fn run_compaction_steps(state: std::sync::Weak<RwLock<StateMachine>>) {
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        if !state.read().mvcc.compaction_pending() {
            drop(state);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let t = std::time::Instant::now();
        let more = state
            .write()
            .mvcc
            .compact_step(crate::mvcc::COMPACT_STEP_KEYS);
        drop(state);
        if !more {
            tracing::info!(
                last_step_ms = t.elapsed().as_millis() as u64,
                "finished compaction"
            );
        }
        std::thread::sleep(COMPACTION_PAUSE);
    }
}

/// The bootstrap entries of a new cluster, as etcd writes them: one
/// committed AddNode per initial member at term 1, carrying the member.
fn bootstrap_entries(members: &[Member]) -> Vec<raft::eraftpb::Entry> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let req = InternalRequest {
                id: 0,
                auth: None,
                op: Some(Op::MemberAdd(pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    ..Default::default()
                })),
            };
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
            single.node_id = m.id;
            let mut cc = raft::eraftpb::ConfChangeV2::default();
            cc.mut_changes().push(single);
            cc.context = req.encode_to_vec().into();
            let mut e = raft::eraftpb::Entry::default();
            e.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
            e.term = 1;
            e.index = i as u64 + 1;
            e.data = protobuf::Message::write_to_bytes(&cc)
                .expect("invariant: ConfChangeV2 encodes")
                .into();
            e
        })
        .collect()
}

fn sm_learner(sm: &StateMachine, me: u64) -> bool {
    sm.conf_state.learners.contains(&me)
}

impl Node {
    /// Recover from `cfg.data_dir` (or bootstrap or join a cluster) and start.
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<Node>> {
        let member_dir = cfg.data_dir.join("member");
        std::fs::create_dir_all(&member_dir)
            .with_context(|| format!("cannot create data dir {}", member_dir.display()))?;
        // Before anything else: bad TLS flags or files stop the start.
        let tls = Tls::load(&cfg)?;
        let t = std::time::Instant::now();
        let storage = RaftStorage::open(&cfg.wal_dir, !cfg.unsafe_no_fsync)
            .with_context(|| format!("cannot open raft log in {}", cfg.wal_dir.display()))?;
        tracing::info!(
            first_index = storage.first_log_index(),
            last_index = storage.last_log_index(),
            took_ms = t.elapsed().as_millis() as u64,
            "opened raft log"
        );
        let snaps = Arc::new(SnapDir::open(member_dir.join("snap"), cfg.max_snapshots)?);
        // A snapshot received from the leader whose install reached the raft
        // log but not the rename (a crash in between) is the newest state.
        for (idx, p) in snaps.received()? {
            if idx == storage.first_log_index() - 1 && idx > 0 {
                tracing::warn!(index = idx, "finishing the install of a received snapshot");
                snaps.promote_received(idx, !cfg.unsafe_no_fsync)?;
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        // Value segments: a cache of what the snapshot and the log hold,
        // rebuilt below; whatever an earlier run left is stale.
        let values_dir = member_dir.join("values");
        crate::mvcc::values::set_dir(Some(&values_dir))
            .with_context(|| format!("cannot prepare {}", values_dir.display()))?;
        let t = std::time::Instant::now();
        let mut sm = snaps
            .load_newest(|p, e| {
                tracing::error!(path = %p.display(), error = %e, "skipping corrupt snapshot file")
            })
            .context("no usable state-machine snapshot")?
            .unwrap_or_default();
        if sm.applied_index > 0 {
            tracing::info!(
                index = sm.applied_index,
                rev = sm.mvcc.current_rev(),
                keys = sm.mvcc.live_keys(),
                took_ms = t.elapsed().as_millis() as u64,
                "loaded state-machine snapshot"
            );
        }
        let initial = membership::initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
        let restarted_commit = (!storage.is_empty()).then(|| storage.hard_state().commit);
        let id = if storage.is_empty() {
            if sm.applied_index != 0 {
                bail!(
                    "snapshot at index {} exists but the raft log in {} is empty: refusing to start \
                     (restore the raft log or start from an empty data dir)",
                    sm.applied_index,
                    cfg.wal_dir.display()
                );
            }
            let id = if cfg.initial_cluster_state == "existing" {
                let id = discover(&cfg, &tls.dialer).await?;
                tracing::info!(member = %format!("{:x}", id.member_id), cluster = %format!("{:x}", id.cluster_id),
                    "joining existing cluster");
                id
            } else {
                let me = initial
                    .iter()
                    .find(|m| m.name == cfg.name)
                    .context("local member missing from --initial-cluster")?;
                let cluster_id =
                    membership::cluster_id(&initial.iter().map(|m| m.id).collect::<Vec<_>>());
                let entries = bootstrap_entries(&initial);
                let hs = raft::eraftpb::HardState {
                    term: 1,
                    commit: entries.len() as u64,
                    ..Default::default()
                };
                storage.append(&entries, Some(&hs));
                storage.set_conf_state(ConfState {
                    voters: initial.iter().map(|m| m.id).collect(),
                    ..Default::default()
                });
                tracing::info!(member = %format!("{:x}", me.id), cluster = %format!("{cluster_id:x}"), "bootstrapped new cluster");
                Identity {
                    member_id: me.id,
                    cluster_id,
                    members: initial
                        .iter()
                        .map(|m| pb::Member {
                            id: m.id,
                            name: m.name.clone(),
                            peer_ur_ls: m.peer_urls.clone(),
                            ..Default::default()
                        })
                        .collect(),
                }
            };
            storage.set_identity(id.member_id, id.cluster_id);
            id
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
            // Raft starts from the membership as of the snapshot and replays
            // the membership changes after it, as the state machine does.
            if sm.applied_index > 0 && !sm.conf_state.voters.is_empty() {
                storage.set_conf_state(sm.conf_state.clone());
            }
            let (member_id, cluster_id) = match storage.identity() {
                Some(ids) => ids,
                None => {
                    let me = initial
                        .iter()
                        .find(|m| m.name == cfg.name)
                        .context("local member missing from --initial-cluster")?;
                    let cid =
                        membership::cluster_id(&initial.iter().map(|m| m.id).collect::<Vec<_>>());
                    storage.set_identity(me.id, cid);
                    (me.id, cid)
                }
            };
            if sm.removed.contains(&member_id) {
                bail!("{}", crate::raft::transport::REMOVED_MSG);
            }
            Identity {
                member_id,
                cluster_id,
                members: sm.member_list(),
            }
        };
        let applied_index = sm.applied_index;
        let heartbeat_ms = cfg.heartbeat_interval.as_millis().max(1) as u64;
        let election_tick =
            (cfg.election_timeout.as_millis() as u64 / heartbeat_ms).max(2) as usize;
        let rcfg = raft::Config {
            id: id.member_id,
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
        let cs = storage.conf_state();
        if cs.voters == [id.member_id] && cs.learners.is_empty() {
            // A single voter need not wait an election timeout.
            raw.campaign().context("raft campaign")?;
        }
        let min_lease_ttl = ((3 * cfg.election_timeout.as_millis() as i64) / 2 + 999) / 1000;
        let tokens = Arc::new(
            crate::auth::token::TokenProvider::new(&cfg.auth_token, cfg.auth_token_ttl)
                .map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?,
        );
        let apply_cfg = ApplyConfig {
            min_lease_ttl,
            tokens: Some(tokens.clone()),
        };
        let lessor = Arc::new(
            Lessor::new(crate::lessor::lease_clock()).with_checkpoints(
                cfg.lease_checkpoint
                    .then_some(cfg.lease_checkpoint_interval),
            ),
        );
        lessor.refresh_all(
            sm.leases
                .iter()
                .map(|(id, l)| (*id, l.ttl, l.remaining_ttl)),
        );
        let initial_applied = Applied {
            index: sm.applied_index,
            rev: sm.mvcc.current_rev(),
            compact: sm.mvcc.compact_rev(),
        };
        if sm.members.is_empty() {
            // Until the bootstrap entries apply, show the members we know.
            sm.members = id.members.iter().map(|m| (m.id, m.clone())).collect();
        }
        let state = Arc::new(RwLock::new(sm));
        let steps = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || run_compaction_steps(steps))?;
        let st2 = state.clone();
        storage.set_snapshot_source(Arc::new(move || st2.read().view()));
        let (applied_tx, applied_rx) = watch::channel(initial_applied);
        let (raft_tx, raft_rx) = flume::bounded(65536);
        let waiters = Arc::new(Waiters::default());
        let status = Arc::new(RaftStatus::default());
        let w2 = waiters.clone();
        let transport = Transport::start(
            id.member_id,
            id.cluster_id,
            id.members
                .iter()
                .map(|m| (m.id, m.peer_ur_ls.clone()))
                .collect(),
            raft_tx.clone(),
            storage.clone(),
            &tokio::runtime::Handle::current(),
            tls.dialer.clone(),
        );
        let received: Received = Default::default();
        let me = id.member_id;
        let t2 = transport.clone();
        let removed = CancellationToken::new();
        let removed2 = removed.clone();
        let learner = Arc::new(std::sync::atomic::AtomicBool::new(sm_learner(
            &state.read(),
            id.member_id,
        )));
        let learner2 = learner.clone();
        let al = ApplyLoop {
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
                catchup_entries: cfg.snapshot_catchup_entries,
            },
            received: received.clone(),
            on_members: Box::new(move |sm| {
                t2.sync_peers(
                    &sm.members
                        .values()
                        .map(|m| (m.id, m.peer_ur_ls.clone()))
                        .collect::<Vec<_>>(),
                );
                learner2.store(sm_learner(sm, me), Ordering::Release);
                if sm.removed.contains(&me) {
                    removed2.cancel();
                }
            }),
        };
        let rl = RaftLoop {
            transport: transport.clone(),
            raw,
            rx: raft_rx,
            apply: apply::spawn(al)?,
            status: status.clone(),
            tick: cfg.heartbeat_interval,
            fail: Box::new(move |id, e| w2.complete(id, Err(e))),
            snaps: snaps.clone(),
            sync: !cfg.unsafe_no_fsync,
        };
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || run_raft(rl))?;
        let t3 = transport.clone();
        let removed3 = removed.clone();
        tokio::spawn(async move {
            // A peer told us we were removed while we were away.
            t3.removed.cancelled().await;
            removed3.cancel();
        });
        let shutdown = CancellationToken::new();
        let node = Arc::new(Node {
            member_id: id.member_id,
            cluster_id: id.cluster_id,
            local_client_urls: RwLock::new(cfg.advertise_client_urls.clone()),
            state,
            status,
            applied: applied_rx,
            lessor,
            storage,
            snaps,
            tokens,
            raft_tx,
            waiters,
            ids: IdGen::new(id.member_id),
            leader_clients: parking_lot::Mutex::new(HashMap::new()),
            stop_serving: shutdown.child_token(),
            published: CancellationToken::new(),
            shutdown,
            removed,
            learner,
            transport,
            received,
            conf_lock: tokio::sync::Mutex::new(()),
            restarted_commit,
            tls,
            cfg,
        });
        Ok(node)
    }

    /// Spawn background tasks (lease expiry, auto-compaction, metrics
    /// refresh) on the runtime.
    pub fn spawn_background(self: &Arc<Self>) {
        let n = self.clone();
        tokio::spawn(async move { n.lease_loop().await });
        tokio::spawn(crate::compactor::run(self.clone()));
        // etcd warns above 10 MiB (recommendedMaxRequestBytes).
        const RECOMMENDED_MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
        if self.cfg.max_request_bytes > RECOMMENDED_MAX_REQUEST_BYTES {
            tracing::warn!(
                max_request_bytes = self.cfg.max_request_bytes,
                recommended_request_bytes = RECOMMENDED_MAX_REQUEST_BYTES,
                "exceeded recommended request limit"
            );
        }
        match self.cfg.quota_bytes() {
            None => {
                tracing::info!(
                    quota_size_bytes = self.cfg.quota_backend_bytes,
                    "disabled backend quota"
                );
                METRICS
                    .quota_backend_bytes
                    .set(self.cfg.quota_backend_bytes);
            }
            Some(q) => {
                if q > crate::config::MAX_QUOTA_BYTES {
                    tracing::warn!(
                        quota_size_bytes = q,
                        quota_maximum_size_bytes = crate::config::MAX_QUOTA_BYTES,
                        "quota exceeds the maximum value"
                    );
                }
                tracing::info!(quota_size_bytes = q, "enabled backend quota");
                METRICS.quota_backend_bytes.set(q);
            }
        }
        let n = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = n.shutdown.cancelled() => return,
                    _ = t.tick() => {}
                }
                let (size, in_use, keys) = {
                    let s = n.state.read();
                    (s.db_size(), s.db_size_in_use(), s.mvcc.live_keys())
                };
                METRICS.db_size.set(size);
                METRICS.db_size_in_use.set(in_use);
                METRICS.keys_total.set(keys as i64);
                METRICS.is_learner.set(n.is_learner() as i64);
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
    /// publish), retrying until it applies or the node stops; then mark the
    /// member [`published`](Self::published).
    pub async fn publish(self: Arc<Self>) {
        let attr = pb::Member {
            id: self.member_id,
            name: self.cfg.name.clone(),
            client_ur_ls: self.local_client_urls.read().clone(),
            ..Default::default()
        };
        loop {
            let published = self
                .state
                .read()
                .members
                .get(&self.member_id)
                .is_some_and(|m| m.name == attr.name && m.client_ur_ls == attr.client_ur_ls);
            if published {
                self.published.cancel();
                return;
            }
            match self.propose(Op::MemberAttr(attr.clone())).await {
                Ok(_) => {
                    self.published.cancel();
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The member table, with this member's client URLs as bound.
    pub fn members(&self) -> Vec<pb::Member> {
        let mut v = self.state.read().member_list();
        for m in v.iter_mut() {
            if m.id == self.member_id {
                m.client_ur_ls = self.local_client_urls.read().clone();
                if m.name.is_empty() {
                    m.name = self.cfg.name.clone();
                }
            }
        }
        v
    }

    /// Whether this member is a raft learner.
    pub fn is_learner(&self) -> bool {
        self.learner.load(Ordering::Acquire)
    }

    /// A fresh unique id (request ids, server-chosen lease ids).
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Wait until no compaction has keys left to process here.
    pub async fn compaction_done(&self) {
        while self.state.read().mvcc.compaction_pending() {
            tokio::time::sleep(COMPACTION_PAUSE).await;
        }
    }

    /// Replicate `op` (the server's own, unchecked) through raft and wait
    /// until it is applied here.
    pub async fn propose(&self, op: Op) -> Result<ApplyResult> {
        self.propose_as(op, None).await
    }

    /// Replicate a client's `op`, issued as `who`, through raft; apply
    /// re-checks its permissions (see `StateMachine::apply_as`).
    pub async fn propose_as(
        &self,
        op: Op,
        who: Option<crate::auth::AuthInfo>,
    ) -> Result<ApplyResult> {
        let id = self.next_id();
        let data = InternalRequest {
            id,
            op: Some(op),
            auth: who,
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        self.submit(id, RaftMsg::Propose { id, data }).await
    }

    /// Hand a proposal (request `id`) to the raft thread and wait until the
    /// entry is applied here, or fails, or times out.
    pub(crate) async fn submit(&self, id: u64, msg: RaftMsg) -> Result<ApplyResult> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        if self.raft_tx.send_async(msg).await.is_err() {
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
        // The only voter, leading: raft-rs would answer a ReadIndex with
        // its commit index without asking anyone; take it here instead of
        // a round trip through the raft thread.
        if let Some(idx) = self.status.local_read_index() {
            return self.wait_applied(idx, deadline).await;
        }
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
            return self.wait_applied(idx, deadline).await;
        }
    }

    /// Wait until raft index `idx` is applied here, until `deadline`.
    async fn wait_applied(&self, idx: u64, deadline: tokio::time::Instant) -> Result<()> {
        if self.applied.borrow().index >= idx {
            return Ok(());
        }
        let mut rx = self.applied.clone();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|a| a.index >= idx)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The receiving side of the peer transport, for the peer listener.
    pub fn peer_service(self: &Arc<Self>) -> PeerService {
        PeerService::new(
            self.cluster_id,
            self.raft_tx.clone(),
            Arc::new(crate::reconfig::NodePeer(self.clone())),
            self.snaps.clone(),
            self.received.clone(),
        )
    }

    /// A (cached, lazily connected) peer client to member `id`.
    pub(crate) fn peer_client(&self, id: u64) -> Result<RaftClient<tonic::transport::Channel>> {
        let urls = self
            .state
            .read()
            .members
            .get(&id)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default();
        let Some(url) = urls.first() else {
            return Err(Error::NoLeader);
        };
        let mut clients = self.leader_clients.lock();
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let ep = PeerDialer::endpoint(url, Duration::from_secs(1))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let c = RaftClient::new(self.tls.dialer.connect_lazy(&ep));
        clients.insert(id, c.clone());
        Ok(c)
    }

    /// Ok if this member leads; otherwise etcd's NoLeader or NotLeader.
    fn ensure_leader(&self) -> Result<()> {
        match self.status.leader() {
            _ if self.status.is_leader() => Ok(()),
            0 => Err(Error::NoLeader),
            _ => Err(Error::NotLeader),
        }
    }

    /// On the leader, wait until everything it knows to be committed is
    /// applied (etcd's waitAppliedIndex). A lease granted through a follower
    /// is applied there first; the follower may answer the grant before the
    /// leader's apply thread has the lease, so a keepalive that follows must
    /// not be judged on the leader's older state.
    async fn wait_applied_commit(&self) -> Result<()> {
        let target = self
            .status
            .commit
            .load(std::sync::atomic::Ordering::Acquire);
        let mut rx = self.applied.clone();
        if rx.borrow().index >= target {
            return Ok(());
        }
        let waited =
            tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|a| a.index >= target))
                .await
                .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Renew a lease on this member, which must lead. TTL 0 means the lease
    /// does not exist (etcd answers KeepAlive that way).
    pub async fn renew_local(&self, id: i64) -> Result<i64> {
        self.ensure_leader()?;
        self.wait_applied_commit().await?;
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
            return self.renew_local(id).await;
        }
        let mut client = self.peer_client(leader)?;
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

    /// A lease's remaining TTL on this member, which must lead; -1 if the
    /// lease does not exist.
    pub async fn remaining_local(&self, id: i64) -> Result<i64> {
        self.ensure_leader()?;
        self.wait_applied_commit().await?;
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
            return self.remaining_local(id).await;
        }
        let mut client = self.peer_client(leader)?;
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

    /// HashKV at `rev` (0: the current revision), as the client and peer
    /// services answer it: the header carries the current revision, and
    /// the compact revision is -1 until the first compaction (as etcd).
    pub fn hash_kv(&self, rev: i64) -> Result<pb::HashKvResponse> {
        let timer = METRICS.hash_rev_duration.start_timer();
        // An O(1) copy under the lock; the hash is computed after it is
        // released, so apply never waits for a hash of the whole store.
        let snap = self.state.read().mvcc.snapshot();
        let cur = snap.current;
        let hash_rev = if rev == 0 { cur } else { rev };
        let (hash, compact) = snap.hash_kv(hash_rev)?;
        timer.observe_duration();
        Ok(pb::HashKvResponse {
            header: Some(self.header(cur)),
            hash,
            compact_revision: if compact == 0 { -1 } else { compact },
            hash_revision: hash_rev,
        })
    }

    /// Current revision as applied here.
    pub fn current_rev(&self) -> i64 {
        self.applied.borrow().rev
    }

    /// Before stopping, hand leadership to the most up-to-date voter (etcd
    /// transfers leadership on stop too), so the cluster need not wait an
    /// election timeout for a new leader. Returns the new leader, if any.
    /// Bounded by two election timeouts; a no-op unless this member leads a
    /// cluster with other voters.
    pub async fn transfer_leadership_on_stop(&self) -> Option<u64> {
        if !self.status.is_leader() {
            return None;
        }
        let voters: Vec<u64> = self
            .state
            .read()
            .conf_state
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.member_id)
            .collect();
        if voters.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.raft_tx.send_async(RaftMsg::Progress(tx)).await.ok()?;
        let progress = rx.await.ok()??;
        let to = *voters
            .iter()
            .max_by_key(|v| (progress.get(v).copied().unwrap_or(0), **v))?;
        tracing::info!(
            transferee = %format!("{to:x}"),
            matched = progress.get(&to).copied().unwrap_or(0),
            "transferring leadership before stopping"
        );
        let deadline = tokio::time::Instant::now() + 2 * self.cfg.election_timeout;
        // raft drops a transfer to a member that is not caught up yet after
        // an election timeout; ask again until it leads or time runs out.
        while tokio::time::Instant::now() < deadline {
            if self.transfer_leader(to).is_err() {
                return None;
            }
            let round = tokio::time::Instant::now() + self.cfg.heartbeat_interval * 4;
            while tokio::time::Instant::now() < round.min(deadline) {
                let l = self.status.leader();
                if l == to {
                    tracing::info!(leader = %format!("{to:x}"), "leadership transferred");
                    return Some(to);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tracing::warn!(transferee = %format!("{to:x}"), "leadership transfer did not finish in time");
        None
    }

    /// Stop: fail waiters and signal tasks.
    pub fn stop(&self) {
        self.shutdown.cancel();
        let _ = self.raft_tx.try_send(RaftMsg::Stop);
        self.waiters.fail_all(Error::Stopped);
    }
}
