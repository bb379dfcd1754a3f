//! conn: serving the client port. Owns the accept loop of each client
//! listener, the HTTP/1 + HTTP/2 connection settings, graceful shutdown,
//! and the per-request split: gRPC calls (`/etcdserverpb.<Service>/...`)
//! go straight to the tonic service for `<Service>`, everything else to the
//! HTTP router (`/health`, `/metrics`, the `/v3/*` gateway, ...).
//!
//! gRPC requests bypass the HTTP router and any tower/axum middleware: the
//! learner guard, the grpc-timeout deadline and the rewrite of oversized
//! message errors to etcd's wording are done inline in one unboxed response
//! future ([`ResponseFuture`]). On the hot path the only allocations of the
//! serving layer itself are the boxed future that tonic's generated service
//! returns and the box its stream future is kept in. Requests with little
//! work of their own (writes, single-key reads, lease keepalives) are
//! served inside the connection task ([`StreamExec`], [`ServeConn`]),
//! first polled once the connection has taken in every request that
//! arrived with them: the answers of requests that arrive together, and
//! the responses raft completes together, leave together, in one write.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::Service as _;

use super::{auth, cluster, kv, lease, maintenance, watch};
use crate::node::{Node, GRPC_OVERHEAD_BYTES};

/// The etcd gRPC services of one client listener.
#[derive(Clone)]
pub struct GrpcServices {
    kv: KvServer<kv::KvService>,
    watch: WatchServer<watch::WatchService>,
    lease: LeaseServer<lease::LeaseService>,
    maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    cluster: ClusterServer<cluster::ClusterService>,
    auth: AuthServer<auth::AuthService>,
}

impl GrpcServices {
    /// The services, refusing request messages above `--max-request-bytes`
    /// (plus gRPC framing) as etcd does.
    pub fn new(node: &Arc<Node>) -> GrpcServices {
        let max_recv = node.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        GrpcServices {
            kv: KvServer::new(kv::KvService::new(node.clone()))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            watch: WatchServer::new(watch::WatchService::new(node.clone()))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            lease: LeaseServer::new(lease::LeaseService::new(node.clone()))
                .max_decoding_message_size(max_recv),
            maintenance: MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            cluster: ClusterServer::new(cluster::ClusterService::new(node.clone()))
                .max_decoding_message_size(max_recv),
            auth: AuthServer::new(auth::AuthService::new(node.clone()))
                .max_decoding_message_size(max_recv),
        }
    }

    /// Start `req` on `service`.
    fn call(
        &self,
        service: Service,
        req: Request<Incoming>,
    ) -> BoxFuture<Response<Body>, Infallible> {
        match service {
            Service::Kv => self.kv.clone().call(req),
            Service::Watch => self.watch.clone().call(req),
            Service::Lease => self.lease.clone().call(req),
            Service::Maintenance => self.maintenance.clone().call(req),
            Service::Cluster => self.cluster.clone().call(req),
            Service::Auth => self.auth.clone().call(req),
        }
    }
}

/// What the services of one listener share: the gRPC services, the HTTP
/// router for every other path, and the node (for the learner guard).
pub struct Services {
    pub grpc: GrpcServices,
    pub http: axum::Router,
    pub node: Arc<Node>,
}

/// The connection facts tonic handlers read from request extensions
/// (`tonic::Request::remote_addr`, `peer_certs`), as tonic's own server
/// inserts them.
#[derive(Clone)]
pub enum ConnInfo {
    Tcp(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

/// The per-connection request handler given to hyper.
#[derive(Clone)]
struct Dispatch {
    services: Arc<Services>,
    info: ConnInfo,
}

impl hyper::service::Service<Request<Incoming>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: Request<Incoming>) -> ResponseFuture {
        // Set (or cleared) on every request, so that a flag no executor
        // took (HTTP/1 requests are not spawned) never outlives it.
        SERVE_IN_CONN.with(|c| c.set(starts_briefly(req.uri().path())));
        match &self.info {
            ConnInfo::Tcp(i) => {
                req.extensions_mut().insert(i.clone());
            }
            ConnInfo::Tls(i) => {
                req.extensions_mut().insert(i.clone());
            }
        }
        let Some(service) = grpc_service(req.uri().path()) else {
            let http = self.services.http.clone();
            return ResponseFuture::Http(Box::pin(async move {
                let resp = http.oneshot_infallible(req).await;
                Ok(resp.map(Body::new))
            }));
        };
        let path = req.uri().path();
        // A learner serves only Status and serializable Range (etcd's
        // isRPCSupportedForLearner); every other RPC, streams included,
        // fails with "etcdserver: rpc not supported for learner". Range
        // checks the flag itself.
        if self.services.node.is_learner()
            && path != "/etcdserverpb.Maintenance/Status"
            && path != "/etcdserverpb.KV/Range"
        {
            let status = tonic::Status::from(crate::error::Error::NotSupportedForLearner);
            return ResponseFuture::Ready(Some(status_response(status)));
        }
        let deadline = grpc_timeout(req.headers()).map(|d| Box::pin(tokio::time::sleep(d)));
        ResponseFuture::Grpc {
            inner: self.services.grpc.call(service, req),
            deadline,
        }
    }
}

/// The etcd gRPC services a client port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Kv,
    Watch,
    Lease,
    Maintenance,
    Cluster,
    Auth,
}

/// The service of a gRPC path (`/etcdserverpb.KV/Range` → KV); `None` for
/// any other path, which the HTTP router serves (it answers unknown paths
/// with gRPC's "unimplemented", as tonic's router does).
fn grpc_service(path: &str) -> Option<Service> {
    let rest = path.strip_prefix("/etcdserverpb.")?;
    let (service, _) = rest.split_once('/')?;
    Some(match service {
        "KV" => Service::Kv,
        "Watch" => Service::Watch,
        "Lease" => Service::Lease,
        "Maintenance" => Service::Maintenance,
        "Cluster" => Service::Cluster,
        "Auth" => Service::Auth,
        _ => return None,
    })
}

/// A trailers-only gRPC response carrying `status`.
fn status_response(status: tonic::Status) -> Response<Body> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    Response::from_parts(parts, Body::empty())
}

/// The client's deadline from the `grpc-timeout` header ("<digits><unit>",
/// at most 8 digits; units H, M, S, m, u, n), as tonic's server reads it.
/// An unparsable header is ignored, as tonic does.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The response of one request: a gRPC call in flight (with the client's
/// deadline, if it sent one), an HTTP route, or an answer known at once.
pub enum ResponseFuture {
    Grpc {
        inner: BoxFuture<Response<Body>, Infallible>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Http(BoxFuture<Response<Body>, Infallible>),
    Ready(Option<Response<Body>>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Grpc { inner, deadline } => {
                if let Poll::Ready(Ok(resp)) = inner.as_mut().poll(cx) {
                    return Poll::Ready(Ok(etcd_size_error(resp)));
                }
                let expired = deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                // What tonic's server answers when grpc-timeout expires.
                Poll::Ready(Ok(status_response(tonic::Status::cancelled(
                    "Timeout expired",
                ))))
            }
            ResponseFuture::Http(f) => f.as_mut().poll(cx),
            ResponseFuture::Ready(r) => Poll::Ready(Ok(r
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// Rewrite tonic's oversized-message status in a trailers-only response to
/// etcd's ([`super::etcd_size_status`]); any other response is returned as is.
fn etcd_size_error(resp: Response<Body>) -> Response<Body> {
    if resp.headers().get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return resp;
    }
    match tonic::Status::from_header_map(resp.headers()).and_then(|s| super::etcd_size_status(&s)) {
        Some(s) => status_response(s),
        None => resp,
    }
}

/// Oneshot for the axum router, whose errors are `Infallible`.
trait OneshotInfallible {
    fn oneshot_infallible(
        self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<axum::body::Body>> + Send;
}

impl OneshotInfallible for axum::Router {
    async fn oneshot_infallible(mut self, req: Request<Incoming>) -> Response<axum::body::Body> {
        match self.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }
}

thread_local! {
    /// Set by [`Dispatch::call`] for a request whose handler does little
    /// work itself, taken by the very next [`StreamExec::execute`] on this
    /// thread (hyper spawns the request's stream task right after creating
    /// its response future).
    static SERVE_IN_CONN: Cell<bool> = const { Cell::new(false) };
    /// Whether the future being polled on this thread is a stream the
    /// connection task runs itself, and whether it asked to leave it.
    static IN_CONN_TASK: Cell<InConnTask> = const { Cell::new(InConnTask::No) };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum InConnTask {
    No,
    Yes,
    WantsOwnTask,
}

/// Requests whose handlers do a bounded amount of work themselves: writes
/// (decode, checks, hand the proposal to the raft thread, encode the
/// small response) and single-key reads. A handler that turns out to have
/// more to do (a range over many keys, a Txn with one) first moves to a
/// task of its own with [`own_task`].
fn starts_briefly(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.KV/Put"
            | "/etcdserverpb.KV/Range"
            | "/etcdserverpb.KV/DeleteRange"
            | "/etcdserverpb.KV/Txn"
            | "/etcdserverpb.Lease/LeaseGrant"
            | "/etcdserverpb.Lease/LeaseRevoke"
            | "/etcdserverpb.Lease/LeaseKeepAlive"
    )
}

/// Called by a handler before work whose size depends on the data (a range
/// over many keys, encoding its response): if the request is being served
/// inside its connection's task ([`StreamExec`]), it moves to a task of its
/// own first, so that the connection's other streams are not held up; in
/// a task of its own already, it returns at once.
pub fn own_task() -> impl Future<Output = ()> {
    let mut asked = false;
    std::future::poll_fn(move |_| {
        if asked || IN_CONN_TASK.with(|c| c.get()) == InConnTask::No {
            return Poll::Ready(());
        }
        asked = true;
        IN_CONN_TASK.with(|c| c.set(InConnTask::WantsOwnTask));
        Poll::Pending
    })
}

/// Poll `fut` as a stream of the connection task; `Err(())` if it asked
/// for a task of its own ([`own_task`]) and is still pending. A stream
/// that panics is done (and is dropped, which resets it), as a spawned one
/// would be: the connection and its other streams go on.
fn poll_in_conn_task(
    fut: Pin<&mut (dyn Future<Output = ()> + Send)>,
    cx: &mut Context<'_>,
) -> Result<Poll<()>, ()> {
    IN_CONN_TASK.with(|c| c.set(InConnTask::Yes));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx)));
    let wants = IN_CONN_TASK.with(|c| c.replace(InConnTask::No)) == InConnTask::WantsOwnTask;
    match r {
        Ok(Poll::Pending) if wants => Err(()),
        Ok(r) => Ok(r),
        Err(_) => Ok(Poll::Ready(())),
    }
}

/// A stream future kept in its connection's task ([`ServeConn`]).
struct ConnStream(Option<futures::future::BoxFuture<'static, ()>>);

impl Future for ConnStream {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(fut) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        match poll_in_conn_task(fut.as_mut(), cx) {
            Ok(r) => r,
            Err(()) => {
                tokio::spawn(self.0.take().expect("present"));
                Poll::Ready(())
            }
        }
    }
}

/// hyper's executor for the HTTP/2 stream tasks of one connection. A
/// request with little work of its own ([`starts_briefly`]: writes,
/// single-key reads, keepalives) is handed to the connection's own task
/// ([`ServeConn`]), which polls it once hyper has accepted every request
/// the last read brought (hyper's accept loop flushes the socket before
/// each accept, so a request answered as it is accepted would go out in a
/// write of its own): the answers of requests read together are sent
/// before the next flush and leave in one socket write. The same holds
/// later: when raft commits a batch (or a ReadIndex round confirms a batch
/// of reads), its responses on one connection are all sent within one
/// wake-up of that task. (As tasks of their own, each response woke the
/// connection task, which tokio runs next, and each went out in a write of
/// its own.) Every other request, and one that calls [`own_task`], gets a
/// task of its own, so a long read does not hold up the other streams of
/// its connection.
#[derive(Clone, Default)]
pub struct StreamExec {
    handoff: Arc<parking_lot::Mutex<Handoff>>,
}

/// Requests handed from [`StreamExec`] to their connection's [`ServeConn`].
#[derive(Default)]
struct Handoff {
    new: Vec<futures::future::BoxFuture<'static, ()>>,
    /// The connection task's [`SelfWake`] waker (set by [`ServeConn::new`]),
    /// for a hand-off from outside its poll.
    waker: Option<std::task::Waker>,
    /// The connection task is polling its connection (and will look here
    /// when that returns).
    polling: bool,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if !SERVE_IN_CONN.with(|c| c.replace(false)) {
            tokio::spawn(fut);
            return;
        }
        let mut h = self.handoff.lock();
        h.new.push(Box::pin(fut));
        if !h.polling {
            if let Some(w) = &h.waker {
                w.wake_by_ref();
            }
        }
    }
}

/// One client connection's task: the HTTP connection `conn` plus the
/// stream futures its [`StreamExec`] handed over. Streams are polled
/// before the connection, and new ones as soon as the connection has
/// accepted all it read, so what they send goes out in the connection's
/// next flush, all of it in one write.
///
/// Everything inside is polled with a waker of its own ([`SelfWake`]): a
/// response that a stream hands to h2 wakes the connection task (to flush
/// it), from inside that task's own poll. Passed to tokio, such a wake-up
/// makes the task count as yielding: tokio requeues it and wakes a parked
/// worker to take it (a futex wake and an eventfd write per response,
/// and the task often moves to the other thread for a poll that finds
/// nothing to do). Caught here, it becomes one more turn of this loop.
struct ServeConn<C> {
    conn: Pin<Box<C>>,
    streams: futures::stream::FuturesUnordered<ConnStream>,
    handoff: Arc<parking_lot::Mutex<Handoff>>,
    wake: Arc<SelfWake>,
    /// `wake` as a waker (made once per connection).
    waker: std::task::Waker,
}

impl<C> ServeConn<C> {
    fn new(conn: Pin<Box<C>>, handoff: Arc<parking_lot::Mutex<Handoff>>) -> Self {
        let wake = Arc::new(SelfWake::default());
        let waker = futures::task::waker(wake.clone());
        handoff.lock().waker = Some(waker.clone());
        ServeConn {
            conn,
            streams: Default::default(),
            handoff,
            waker,
            wake,
        }
    }
}

/// Turns of [`ServeConn`]'s loop after wake-ups from its own poll before it
/// yields to tokio after all (something that wakes itself on every poll,
/// such as a stream out of tokio's cooperative budget, must not spin here).
const MAX_SELF_WAKES: u32 = 16;

/// The waker [`ServeConn`] polls its connection and streams with. While the
/// task is inside its poll, a wake-up only asks for one more turn of the
/// loop; otherwise it wakes the task through tokio.
#[derive(Default)]
struct SelfWake {
    /// [`IDLE`], [`POLLING`] or [`REPOLL`].
    state: std::sync::atomic::AtomicU8,
    /// The task's own waker, registered on every poll.
    task: futures::task::AtomicWaker,
}

/// Not inside the connection task's poll.
const IDLE: u8 = 0;
/// Inside the poll, no wake-up yet.
const POLLING: u8 = 1;
/// Inside the poll, woken: the poll goes round once more.
const REPOLL: u8 = 2;

impl futures::task::ArcWake for SelfWake {
    fn wake_by_ref(arc: &Arc<Self>) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        // POLLING → REPOLL, or already REPOLL: the poll sees it before it
        // returns. IDLE: the task has to be woken.
        match arc.state.compare_exchange(POLLING, REPOLL, AcqRel, Acquire) {
            Ok(_) | Err(REPOLL) => {}
            Err(_) => arc.task.wake(),
        }
    }
}

impl<C: Future> Future for ServeConn<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        let this = self.get_mut();
        // Registered before POLLING is set: a wake-up that finds IDLE
        // wakes the task that runs now.
        this.wake.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        let mut turns = 0;
        loop {
            this.wake.state.store(POLLING, Release);
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(&mut inner) {}
            this.handoff.lock().polling = true;
            let r = this.conn.as_mut().poll(&mut inner);
            let new = {
                let mut h = this.handoff.lock();
                h.polling = false;
                std::mem::take(&mut h.new)
            };
            if let Poll::Ready(out) = r {
                this.wake.state.store(IDLE, Release);
                // The connection is closed: a request still in the set has
                // nowhere to send its response (a proposal stays made).
                return Poll::Ready(out);
            }
            if !new.is_empty() {
                this.streams
                    .extend(new.into_iter().map(|f| ConnStream(Some(f))));
                continue;
            }
            // Leave the poll unless something woke us inside it.
            if this
                .wake
                .state
                .compare_exchange(POLLING, IDLE, AcqRel, Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            turns += 1;
            if turns >= MAX_SELF_WAKES {
                this.wake.state.store(IDLE, Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

/// HTTP/2 and HTTP/1 settings of the client port: etcd's keepalive
/// (`--grpc-keepalive-interval`, `--grpc-keepalive-timeout`), no limit on
/// concurrent streams (etcd allows 2^32-1), hyper's defaults otherwise.
#[derive(Clone, Copy)]
pub struct ConnSettings {
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Duration,
}

impl ConnSettings {
    pub fn new(node: &Node) -> ConnSettings {
        ConnSettings {
            keep_alive_interval: node.cfg.grpc_keepalive_interval,
            keep_alive_timeout: node
                .cfg
                .grpc_keepalive_timeout
                .unwrap_or(Duration::from_secs(20)),
        }
    }

    /// A connection builder whose stream tasks go to `exec`.
    fn builder(&self, exec: StreamExec) -> Builder<StreamExec> {
        let mut b = Builder::new(exec);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(None)
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout);
        // hyper enforces its HTTP/1 header read timeout only with a timer.
        b.http1().timer(TokioTimer::new());
        b
    }
}

/// Serve `services` on the connections of `incoming`, from the moment the
/// member is published ([`Node::published`]) until `stop` fires; then stop
/// accepting (the listener is dropped at once), let every connection
/// finish its in-flight requests, and return.
pub async fn serve<I, IO>(
    incoming: I,
    services: Arc<Services>,
    settings: ConnSettings,
    stop: tokio_util::sync::CancellationToken,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Into<ConnInfo>,
{
    // etcd accepts client connections only once the member has published
    // its name and client URLs; until then they wait in the listen backlog.
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = services.node.published.cancelled() => {}
    }
    let graceful = GracefulShutdown::new();
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let io = tokio::select! {
                _ = stop.cancelled() => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                    None => break,
                },
            };
            let svc = Dispatch {
                services: services.clone(),
                info: io.connect_info().into(),
            };
            let exec = StreamExec::default();
            let handoff = exec.handoff.clone();
            let conn = settings
                .builder(exec)
                .serve_connection(TokioIo::new(io), svc)
                .into_owned();
            let conn = ServeConn::new(Box::pin(graceful.watch(conn)), handoff);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            });
        }
    }
    graceful.shutdown().await;
}

impl From<TcpConnectInfo> for ConnInfo {
    fn from(i: TcpConnectInfo) -> ConnInfo {
        ConnInfo::Tcp(i)
    }
}

impl From<TlsConnectInfo<TcpConnectInfo>> for ConnInfo {
    fn from(i: TlsConnectInfo<TcpConnectInfo>) -> ConnInfo {
        ConnInfo::Tls(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_their_service() {
        let s = grpc_service;
        assert_eq!(s("/etcdserverpb.KV/Range"), Some(Service::Kv));
        assert_eq!(s("/etcdserverpb.KV/Txn"), Some(Service::Kv));
        assert_eq!(s("/etcdserverpb.Watch/Watch"), Some(Service::Watch));
        assert_eq!(
            s("/etcdserverpb.Lease/LeaseKeepAlive"),
            Some(Service::Lease)
        );
        assert_eq!(
            s("/etcdserverpb.Maintenance/Status"),
            Some(Service::Maintenance)
        );
        assert_eq!(
            s("/etcdserverpb.Cluster/MemberList"),
            Some(Service::Cluster)
        );
        assert_eq!(s("/etcdserverpb.Auth/Authenticate"), Some(Service::Auth));
        assert_eq!(s("/v3/kv/range"), None);
        assert_eq!(s("/health"), None);
        assert_eq!(s("/etcdserverpb.KV"), None);
        assert_eq!(s("/etcdserverpb.Nope/X"), None);
    }

    /// A stand-in for hyper's connection that wakes its own task from
    /// inside its first `wake_inside` polls (as h2 does when a stream hands
    /// it a response to flush) and keeps the last waker it was given.
    struct SelfWaking {
        polls: Arc<std::sync::atomic::AtomicU32>,
        wake_inside: u32,
        waker: Arc<parking_lot::Mutex<Option<std::task::Waker>>>,
    }

    impl Future for SelfWaking {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *self.waker.lock() = Some(cx.waker().clone());
            if n < self.wake_inside {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    /// Counts the wake-ups of the task (the waker tokio would pass).
    #[derive(Default)]
    struct TaskWakes(std::sync::atomic::AtomicU32);

    impl futures::task::ArcWake for TaskWakes {
        fn wake_by_ref(arc: &Arc<Self>) {
            arc.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn self_waking(
        wake_inside: u32,
    ) -> (
        ServeConn<SelfWaking>,
        Arc<std::sync::atomic::AtomicU32>,
        Arc<parking_lot::Mutex<Option<std::task::Waker>>>,
    ) {
        let polls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let waker = Arc::new(parking_lot::Mutex::new(None));
        let conn = SelfWaking {
            polls: polls.clone(),
            wake_inside,
            waker: waker.clone(),
        };
        (
            ServeConn::new(Box::pin(conn), Default::default()),
            polls,
            waker,
        )
    }

    #[test]
    fn a_wake_from_inside_the_poll_is_another_turn_not_a_task_wake() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut conn, polls, inner) = self_waking(2);
        let wakes = Arc::new(TaskWakes::default());
        let task = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&task);
        assert!(Pin::new(&mut conn).poll(&mut cx).is_pending());
        // Woken twice inside: polled again twice within the one task poll,
        // and tokio was not asked to run the task again.
        assert_eq!(polls.load(SeqCst), 3);
        assert_eq!(wakes.0.load(SeqCst), 0);
        // A wake-up after the poll (raft answering, a socket readable)
        // reaches the task.
        inner.lock().take().unwrap().wake();
        assert_eq!(wakes.0.load(SeqCst), 1);
        assert!(Pin::new(&mut conn).poll(&mut cx).is_pending());
        assert_eq!(polls.load(SeqCst), 4);
        assert_eq!(wakes.0.load(SeqCst), 1);
    }

    #[test]
    fn a_connection_that_always_wakes_itself_yields_to_the_runtime() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut conn, polls, _inner) = self_waking(u32::MAX);
        let wakes = Arc::new(TaskWakes::default());
        let task = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&task);
        assert!(Pin::new(&mut conn).poll(&mut cx).is_pending());
        assert_eq!(polls.load(SeqCst), MAX_SELF_WAKES);
        assert_eq!(wakes.0.load(SeqCst), 1, "the task is woken to run again");
    }

    /// A stand-in for hyper's connection: starts each request of `start`
    /// through the executor from inside its poll (flagged like
    /// [`Dispatch::call`] does when the bool is true), then waits for `end`.
    struct FakeConn {
        exec: StreamExec,
        start:
            tokio::sync::mpsc::UnboundedReceiver<(bool, futures::future::BoxFuture<'static, ()>)>,
        end: tokio::sync::oneshot::Receiver<()>,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            use hyper::rt::Executor as _;
            while let Poll::Ready(Some((flag, fut))) = self.start.poll_recv(cx) {
                SERVE_IN_CONN.with(|c| c.set(flag));
                self.exec.execute(fut);
            }
            Pin::new(&mut self.end).poll(cx).map(|_| ())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn brief_requests_are_served_in_their_connection_task() {
        use tokio::sync::{mpsc, oneshot};
        let exec = StreamExec::default();
        let (start_tx, start) = mpsc::unbounded_channel();
        let (end_tx, end) = oneshot::channel();
        let (conn_id_tx, conn_id) = oneshot::channel();
        let handoff = exec.handoff.clone();
        let conn = ServeConn::new(
            Box::pin(async move {
                conn_id_tx.send(tokio::task::id()).unwrap();
                FakeConn { exec, start, end }.await
            }),
            handoff,
        );
        let served = tokio::spawn(conn);
        let conn_id = conn_id.await.unwrap();
        // Each request reports the task it finished in.
        let request = |flag: bool, apart: bool, go_at_once: bool| {
            let (go_tx, go) = oneshot::channel::<()>();
            let (done_tx, done) = oneshot::channel::<Option<tokio::task::Id>>();
            let go_tx = if go_at_once {
                go_tx.send(()).unwrap();
                None
            } else {
                Some(go_tx)
            };
            let fut = Box::pin(async move {
                go.await.unwrap();
                if apart {
                    own_task().await;
                }
                done_tx.send(tokio::task::try_id()).unwrap();
            });
            start_tx.send((flag, fut)).unwrap();
            (go_tx, done)
        };
        let within = |done: oneshot::Receiver<Option<tokio::task::Id>>| async move {
            tokio::time::timeout(Duration::from_secs(10), done)
                .await
                .expect("request finished")
                .unwrap()
        };
        // A brief request waiting for something (raft) is woken and
        // finished by the connection task.
        let (go, done) = request(true, false, false);
        go.unwrap().send(()).unwrap();
        assert_eq!(within(done).await, Some(conn_id));
        // One that asks for a task of its own gets one, and finishes.
        let (go, done) = request(true, true, false);
        go.unwrap().send(()).unwrap();
        let id = within(done).await;
        assert!(id.is_some() && id != Some(conn_id), "{id:?}");
        // Unflagged requests are spawned.
        let (go, done) = request(false, false, false);
        go.unwrap().send(()).unwrap();
        let id = within(done).await;
        assert!(id.is_some() && id != Some(conn_id), "{id:?}");
        // A request that panics ends alone: the connection serves on.
        let (panic_go, panic_go_rx) = oneshot::channel::<()>();
        start_tx
            .send((
                true,
                Box::pin(async move {
                    panic_go_rx.await.unwrap();
                    panic!("a handler bug");
                }),
            ))
            .unwrap();
        panic_go.send(()).unwrap();
        let (go, done) = request(true, false, false);
        go.unwrap().send(()).unwrap();
        assert_eq!(within(done).await, Some(conn_id));
        // A brief request that is ready at once completes in the
        // connection task too.
        let (_, done) = request(true, false, true);
        assert_eq!(within(done).await, Some(conn_id));
        // Unflagged, the same runs in a task of its own.
        let (_, done) = request(false, false, true);
        let id = within(done).await;
        assert!(id.is_some() && id != Some(conn_id), "{id:?}");
        // The connection's end ends the task.
        end_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .unwrap()
            .unwrap();
    }

    /// A server-side socket that counts the writes that carried bytes.
    struct CountWrites {
        io: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                if n > 0 {
                    self.writes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            r
        }

        /// One write of all of `bufs`, as writev is.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Requests that arrive together and are answered at once (serializable
    /// ranges, lease keepalives) are answered in one socket write: each is
    /// first polled after the connection has taken in all of them. (Polled
    /// as hyper accepted it, each answer went out in a write of its own.)
    #[tokio::test(flavor = "current_thread")]
    async fn answers_to_requests_read_together_leave_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server_io = CountWrites {
            io: server_io,
            writes: writes.clone(),
        };
        // Answered on the first poll, and flagged as Dispatch::call flags a
        // brief request.
        let svc = hyper::service::service_fn(|req: Request<Incoming>| {
            SERVE_IN_CONN.with(|c| c.set(true));
            let body = format!("answer to {}", req.uri().path());
            async move {
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            }
        });
        let exec = StreamExec::default();
        let handoff = exec.handoff.clone();
        let settings = ConnSettings {
            keep_alive_interval: None,
            keep_alive_timeout: Duration::from_secs(20),
        };
        let conn = settings
            .builder(exec)
            .serve_connection(TokioIo::new(server_io), svc)
            .into_owned();
        tokio::spawn(ServeConn::new(Box::pin(conn), handoff));
        let (mut client, client_conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(client_io),
        )
        .await
        .unwrap();
        tokio::spawn(client_conn);
        let get = |client: &mut hyper::client::conn::http2::SendRequest<
            http_body_util::Empty<bytes::Bytes>,
        >,
                   i: usize| {
            let req = Request::get(format!("http://strata/{i}"))
                .body(http_body_util::Empty::new())
                .unwrap();
            client.send_request(req)
        };
        // Settings exchanged, one request answered: the connection is idle.
        get(&mut client, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        // The client's connection task sends the 16 in one write.
        let sent: Vec<_> = (1..=16).map(|i| get(&mut client, i)).collect();
        for (i, resp) in futures::future::join_all(sent)
            .await
            .into_iter()
            .enumerate()
        {
            let body = http_body_util::BodyExt::collect(resp.unwrap().into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(body, format!("answer to /{}", i + 1));
        }
        let answered_in = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(answered_in, 1, "writes for 16 answers");
    }

    #[test]
    fn own_task_returns_at_once_outside_a_connection_task() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut f = std::pin::pin!(own_task());
        assert!(f.as_mut().poll(&mut cx).is_ready());
        // Inside one it is pending once, and says so.
        let mut f = std::pin::pin!(own_task());
        IN_CONN_TASK.with(|c| c.set(InConnTask::Yes));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            IN_CONN_TASK.with(|c| c.replace(InConnTask::No)),
            InConnTask::WantsOwnTask
        );
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn grpc_timeout_header_is_parsed_as_tonic_does() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("5x"), None);
        assert_eq!(t("S"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn oversized_message_errors_are_rewritten() {
        let tonic_says = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 10 bytes, the limit is: 5 bytes",
        );
        let r = etcd_size_error(status_response(tonic_says));
        let s = tonic::Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (10 vs. 5)"
        );
        let other = etcd_size_error(status_response(tonic::Status::out_of_range("x")));
        let s = tonic::Status::from_header_map(other.headers()).unwrap();
        assert_eq!(s.message(), "x");
    }
}
