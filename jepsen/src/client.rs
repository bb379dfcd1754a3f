//! The workloads' etcd v3 client: one lazily connected tonic channel per
//! node (KV, Watch, Lease and Maintenance stubs from the `proto` crate), a
//! short connect timeout, a per-request deadline, and the classification of
//! every failure as definite or indefinite.
//!
//! Nothing here retries. A workload that wants to try again issues a new,
//! separately recorded operation; a non-idempotent request is never re-sent
//! behind the history's back.
//!
//! # Failure classification
//! A failed request is **definite** (recorded as `fail`: it did not take
//! effect) only when the server or the transport says so; everything else is
//! **indefinite** (recorded as `info`: it may have taken effect). Reads have
//! no effect, so a workload records every failed read as `fail` whatever the
//! class.
//!
//! | failure                                                        | class      |
//! |----------------------------------------------------------------|------------|
//! | txn compare failed (`succeeded: false`; decided by the caller)  | definite   |
//! | `InvalidArgument` (bad request, request too large, ...)        | definite   |
//! | `OutOfRange` (revision compacted / future revision)            | definite   |
//! | `FailedPrecondition` (not capable, bad lease TTL, ...)         | definite   |
//! | `NotFound` (requested lease not found)                         | definite   |
//! | `AlreadyExists`                                                | definite   |
//! | `Unauthenticated`, `PermissionDenied`                          | definite   |
//! | `ResourceExhausted` (too many requests, no space)              | definite   |
//! | `Unimplemented`                                                | definite   |
//! | connection refused / could not connect (request never sent)    | definite   |
//! | "no leader" (refused before proposing, by etcd and Strata)      | definite   |
//! | "proposal dropped" (raft refused to append it)                  | definite   |
//! | per-request deadline passed on the client ("client timeout")   | indefinite |
//! | `DeadlineExceeded`, "request timed out" (any code)            | indefinite |
//! | "leader changed", "stopped" (any code)                          | indefinite |
//! | `Unavailable` after the request was sent (reset, broken pipe)  | indefinite |
//! | `Cancelled`, `Unknown`, `Internal`, `DataLoss`, `Aborted`      | indefinite |
//!
//! The indefinite message checks come first: etcd reports a proposal that
//! timed out as `Unavailable: etcdserver: request timed out`, which may have
//! committed. `etcdserver: no leader` is only ever returned before a request
//! is proposed (etcd: the require-leader interceptor and lease forwarding;
//! Strata: raft refused the proposal for want of a leader), so it is
//! definite although its code is `Unavailable`.

use std::time::Duration;

use proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long one unary request may take before the client gives up on it
/// (and records it as indefinite).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long dialing a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A failed request, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// True when the request definitely did not take effect.
    pub definite: bool,
    /// What went wrong, for the history's `error` field.
    pub message: String,
}

impl OpError {
    pub fn definite(message: impl Into<String>) -> Self {
        OpError {
            definite: true,
            message: message.into(),
        }
    }

    pub fn indefinite(message: impl Into<String>) -> Self {
        OpError {
            definite: false,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// True when the error chain of `status` shows the connection was never
/// established, so the request was never sent.
fn never_connected(status: &Status) -> bool {
    let mut text = format!("{} {:?}", status.message(), status);
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        text.push(' ');
        text.push_str(&err.to_string());
        source = err.source();
    }
    let text = text.to_ascii_lowercase();
    text.contains("connection refused")
        || text.contains("tcp connect error")
        || text.contains("client error (connect)")
        || text.contains("error trying to connect")
}

/// Classifies a gRPC failure (see the module docs' table).
pub fn classify(status: &Status) -> OpError {
    let msg = status.message().to_ascii_lowercase();
    let message = format!("{:?}: {}", status.code(), status.message());
    let indefinite_text = msg.contains("timed out")
        || msg.contains("timeout")
        || msg.contains("leader changed")
        || msg.contains("stopped")
        || msg.contains("leader fail");
    if indefinite_text {
        return OpError::indefinite(message);
    }
    if msg.contains("no leader") || msg.contains("proposal dropped") {
        return OpError::definite(message);
    }
    match status.code() {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::Unimplemented => OpError::definite(message),
        Code::Unavailable | Code::Unknown if never_connected(status) => {
            OpError::definite(format!("{message} (not connected)"))
        }
        _ => OpError::indefinite(message),
    }
}

/// Runs one unary request with the per-request deadline and classifies its
/// failure.
pub async fn call<T, F>(request: F) -> Result<T, OpError>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    call_within(REQUEST_TIMEOUT, request).await
}

/// [`call`] with an explicit deadline.
pub async fn call_within<T, F>(deadline: Duration, request: F) -> Result<T, OpError>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(deadline, request).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(classify(&status)),
        Err(_) => Err(OpError::indefinite(format!(
            "client timeout after {deadline:?}"
        ))),
    }
}

/// Channels to every node of a cluster, by node index.
#[derive(Clone, Debug)]
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
}

impl Client {
    /// Prepares one lazily connected channel per endpoint (a URL such as
    /// `http://10.77.0.11:2379`; a bare `host:port` gets `http://`). Nothing
    /// is dialed until the first request, and a broken connection is
    /// re-dialed on the next one.
    pub fn new(endpoints: &[String]) -> anyhow::Result<Client> {
        anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
        let mut channels = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let url = if ep.contains("://") {
                ep.clone()
            } else {
                format!("http://{ep}")
            };
            let endpoint = Endpoint::from_shared(url)
                .map_err(|e| anyhow::anyhow!("bad endpoint {ep:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            channels.push(endpoint.connect_lazy());
        }
        Ok(Client {
            endpoints: endpoints.to_vec(),
            channels,
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.channels.len()
    }

    /// The endpoint of `node`.
    pub fn endpoint(&self, node: usize) -> &str {
        &self.endpoints[node]
    }

    pub fn kv(&self, node: usize) -> KvClient<Channel> {
        KvClient::new(self.channels[node].clone()).max_decoding_message_size(usize::MAX)
    }

    pub fn watch(&self, node: usize) -> WatchClient<Channel> {
        WatchClient::new(self.channels[node].clone()).max_decoding_message_size(usize::MAX)
    }

    pub fn lease(&self, node: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channels[node].clone())
    }

    pub fn maintenance(&self, node: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channels[node].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_table() {
        let definite = [
            Status::invalid_argument("etcdserver: request is too large"),
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::failed_precondition("etcdserver: not capable"),
            Status::not_found("etcdserver: requested lease not found"),
            Status::resource_exhausted("etcdserver: too many requests"),
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
            Status::permission_denied("etcdserver: permission denied"),
            Status::unauthenticated("etcdserver: invalid auth token"),
            Status::unavailable("etcdserver: no leader"),
            Status::unknown("raft proposal dropped"),
        ];
        for s in definite {
            assert!(classify(&s).definite, "{s:?}");
        }
        let indefinite = [
            Status::unavailable("etcdserver: request timed out"),
            Status::unavailable("etcdserver: leader changed"),
            Status::unavailable("error reading a body from connection: connection reset"),
            Status::deadline_exceeded("context deadline exceeded"),
            Status::unknown("h2 protocol error"),
            Status::cancelled("operation was canceled"),
            Status::internal("boom"),
            // A message check beats a "definite" code.
            Status::resource_exhausted("etcdserver: request timed out"),
        ];
        for s in indefinite {
            assert!(!classify(&s).definite, "{s:?}");
        }
    }

    #[tokio::test]
    async fn refused_connection_is_definite() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(&[format!("127.0.0.1:{port}")]).unwrap();
        let err = call(client.kv(0).put(proto::etcdserverpb::PutRequest::default()))
            .await
            .unwrap_err();
        assert!(err.definite, "{err:?}");
    }

    #[tokio::test]
    async fn client_deadline_is_indefinite() {
        let err = call_within(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Status>(tonic::Response::new(()))
        })
        .await
        .unwrap_err();
        assert!(!err.definite);
    }
}
