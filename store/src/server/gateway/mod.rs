//! server::gateway: etcd's gRPC-gateway JSON API under `/v3/*`, on the
//! client port. Every endpoint is one line of the [`routes!`] table mapping
//! an HTTP path to a service method and its request and response types; a
//! request is decoded from JSON ([`json`]), handed to the real tonic service
//! implementation in-process (with the HTTP `Authorization` header as the
//! `authorization` metadata, as etcd's gateway forwards it), and the answer
//! is encoded back as etcd 3.5's gateway does:
//!
//! - unary: `200` with the response object, or the gRPC error as
//!   `{"error":…,"code":N,"message":…}` with grpc-gateway's HTTP status for
//!   the code (malformed bodies are `InvalidArgument`, `400`);
//! - server streams (`/v3/watch`, `/v3/lease/keepalive`,
//!   `/v3/maintenance/snapshot`): chunked, one `{"result":…}` line per
//!   message; an error ends the stream with a
//!   `{"error":{"grpc_code":…,"http_code":…,"message":…,"http_status":…}}`
//!   chunk (and that HTTP status when it is the first thing sent);
//! - client streams (`/v3/watch`, `/v3/lease/keepalive`): the body is a
//!   sequence of JSON requests, each sent as it arrives; a malformed first
//!   request fails the call with `Unknown` (`500`), a later one just stops
//!   reading. The request stream stays open after the body ends, as etcd's
//!   does, so a watch keeps streaming until the client disconnects;
//! - an unknown path is `404 Not Found`, a known one with another method
//!   `405 Method Not Allowed`, both in plain text; `OPTIONS` (a CORS
//!   preflight) is an empty `200` on any path. Every answer carries etcd's
//!   `Access-Control-Allow-*` headers.
//!
//! It must never answer for a service: no response is made up here, so
//! every check (learner, quota, auth) is the service's.

pub mod json;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, StatusCode};
use http_body::Frame;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use proto::etcdserverpb as pb;
use tonic::codec::Codec as _;
use tonic::metadata::MetadataMap;
use tonic::Status;

use pb::{
    auth_server::Auth as _, cluster_server::Cluster as _, kv_server::Kv as _,
    lease_server::Lease as _, maintenance_server::Maintenance as _, watch_server::Watch as _,
};

use crate::node::{Node, GRPC_OVERHEAD_BYTES};

use self::json::{DecodeError, Next};

/// The services the gateway calls, and the message descriptors it maps.
pub struct Gateway {
    node: Arc<Node>,
    pool: DescriptorPool,
    kv: super::kv::KvService,
    watch: super::watch::WatchService,
    lease: super::lease::LeaseService,
    cluster: super::cluster::ClusterService,
    maintenance: super::maintenance::MaintenanceService,
    auth: super::auth::AuthService,
}

/// One HTTP call, as the route table's helpers see it.
struct Call {
    md: MetadataMap,
    body: Body,
}

/// The route table: `kind "path" => service.method(Request) -> Response;`.
/// `unary` is a plain RPC, `server_stream` one whose response streams and
/// `bidi` one whose request streams too.
macro_rules! routes {
    ($( $kind:ident $path:literal => $svc:ident . $method:ident ( $req:ident ) -> $resp:ident ; )*) => {
        /// Every path the gateway serves (all `POST`).
        pub const PATHS: &[&str] = &[$($path),*];

        impl Gateway {
            async fn dispatch(self: &Arc<Self>, path: &str, call: Call) -> Option<Response> {
                match path {
                    $( $path => Some(routes!(@call $kind self call $svc $method $req $resp)), )*
                    _ => None,
                }
            }
        }
    };
    (@call unary $gw:ident $call:ident $svc:ident $method:ident $req:ident $resp:ident) => {
        routes!(@go unary [_, _, _] $gw $call $svc $method $req $resp)
    };
    (@call $kind:ident $gw:ident $call:ident $svc:ident $method:ident $req:ident $resp:ident) => {
        routes!(@go $kind [_, _, _, _] $gw $call $svc $method $req $resp)
    };
    (@go $kind:ident [$($g:tt)*] $gw:ident $call:ident $svc:ident $method:ident $req:ident $resp:ident) => {{
        let gw = $gw.clone();
        $kind::<pb::$req, $($g)*>(
            $gw,
            $call,
            concat!("etcdserverpb.", stringify!($req)),
            concat!("etcdserverpb.", stringify!($resp)),
            move |r| async move { gw.$svc.$method(r).await },
        )
        .await
    }};
}

routes! {
    unary "/v3/kv/range" => kv.range(RangeRequest) -> RangeResponse;
    unary "/v3/kv/put" => kv.put(PutRequest) -> PutResponse;
    unary "/v3/kv/deleterange" => kv.delete_range(DeleteRangeRequest) -> DeleteRangeResponse;
    unary "/v3/kv/txn" => kv.txn(TxnRequest) -> TxnResponse;
    unary "/v3/kv/compaction" => kv.compact(CompactionRequest) -> CompactionResponse;
    bidi "/v3/watch" => watch.watch(WatchRequest) -> WatchResponse;
    unary "/v3/lease/grant" => lease.lease_grant(LeaseGrantRequest) -> LeaseGrantResponse;
    unary "/v3/lease/revoke" => lease.lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse;
    unary "/v3/kv/lease/revoke" => lease.lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse;
    bidi "/v3/lease/keepalive" => lease.lease_keep_alive(LeaseKeepAliveRequest) -> LeaseKeepAliveResponse;
    unary "/v3/lease/timetolive" => lease.lease_time_to_live(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse;
    unary "/v3/kv/lease/timetolive" => lease.lease_time_to_live(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse;
    unary "/v3/lease/leases" => lease.lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse;
    unary "/v3/kv/lease/leases" => lease.lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse;
    unary "/v3/cluster/member/add" => cluster.member_add(MemberAddRequest) -> MemberAddResponse;
    unary "/v3/cluster/member/remove" => cluster.member_remove(MemberRemoveRequest) -> MemberRemoveResponse;
    unary "/v3/cluster/member/update" => cluster.member_update(MemberUpdateRequest) -> MemberUpdateResponse;
    unary "/v3/cluster/member/list" => cluster.member_list(MemberListRequest) -> MemberListResponse;
    unary "/v3/cluster/member/promote" => cluster.member_promote(MemberPromoteRequest) -> MemberPromoteResponse;
    unary "/v3/maintenance/alarm" => maintenance.alarm(AlarmRequest) -> AlarmResponse;
    unary "/v3/maintenance/status" => maintenance.status(StatusRequest) -> StatusResponse;
    unary "/v3/maintenance/defragment" => maintenance.defragment(DefragmentRequest) -> DefragmentResponse;
    unary "/v3/maintenance/hash" => maintenance.hash(HashRequest) -> HashResponse;
    unary "/v3/maintenance/hashkv" => maintenance.hash_kv(HashKvRequest) -> HashKvResponse;
    server_stream "/v3/maintenance/snapshot" => maintenance.snapshot(SnapshotRequest) -> SnapshotResponse;
    unary "/v3/maintenance/transfer-leadership" => maintenance.move_leader(MoveLeaderRequest) -> MoveLeaderResponse;
    unary "/v3/maintenance/downgrade" => maintenance.downgrade(DowngradeRequest) -> DowngradeResponse;
    // The Auth service's paths, as etcd registers them.
    unary "/v3/auth/enable" => auth.auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    unary "/v3/auth/disable" => auth.auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    unary "/v3/auth/status" => auth.auth_status(AuthStatusRequest) -> AuthStatusResponse;
    unary "/v3/auth/authenticate" => auth.authenticate(AuthenticateRequest) -> AuthenticateResponse;
    unary "/v3/auth/user/add" => auth.user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    unary "/v3/auth/user/get" => auth.user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    unary "/v3/auth/user/list" => auth.user_list(AuthUserListRequest) -> AuthUserListResponse;
    unary "/v3/auth/user/delete" => auth.user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    unary "/v3/auth/user/changepw" => auth.user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    unary "/v3/auth/user/grant" => auth.user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    unary "/v3/auth/user/revoke" => auth.user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    unary "/v3/auth/role/add" => auth.role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    unary "/v3/auth/role/get" => auth.role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    unary "/v3/auth/role/list" => auth.role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    unary "/v3/auth/role/delete" => auth.role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    unary "/v3/auth/role/grant" => auth.role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    unary "/v3/auth/role/revoke" => auth.role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

/// Paths a learner still serves through the gateway (etcd's
/// isRPCSupportedForLearner; Range checks serializability itself).
const LEARNER_OK: &[&str] = &["/v3/maintenance/status", "/v3/kv/range"];

impl Gateway {
    /// A gateway over `node`'s services.
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("invariant: the compiled-in descriptor set decodes");
        Arc::new(Gateway {
            kv: super::kv::KvService::new(node.clone()),
            watch: super::watch::WatchService::new(node.clone()),
            lease: super::lease::LeaseService::new(node.clone()),
            cluster: super::cluster::ClusterService::new(node.clone()),
            maintenance: super::maintenance::MaintenanceService::new(node.clone()),
            auth: super::auth::AuthService::new(node.clone()),
            node,
            pool,
        })
    }

    /// The axum routes: every `/v3/*` path, and `/v3` itself, which Go's
    /// ServeMux redirects to `/v3/`.
    pub fn router(self: Arc<Self>) -> axum::Router {
        let gw = self.clone();
        let handler = axum::routing::any(move |req: axum::extract::Request| {
            let gw = gw.clone();
            async move { gw.handle(req).await }
        });
        axum::Router::new()
            .route("/v3/{*rest}", handler.clone())
            .route("/v3/", handler)
            .route("/v3", axum::routing::any(redirect_v3))
    }

    async fn handle(self: Arc<Self>, req: axum::extract::Request) -> Response {
        let path = req.uri().path().to_string();
        if req.method() == http::Method::OPTIONS {
            // etcd's CORS handler answers every preflight itself.
            let mut r = Response::new(Body::empty());
            cors(r.headers_mut());
            return r;
        }
        if !PATHS.contains(&path.as_str()) {
            return plain(StatusCode::NOT_FOUND, "Not Found\n");
        }
        if req.method() != http::Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        }
        if self.node.is_learner() && !LEARNER_OK.contains(&path.as_str()) {
            return error_response(&crate::error::Error::NotSupportedForLearner.into());
        }
        let (parts, body) = req.into_parts();
        let md = metadata(&parts.headers);
        self.dispatch(&path, Call { md, body })
            .await
            .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "Not Found\n"))
    }

    /// The descriptor of a routed message. Names come from the Rust type
    /// names, which prost camel-cases (`HashKvRequest` for `HashKVRequest`).
    fn desc(&self, name: &str) -> MessageDescriptor {
        desc_in(&self.pool, name)
    }

    /// The largest request message, as the gRPC server's receive limit.
    fn message_limit(&self) -> usize {
        self.node.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
    }

    /// The largest JSON body read: base64 and JSON make a message's body up
    /// to about 4/3 of its size, so twice the message limit is ample.
    fn body_limit(&self) -> usize {
        2 * self.message_limit() + 64 * 1024
    }

    /// Encode a response message as jsonpb, optionally wrapped as `{"result":…}`.
    fn encode<M: prost::Message>(&self, name: &str, m: &M, wrap: bool) -> String {
        let mut dm = DynamicMessage::new(self.desc(name));
        dm.merge(m.encode_to_vec().as_slice())
            .expect("invariant: a message re-decodes as its own type");
        let mut out = String::new();
        if wrap {
            out.push_str("{\"result\":");
        }
        json::encode_message(&mut out, &dm);
        if wrap {
            out.push('}');
        }
        out
    }
}

/// The gRPC metadata a gateway call carries: the HTTP `Authorization`
/// header as `authorization` (etcd's gateway forwards it so the token
/// reaches the auth checks).
fn metadata(headers: &http::HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes()) {
            md.insert("authorization", v);
        }
    }
    md
}

fn desc_in(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name)
        .or_else(|| {
            pool.all_messages()
                .find(|m| m.full_name().eq_ignore_ascii_case(name))
        })
        .expect("invariant: every routed message is in the descriptor set")
}

fn transcode<Req: prost::Message + Default>(dm: DynamicMessage) -> Result<Req, DecodeError> {
    Req::decode(dm.encode_to_vec().as_slice()).map_err(|e| DecodeError(e.to_string()))
}

/// Go's ServeMux answer for `/v3` (the gateway is mounted at `/v3/`).
async fn redirect_v3(req: axum::extract::Request) -> Response {
    let get = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let mut r = Response::new(if get {
        Body::from("<a href=\"/v3/\">Moved Permanently</a>.\n\n")
    } else {
        Body::empty()
    });
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = r.headers_mut();
    if get {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    h.insert(header::LOCATION, HeaderValue::from_static("/v3/"));
    cors(h);
    r
}

fn plain(code: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    cors(h);
    r
}

/// etcd's client HTTP handler allows any origin on the gateway.
fn cors(h: &mut http::HeaderMap) {
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
}

fn json_response(code: StatusCode, body: Body, ok: bool) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if ok {
        h.insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
    }
    cors(h);
    r
}

/// grpc-gateway's HTTPStatusFromCode.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The unary error body: `{"error":msg,"code":N,"message":msg}`.
fn error_response(s: &Status) -> Response {
    let mut out = String::from("{\"error\":");
    json::push_str(&mut out, s.message());
    out.push_str(&format!(",\"code\":{},\"message\":", s.code() as i32));
    json::push_str(&mut out, s.message());
    out.push('}');
    json_response(http_status(s.code()), Body::from(out), false)
}

/// The error chunk that ends a stream.
fn stream_error_chunk(s: &Status) -> String {
    let code = http_status(s.code());
    let mut out = format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":",
        s.code() as i32,
        code.as_u16()
    );
    json::push_str(&mut out, s.message());
    out.push_str(",\"http_status\":");
    json::push_str(&mut out, code.canonical_reason().unwrap_or(""));
    out.push_str("}}");
    out
}

/// grpc-go's answer to a message over the server's receive limit, which is
/// what etcd's gateway relays.
fn too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({len} vs. {limit})"
    ))
}

async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Status> {
    axum::body::to_bytes(body, gw.body_limit())
        .await
        .map_err(|_| too_large(gw.body_limit(), gw.message_limit()))
}

async fn decode_unary<Req: prost::Message + Default>(
    gw: &Gateway,
    body: Body,
    req_name: &str,
) -> Result<Req, Status> {
    let bytes = read_body(gw, body).await?;
    let req: Req = json::decode_body(&gw.desc(req_name), &bytes)
        .and_then(transcode)
        .map_err(|e| Status::invalid_argument(e.0))?;
    let len = req.encoded_len();
    if len > gw.message_limit() {
        return Err(too_large(len, gw.message_limit()));
    }
    Ok(req)
}

fn request<Req>(md: MetadataMap, r: Req) -> tonic::Request<Req> {
    let mut req = tonic::Request::new(r);
    *req.metadata_mut() = md;
    req
}

async fn unary<Req, Resp, F, Fut>(
    gw: &Gateway,
    call: Call,
    req_name: &str,
    resp_name: &str,
    f: F,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match decode_unary::<Req>(gw, call.body, req_name).await {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match f(request(call.md, req)).await {
        Ok(resp) => json_response(
            StatusCode::OK,
            Body::from(gw.encode(resp_name, resp.get_ref(), false)),
            true,
        ),
        Err(s) => error_response(&s),
    }
}

async fn server_stream<Req, Resp, S, F, Fut>(
    gw: &Gateway,
    call: Call,
    req_name: &str,
    resp_name: &str,
    f: F,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + Unpin + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let req = match decode_unary::<Req>(gw, call.body, req_name).await {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match f(request(call.md, req)).await {
        Ok(resp) => stream_response(gw, resp_name, resp.into_inner()).await,
        Err(s) => error_response(&s),
    }
}

async fn bidi<Req, Resp, S, F, Fut>(
    gw: &Gateway,
    call: Call,
    req_name: &str,
    resp_name: &str,
    f: F,
) -> Response
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + Unpin + 'static,
    F: FnOnce(tonic::Request<tonic::Streaming<Req>>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let mut reader = BodyReader {
        body: call.body.into_data_stream(),
        buf: Vec::new(),
        done: false,
        limit: gw.body_limit(),
        desc: gw.desc(req_name),
    };
    // The first request decides whether the call starts at all.
    let first = match reader.next::<Req>().await {
        Ok(r) => r,
        Err(e) => return error_response(&Status::unknown(e.0)),
    };
    // The service reads gRPC frames; hand it ours through a channel that
    // stays open until the service drops its end, as etcd's stream does
    // after the HTTP body ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        let mut next = first;
        while let Some(r) = next {
            if tx.send(Ok(Frame::data(grpc_frame(&r)))).await.is_err() {
                return;
            }
            next = reader.next::<Req>().await.unwrap_or(None);
        }
        tx.closed().await;
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let decoder = tonic_prost::ProstCodec::<Req, Req>::default().decoder();
    let streaming = tonic::Streaming::new_request(decoder, body, None, None);
    match f(request(call.md, streaming)).await {
        Ok(resp) => stream_response(gw, resp_name, resp.into_inner()).await,
        Err(s) => error_response(&s),
    }
}

/// A gRPC length-prefixed message.
fn grpc_frame<M: prost::Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(len + 5);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode(&mut b).expect("invariant: BytesMut grows");
    b.freeze()
}

/// Reads JSON requests one after another from a streamed HTTP body.
struct BodyReader {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
    limit: usize,
    desc: MessageDescriptor,
}

impl BodyReader {
    /// The next request, `None` at the end of the body.
    async fn next<Req: prost::Message + Default>(&mut self) -> Result<Option<Req>, DecodeError> {
        loop {
            // A UTF-8 sequence cut by a chunk boundary waits for the next
            // chunk; anything else invalid is replaced, as Go reads it.
            let (text, lossless) = match std::str::from_utf8(&self.buf) {
                Ok(s) => (std::borrow::Cow::Borrowed(s), true),
                Err(e) if e.error_len().is_none() && !self.done => (
                    std::borrow::Cow::Owned(
                        String::from_utf8_lossy(&self.buf[..e.valid_up_to()]).into_owned(),
                    ),
                    true,
                ),
                Err(_) => (String::from_utf8_lossy(&self.buf), false),
            };
            let step = match json::next_value(&text)? {
                Next::Value(v, used) => Some((json::decode_message(&self.desc, &v), used)),
                Next::End if self.done => return Ok(None),
                Next::Partial if self.done => return Err(DecodeError("unexpected EOF".into())),
                Next::End | Next::Partial => None,
            };
            drop(text);
            if let Some((msg, used)) = step {
                // Replacement characters change lengths: then drop it all.
                let used = if lossless { used } else { self.buf.len() };
                self.buf.drain(..used.min(self.buf.len()));
                return transcode(msg?).map(Some);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if self.buf.len() + chunk.len() > self.limit {
                        return Err(DecodeError("etcdserver: request is too large".into()));
                    }
                    self.buf.extend_from_slice(&chunk)
                }
                Some(Err(e)) => return Err(DecodeError(e.to_string())),
                None => self.done = true,
            }
        }
    }
}

/// Stream `{"result":…}` lines; an error ends the stream with its chunk.
async fn stream_response<Resp, S>(gw: &Gateway, resp_name: &str, mut s: S) -> Response
where
    Resp: prost::Message + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + Unpin + 'static,
{
    // grpc-gateway writes the status with the first message, so an error
    // before any message sets it.
    let first = match s.next().await {
        None => return json_response(StatusCode::OK, Body::empty(), true),
        // The stream was established, so its header metadata is there.
        Some(Err(e)) => {
            return json_response(
                http_status(e.code()),
                Body::from(stream_error_chunk(&e)),
                true,
            )
        }
        Some(Ok(m)) => m,
    };
    let encode = {
        let pool = gw.pool.clone();
        let name = resp_name.to_string();
        move |m: &Resp| {
            let mut dm = DynamicMessage::new(desc_in(&pool, &name));
            dm.merge(m.encode_to_vec().as_slice())
                .expect("invariant: a message re-decodes as its own type");
            let mut out = String::from("{\"result\":");
            json::encode_message(&mut out, &dm);
            out.push_str("}\n");
            Bytes::from(out)
        }
    };
    let head = Bytes::from(gw.encode(resp_name, &first, true) + "\n");
    let rest = futures::stream::unfold(Some(s), move |st| {
        let encode = encode.clone();
        async move {
            let mut s = st?;
            match s.next().await {
                None => None,
                Some(Ok(m)) => Some((encode(&m), Some(s))),
                Some(Err(e)) => Some((Bytes::from(stream_error_chunk(&e)), None)),
            }
        }
    });
    let body = futures::stream::once(async move { head })
        .chain(rest)
        .map(Ok::<_, Infallible>);
    json_response(StatusCode::OK, Body::from_stream(body), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_unique_and_under_v3() {
        let mut seen = std::collections::HashSet::new();
        for p in PATHS {
            assert!(p.starts_with("/v3/"), "{p}");
            assert!(seen.insert(p), "duplicate {p}");
        }
        // 27 for KV, watch, lease, cluster and maintenance; 17 for auth.
        assert_eq!(PATHS.len(), 44);
    }

    fn reader(chunks: Vec<&'static [u8]>) -> BodyReader {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Bytes::from_static(c))),
        );
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        BodyReader {
            body: Body::from_stream(stream).into_data_stream(),
            buf: Vec::new(),
            done: false,
            limit: 1 << 20,
            desc: desc_in(&pool, "etcdserverpb.PutRequest"),
        }
    }

    #[tokio::test]
    async fn body_reader_splits_requests_across_chunks() {
        // "é" is 0xc3 0xa9: cut between two chunks.
        let mut r = reader(vec![
            b"{\"key\":\"YQ==\",\"x\":\"\xc3",
            b"\xa9\"} {\"ke",
            b"y\":\"Yg==\"}  ",
        ]);
        let a: pb::PutRequest = r.next().await.unwrap().unwrap();
        assert_eq!(a.key, b"a");
        let b: pb::PutRequest = r.next().await.unwrap().unwrap();
        assert_eq!(b.key, b"b");
        assert!(r.next::<pb::PutRequest>().await.unwrap().is_none());
        // A body ending inside a value, or inside a UTF-8 sequence, ends.
        let mut r = reader(vec![b"{\"key\":\"YQ==\"", b", \"x\": 1"]);
        assert_eq!(
            r.next::<pb::PutRequest>().await.unwrap_err().0,
            "unexpected EOF"
        );
        let mut r = reader(vec![b"{\"key\":\"YQ==\"} \xc3"]);
        assert!(r.next::<pb::PutRequest>().await.unwrap().is_some());
        assert!(r.next::<pb::PutRequest>().await.is_err());
    }

    #[test]
    fn authorization_header_becomes_metadata() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("tok.en"));
        h.insert("x-other", HeaderValue::from_static("no"));
        let md = metadata(&h);
        assert_eq!(md.get("authorization").unwrap(), "tok.en");
        assert!(md.get("x-other").is_none());
        assert!(metadata(&http::HeaderMap::new()).is_empty());
    }

    #[test]
    fn stream_error_chunk_shape() {
        let s = Status::unavailable("etcdserver: no leader");
        assert_eq!(
            stream_error_chunk(&s),
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        );
        assert_eq!(
            http_status(tonic::Code::OutOfRange),
            StatusCode::BAD_REQUEST
        );
    }
}
