//! server::watch: the etcd Watch service.
//!
//! One task per gRPC stream owns that stream's watchers. Instead of etcd's
//! push model (synced/unsynced/victim watcher groups), every watcher here is
//! a cursor `next_rev` into the MVCC event log, and the stream task *pulls*:
//! whenever the applied revision advances it reads, under the state read
//! lock, the events from each watcher's cursor onward (at most
//! [`MAX_REVS_PER_PASS`] revisions at a time), filters them and sends them.
//! A slow client simply lags behind; no event is ever dropped or reordered
//! because the log, not a bounded queue, is the buffer. If compaction
//! overtakes a lagging cursor, the watcher is cancelled with
//! `compact_revision` set, as etcd does. Events are visible only after they
//! are applied, and they are applied only after they are durably committed.
//!
//! A watcher is "synced" when its cursor is past the current revision;
//! a `WatchProgressRequest` is answered (watch_id -1) only once every watcher
//! of the stream is synced, so its revision bounds every event delivered.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use proto::etcdserverpb::{
    self as pb, watch_create_request::FilterType, watch_request::RequestUnion,
};
use proto::mvccpb::{self, event::EventType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::METRICS;
use crate::mvcc::{EventKind, KeyRange, MvccError};
use crate::node::Node;

/// Revisions read per watcher per pass (etcd's watchBatchMaxRevs).
pub const MAX_REVS_PER_PASS: usize = 1000;

/// The Watch service.
pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    /// A Watch service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

struct Watcher {
    range: KeyRange,
    next_rev: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
}

type Tx = mpsc::Sender<Result<pb::WatchResponse, Status>>;

struct StreamState {
    node: Arc<Node>,
    tx: Tx,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_pending: bool,
    /// The stream's metadata and TLS client CN: the caller is resolved
    /// again at every create, as etcd does (a token may expire).
    metadata: tonic::metadata::MetadataMap,
    tls_cn: Option<String>,
}

/// The client went away; stop the stream task.
struct Gone;

impl StreamState {
    fn header(&self, rev: i64) -> Option<pb::ResponseHeader> {
        Some(self.node.header(rev))
    }

    /// The state machine's revision. Watch responses use it rather than the
    /// published applied revision, which can briefly lag behind the events a
    /// pass has already read; a progress response must never claim a
    /// revision below an event it follows.
    fn store_rev(&self) -> i64 {
        self.node.state.read().mvcc.current_rev()
    }

    async fn send(&self, r: pb::WatchResponse) -> Result<(), Gone> {
        // Fault injection: `return` drops this response and ends the stream
        // with Unavailable (the client resumes from its last revision).
        #[cfg(feature = "failpoints")]
        if crate::failpoints::eval_async(crate::failpoints::WATCH_BEFORE_SEND)
            .await
            .is_some()
        {
            let _ = self
                .tx
                .send(Err(Status::unavailable(format!(
                    "watch stream closed by failpoint {}",
                    crate::failpoints::WATCH_BEFORE_SEND
                ))))
                .await;
            return Err(Gone);
        }
        self.tx.send(Ok(r)).await.map_err(|_| Gone)
    }

    /// etcd's isWatchPermitted: read permission on the watched range.
    fn watch_permitted(&self, c: &pb::WatchCreateRequest) -> bool {
        let Ok(who) = super::auth::caller(&self.node, &self.metadata, self.tls_cn.as_deref())
        else {
            return false;
        };
        let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
        super::auth::check_range(&self.node, who.as_ref(), key, &c.range_end).is_ok()
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        let cur = self.store_rev();
        if !self.watch_permitted(&c) {
            // etcd answers with the client's watch ID and the gRPC error's text.
            return self
                .send(pb::WatchResponse {
                    header: self.header(cur),
                    watch_id: c.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason:
                        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
                            .to_string(),
                    ..Default::default()
                })
                .await;
        }
        let key = if c.key.is_empty() {
            vec![0]
        } else {
            c.key.clone()
        };
        let range = KeyRange::new(&key, &c.range_end);
        let mut err = None;
        if let KeyRange::Span(s, Some(e)) = &range {
            if s >= e {
                err = Some("mvcc: watcher range is empty");
            }
        }
        let mut id = c.watch_id;
        if err.is_none() {
            if id == 0 {
                while self.watchers.contains_key(&self.next_id) {
                    self.next_id += 1;
                }
                id = self.next_id;
                self.next_id += 1;
            } else if self.watchers.contains_key(&id) {
                err = Some("mvcc: duplicate watch ID provided on the WatchStream");
            }
        }
        if let Some(reason) = err {
            return self
                .send(pb::WatchResponse {
                    header: self.header(cur),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                })
                .await;
        }
        let next_rev = if c.start_revision == 0 {
            cur + 1
        } else {
            c.start_revision
        };
        self.watchers.insert(
            id,
            Watcher {
                range,
                next_rev,
                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            },
        );
        METRICS.watchers.inc();
        self.send(pb::WatchResponse {
            header: self.header(cur),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        if self.watchers.remove(&id).is_some() {
            METRICS.watchers.dec();
            let cur = self.store_rev();
            self.send(pb::WatchResponse {
                header: self.header(cur),
                watch_id: id,
                canceled: true,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    fn all_synced(&self, cur: i64) -> bool {
        self.watchers.values().all(|w| w.next_rev > cur)
    }

    /// Deliver pending events to every watcher until all are synced.
    async fn deliver(&mut self) -> Result<(), Gone> {
        loop {
            let mut out: Vec<(i64, bool, pb::WatchResponse)> = Vec::new();
            let mut compacted: Vec<(i64, i64)> = Vec::new();
            // Watchers whose events cannot be read back (a corrupt value).
            let mut failed: Vec<(i64, String)> = Vec::new();
            let cur;
            {
                let sm = self.node.state.read();
                cur = sm.mvcc.current_rev();
                let mut built: std::collections::HashMap<
                    crate::mvcc::Revision,
                    Option<crate::mvcc::Event>,
                > = std::collections::HashMap::new();
                for (id, w) in self.watchers.iter_mut() {
                    if w.next_rev > cur {
                        continue;
                    }
                    match sm.mvcc.events_from(w.next_rev, MAX_REVS_PER_PASS) {
                        Err(MvccError::Compacted) => compacted.push((*id, sm.mvcc.compact_rev())),
                        Err(_) => {}
                        Ok(entries) => {
                            let mut events = Vec::new();
                            let mut last = None;
                            for e in entries {
                                last = Some(e.rev.main);
                                if !w.range.contains(&e.key) {
                                    continue;
                                }
                                // Built once per pass, shared by the
                                // stream's watchers (fan-out on one key).
                                let ev = match built.get(&e.rev) {
                                    Some(ev) => ev.clone(),
                                    None => match sm.mvcc.event(e, false) {
                                        Ok(ev) => {
                                            built.insert(e.rev, ev.clone());
                                            ev
                                        }
                                        Err(err) => {
                                            failed.push((*id, err.to_string()));
                                            break;
                                        }
                                    },
                                };
                                let Some(ev) = ev else { continue };
                                let put = ev.kind == EventKind::Put;
                                if (put && w.no_put) || (!put && w.no_delete) {
                                    continue;
                                }
                                let prev = if w.prev_kv {
                                    match prev_kv(&sm.mvcc, ev.kind, &ev.kv) {
                                        Ok(p) => p,
                                        Err(err) => {
                                            failed.push((*id, err.to_string()));
                                            break;
                                        }
                                    }
                                } else {
                                    None
                                };
                                events.push(mvccpb::Event {
                                    r#type: if put {
                                        EventType::Put
                                    } else {
                                        EventType::Delete
                                    } as i32,
                                    kv: Some(ev.kv),
                                    prev_kv: prev,
                                });
                            }
                            if failed.last().is_some_and(|(f, _)| f == id) {
                                continue;
                            }
                            w.next_rev = last.map_or(cur + 1, |m| m + 1);
                            if !events.is_empty() {
                                out.push((
                                    *id,
                                    w.fragment,
                                    pb::WatchResponse {
                                        header: None,
                                        watch_id: *id,
                                        events,
                                        ..Default::default()
                                    },
                                ));
                            }
                        }
                    }
                }
            }
            for (id, reason) in failed {
                self.watchers.remove(&id);
                METRICS.watchers.dec();
                tracing::error!(watch_id = id, error = %reason, "cancelling a watch: its events cannot be read");
                self.send(pb::WatchResponse {
                    header: self.header(cur),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await?;
            }
            for (id, compact) in compacted {
                self.watchers.remove(&id);
                METRICS.watchers.dec();
                // etcd stamps this response with revision 0 (the mvcc
                // WatchResponse carries only the compact revision).
                self.send(pb::WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    ..Default::default()
                })
                .await?;
            }
            for (_, fragment, mut r) in out {
                r.header = self.header(cur);
                self.send_events(r, fragment).await?;
            }
            if self.all_synced(self.store_rev()) {
                return Ok(());
            }
        }
    }

    /// Send one event response, split into fragments if the watcher asked
    /// for it and the response exceeds the request size limit (etcd's sendFragments).
    async fn send_events(&self, r: pb::WatchResponse, fragment: bool) -> Result<(), Gone> {
        let limit = self.node.cfg.max_request_bytes;
        if !fragment || r.events.len() < 2 || r.encoded_len() < limit {
            return self.send(r).await;
        }
        let mut rest = r.events.clone().into_iter().peekable();
        let base = pb::WatchResponse {
            events: Vec::new(),
            fragment: true,
            ..r
        };
        while rest.peek().is_some() {
            let mut cur = base.clone();
            while let Some(ev) = rest.peek() {
                cur.events.push(ev.clone());
                if cur.events.len() > 1 && cur.encoded_len() >= limit {
                    cur.events.pop();
                    break;
                }
                rest.next();
            }
            if rest.peek().is_none() {
                cur.fragment = false;
            }
            self.send(cur).await?;
        }
        Ok(())
    }

    async fn progress_all(&mut self) -> Result<(), Gone> {
        let cur = self.store_rev();
        if self.all_synced(cur) {
            self.progress_pending = false;
            self.send(pb::WatchResponse {
                header: self.header(cur),
                watch_id: -1,
                ..Default::default()
            })
            .await
        } else {
            self.progress_pending = true;
            Ok(())
        }
    }

    async fn periodic_progress(&mut self) -> Result<(), Gone> {
        let cur = self.store_rev();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next_rev > cur)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(pb::WatchResponse {
                header: self.header(cur),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let mut applied = self.node.applied.clone();
        let every = self.node.cfg.watch_progress_notify_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Graceful shutdown ends streams with Unavailable (clients
        // reconnect elsewhere).
        let shutdown = self.node.stop_serving.clone();
        let r: Result<(), Gone> = async {
            loop {
                self.deliver().await?;
                if self.progress_pending {
                    self.progress_all().await?;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        super::stream_stopped(&self.tx).await;
                        return Err(Gone);
                    }
                    m = inbound.message() => match m {
                        Ok(Some(req)) => match req.request_union {
                            Some(RequestUnion::CreateRequest(c)) => self.create(c).await?,
                            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await?,
                            Some(RequestUnion::ProgressRequest(_)) => {
                                self.deliver().await?;
                                self.progress_all().await?
                            }
                            None => {}
                        },
                        Ok(None) => return Err(Gone),
                        Err(e) => {
                            // etcd ends the stream with the receive error
                            // (an oversized message: ResourceExhausted).
                            let e = super::etcd_size_status(&e).unwrap_or(e);
                            let _ = self.tx.send(Err(e)).await;
                            return Err(Gone);
                        }
                    },
                    c = applied.changed() => if c.is_err() { return Err(Gone) },
                    _ = progress.tick() => self.periodic_progress().await?,
                }
            }
        }
        .await;
        let _ = r;
        METRICS.watchers.sub(self.watchers.len() as i64);
    }
}

/// A watch stream driven by its caller instead of a gRPC connection, for
/// the watch fan-out benchmarks (`store/benches/watch.rs`): the same
/// watcher table, create and delivery pass as a gRPC Watch stream, with
/// responses going to a channel the caller drains. The caller calls
/// [`LocalWatchStream::deliver`] where the stream task would wake on an
/// applied revision.
#[doc(hidden)]
pub struct LocalWatchStream(StreamState);

/// The receiving end of a [`LocalWatchStream`].
#[doc(hidden)]
pub type LocalWatchReceiver = mpsc::Receiver<Result<pb::WatchResponse, Status>>;

#[doc(hidden)]
impl LocalWatchStream {
    /// A stream on `node` whose responses go to a channel of `capacity`
    /// (a gRPC stream uses 256), unauthenticated.
    pub fn new(node: Arc<Node>, capacity: usize) -> (Self, LocalWatchReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        let st = StreamState {
            node,
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
            metadata: Default::default(),
            tls_cn: None,
        };
        (LocalWatchStream(st), rx)
    }

    /// Handle a create request, as the stream does; false once the
    /// receiver is gone.
    pub async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        self.0.create(c).await.is_ok()
    }

    /// Deliver pending events until every watcher is synced, as the stream
    /// task does whenever the applied revision advances; false once the
    /// receiver is gone.
    pub async fn deliver(&mut self) -> bool {
        self.0.deliver().await.is_ok()
    }
}

impl Drop for LocalWatchStream {
    fn drop(&mut self) {
        METRICS.watchers.sub(self.0.watchers.len() as i64);
    }
}

/// An event's `prev_kv` exactly as etcd computes it when sending: none for a
/// create, otherwise the key as of `mod_revision - 1` if that revision is not
/// compacted. (Not the value the write replaced: when nested txns put and
/// then delete a key in one revision, the delete's prev_kv is the value
/// before that revision.)
fn prev_kv(
    mvcc: &crate::mvcc::Mvcc,
    kind: EventKind,
    kv: &mvccpb::KeyValue,
) -> Result<Option<mvccpb::KeyValue>, MvccError> {
    if kind == EventKind::Put && kv.create_revision == kv.mod_revision {
        return Ok(None);
    }
    if kv.mod_revision - 1 < mvcc.compact_rev() {
        return Ok(None);
    }
    mvcc.prev_of(&kv.key, kv.mod_revision)
}

/// Whether the client asked streams to fail without a leader (clientv3's WithRequireLeader).
pub fn requires_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if requires_leader(&req) && self.node.status.leader() == 0 {
            return Err(crate::error::Error::NoLeader.into());
        }
        let (tx, rx) = mpsc::channel(256);
        if requires_leader(&req) {
            super::monitor_leader(self.node.clone(), tx.clone());
        }
        let st = StreamState {
            node: self.node.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
            metadata: req.metadata().clone(),
            tls_cn: super::auth::tls_client_cn(&self.node, &req),
        };
        tokio::spawn(st.run(req.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
