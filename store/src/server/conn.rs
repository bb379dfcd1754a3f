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
//! returns and, for a write, the box its stream task is spawned in: writes
//! are first polled inside the connection task ([`InlineFirst`]), so the
//! proposal reaches the raft thread before that task's socket writes.

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
        START_INLINE.with(|c| c.set(starts_briefly(req.uri().path())));
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
    /// Set by [`Dispatch::call`] for a request whose first poll is short,
    /// taken by the very next [`InlineFirst::execute`] on this thread
    /// (hyper spawns the request's stream task right after creating its
    /// response future).
    static START_INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Writes, whose handlers do a bounded amount of work before they wait for
/// raft (decode, checks, hand the proposal to the raft thread). A Txn is
/// one too, though a Txn that only reads, with serializable ranges only,
/// is answered within that first poll (its ranges run in the connection
/// task; kube-apiserver sends none).
fn starts_briefly(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.KV/Put"
            | "/etcdserverpb.KV/DeleteRange"
            | "/etcdserverpb.KV/Txn"
            | "/etcdserverpb.Lease/LeaseGrant"
            | "/etcdserverpb.Lease/LeaseRevoke"
    )
}

/// hyper's executor for HTTP/2 stream tasks: tokio's, except that a write
/// request ([`starts_briefly`]) is first polled right here, inside the
/// connection task that received it, before that task flushes what it
/// queued (PING acks, window updates). The proposal then reaches the raft
/// thread a socket write earlier, and a request that completes on its
/// first poll needs no task at all. A future still pending is spawned and
/// polled again there, so every waker it registered with the no-op waker
/// of the first poll is replaced by the task's own.
#[derive(Clone, Copy)]
pub struct InlineFirst;

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        if !START_INLINE.with(|c| c.replace(false)) {
            tokio::spawn(fut);
            return;
        }
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(fut);
        }
    }
}

/// HTTP/2 and HTTP/1 settings of the client port: etcd's keepalive
/// (`--grpc-keepalive-interval`, `--grpc-keepalive-timeout`), no limit on
/// concurrent streams (etcd allows 2^32-1), hyper's defaults otherwise.
pub fn builder(node: &Node) -> Builder<InlineFirst> {
    let mut b = Builder::new(InlineFirst);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .keep_alive_interval(node.cfg.grpc_keepalive_interval)
        .keep_alive_timeout(
            node.cfg
                .grpc_keepalive_timeout
                .unwrap_or(Duration::from_secs(20)),
        );
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    b.http1().timer(TokioTimer::new());
    b
}

/// Serve `services` on the connections of `incoming` until `stop` fires;
/// then stop accepting (the listener is dropped at once), let every
/// connection finish its in-flight requests, and return.
pub async fn serve<I, IO>(
    incoming: I,
    services: Arc<Services>,
    builder: Builder<InlineFirst>,
    stop: tokio_util::sync::CancellationToken,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Into<ConnInfo>,
{
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
            let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
            let conn = graceful.watch(conn);
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

    #[tokio::test]
    async fn inline_first_runs_writes_at_once_and_keeps_pending_ones_wakeable() {
        use hyper::rt::Executor as _;
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        // Flag set (a write): a future that is ready at once ran before
        // execute returned.
        START_INLINE.with(|c| c.set(true));
        InlineFirst.execute(async move { d.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst));
        assert!(!START_INLINE.with(|c| c.get()), "the flag is taken");
        // A pending one is spawned and woken through the task's own waker,
        // not the no-op one of the first poll.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (out_tx, out_rx) = tokio::sync::oneshot::channel::<u32>();
        START_INLINE.with(|c| c.set(true));
        InlineFirst.execute(async move {
            let v = rx.await.unwrap();
            out_tx.send(v + 1).unwrap();
        });
        tx.send(41).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), out_rx).await;
        assert_eq!(got.unwrap().unwrap(), 42);
        // Without the flag: spawned, not run on the caller's stack.
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        InlineFirst.execute(async move { r.store(true, Ordering::SeqCst) });
        assert!(!ran.load(Ordering::SeqCst));
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
