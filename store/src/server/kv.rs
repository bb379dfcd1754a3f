//! server::kv: the etcd KV service. Validates requests as etcd's
//! `v3rpc/key.go` does, serves reads locally (after a ReadIndex barrier
//! unless `serializable`), and sends writes through raft. Every RPC first
//! resolves its caller (`server::auth::caller_of`); reads are checked here,
//! writes at apply against the auth revision the caller was resolved at.

use std::sync::Arc;

use futures::Stream;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::apply::kv as ops;
use crate::error::Error;
use crate::node::Node;
use crate::quota;
use crate::request::{ApplyResult, Op};
use crate::server::{auth, conn};

/// The KV service.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A KV service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

fn unexpected(r: ApplyResult) -> Status {
    Status::internal(format!("unexpected apply result {r:?}"))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let who = auth::caller_of(&self.node, &req)?;
        let r = req.into_inner();
        ops::check_range(&r)?;
        if !r.range_end.is_empty() {
            conn::own_task().await;
        }
        if !r.serializable {
            if self.node.is_learner() {
                return Err(crate::error::Error::NotSupportedForLearner.into());
            }
            self.node.linearizable().await?;
        }
        let mut resp = {
            let sm = self.node.state.read();
            sm.auth
                .is_range_permitted(who.as_ref(), &r.key, &r.range_end)?;
            ops::range(&sm.mvcc, &r)?
        };
        self.node.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let who = auth::caller_of(&self.node, &req)?;
        // The CN of a verified client certificate (etcd's user under
        // --client-cert-auth); evaluated only when debug logging is on.
        tracing::debug!(
            client_cn = ?super::tls::client_cert_common_name(&req),
            key_bytes = req.get_ref().key.len(),
            "put"
        );
        let r = req.into_inner();
        // etcd's quotaKVServer checks the quota before validating.
        self.node.check_quota(quota::cost_put(&r)).await?;
        ops::check_put(&r)?;
        match self
            .node
            .propose_as(Op::Put(r), auth::as_header(who))
            .await?
        {
            ApplyResult::Put(mut p) => {
                self.node.fill(&mut p.header);
                Ok(Response::new(p))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let who = auth::caller_of(&self.node, &req)?;
        let r = req.into_inner();
        ops::check_delete(&r)?;
        if r.prev_kv && !r.range_end.is_empty() {
            conn::own_task().await;
        }
        match self
            .node
            .propose_as(Op::DeleteRange(r), auth::as_header(who))
            .await?
        {
            ApplyResult::DeleteRange(mut p) => {
                self.node.fill(&mut p.header);
                Ok(Response::new(p))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let who = auth::caller_of(&self.node, &req)?;
        let r = req.into_inner();
        self.node.check_quota(quota::cost_txn(&r)).await?;
        ops::check_txn(&r, self.node.cfg.max_txn_ops)?;
        if answers_many_keys(&r) {
            conn::own_task().await;
        }
        if ops::is_txn_readonly(&r) {
            // etcd serves a read-only txn as a read; it is serializable only
            // if every range in it is.
            if !all_serializable(&r) {
                self.node.linearizable().await?;
            }
            let mut resp = {
                let sm = self.node.state.read();
                sm.auth.check_txn(who.as_ref(), &r)?;
                ops::txn_read(&sm.mvcc, sm.mvcc.current_rev(), sm.mvcc.first_rev(), &r)?
            };
            self.node.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
        match self
            .node
            .propose_as(Op::Txn(r), auth::as_header(who))
            .await?
        {
            ApplyResult::Txn(mut p) => {
                self.node.fill(&mut p.header);
                Ok(Response::new(p))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let who = auth::caller_of(&self.node, &req)?;
        let r = req.into_inner();
        let physical = r.physical;
        match self
            .node
            .propose_as(Op::Compaction(r), auth::as_header(who))
            .await?
        {
            ApplyResult::Compaction(mut p) => {
                // A large compaction reaches the last keys in background
                // steps; `physical` waits for them, as etcd waits for its
                // backend.
                if physical {
                    self.node.compaction_done().await;
                }
                self.node.fill(&mut p.header);
                Ok(Response::new(p))
            }
            other => Err(unexpected(other)),
        }
    }

    type RangeStreamStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::RangeStreamResponse, Status>> + Send>>;

    async fn range_stream(
        &self,
        _req: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        // Clients fall back to paged Range on Unimplemented (etcd < 3.7 behaviour).
        Err(
            Error::Unimplemented("unknown method RangeStream for service etcdserverpb.KV".into())
                .into(),
        )
    }
}

/// Whether a response to `r` may hold many keys: one of its ops (at any
/// depth) is a range over a key range, or a range delete returning the
/// deleted pairs. Such a Txn is served in a task of its own
/// ([`conn::own_task`]).
fn answers_many_keys(r: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    r.success
        .iter()
        .chain(&r.failure)
        .any(|op| match &op.request {
            Some(R::RequestRange(q)) => !q.range_end.is_empty(),
            Some(R::RequestDeleteRange(d)) => d.prev_kv && !d.range_end.is_empty(),
            Some(R::RequestTxn(t)) => answers_many_keys(t),
            Some(R::RequestPut(_)) | None => false,
        })
}

/// etcd's `isTxnSerializable`: every op of both branches is a serializable
/// Range. etcd sends a txn with a nested txn (even one of serializable
/// ranges) through raft, so such a txn is linearizable there; it gets a
/// ReadIndex barrier here.
fn all_serializable(r: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| matches!(&op.request, Some(R::RequestRange(q)) if q.serializable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request as R;

    fn range(serializable: bool) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(R::RequestRange(pb::RangeRequest {
                key: b"k".to_vec(),
                serializable,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn only_flat_serializable_ranges_skip_the_barrier() {
        let txn = |success: Vec<pb::RequestOp>| pb::TxnRequest {
            success,
            ..Default::default()
        };
        assert!(all_serializable(&txn(vec![])));
        assert!(all_serializable(&txn(vec![range(true), range(true)])));
        assert!(!all_serializable(&txn(vec![range(true), range(false)])));
        // A nested txn is linearizable in etcd, however serializable its ranges.
        let nested = pb::RequestOp {
            request: Some(R::RequestTxn(txn(vec![range(true)]))),
        };
        assert!(!all_serializable(&txn(vec![range(true), nested])));
    }

    #[test]
    fn txns_answering_many_keys_are_found_at_any_depth() {
        let txn = |success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>| pb::TxnRequest {
            success,
            failure,
            ..Default::default()
        };
        let op = |r: R| pb::RequestOp { request: Some(r) };
        let many = op(R::RequestRange(pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        }));
        let put = op(R::RequestPut(pb::PutRequest::default()));
        let del = |prev_kv: bool, range_end: &[u8]| {
            op(R::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: range_end.to_vec(),
                prev_kv,
            }))
        };
        assert!(!answers_many_keys(&txn(
            vec![range(true), put.clone()],
            vec![]
        )));
        assert!(answers_many_keys(&txn(
            vec![put.clone()],
            vec![many.clone()]
        )));
        assert!(!answers_many_keys(&txn(
            vec![del(true, b""), del(false, b"b")],
            vec![]
        )));
        assert!(answers_many_keys(&txn(vec![del(true, b"b")], vec![])));
        let nested = op(R::RequestTxn(txn(vec![], vec![many])));
        assert!(answers_many_keys(&txn(vec![put, nested], vec![])));
    }
}
