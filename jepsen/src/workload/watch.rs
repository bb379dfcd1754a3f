//! `watch`: watchers that start from random recent revisions, resume after
//! every disconnect, and restart after compaction, while register writers
//! (the [`super::register`] processes and operations, on the same
//! `/jepsen/register/<k>` keys) give them events to see.
//!
//! The workload runs `concurrency` register processes and
//! `concurrency.clamp(2, 6)` watchers. Each watcher watches one range: the register prefix (most watchers), the
//! `append` prefix (events appear when that workload runs too), or the single
//! key `/jepsen/register/0`; always with `prev_kv` and `progress_notify`. It
//! logs to `watches.jsonl` (see [`crate::history`]):
//! - `start` once (range, start revision, options, node);
//! - every response: `created`, `events` (with the events), `progress`,
//!   `compacted` (with `compact_revision`) or `canceled`;
//! - `disconnected` (with the error) when the stream breaks or is silent for
//!   [`IDLE_TIMEOUT`], then `resumed` with the new node and the
//!   `start_revision` it resumes from: the last event's revision + 1, or the
//!   last progress notification's revision + 1 if that is higher (a progress
//!   notification promises every event at or below it was delivered);
//! - after `compacted`, `resumed` from the `compact_revision` the server
//!   reported (events between the last one seen and it are gone for good).
//!
//! Streams carry etcd's `hasleader: true` metadata, as kube-apiserver's do,
//! so a member cut off from its leader ends the stream and the watcher moves
//! to another node. Every [`PROGRESS_EVERY`] a watcher also sends a `RequestProgress` on its
//! stream. When `stop` fires the writers stop first; then each watcher runs
//! on until it has seen an event or progress notification at or above the
//! store revision read after the last write (at most [`DRAIN_TIMEOUT`]), so
//! the tail of the history is covered.

use std::time::Duration;

use proto::etcdserverpb::{
    watch_request::RequestUnion, RangeRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use proto::mvccpb;
use rand::Rng;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{header_rev, prefix_end, register, spawn_workers, Ctx};
use crate::client::call;
use crate::history::{EventType, WatchEvent, WatchKv, WatchRecord, WatchRecordKind};

/// A watch stream silent for this long counts as broken.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a watcher asks for a progress notification.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Longest a watcher keeps going after `stop` to catch up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// What a watcher watches.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub key: String,
    /// Empty for a single key.
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    pub fn prefix(prefix: &str) -> WatchSpec {
        WatchSpec {
            key: prefix.to_string(),
            range_end: prefix_end(prefix),
            prev_kv: true,
            progress_notify: true,
        }
    }

    /// Fills the declaration fields of a `start` or `resumed` record.
    pub fn declare(&self, rec: &mut WatchRecord, start_revision: i64, node: usize) {
        rec.key = Some(self.key.clone());
        rec.range_end = if self.range_end.is_empty() {
            None
        } else {
            Some(String::from_utf8_lossy(&self.range_end).into_owned())
        };
        rec.start_revision = Some(start_revision);
        rec.prev_kv = self.prev_kv;
        rec.progress_notify = self.progress_notify;
        rec.node = Some(node);
    }
}

/// When a watcher may stop: `None` while the run goes on; `Some(r)` once it
/// is draining, i.e. it stops after seeing revision `r` (or at the drain
/// deadline).
pub type DrainRx = tokio_watch::Receiver<Option<i64>>;

/// Why [`watch_loop`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// Drained (or the drain deadline passed).
    Stopped,
    /// The start revision was compacted and the caller asked to handle that
    /// itself (`restart_on_compaction: false`).
    Compacted { compact_revision: i64 },
}

/// Converts a protobuf key-value.
pub fn convert_kv(kv: &mvccpb::KeyValue) -> WatchKv {
    WatchKv {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// Converts a protobuf watch event.
pub fn convert_event(ev: &mvccpb::Event) -> WatchEvent {
    WatchEvent {
        kind: if ev.r#type == mvccpb::event::EventType::Delete as i32 {
            EventType::Delete
        } else {
            EventType::Put
        },
        kv: ev.kv.as_ref().map(convert_kv).unwrap_or_else(|| WatchKv {
            key: String::new(),
            value: String::new(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            lease: 0,
        }),
        prev_kv: ev.prev_kv.as_ref().map(convert_kv),
    }
}

/// The store's current revision as seen by `node` (None on error).
pub async fn current_revision(ctx: &Ctx, node: usize) -> Option<i64> {
    let req = RangeRequest {
        key: b"/".to_vec(),
        limit: 1,
        count_only: true,
        ..Default::default()
    };
    call(ctx.client.kv(node).range(req))
        .await
        .ok()
        .map(|r| header_rev(&r.header))
}

/// The current revision from any node, trying each a few times.
pub async fn current_revision_any(ctx: &Ctx, rng: &mut impl Rng) -> Option<i64> {
    for _ in 0..(3 * ctx.client.nodes()).max(3) {
        let node = ctx.pick_node(rng);
        if let Some(r) = current_revision(ctx, node).await {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// One open watch stream.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

async fn open(
    ctx: &Ctx,
    node: usize,
    spec: &WatchSpec,
    start_revision: i64,
) -> Result<Stream, String> {
    let (tx, rx) = mpsc::channel(16);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: spec.key.as_bytes().to_vec(),
            range_end: spec.range_end.clone(),
            start_revision,
            progress_notify: spec.progress_notify,
            prev_kv: spec.prev_kv,
            ..Default::default()
        })),
    };
    tx.send(create).await.map_err(|e| e.to_string())?;
    let mut client = ctx.client.watch(node);
    // Like kube-apiserver (clientv3.WithRequireLeader): a member that loses
    // its leader cancels the stream instead of going quietly stale.
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    match tokio::time::timeout(crate::client::REQUEST_TIMEOUT, client.watch(req)).await {
        Ok(Ok(resp)) => Ok(Stream {
            tx,
            rx: resp.into_inner(),
        }),
        Ok(Err(status)) => Err(crate::client::classify(&status).message),
        Err(_) => Err("watch open timed out".to_string()),
    }
}

/// Runs one watcher (already declared with a `start` record by the caller)
/// from `start_revision` on `node` until drained, resuming on other nodes
/// after disconnects. `on_events` sees every event batch in order.
#[allow(clippy::too_many_arguments)]
pub async fn watch_loop(
    ctx: &Ctx,
    rng: &mut (impl Rng + Send),
    watcher: u64,
    spec: &WatchSpec,
    start_revision: i64,
    mut node: usize,
    restart_on_compaction: bool,
    mut drain: DrainRx,
    mut on_events: impl FnMut(&[WatchEvent]) + Send,
) -> WatchEnd {
    let rec = |kind| WatchRecord::new(watcher, 0, kind);
    let mut next = start_revision;
    // Highest revision the watcher knows it has fully seen.
    let mut seen = start_revision - 1;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut drain_closed = false;
    let mut first = true;
    loop {
        if !first {
            if drain.borrow().is_some() {
                drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
            }
            if drain_done(&drain, seen, drain_deadline) {
                return WatchEnd::Stopped;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            node = ctx.pick_node(rng);
            let mut r = rec(WatchRecordKind::Resumed);
            spec.declare(&mut r, next, node);
            ctx.recorder.record_watch(r);
        }
        first = false;
        let mut stream = match open(ctx, node, spec, next).await {
            Ok(s) => s,
            Err(e) => {
                let mut r = rec(WatchRecordKind::Disconnected);
                r.node = Some(node);
                r.error = Some(e);
                ctx.recorder.record_watch(r);
                continue;
            }
        };
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        ticker.tick().await;
        let mut idle_at = tokio::time::Instant::now() + IDLE_TIMEOUT;
        let reason: String = loop {
            if drain_done(&drain, seen, drain_deadline) {
                return WatchEnd::Stopped;
            }
            tokio::select! {
                changed = drain.changed(), if !drain_closed => {
                    if changed.is_err() {
                        // The run is gone: stop now.
                        drain_closed = true;
                        drain_deadline.get_or_insert_with(tokio::time::Instant::now);
                    } else if drain_deadline.is_none() && drain.borrow().is_some() {
                        drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                        // Ask for progress right away to learn we are caught up.
                        let _ = stream.tx.try_send(progress_request());
                    }
                }
                _ = ticker.tick() => {
                    let _ = stream.tx.try_send(progress_request());
                }
                _ = sleep_until_opt(drain_deadline) => {
                    return WatchEnd::Stopped;
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    break "watch stream idle".to_string();
                }
                msg = stream.rx.message() => {
                    idle_at = tokio::time::Instant::now() + IDLE_TIMEOUT;
                    let resp = match msg {
                        Err(status) => break crate::client::classify(&status).message,
                        Ok(None) => break "watch stream closed by server".to_string(),
                        Ok(Some(resp)) => resp,
                    };
                    let revision = header_rev(&resp.header);
                    if resp.created {
                        let mut r = rec(WatchRecordKind::Created);
                        r.node = Some(node);
                        r.revision = Some(revision);
                        ctx.recorder.record_watch(r);
                    }
                    if resp.canceled {
                        if resp.compact_revision > 0 {
                            let mut r = rec(WatchRecordKind::Compacted);
                            r.node = Some(node);
                            r.revision = Some(revision);
                            r.compact_revision = Some(resp.compact_revision);
                            ctx.recorder.record_watch(r);
                            if !restart_on_compaction {
                                return WatchEnd::Compacted { compact_revision: resp.compact_revision };
                            }
                            next = resp.compact_revision;
                            seen = seen.max(next - 1);
                            break "compacted".to_string();
                        }
                        let mut r = rec(WatchRecordKind::Canceled);
                        r.node = Some(node);
                        r.revision = Some(revision);
                        r.error = Some(resp.cancel_reason.clone());
                        ctx.recorder.record_watch(r);
                        break format!("canceled: {}", resp.cancel_reason);
                    }
                    if !resp.events.is_empty() {
                        let events: Vec<WatchEvent> = resp.events.iter().map(convert_event).collect();
                        let last = events.last().map_or(0, |e| e.kv.mod_revision);
                        on_events(&events);
                        let mut r = rec(WatchRecordKind::Events);
                        r.node = Some(node);
                        r.revision = Some(revision);
                        r.events = events;
                        ctx.recorder.record_watch(r);
                        next = next.max(last + 1);
                        seen = seen.max(last);
                    } else if !resp.created {
                        let mut r = rec(WatchRecordKind::Progress);
                        r.node = Some(node);
                        r.revision = Some(revision);
                        ctx.recorder.record_watch(r);
                        next = next.max(revision + 1);
                        seen = seen.max(revision);
                    }
                }
            }
        };
        if reason != "compacted" {
            let mut r = rec(WatchRecordKind::Disconnected);
            r.node = Some(node);
            r.error = Some(reason);
            ctx.recorder.record_watch(r);
        }
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn drain_done(drain: &DrainRx, seen: i64, deadline: Option<tokio::time::Instant>) -> bool {
    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
        return true;
    }
    matches!(*drain.borrow(), Some(target) if seen >= target)
}

/// Starts the watchers' drain (call it after the writers stopped): the
/// target is the store's revision now (0 when no node answers, so watchers
/// stop at once).
pub async fn signal_drain(ctx: &Ctx, tx: &tokio_watch::Sender<Option<i64>>, rng: &mut impl Rng) {
    let target = current_revision_any(ctx, rng).await.unwrap_or(0);
    let _ = tx.send(Some(target));
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let (drain_tx, drain_rx) = tokio_watch::channel(None);
    let watchers = ctx.opts.concurrency.clamp(2, 6);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..watchers {
        let ctx = ctx.clone();
        let drain = drain_rx.clone();
        set.spawn(async move { watcher(ctx, 1000 + w as u64, drain).await });
    }
    let shared = register::Shared::new(ctx.opts.keys);
    let writers = spawn_workers(&ctx, ctx.opts.concurrency, move |ctx, w| {
        register::worker(ctx, w, shared.clone())
    })
    .await;
    let mut rng = ctx.rng(u64::MAX);
    signal_drain(&ctx, &drain_tx, &mut rng).await;
    while let Some(r) = set.join_next().await {
        r?;
    }
    writers
}

async fn watcher(ctx: Ctx, w: u64, drain: DrainRx) {
    let mut rng = ctx.rng(w);
    let spec = match rng.gen_range(0..6) {
        0 => WatchSpec {
            key: register::key(0),
            range_end: Vec::new(),
            prev_kv: true,
            progress_notify: true,
        },
        1 => WatchSpec::prefix("/jepsen/append/"),
        _ => WatchSpec::prefix("/jepsen/register/"),
    };
    // A random recent start revision (revision 1 is the empty store).
    let (node, start) = loop {
        if ctx.stop.is_cancelled() {
            return;
        }
        let node = ctx.pick_node(&mut rng);
        if let Some(rev) = current_revision(&ctx, node).await {
            let back = rng.gen_range(0..=20);
            break (node, (rev - back).max(1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let id = ctx.recorder.new_watcher();
    let mut r = WatchRecord::new(id, 0, WatchRecordKind::Start);
    spec.declare(&mut r, start, node);
    ctx.recorder.record_watch(r);
    watch_loop(&ctx, &mut rng, id, &spec, start, node, true, drain, |_| {}).await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::Stream;
    use proto::etcdserverpb::{watch_server, ResponseHeader};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::client::Client;
    use crate::history::read_jsonl;
    use crate::workload::{Recorder, WorkloadKind, WorkloadOpts};

    /// A Watch server that answers the create and then says nothing, while
    /// keeping the connection healthy (it answers HTTP/2 pings).
    struct Silent;

    #[tonic::async_trait]
    impl watch_server::Watch for Silent {
        type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

        async fn watch(
            &self,
            req: Request<Streaming<WatchRequest>>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            let mut inbound = req.into_inner();
            tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
            let created = WatchResponse {
                header: Some(ResponseHeader {
                    revision: 1,
                    ..Default::default()
                }),
                created: true,
                ..Default::default()
            };
            let s = futures::StreamExt::chain(
                futures::stream::iter([Ok::<_, Status>(created)]),
                futures::stream::pending(),
            );
            Ok(Response::new(Box::pin(s)))
        }
    }

    #[tokio::test]
    async fn a_silent_stream_counts_as_disconnected_and_is_resumed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(watch_server::WatchServer::new(Silent))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::create(dir.path(), std::time::Instant::now()).unwrap();
        let endpoints = vec![format!("http://{addr}")];
        let ctx = Ctx {
            client: Client::new(&endpoints).unwrap(),
            recorder: recorder.clone(),
            stop: tokio_util::sync::CancellationToken::new(),
            opts: WorkloadOpts {
                kind: WorkloadKind::Watch,
                endpoints,
                concurrency: 1,
                keys: 1,
                seed: 0,
                serializable_reads: false,
            },
        };
        let (tx, rx) = tokio_watch::channel(None);
        let spec = WatchSpec::prefix("/jepsen/register/");
        let mut rng = ctx.rng(0);
        let task = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                watch_loop(&ctx, &mut rng, 7, &spec, 5, 0, true, rx, |_| {}).await
            })
        };
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(2)).await;
        tx.send(Some(0)).unwrap();
        assert_eq!(task.await.unwrap(), WatchEnd::Stopped);
        recorder.flush().unwrap();
        server.abort();
        let recs: Vec<WatchRecord> = read_jsonl(&dir.path().join("watches.jsonl")).unwrap();
        let kinds: Vec<WatchRecordKind> = recs.iter().map(|r| r.kind).collect();
        let idle = recs
            .iter()
            .position(|r| {
                r.kind == WatchRecordKind::Disconnected
                    && r.error.as_deref() == Some("watch stream idle")
            })
            .unwrap_or_else(|| panic!("no idle disconnect: {kinds:?}"));
        let resumed = &recs[idle + 1];
        assert_eq!(resumed.kind, WatchRecordKind::Resumed, "{kinds:?}");
        // Nothing was seen, so it resumes where it started.
        assert_eq!(resumed.start_revision, Some(5));
        assert_eq!(recs[0].kind, WatchRecordKind::Created);
    }
}
