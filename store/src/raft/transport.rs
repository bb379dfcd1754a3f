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
//! "cluster ID mismatch" error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::raftpb::{
    raft_client::RaftClient, raft_server, LeaseRenewRequest, LeaseRenewResponse, RaftBatch,
    SendResponse,
};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use super::RaftMsg;

/// Messages buffered per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per batch on the wire.
const MAX_BATCH: usize = 256;

/// Outbound raft messages.
pub struct Transport {
    queues: HashMap<u64, flume::Sender<Message>>,
    raft_tx: flume::Sender<RaftMsg>,
}

impl Transport {
    /// Start one sender task per peer (`peers`: member ID → peer URLs).
    pub fn start(
        self_id: u64,
        cluster_id: u64,
        peers: Vec<(u64, Vec<String>)>,
        raft_tx: flume::Sender<RaftMsg>,
        rt: &tokio::runtime::Handle,
    ) -> Arc<Transport> {
        let mut queues = HashMap::new();
        for (id, urls) in peers {
            if id == self_id {
                continue;
            }
            let (tx, rx) = flume::bounded(PEER_QUEUE);
            queues.insert(id, tx);
            rt.spawn(peer_loop(
                self_id,
                id,
                cluster_id,
                urls,
                rx,
                raft_tx.clone(),
            ));
        }
        Arc::new(Transport { queues, raft_tx })
    }

    /// Queue messages for their peers; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(q) = self.queues.get(&to) else {
                continue;
            };
            if q.try_send(m).is_err() {
                let _ = self.raft_tx.try_send(RaftMsg::Unreachable(to));
            }
        }
    }
}

async fn peer_loop(
    from: u64,
    to: u64,
    cluster_id: u64,
    urls: Vec<String>,
    rx: flume::Receiver<Message>,
    raft_tx: flume::Sender<RaftMsg>,
) {
    let mut attempt = 0usize;
    loop {
        let url = urls[attempt % urls.len().max(1)].clone();
        attempt += 1;
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5)),
            Err(e) => {
                tracing::error!(peer = %format!("{to:x}"), url, error = %e, "invalid peer URL");
                return;
            }
        };
        let Ok(channel) = endpoint.connect().await else {
            let _ = raft_tx.try_send(RaftMsg::Unreachable(to));
            // Drop what queued up meanwhile: raft resends what matters.
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
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
        loop {
            let Ok(first) = rx.recv_async().await else {
                return;
            };
            let mut msgs = vec![first
                .write_to_bytes()
                .expect("invariant: raft message encodes")];
            while msgs.len() < MAX_BATCH {
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
        match call.await {
            Ok(Err(s)) if s.message().contains("cluster ID mismatch") => {
                tracing::error!(peer = %format!("{to:x}"), url, "peer refused us: {}", s.message());
            }
            _ => {}
        }
        let _ = raft_tx.try_send(RaftMsg::Unreachable(to));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Renews a lease on this member (the leader) for a forwarded KeepAlive.
pub type RenewFn = Arc<dyn Fn(i64) -> Result<i64, crate::error::Error> + Send + Sync>;

/// The receiving side of the peer transport.
pub struct PeerService {
    cluster_id: u64,
    raft_tx: flume::Sender<RaftMsg>,
    renew: RenewFn,
    /// Answers forwarded TimeToLive lookups (remaining TTL, -1 if unknown).
    remaining: Option<RenewFn>,
}

impl PeerService {
    /// A peer service feeding `raft_tx`; `renew` answers forwarded KeepAlives.
    pub fn new(cluster_id: u64, raft_tx: flume::Sender<RaftMsg>, renew: RenewFn) -> Self {
        PeerService {
            cluster_id,
            raft_tx,
            renew,
            remaining: None,
        }
    }

    /// Answer forwarded TimeToLive lookups with `remaining`.
    pub fn with_remaining(mut self, remaining: RenewFn) -> Self {
        self.remaining = Some(remaining);
        self
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
            if batch.cluster_id != self.cluster_id {
                tracing::error!(
                    local = %format!("{:x}", self.cluster_id),
                    remote = %format!("{:x}", batch.cluster_id),
                    from = %format!("{:x}", batch.from),
                    "rejected raft messages from a member of another cluster (check --initial-cluster-token)"
                );
                return Err(Status::failed_precondition(
                    "etcdserver: cluster ID mismatch",
                ));
            }
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
        let ttl = (self.renew)(req.into_inner().id)?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_remaining(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let f = self
            .remaining
            .as_ref()
            .ok_or_else(|| Status::unimplemented("lease lookups are not served here"))?;
        let ttl = f(req.into_inner().id)?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }
}
