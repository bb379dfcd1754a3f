//! The few direct gRPC calls the runner makes itself (not load): a
//! linearizable Range to tell when a server serves, and a Put to preload a
//! key. Each call has its own deadline so a wedged server cannot hang the
//! run. Callers block on a tokio runtime they own.

use std::time::Duration;

use anyhow::{Context, Result};
use proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tonic::transport::Channel;

async fn connect(endpoint: &str, timeout: Duration) -> Result<KvClient<Channel>> {
    let url = format!("http://{endpoint}");
    let ch = Channel::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connect {url}"))?;
    Ok(KvClient::new(ch))
}

/// One linearizable Range of `key` through `endpoint` (so it needs a leader
/// and an applied read index): Ok once the member serves.
pub async fn linearizable_get(endpoint: &str, key: &str, timeout: Duration) -> Result<()> {
    let fut = async {
        let mut kv = connect(endpoint, timeout).await?;
        kv.range(RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: false,
            ..Default::default()
        })
        .await
        .with_context(|| format!("range {key:?} on {endpoint}"))?;
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("range {key:?} on {endpoint}: timed out"))?
}

/// Puts `key` with a value of `value_size` bytes through `endpoint`.
pub async fn put(endpoint: &str, key: &str, value_size: usize, timeout: Duration) -> Result<()> {
    let fut = async {
        let mut kv = connect(endpoint, timeout).await?;
        kv.put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: vec![b'v'; value_size],
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {key:?} on {endpoint}"))?;
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("put {key:?} on {endpoint}: timed out"))?
}
