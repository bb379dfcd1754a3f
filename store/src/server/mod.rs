//! server: the client-facing listeners. One file per etcd gRPC service
//! (kv, watch, lease, maintenance, cluster, auth); each turns requests into
//! proposals ([`Node::propose`]) or local reads. The same port also answers
//! plain HTTP: `/health`, `/livez`, `/readyz`, `/version`, `/metrics` and
//! etcd's JSON gateway under `/v3/*` ([`gateway`]), as etcd's client port
//! does; `--listen-metrics-urls` listeners serve only the first five. Each
//! listener is http or https on its own (etcd allows a mix); https ones use
//! [`tls`].

pub mod auth;
pub mod cluster;
pub mod conn;
pub mod gateway;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod tls;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::node::Node;

/// Resolve a listen URL to a socket address (`localhost` → 127.0.0.1).
pub fn listen_addr(u: &url::Url) -> anyhow::Result<SocketAddr> {
    if u.scheme() != "http" && u.scheme() != "https" {
        bail!(
            "listen URL {u}: scheme {:?} is not supported yet (unix sockets arrive later); use http:// or https://",
            u.scheme()
        );
    }
    let host = match u.host_str() {
        Some("localhost") | None => "127.0.0.1",
        Some(h) => h.trim_start_matches('[').trim_end_matches(']'),
    };
    let port = u.port().unwrap_or(2379);
    format!("{host}:{port}")
        .parse::<SocketAddr>()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (host, port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .with_context(|| format!("cannot resolve listen URL {u}"))
}

fn http_routes(node: Arc<Node>) -> axum::Router {
    let n1 = node.clone();
    let n2 = node.clone();
    let n3 = node.clone();
    let routes = axum::Router::new()
        .route(
            "/health",
            get(move || {
                let n = n1.clone();
                async move {
                    let ok = n.status.leader() != 0 && n.linearizable().await.is_ok();
                    let body = if ok {
                        r#"{"health":"true","reason":""}"#.to_string()
                    } else {
                        r#"{"health":"false","reason":"RAFT NO LEADER"}"#.to_string()
                    };
                    let code = if ok {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let n = n2.clone();
                async move {
                    if n.status.leader() != 0 {
                        (http::StatusCode::OK, "ok")
                    } else {
                        (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "[-]raft_leader failed: no leader",
                        )
                    }
                }
            }),
        )
        .route(
            "/version",
            get(move || {
                let n = n3.clone();
                async move {
                    let v = &n.cfg.emulated_etcd_version;
                    let parts: Vec<&str> = v.split('.').collect();
                    let cluster = format!("{}.{}.0", parts[0], parts.get(1).unwrap_or(&"0"));
                    (
                        [(http::header::CONTENT_TYPE, "application/json")],
                        format!(
                            r#"{{"etcdserver":"{v}","etcdcluster":"{cluster}","strata":"{}"}}"#,
                            env!("CARGO_PKG_VERSION")
                        ),
                    )
                }
            }),
        )
        .route("/metrics", get(|| async { crate::metrics::render() }));
    // Fault injection (`/debug/*`, test builds only).
    #[cfg(feature = "failpoints")]
    let routes = routes.merge(crate::failpoints::http::router());
    routes.merge(gateway::Gateway::new(node).router())
}

/// The HTTP side of a client port: [`http_routes`] and, for any other
/// path, gRPC's "unimplemented" (what tonic's router answered for paths it
/// did not know when both shared one router).
fn client_http_routes(node: Arc<Node>) -> axum::Router {
    http_routes(node).fallback(|| async {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::empty())
    })
}

/// Accepted connections with TCP_NODELAY set. Serving our own listener
/// bypasses tonic's `tcp_nodelay` option; without it every small response
/// waits ~40 ms for the client's delayed ACK (Nagle), capping a client at
/// about 25 requests per second.
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// grpc-go (so etcd) refuses a request message above the receive limit
/// with ResourceExhausted "grpc: received message larger than max (N vs.
/// M)"; tonic says OutOfRange "Error, decoded message length too large:
/// found N bytes, the limit is: M bytes". Clients check the code, so answer
/// as etcd does.
pub(crate) fn etcd_size_status(s: &tonic::Status) -> Option<tonic::Status> {
    let rest = s
        .message()
        .strip_prefix("Error, decoded message length too large: found ")?;
    if s.code() != tonic::Code::OutOfRange {
        return None;
    }
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(tonic::Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    )))
}

/// etcd's monitorLeader for streams opened with a leader requirement
/// (clientv3's WithRequireLeader, the `hasleader` metadata): once the member
/// has seen no leader for three election timeouts in a row, the stream fails
/// with "etcdserver: no leader". It lets go of the stream when the member
/// stops serving (the stream then ends with [`stream_stopped`]).
pub fn monitor_leader<T: Send + 'static>(
    node: Arc<Node>,
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = node.stop_serving.cancelled() => {}
            _ = tx.closed() => {}
            _ = leader_lost(node.clone()) => {
                let _ = tx.send(Err(crate::error::Error::NoLeader.into())).await;
            }
        }
    });
}

/// Completes once `node` has seen no leader at three checks in a row, one
/// election timeout apart (etcd's monitorLeader); never while the member
/// stops serving.
pub async fn leader_lost(node: Arc<Node>) {
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = node.stop_serving.cancelled() => std::future::pending::<()>().await,
            _ = tokio::time::sleep(node.cfg.election_timeout) => {}
        }
        if node.status.leader() != 0 {
            misses = 0;
            continue;
        }
        misses += 1;
        if misses >= 3 {
            return;
        }
    }
}

/// Ends a client stream (Watch, LeaseKeepAlive) because this member stops
/// serving: with Unavailable "etcdserver: server stopped", never a clean end
/// of stream. clientv3 treats a cleanly ended stream (io.EOF) as final and
/// closes the watch, but retries Unavailable on another endpoint, which is
/// what a client of etcd sees when etcd's connections close on stop.
pub async fn stream_stopped<T>(tx: &tokio::sync::mpsc::Sender<Result<T, tonic::Status>>) {
    let _ = tx.send(Err(crate::error::Error::Stopped.into())).await;
}

/// Serve the peer transport on every `--listen-peer-urls` URL. A
/// single-member cluster whose peer URL is taken (several single-member
/// stores on one machine with the default peer URL) serves clients anyway,
/// without a peer listener: it cannot grow until restarted on a free one.
pub async fn serve_peers(node: Arc<Node>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut handles = Vec::new();
    let alone = node.state.read().conf_state.voters.len() < 2;
    for u in &node.cfg.listen_peer_urls {
        let addr = listen_addr(u)?;
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if alone => {
                tracing::warn!(url = %u, error = %e, "cannot listen for peers; a single member serves without a peer listener");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen for peers on {u}")),
        };
        let tls = tls_for(u, &node.tls.peer, &node.tls.peer_rule)?;
        tracing::info!(url = %u, tls = tls.is_some(), "serving peer traffic");
        let svc = proto::raftpb::raft_server::RaftServer::new(node.peer_service())
            .max_decoding_message_size(usize::MAX);
        let server = tonic::transport::Server::builder().add_service(svc);
        handles.push(spawn_server(
            server,
            listener,
            tls,
            node.shutdown.clone(),
            "peer",
        ));
    }
    Ok(handles)
}

/// Serve every client URL until the node shuts down. Listeners are bound
/// before this returns, so callers may announce readiness afterwards; they
/// accept connections once the member has published its name and the
/// bound client URLs ([`Node::publish`], started here), as etcd's do.
pub async fn serve(node: Arc<Node>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for u in &node.cfg.listen_client_urls {
        let addr = listen_addr(u)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {u}"))?;
        let local = listener.local_addr()?;
        if u.port() == Some(0) {
            // An advertised URL defaulted from a port-0 listen URL must name
            // the port actually bound, or MemberList sends clients to port 0.
            let listen = u.as_str().trim_end_matches('/');
            let mut bound = u.clone();
            let _ = bound.set_port(Some(local.port()));
            let bound = bound.as_str().trim_end_matches('/').to_string();
            for cu in node
                .local_client_urls
                .write()
                .iter_mut()
                .filter(|cu| *cu == listen)
            {
                *cu = bound.clone();
            }
        }
        let tls = tls_for(u, &node.tls.client, &node.tls.client_rule)?;
        tracing::info!(url = %u, addr = %local, tls = tls.is_some(), "serving client traffic");
        let services = Arc::new(conn::Services {
            grpc: conn::GrpcServices::new(&node),
            http: client_http_routes(node.clone()),
            node: node.clone(),
        });
        let settings = conn::ConnSettings::new(&node);
        // Graceful shutdown: stop accepting, let in-flight requests finish.
        let stop = node.stop_serving.clone();
        handles.push(tokio::spawn(async move {
            match tls {
                Some((cfg, rule)) => {
                    conn::serve(
                        tls::tls_incoming(listener, cfg, rule),
                        services,
                        settings,
                        stop,
                    )
                    .await
                }
                None => conn::serve(incoming(listener), services, settings, stop).await,
            }
        }));
    }
    tokio::spawn(node.publish());
    Ok(handles)
}

/// Serve `--listen-metrics-urls`: the HTTP monitoring routes of the client
/// port (`/metrics`, `/health`, `/livez`, `/readyz`, `/version`) and nothing
/// else. https ones use the client certificate, as etcd's do.
pub async fn serve_metrics(node: Arc<Node>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for u in &node.cfg.listen_metrics_urls {
        let addr = listen_addr(u)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {u}"))?;
        let tls = tls_for(u, &node.tls.client, &node.tls.client_rule)?;
        tracing::info!(url = %u, addr = %listener.local_addr()?, tls = tls.is_some(), "serving metrics");
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(http_routes(node.clone())));
        handles.push(spawn_server(
            server,
            listener,
            tls,
            node.shutdown.clone(),
            "metrics",
        ));
    }
    Ok(handles)
}

/// The TLS setup of listen URL `u`: `None` for http, the side's server
/// config for https (which [`tls::Tls::load`] made sure exists).
fn tls_for(
    u: &url::Url,
    config: &Option<Arc<rustls::ServerConfig>>,
    rule: &tls::ClientCertRule,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, tls::ClientCertRule)>> {
    if u.scheme() != "https" {
        return Ok(None);
    }
    match config {
        Some(c) => Ok(Some((c.clone(), rule.clone()))),
        None => bail!("{u}: https needs a certificate"),
    }
}

/// Run `server` on `listener` (over TLS when `tls` is set) until shutdown.
fn spawn_server(
    server: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<(Arc<rustls::ServerConfig>, tls::ClientCertRule)>,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stop = shutdown.cancelled_owned();
        let r = match tls {
            Some((cfg, rule)) => {
                server
                    .serve_with_incoming_shutdown(tls::tls_incoming(listener, cfg, rule), stop)
                    .await
            }
            None => {
                server
                    .serve_with_incoming_shutdown(incoming(listener), stop)
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "{what} listener failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_message_status_is_etcds() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 2101248 bytes, the limit is: 2097152 bytes",
        );
        let e = etcd_size_status(&s).unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "grpc: received message larger than max (2101248 vs. 2097152)"
        );
        assert!(etcd_size_status(&tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted"
        ))
        .is_none());
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut inc = Box::pin(incoming(l));
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let s = inc.next().await.unwrap().unwrap();
        assert!(s.nodelay().unwrap());
    }
}
