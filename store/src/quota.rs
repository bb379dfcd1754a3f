//! quota: `--quota-backend-bytes` and the NOSPACE alarm, as etcd's quota
//! KV server does it.
//!
//! Before a Put, a Txn with puts or a LeaseGrant is proposed, the server
//! handler asks [`Node::check_quota`] whether this member's backend size
//! (the total of the size model documented on
//! `StateMachine::db_size_in_use`) plus the request's cost stays below the
//! quota. If not, it proposes an Alarm ACTIVATE NOSPACE for this member
//! through raft (so every member sees it and refuses writes at apply time)
//! and fails the request with `etcdserver: mvcc: database space exceeded`.
//! Costs are etcd's estimates: 256 bytes of metadata plus key and value per
//! put (a txn costs its more expensive branch, counting top-level puts
//! only) and 64 bytes per lease. Requests that cost nothing (deletes,
//! reads, compaction, delete-only txns) always pass, as since etcd 3.5.7.
//! It never touches state itself.
//!
//! One deliberate difference: etcd checks the quota a second time on every
//! member while applying, and a write that crosses the quota there is
//! applied yet answered with NOSPACE (and that member raises the alarm).
//! Strata does not: a write is refused only before it is proposed, so an
//! error always means nothing was written, and apply stays identical on
//! every member. Once the alarm is raised, apply refuses writes everywhere
//! (`StateMachine::apply`).

use proto::etcdserverpb::{self as pb, alarm_request::AlarmAction};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::request::Op;

/// etcd's estimate of the cost of storing a key's metadata.
pub const KV_OVERHEAD: i64 = 256;
/// etcd's estimate of the cost of storing a lease.
pub const LEASE_OVERHEAD: i64 = 64;

/// Quota cost of a Put.
pub fn cost_put(r: &pb::PutRequest) -> i64 {
    KV_OVERHEAD + r.key.len() as i64 + r.value.len() as i64
}

/// Quota cost of a Txn: the costlier branch, counting its top-level puts.
pub fn cost_txn(r: &pb::TxnRequest) -> i64 {
    let branch = |ops: &[pb::RequestOp]| -> i64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) => cost_put(p),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

/// Quota cost of a LeaseGrant.
pub fn cost_lease_grant(_r: &pb::LeaseGrantRequest) -> i64 {
    LEASE_OVERHEAD
}

/// Whether a backend of `size` bytes can take `cost` more under `quota`
/// (None: no quota). Free requests always fit.
pub fn available(size: i64, cost: i64, quota: Option<i64>) -> bool {
    match quota {
        _ if cost == 0 => true,
        None => true,
        Some(q) => size.saturating_add(cost) < q,
    }
}

impl Node {
    /// Check a write of `cost` bytes against the quota; on overflow raise
    /// the NOSPACE alarm for this member (replicated) and fail with
    /// [`Error::NoSpace`].
    pub async fn check_quota(&self, cost: i64) -> Result<()> {
        let (size, raised) = {
            let sm = self.state.read();
            let raised = sm
                .alarms
                .iter()
                .any(|a| a.member_id == self.member_id && a.alarm == pb::AlarmType::Nospace as i32);
            (sm.db_size(), raised)
        };
        if available(size, cost, self.cfg.quota_bytes()) {
            return Ok(());
        }
        if raised {
            // Already recorded: etcd proposes it again for every refused
            // write; one log entry is enough.
            return Err(Error::NoSpace);
        }
        tracing::warn!(
            size,
            cost,
            quota = self.cfg.quota_bytes().unwrap_or(-1),
            "backend quota exceeded; raising the NOSPACE alarm"
        );
        let req = pb::AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: pb::AlarmType::Nospace as i32,
        };
        // As etcd, the request fails with NOSPACE whether or not the alarm
        // could be recorded (it is raised again by the next write).
        if let Err(e) = self.propose(Op::Alarm(req)).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(Error::NoSpace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request as R;

    fn put(k: &str, v: usize) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(R::RequestPut(pb::PutRequest {
                key: k.into(),
                value: vec![0; v],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_follow_etcd() {
        let p = pb::PutRequest {
            key: b"abc".to_vec(),
            value: vec![0; 10],
            ..Default::default()
        };
        assert_eq!(cost_put(&p), 256 + 3 + 10);
        let del = pb::RequestOp {
            request: Some(R::RequestDeleteRange(Default::default())),
        };
        let t = pb::TxnRequest {
            success: vec![put("a", 100), del.clone()],
            failure: vec![put("b", 10), put("c", 10)],
            ..Default::default()
        };
        assert_eq!(cost_txn(&t), 2 * (256 + 1 + 10), "the costlier branch");
        let t = pb::TxnRequest {
            success: vec![del],
            ..Default::default()
        };
        assert_eq!(cost_txn(&t), 0, "a delete-only txn is free");
        assert_eq!(cost_lease_grant(&Default::default()), 64);
    }

    #[test]
    fn availability() {
        assert!(available(100, 10, Some(111)));
        assert!(
            !available(100, 11, Some(111)),
            "etcd needs size+cost < quota"
        );
        assert!(available(1000, 0, Some(10)), "free requests always pass");
        assert!(available(i64::MAX, 10, None));
        assert!(!available(i64::MAX, 10, Some(10)));
    }
}
