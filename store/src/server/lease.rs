//! server::lease: the etcd Lease service. Grant and Revoke go through raft;
//! KeepAlive and TimeToLive are answered from the leader's lessor clock
//! (followers forward both to the leader over the peer transport).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::node::Node;
use crate::request::{ApplyResult, Op};

/// The Lease service.
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// A Lease service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

/// Ends when the member has seen no leader for three election timeouts.
type LeaderLost = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One LeaseKeepAlive stream between two requests.
struct KeepAlive {
    node: Arc<Node>,
    inbound: Streaming<pb::LeaseKeepAliveRequest>,
    /// For a client that requires a leader (`hasleader` metadata).
    leader_lost: Option<LeaderLost>,
}

impl KeepAlive {
    /// Read the next request and answer it: the reply and what is left of
    /// the stream, which is `None` after an error (the stream's last item).
    async fn next(
        mut self,
    ) -> Option<(
        Result<pb::LeaseKeepAliveResponse, Status>,
        Option<KeepAlive>,
    )> {
        let watching_leader = self.leader_lost.is_some();
        let lost = self.leader_lost.as_mut();
        let m = tokio::select! {
            // Graceful shutdown ends streams with Unavailable (clients
            // reconnect elsewhere).
            _ = self.node.stop_serving.cancelled() => {
                return Some((Err(Error::Stopped.into()), None));
            }
            _ = async { lost.expect("checked").await }, if watching_leader => {
                return Some((Err(Error::NoLeader.into()), None));
            }
            m = self.inbound.message() => m,
        };
        let k = match m {
            Ok(Some(k)) => k,
            Ok(None) => return None,
            // etcd ends the stream with the receive error.
            Err(e) => return Some((Err(super::etcd_size_status(&e).unwrap_or(e)), None)),
        };
        match self.node.renew_lease(k.id).await {
            Ok(ttl) => {
                let resp = pb::LeaseKeepAliveResponse {
                    header: Some(self.node.header(self.node.current_rev())),
                    id: k.id,
                    ttl,
                };
                Some((Ok(resp), Some(self)))
            }
            Err(e) => Some((Err(Status::from(e)), None)),
        }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // etcd 3.5 checks no permission for a grant, but a bad token fails.
        let who = super::auth::caller_of(&self.node, &req)?;
        let mut r = req.into_inner();
        // etcd's quotaLeaseServer checks the quota first.
        self.node
            .check_quota(crate::quota::cost_lease_grant(&r))
            .await?;
        if r.id == 0 {
            // etcd: a positive int64 from the request id generator.
            r.id = (self.node.next_id() & (i64::MAX as u64)) as i64;
        }
        match self
            .node
            .propose_as(Op::LeaseGrant(r), super::auth::as_header(who))
            .await?
        {
            ApplyResult::LeaseGrant(mut g) => {
                self.node.fill(&mut g.header);
                Ok(Response::new(g))
            }
            other => Err(Status::internal(format!("unexpected {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        // Write permission on every attached key is checked at apply.
        let who = super::auth::caller_of(&self.node, &req)?;
        match self
            .node
            .propose_as(
                Op::LeaseRevoke(req.into_inner()),
                super::auth::as_header(who),
            )
            .await?
        {
            ApplyResult::LeaseRevoke(mut g) => {
                self.node.fill(&mut g.header);
                Ok(Response::new(g))
            }
            other => Err(Status::internal(format!("unexpected {other:?}"))),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        if super::watch::requires_leader(&req) && self.node.status.leader() == 0 {
            return Err(Error::NoLeader.into());
        }
        // The stream is served where hyper polls the response body (in the
        // connection's task, see `conn::StreamExec`): each request is
        // read, renewed and answered in turn, with no task of its own.
        let leader_lost: Option<LeaderLost> = super::watch::requires_leader(&req)
            .then(|| Box::pin(super::leader_lost(self.node.clone())) as _);
        let st = KeepAlive {
            node: self.node.clone(),
            inbound: req.into_inner(),
            leader_lost,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            Some(st),
            |st| async move {
                let st = st?;
                st.next().await
            },
        ))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let who = super::auth::caller_of(&self.node, &req)?;
        let r = req.into_inner();
        self.node.linearizable().await?;
        if r.keys {
            // The attached keys are shown only to a caller who may read
            // every one of them (etcd 3.5.13's checkLeaseTimeToLive; 3.5.1
            // showed them to anyone).
            let sm = self.node.state.read();
            if sm.auth.enabled {
                if who.is_none() {
                    return Err(Error::UserEmpty.into());
                }
                if let Some(l) = sm.leases.get(r.id) {
                    for k in l.keys.iter() {
                        sm.auth.is_range_permitted(who.as_ref(), k, &[])?;
                    }
                }
            }
        }
        let (granted, keys) = {
            let sm = self.node.state.read();
            match sm.leases.get(r.id) {
                Some(l) => (
                    Some(l.ttl),
                    if r.keys {
                        l.keys.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                ),
                None => (None, Vec::new()),
            }
        };
        // The remaining TTL comes from the leader's clock (forwarded from a
        // follower); -1 there means the lease was revoked meanwhile.
        let ttl = match granted {
            Some(_) => self.node.lease_remaining(r.id).await?,
            None => -1,
        };
        let header = Some(self.node.header(self.node.current_rev()));
        let resp = match granted {
            Some(g) if ttl >= 0 => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl,
                granted_ttl: g,
                keys,
            },
            _ => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.node.linearizable().await?;
        let ids: Vec<i64> = self
            .node
            .state
            .read()
            .leases
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let mut order = self.node.lessor.by_expiry();
        order.retain(|id| ids.contains(id));
        for id in ids {
            if !order.contains(&id) {
                order.push(id);
            }
        }
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.node.header(self.node.current_rev())),
            leases: order.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
