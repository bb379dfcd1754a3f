//! `lease-keepalive`: every client grants one lease (TTL 100 s) and then
//! renews it over its own LeaseKeepAlive stream, one request and its
//! response at a time, until `--total` renewals are done; the leases are
//! revoked afterwards. (etcd's tool opens a new stream per renewal through
//! its client library; one long-lived stream per client is what real
//! clients do and measures the server's renewal path alone.)

use anyhow::{Context, Result};
use proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{closed_loop, Ctx, Worker};
use crate::cli::LeaseKeepaliveArgs;
use crate::conn::Svc;
use crate::report::Report;

struct KeepAliveWorker {
    client: LeaseClient<Svc>,
    id: i64,
    stream: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )>,
}

impl KeepAliveWorker {
    async fn renew(&mut self) -> Result<(), tonic::Status> {
        if self.stream.is_none() {
            // Queue the first request before opening: some servers send the
            // response headers only with the first message.
            let (tx, rx) = mpsc::channel(1);
            tx.try_send(LeaseKeepAliveRequest { id: self.id })
                .expect("invariant: empty channel");
            let rx = self
                .client
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.stream = Some((tx, rx));
        } else {
            let (tx, _) = self.stream.as_ref().expect("invariant: checked above");
            if tx
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .is_err()
            {
                self.stream = None;
                return Err(tonic::Status::unavailable("keepalive stream closed"));
            }
        }
        let (_, rx) = self.stream.as_mut().expect("invariant: set above");
        match rx.message().await {
            Ok(Some(r)) if r.ttl > 0 => Ok(()),
            Ok(Some(_)) => Err(tonic::Status::not_found(
                "etcdserver: requested lease not found",
            )),
            Ok(None) => {
                self.stream = None;
                Err(tonic::Status::unavailable(
                    "keepalive stream closed by the server",
                ))
            }
            Err(s) => {
                self.stream = None;
                Err(s)
            }
        }
    }
}

impl Worker for KeepAliveWorker {
    async fn call(&mut self, _i: u64) -> (usize, Result<(), tonic::Status>) {
        (0, self.renew().await)
    }
}

/// Runs `lease-keepalive`.
pub async fn run(ctx: &Ctx, a: LeaseKeepaliveArgs) -> Result<Report> {
    let grants = (0..ctx.global.clients).map(|c| {
        let mut client = ctx.conns.lease(c);
        async move {
            let id = client
                .lease_grant(LeaseGrantRequest { ttl: 100, id: 0 })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .context("lease grant")?
                .into_inner()
                .id;
            anyhow::Ok(KeepAliveWorker {
                client,
                id,
                stream: None,
            })
        }
    });
    let workers = futures::future::try_join_all(grants).await?;
    let leases: Vec<(LeaseClient<Svc>, i64)> =
        workers.iter().map(|w| (w.client.clone(), w.id)).collect();
    let progress = ctx.progress(a.total, "lease-keepalive");
    let out = closed_loop(workers, a.total, 0, &progress).await;
    progress.finish();
    for (mut c, id) in leases {
        let _ = c.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(ctx.report("lease-keepalive", a.total, out.merged(), out.elapsed))
}
