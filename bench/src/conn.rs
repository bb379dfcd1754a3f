//! Connections: turns the global flags into `--conns` authenticated gRPC
//! channels and hands out typed raw clients (KV, Watch, Lease, ...) on them.
//!
//! Owns endpoint normalisation (`host:port`, `http://` and `https://`),
//! TLS (`--cacert/--cert/--key`, rustls through tonic), `--user`
//! (Auth.Authenticate on each connection, the token sent as `token`
//! metadata on every request) and `--target-leader`. Channels are dialled
//! eagerly, so an unreachable endpoint fails at start with a clear message.
//! Connection `i` goes to endpoint `i % endpoints`; client `j` uses
//! connection `j % conns` (as etcd's benchmark does).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AuthenticateRequest, MemberListRequest, StatusRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::Global;
use crate::coalesce::Coalesce;

/// Dial timeout when `--dial-timeout` is 0 (etcd's tool then dials lazily
/// and fails on the first request instead).
const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The service stack every client uses: a channel plus the auth token.
pub type Svc = InterceptedService<Channel, Token>;

/// Adds the `token` metadata (when authenticated) to each request.
#[derive(Clone, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// How to dial: scheme, TLS and credentials, from the global flags.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    user: Option<(String, String)>,
    timeout: Duration,
}

impl Dialer {
    /// Reads the certificate files and the `--user` flag.
    pub fn from_flags(g: &Global) -> Result<Dialer> {
        let tls = if g.cacert.is_some() || g.cert.is_some() || g.key.is_some() {
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &g.cacert {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("bad tls config: read --cacert {ca}"))?;
                cfg = cfg.ca_certificate(Certificate::from_pem(pem));
            } else {
                cfg = cfg.with_enabled_roots();
            }
            match (&g.cert, &g.key) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c)
                        .with_context(|| format!("bad tls config: read --cert {c}"))?;
                    let key = std::fs::read(k)
                        .with_context(|| format!("bad tls config: read --key {k}"))?;
                    cfg = cfg.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => bail!("bad tls config: --cert and --key go together"),
            }
            Some(cfg)
        } else {
            None
        };
        let user = match &g.user {
            None => None,
            Some(u) => Some(match u.split_once(':') {
                Some((name, pw)) => (name.to_string(), pw.to_string()),
                None => {
                    eprint!("Password: ");
                    let mut pw = String::new();
                    std::io::stdin()
                        .read_line(&mut pw)
                        .context("bad user information: read password")?;
                    (u.clone(), pw.trim_end_matches(['\r', '\n']).to_string())
                }
            }),
        };
        let timeout = if g.dial_timeout.is_zero() {
            DEFAULT_DIAL_TIMEOUT
        } else {
            g.dial_timeout
        };
        Ok(Dialer { tls, user, timeout })
    }

    /// The URL tonic dials for an endpoint flag value.
    pub fn url(&self, endpoint: &str) -> String {
        let ep = endpoint.trim();
        if ep.contains("://") {
            ep.to_string()
        } else if self.tls.is_some() {
            format!("https://{ep}")
        } else {
            format!("http://{ep}")
        }
    }

    /// Dials one connection and authenticates on it when `--user` is set.
    pub async fn dial(&self, endpoint: &str) -> Result<Svc> {
        let url = self.url(endpoint);
        let mut ep = Endpoint::from_shared(url.clone())
            .with_context(|| format!("bad endpoint {endpoint:?}"))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).context("bad tls config")?;
        }
        let connector = tower::service_fn(|uri: http::Uri| async move {
            let host = uri
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(2379);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Coalesce::new(tcp)))
        });
        let channel = ep.connect_with_connector(connector).await.map_err(|e| {
            anyhow::anyhow!("dial error: cannot connect to {url}: {}", source_chain(&e))
        })?;
        let mut token = Token::default();
        if let Some((name, password)) = &self.user {
            let resp = AuthClient::new(channel.clone())
                .authenticate(AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                })
                .await
                .map_err(|s| {
                    anyhow::anyhow!("authenticate as {name:?} at {url}: {}", s.message())
                })?;
            let t = resp.into_inner().token;
            token = Token(Some(
                t.parse()
                    .context("server sent a token that is not valid metadata")?,
            ));
        }
        Ok(InterceptedService::new(channel, token))
    }
}

/// `error: cause: cause ...` of a transport error (tonic's own Display is
/// only "transport error").
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The `--conns` channels of a run.
#[derive(Clone)]
pub struct Conns {
    /// One per connection, in dial order.
    pub channels: Vec<Svc>,
    /// The endpoints in use (the leader's with `--target-leader`).
    pub endpoints: Vec<String>,
    /// The dialer, for extra dedicated connections.
    pub dialer: Dialer,
}

impl Conns {
    /// Dials `--conns` connections (after finding the leader with `--target-leader`).
    pub async fn connect(g: &Global) -> Result<Conns> {
        if g.conns == 0 || g.clients == 0 {
            bail!("--conns and --clients must be at least 1");
        }
        let dialer = Dialer::from_flags(g)?;
        let mut endpoints: Vec<String> = g
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("no --endpoints");
        }
        if g.target_leader {
            endpoints = leader_endpoints(&dialer, &endpoints).await?;
        }
        let dials = (0..g.conns).map(|i| {
            let d = dialer.clone();
            let ep = endpoints[i % endpoints.len()].clone();
            async move { d.dial(&ep).await }
        });
        let channels = futures::future::try_join_all(dials).await?;
        Ok(Conns {
            channels,
            endpoints,
            dialer,
        })
    }

    /// The channel client `i` uses.
    pub fn channel(&self, client: usize) -> Svc {
        self.channels[client % self.channels.len()].clone()
    }

    /// A new connection outside the `--conns` pool (to the first endpoint).
    pub async fn dedicated(&self) -> Result<Svc> {
        self.dialer.dial(&self.endpoints[0]).await
    }

    /// A KV client for client `i`.
    pub fn kv(&self, client: usize) -> KvClient<Svc> {
        KvClient::new(self.channel(client)).max_decoding_message_size(usize::MAX)
    }

    /// A Watch client for client `i`.
    pub fn watch(&self, client: usize) -> WatchClient<Svc> {
        WatchClient::new(self.channel(client)).max_decoding_message_size(usize::MAX)
    }

    /// A Lease client for client `i`.
    pub fn lease(&self, client: usize) -> LeaseClient<Svc> {
        LeaseClient::new(self.channel(client))
    }
}

/// The client URLs of the leader, asking each endpoint in turn.
async fn leader_endpoints(dialer: &Dialer, endpoints: &[String]) -> Result<Vec<String>> {
    let mut last_err = None;
    for ep in endpoints {
        let ch = match dialer.dial(ep).await {
            Ok(ch) => ch,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let leader = match MaintenanceClient::new(ch.clone())
            .status(StatusRequest {})
            .await
        {
            Ok(r) => r.into_inner().leader,
            Err(s) => {
                last_err = Some(anyhow::anyhow!("status of {ep}: {}", s.message()));
                continue;
            }
        };
        let members = ClusterClient::new(ch)
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await
            .map_err(|s| anyhow::anyhow!("failed to get a member list: {}", s.message()))?
            .into_inner()
            .members;
        return match members.into_iter().find(|m| m.id == leader && leader != 0) {
            Some(m) if !m.client_ur_ls.is_empty() => Ok(m.client_ur_ls),
            _ => bail!("failed to find a leader endpoint (leader id {leader:x} via {ep})"),
        };
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no endpoints")))
        .context("failed to find a leader endpoint")
}
