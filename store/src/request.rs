//! request: the payload of every raft log entry the store writes.
//!
//! A proposal is a prost-encoded [`InternalRequest`] inside `Entry.data`: a
//! node-unique request id (so the proposer's waiter is completed by id when
//! the entry is applied, never by position) plus one state-machine operation.
//! Everything nondeterministic (lease IDs, timestamps) is decided by the
//! proposer and carried here, so apply is a pure function of the log.
//! Membership changes travel as raft ConfChangeV2 entries whose `context` is
//! an encoded [`InternalRequest`] (MemberAdd/MemberRemove/MemberPromote).

use proto::etcdserverpb as pb;

/// One replicated operation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    /// Proposer-unique request id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The operation.
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 20")]
    pub op: Option<Op>,
    /// Who asked (etcd's RequestHeader username/auth_revision): checked
    /// again at apply. `None` for the server's own proposals (lease
    /// expiry, checkpoints, publish), which act with root's rights as
    /// etcd's do.
    #[prost(message, optional, tag = "15")]
    pub auth: Option<crate::auth::AuthInfo>,
}

/// A replicated state-machine operation.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// KV Put.
    #[prost(message, tag = "2")]
    Put(pb::PutRequest),
    /// KV DeleteRange.
    #[prost(message, tag = "3")]
    DeleteRange(pb::DeleteRangeRequest),
    /// KV Txn (with at least one write in some branch).
    #[prost(message, tag = "4")]
    Txn(pb::TxnRequest),
    /// KV Compact.
    #[prost(message, tag = "5")]
    Compaction(pb::CompactionRequest),
    /// Lease grant; `ID` is always set by the proposer.
    #[prost(message, tag = "6")]
    LeaseGrant(pb::LeaseGrantRequest),
    /// Lease revoke (client request or leader-driven expiry).
    #[prost(message, tag = "7")]
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// Alarm activate/deactivate.
    #[prost(message, tag = "8")]
    Alarm(pb::AlarmRequest),
    /// Lease remaining-TTL checkpoint.
    #[prost(message, tag = "9")]
    LeaseCheckpoint(pb::LeaseCheckpointRequest),
    /// A member publishes its name and client URLs (etcd's publish), so
    /// every member's MemberList can show them.
    #[prost(message, tag = "10")]
    MemberAttr(pb::Member),
    /// Add a member (voter or learner): carried in the context of a raft
    /// ConfChangeV2 entry, never as a normal entry.
    #[prost(message, tag = "11")]
    MemberAdd(pb::Member),
    /// Remove a member (ConfChangeV2 context); only `id` is set.
    #[prost(message, tag = "12")]
    MemberRemove(pb::Member),
    /// Promote a learner to voter (ConfChangeV2 context); only `id` is set.
    #[prost(message, tag = "13")]
    MemberPromote(pb::Member),
    /// Change a member's peer URLs (a normal entry: raft membership is unchanged).
    #[prost(message, tag = "14")]
    MemberUpdate(pb::Member),
    /// An auth management operation or Authenticate.
    #[prost(message, tag = "20")]
    Auth(crate::auth::AuthRequest),
}

/// The result of applying one operation, handed back to its waiter.
#[derive(Debug, Clone)]
pub enum ApplyResult {
    /// Put response.
    Put(pb::PutResponse),
    /// DeleteRange response.
    DeleteRange(pb::DeleteRangeResponse),
    /// Txn response.
    Txn(pb::TxnResponse),
    /// Compaction response.
    Compaction(pb::CompactionResponse),
    /// LeaseGrant response.
    LeaseGrant(pb::LeaseGrantResponse),
    /// LeaseRevoke response.
    LeaseRevoke(pb::LeaseRevokeResponse),
    /// Alarm response.
    Alarm(pb::AlarmResponse),
    /// A membership change: the member list after it.
    Members(Vec<pb::Member>),
    /// An auth operation succeeded; `Some(token)` for Authenticate.
    Auth(Option<String>),
    /// Operations with no client-visible response.
    Empty,
}
