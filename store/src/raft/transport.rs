//! raft::transport: raft messages between members, over Strata's own gRPC
//! peer service (`raftpb.Raft/Send`, a long-lived client stream of batches).
//!
//! The raft thread never blocks on the network: [`Transport::send`] puts
//! each message on a bounded per-peer queue with `try_send`. A full queue
//! drops the message (raft retransmits) and reports the peer unreachable.
//! One task per peer drains its queue in batches onto a stream and
//! reconnects with backoff when the stream breaks. The receiving side
//! ([`PeerService`]) checks the cluster ID, so a member of another cluster
//! (e.g. a wrong `--initial-cluster-token`) is refused with etcd's
//! "cluster ID mismatch" error, and a removed member is told so and stops.
//!
//! Raft snapshots (`MsgSnapshot`) do not go through the queues: each one is
//! streamed on its own `SendSnapshot` call, serialized on the fly from the
//! state-machine view raft chose, in 1 MiB chunks ending with a CRC32 of the
//! whole file. The receiver writes it to disk, verifies the CRC and every
//! record, and only then hands the message to raft. The outcome is reported
//! to raft (`report_snapshot`) on the sending side.
//!
//! https peer URLs are dialed over TLS through the member's
//! [`PeerDialer`] (peer certificate as the client certificate).
//!
//! The peer set follows the member table: [`Transport::sync_peers`] starts,
//! restarts (new URLs) and stops per-peer tasks.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::etcdserverpb as pb;
use proto::raftpb::{
    raft_client::RaftClient, raft_server, LeaseRenewRequest, LeaseRenewResponse, MembersRequest,
    MembersResponse, RaftBatch, SendResponse, SnapshotChunk, SnapshotResponse,
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::storage::RaftStorage;
use super::RaftMsg;
use crate::apply::StateMachine;
use crate::error::Error;
use crate::metrics::METRICS;
use crate::server::tls::{PeerDialer, PeerEndpoint};
use crate::snapshot::{self, SnapDir, SnapshotView};

/// Messages buffered per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per batch on the wire.
const MAX_BATCH: usize = 256;
/// An idle peer stream sends an empty batch this often.
const IDLE_BEAT: Duration = Duration::from_secs(1);
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// etcd's error for a member that was removed from the cluster.
pub const REMOVED_MSG: &str =
    "etcdserver: the member has been permanently removed from the cluster";

struct Peer {
    tx: flume::Sender<Message>,
    urls: Vec<String>,
    cancel: CancellationToken,
}

/// Outbound raft messages.
pub struct Transport {
    self_id: u64,
    cluster_id: u64,
    peers: RwLock<HashMap<u64, Peer>>,
    raft_tx: flume::Sender<RaftMsg>,
    storage: RaftStorage,
    rt: tokio::runtime::Handle,
    /// Cancelled when a peer tells us we were removed from the cluster.
    pub removed: CancellationToken,
    /// When each peer was last heard from.
    heard: Mutex<HashMap<u64, std::time::Instant>>,
    /// Peers our outgoing stream is connected to (etcd's ActiveSince).
    connected: Connected,
    dialer: PeerDialer,
}

type Connected = Arc<Mutex<std::collections::HashSet<u64>>>;

impl Transport {
    /// Start one sender task per peer (`peers`: member ID → peer URLs).
    pub fn start(
        self_id: u64,
        cluster_id: u64,
        peers: Vec<(u64, Vec<String>)>,
        raft_tx: flume::Sender<RaftMsg>,
        storage: RaftStorage,
        rt: &tokio::runtime::Handle,
        dialer: PeerDialer,
    ) -> Arc<Transport> {
        let t = Arc::new(Transport {
            self_id,
            cluster_id,
            peers: RwLock::new(HashMap::new()),
            raft_tx,
            storage,
            rt: rt.clone(),
            removed: CancellationToken::new(),
            heard: Mutex::new(HashMap::new()),
            connected: Default::default(),
            dialer,
        });
        t.sync_peers(&peers);
        t
    }

    /// Make the peer set equal to `peers` (member ID → peer URLs): new
    /// members get a sender task, changed URLs restart it, gone members
    /// stop.
    pub fn sync_peers(&self, peers: &[(u64, Vec<String>)]) {
        let mut map = self.peers.write();
        map.retain(|id, p| {
            let keep = peers
                .iter()
                .any(|(pid, urls)| pid == id && *urls == p.urls && !urls.is_empty());
            if !keep {
                p.cancel.cancel();
            }
            keep
        });
        for (id, urls) in peers {
            if *id == self.self_id || urls.is_empty() || map.contains_key(id) {
                continue;
            }
            let (tx, rx) = flume::bounded(PEER_QUEUE);
            let cancel = CancellationToken::new();
            self.rt.spawn(peer_loop(
                PeerLoop {
                    from: self.self_id,
                    to: *id,
                    cluster_id: self.cluster_id,
                    urls: urls.clone(),
                    raft_tx: self.raft_tx.clone(),
                    removed: self.removed.clone(),
                    connected: self.connected.clone(),
                    dialer: self.dialer.clone(),
                },
                rx,
                cancel.clone(),
            ));
            map.insert(
                *id,
                Peer {
                    tx,
                    urls: urls.clone(),
                    cancel,
                },
            );
        }
    }

    /// Queue messages for their peers; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.read();
        for m in msgs {
            let to = m.to;
            let Some(p) = peers.get(&to) else {
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.rt.spawn(send_snapshot(
                    m,
                    self.cluster_id,
                    p.urls.clone(),
                    self.storage.clone(),
                    self.raft_tx.clone(),
                    self.dialer.clone(),
                ));
                continue;
            }
            if p.tx.try_send(m).is_err() {
                let _ = self.raft_tx.try_send(RaftMsg::Unreachable(to));
            }
        }
    }

    /// Record that `peer` was heard from just now.
    pub fn touch(&self, peer: u64) {
        self.heard.lock().insert(peer, std::time::Instant::now());
    }

    /// Whether `peer` was heard from within `d`.
    pub fn active_within(&self, peer: u64, d: Duration) -> bool {
        self.heard
            .lock()
            .get(&peer)
            .is_some_and(|t| t.elapsed() <= d)
    }

    /// Stop every peer task.
    pub fn stop(&self) {
        for p in self.peers.write().drain() {
            p.1.cancel.cancel();
        }
    }
}

fn endpoint(url: &str) -> Result<PeerEndpoint, String> {
    PeerDialer::endpoint(url, Duration::from_secs(1))
        .map(|e| e.map(|e| e.http2_keep_alive_interval(Duration::from_secs(5))))
        .map_err(|e| e.to_string())
}

/// An error and its sources, "a: b: c" (tonic's transport errors hide the
/// TLS reason in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        // io::Error repeats its inner error's text; say it once.
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Writes a serialized snapshot into chunk messages.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<SnapshotChunk>,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    first: Option<Vec<u8>>,
    head: SnapshotChunk,
}

impl ChunkWriter {
    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        self.crc.update(&data);
        let chunk = SnapshotChunk {
            message: self.first.take().unwrap_or_default(),
            data,
            last,
            crc32: if last { self.crc.clone().finalize() } else { 0 },
            ..self.head.clone()
        };
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("snapshot stream closed"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= SNAPSHOT_CHUNK {
            self.emit(false)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn serialize_into(view: SnapshotView, mut w: ChunkWriter) -> std::io::Result<u64> {
    let n = snapshot::write_to(&view, &mut w)?;
    w.emit(true)?;
    Ok(n)
}

/// Stream one raft snapshot to its receiver and report the outcome to raft.
async fn send_snapshot(
    m: Message,
    cluster_id: u64,
    urls: Vec<String>,
    storage: RaftStorage,
    raft_tx: flume::Sender<RaftMsg>,
    dialer: PeerDialer,
) {
    let to = m.to;
    let index = m.get_snapshot().get_metadata().index;
    let started = std::time::Instant::now();
    let ok = async {
        let view = storage
            .take_outgoing(to, index)
            .ok_or_else(|| "snapshot view is gone".to_string())?;
        // Fault injection: `return` fails this send.
        #[cfg(feature = "failpoints")]
        if crate::failpoints::eval_async(crate::failpoints::SNAPSHOT_BEFORE_SEND)
            .await
            .is_some()
        {
            return Err(format!(
                "failpoint {} failed the send",
                crate::failpoints::SNAPSHOT_BEFORE_SEND
            ));
        }
        let url = urls.first().ok_or("no peer URL")?.clone();
        let channel = dialer
            .connect(&endpoint(&url)?)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK + 4096),
            crc: crc32fast::Hasher::new(),
            first: Some(m.write_to_bytes().map_err(|e| e.to_string())?),
            head: SnapshotChunk {
                from: m.from,
                to,
                cluster_id,
                ..Default::default()
            },
        };
        let writer = tokio::task::spawn_blocking(move || serialize_into(view, w));
        let mut client = RaftClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let r = client
            .send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let bytes = writer
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        r.map_err(|s| s.message().to_string())?;
        tracing::info!(to = %format!("{to:x}"), index, bytes, took_ms = started.elapsed().as_millis() as u64,
            "sent snapshot");
        Ok::<(), String>(())
    }
    .await;
    let label = format!("{to:x}");
    match &ok {
        Ok(()) => {
            METRICS
                .snapshot_send_success
                .with_label_values(&[&label])
                .inc();
            METRICS
                .snapshot_send_duration
                .with_label_values(&[&label])
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            METRICS
                .snapshot_send_failures
                .with_label_values(&[&label])
                .inc();
            tracing::warn!(to = %label, index, error = %e, "sending snapshot failed");
        }
    }
    let _ = raft_tx
        .send_async(RaftMsg::SnapshotStatus(to, ok.is_ok()))
        .await;
}

struct PeerLoop {
    from: u64,
    to: u64,
    cluster_id: u64,
    urls: Vec<String>,
    raft_tx: flume::Sender<RaftMsg>,
    removed: CancellationToken,
    connected: Connected,
    dialer: PeerDialer,
}

async fn peer_loop(p: PeerLoop, rx: flume::Receiver<Message>, cancel: CancellationToken) {
    let (to, connected) = (p.to, p.connected.clone());
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = peer_loop_inner(p, rx) => {}
    }
    connected.lock().remove(&to);
}

async fn peer_loop_inner(p: PeerLoop, rx: flume::Receiver<Message>) {
    let PeerLoop {
        from,
        to,
        cluster_id,
        urls,
        raft_tx,
        removed,
        connected,
        dialer,
    } = p;
    let mut attempt = 0usize;
    loop {
        let url = urls[attempt % urls.len().max(1)].clone();
        attempt += 1;
        let endpoint = match endpoint(&url) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(peer = %format!("{to:x}"), url, error = %e, "invalid peer URL");
                return;
            }
        };
        let channel = match dialer.connect(&endpoint).await {
            Ok(c) => c,
            Err(e) => {
                // Every 50th attempt (~5 s): a TLS refusal shows in the log
                // without flooding it.
                if attempt % 50 == 1 {
                    tracing::warn!(peer = %format!("{to:x}"), url, error = %error_chain(&e), "cannot connect to peer");
                }
                let _ = raft_tx.try_send(RaftMsg::Unreachable(to));
                // Drop what queued up meanwhile: raft resends what matters.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (stx, srx) = tokio::sync::mpsc::channel::<RaftBatch>(16);
        let mut client = RaftClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let call = tokio::spawn(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(srx))
                .await
        });
        connected.lock().insert(to);
        loop {
            // An idle stream carries an empty batch every second, so both
            // ends notice a dead peer (MemberRemove's quorum check).
            let first = tokio::select! {
                m = rx.recv_async() => match m {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
                _ = tokio::time::sleep(IDLE_BEAT) => None,
            };
            let mut msgs: Vec<Vec<u8>> = first
                .iter()
                .map(|m| m.write_to_bytes().expect("invariant: raft message encodes"))
                .collect();
            while !msgs.is_empty() && msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => {
                        msgs.push(m.write_to_bytes().expect("invariant: raft message encodes"))
                    }
                    Err(_) => break,
                }
            }
            let batch = RaftBatch {
                from,
                to,
                cluster_id,
                msgs,
            };
            if stx.send(batch).await.is_err() {
                break;
            }
        }
        connected.lock().remove(&to);
        match call.await {
            Ok(Err(s)) if s.message().contains("cluster ID mismatch") => {
                tracing::error!(peer = %format!("{to:x}"), url, "peer refused us: {}", s.message());
            }
            Ok(Err(s)) if s.message() == REMOVED_MSG => {
                tracing::error!(peer = %format!("{to:x}"), "{REMOVED_MSG}");
                removed.cancel();
                return;
            }
            _ => {}
        }
        let _ = raft_tx.try_send(RaftMsg::Unreachable(to));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the peer service needs from the member it serves.
#[tonic::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Renew a lease on this member, which must lead.
    async fn renew(&self, id: i64) -> Result<i64, Error>;
    /// Whether `id` was removed from the cluster.
    fn is_removed(&self, id: u64) -> bool;
    /// The member table.
    fn members(&self) -> Vec<pb::Member>;
    /// A peer was heard from.
    fn touch(&self, from: u64);
    /// A lease's remaining TTL on this member, which must lead (-1: no such lease).
    async fn remaining(&self, id: i64) -> Result<i64, Error>;
    /// Promote a learner (this member must lead).
    async fn promote(&self, id: u64) -> Result<pb::MemberPromoteResponse, Error>;
    /// HashKV at `rev` (0: the current revision).
    fn hash_kv(&self, rev: i64) -> Result<pb::HashKvResponse, Error>;
}

/// The receiving side of the peer transport.
pub struct PeerService {
    cluster_id: u64,
    raft_tx: flume::Sender<RaftMsg>,
    handler: Arc<dyn PeerHandler>,
    snaps: Arc<SnapDir>,
    received: Received,
}

/// Snapshots received and verified, by index, waiting for the apply thread.
pub type Received = Arc<Mutex<HashMap<u64, StateMachine>>>;

impl PeerService {
    /// A peer service feeding `raft_tx`.
    pub fn new(
        cluster_id: u64,
        raft_tx: flume::Sender<RaftMsg>,
        handler: Arc<dyn PeerHandler>,
        snaps: Arc<SnapDir>,
        received: Received,
    ) -> Self {
        PeerService {
            cluster_id,
            raft_tx,
            handler,
            snaps,
            received,
        }
    }

    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            tracing::error!(
                local = %format!("{:x}", self.cluster_id),
                remote = %format!("{cluster_id:x}"),
                from = %format!("{from:x}"),
                "rejected raft messages from a member of another cluster (check --initial-cluster-token)"
            );
            return Err(Status::failed_precondition(
                "etcdserver: cluster ID mismatch",
            ));
        }
        if self.handler.is_removed(from) {
            return Err(Status::failed_precondition(REMOVED_MSG));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl raft_server::Raft for PeerService {
    async fn send(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendResponse>, Status> {
        let mut s = req.into_inner();
        while let Some(batch) = s.message().await? {
            self.check_sender(batch.cluster_id, batch.from)?;
            self.handler.touch(batch.from);
            for raw in batch.msgs {
                let mut m = Message::default();
                if m.merge_from_bytes(&raw).is_err() {
                    return Err(Status::invalid_argument("malformed raft message"));
                }
                if self.raft_tx.send_async(RaftMsg::Step(m)).await.is_err() {
                    return Err(Status::unavailable("etcdserver: server stopped"));
                }
            }
        }
        Ok(Response::new(SendResponse {}))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let ttl = self.handler.renew(req.into_inner().id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_remaining(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let ttl = self.handler.remaining(req.into_inner().id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let mut s = req.into_inner();
        let Some(first) = s.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        self.check_sender(first.cluster_id, first.from)?;
        let mut msg = Message::default();
        if msg.merge_from_bytes(&first.message).is_err()
            || msg.get_msg_type() != MessageType::MsgSnapshot
        {
            return Err(Status::invalid_argument("malformed snapshot message"));
        }
        let index = msg.get_snapshot().get_metadata().index;
        let path = self.snaps.recv_path(index);
        let from = format!("{:x}", first.from);
        let r = receive_into(&path, first, &mut s).await;
        if !matches!(&r, Ok(sm) if sm.applied_index == index) {
            METRICS
                .snapshot_receive_failures
                .with_label_values(&[&from])
                .inc();
        }
        let sm = match r {
            Ok(sm) if sm.applied_index == index => sm,
            Ok(sm) => {
                let _ = std::fs::remove_file(&path);
                return Err(Status::data_loss(format!(
                    "snapshot {index} holds index {}",
                    sm.applied_index
                )));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::error!(index, error = %e, "rejected a snapshot from the leader");
                return Err(Status::data_loss(format!("snapshot rejected: {e}")));
            }
        };
        METRICS
            .snapshot_receive_success
            .with_label_values(&[&from])
            .inc();
        tracing::info!(index, from = %from, "received and verified snapshot");
        {
            // Only the newest received snapshot can still be installed.
            let mut r = self.received.lock();
            r.retain(|i, _| *i > index);
            r.insert(index, sm);
        }
        if self.raft_tx.send_async(RaftMsg::Step(msg)).await.is_err() {
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
        Ok(Response::new(SnapshotResponse {}))
    }

    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let _ = req;
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            members: self.handler.members(),
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let asker = req
            .metadata()
            .get(crate::corrupt::CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        if asker.is_some_and(|c| c != self.cluster_id) {
            return Err(Status::failed_precondition(
                crate::corrupt::CLUSTER_ID_MISMATCH,
            ));
        }
        Ok(Response::new(
            self.handler.hash_kv(req.into_inner().revision)?,
        ))
    }

    async fn promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Ok(Response::new(
            self.handler.promote(req.into_inner().id).await?,
        ))
    }
}

/// Write the streamed snapshot to `path`, check the whole-file CRC, fsync,
/// and decode it (which verifies every record).
async fn receive_into(
    path: &std::path::Path,
    first: SnapshotChunk,
    s: &mut Streaming<SnapshotChunk>,
) -> Result<StateMachine, String> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    #[cfg(feature = "failpoints")]
    crate::failpoints::powerfail::track_unsynced(path);
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = first;
    loop {
        crc.update(&chunk.data);
        f.write_all(&chunk.data).map_err(|e| e.to_string())?;
        if chunk.last {
            if chunk.crc32 != crc.clone().finalize() {
                return Err("crc32 mismatch".into());
            }
            break;
        }
        chunk = match s.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Err("stream ended before the last chunk".into()),
            Err(e) => return Err(e.message().to_string()),
        };
    }
    let f = f.into_inner().map_err(|e| e.to_string())?;
    let p: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        f.sync_all().map_err(|e| e.to_string())?;
        // The file's name must be durable too before raft installs the
        // snapshot (the install drops the log it replaces): a power loss
        // must not leave an installed snapshot without its file.
        if let Some(dir) = p.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| e.to_string())?;
        }
        #[cfg(feature = "failpoints")]
        crate::failpoints::powerfail::synced(&p);
        snapshot::read_from(std::fs::File::open(&p).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
