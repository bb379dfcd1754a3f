//! apply: the replicated state machine and the rules for applying one
//! committed raft entry to it.
//!
//! [`StateMachine`] owns everything a snapshot contains: the MVCC key space,
//! the lease table, the alarm list and the applied index/term. The apply
//! thread (`crate::raft::apply_loop`) is its only writer; server handlers
//! read it under the read lock. Apply is deterministic: everything
//! nondeterministic was fixed by the proposer inside the
//! [`InternalRequest`](crate::request::InternalRequest).

pub mod kv;
pub mod lease;
pub mod membership;

use proto::etcdserverpb::{self as pb, alarm_request::AlarmAction};

use crate::auth::{AuthApplied, AuthInfo, AuthOp, PermType};
use crate::error::{Error, Result};
use crate::mvcc::{KeyRange, Mvcc};
use crate::request::{ApplyResult, Op};
use lease::Leases;

/// Largest TTL a lease may have (etcd's MaxLeaseTTL).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The replicated state.
#[derive(Clone)]
pub struct StateMachine {
    /// The key space.
    pub mvcc: Mvcc,
    /// The lease table.
    pub leases: Leases,
    /// Active alarms.
    pub alarms: Vec<pb::AlarmMember>,
    /// Index of the last applied raft entry.
    pub applied_index: u64,
    /// Term of the last applied raft entry.
    pub applied_term: u64,
    /// Raft membership (voters, learners) as of `applied_index`.
    pub conf_state: raft::eraftpb::ConfState,
    /// The member table by ID: name, peer and client URLs, learner flag.
    pub members: std::collections::BTreeMap<u64, pb::Member>,
    /// IDs of removed members (refused if they come back).
    pub removed: std::collections::BTreeSet<u64>,
    /// Users, roles and the auth switch.
    pub auth: crate::auth::AuthStore,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine {
            mvcc: Mvcc::new(),
            leases: Leases::default(),
            alarms: Vec::new(),
            applied_index: 0,
            applied_term: 0,
            conf_state: Default::default(),
            members: Default::default(),
            removed: Default::default(),
            auth: Default::default(),
        }
    }
}

/// Settings that shape apply (identical on every member), plus this
/// member's token keeper, which Authenticate entries register tokens in.
#[derive(Clone)]
pub struct ApplyConfig {
    /// Minimum lease TTL in seconds (1.5 election timeouts, rounded up).
    pub min_lease_ttl: i64,
    /// This member's auth tokens (`None`: Authenticate fails).
    pub tokens: Option<std::sync::Arc<crate::auth::token::TokenProvider>>,
}

#[cfg(feature = "failpoints")]
fn corrupt_put_failpoint(mut p: pb::PutRequest) -> pb::PutRequest {
    let prefix = fail::eval(crate::failpoints::APPLY_PUT_VALUE, |arg| {
        arg.unwrap_or_default()
    });
    if let Some(prefix) = prefix {
        if p.key.starts_with(prefix.as_bytes()) {
            p.value.extend_from_slice(b"-diverged");
        }
    }
    p
}

fn header(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// Fixed overhead of the size model: a store is never empty (member,
/// cluster and raft metadata), and etcd's backend starts at several pages,
/// so clients never see 0 (tools divide by it).
pub const DB_BASE_BYTES: i64 = 16 * 1024;

/// Bytes a lease counts for in the size model (etcd's quota estimate).
pub const LEASE_BYTES: i64 = 64;

impl StateMachine {
    /// Bytes in use (etcd's `db_size_in_use`) under Strata's size model.
    ///
    /// # The size model
    /// Strata keeps MVCC state in memory, so there is no database file to
    /// measure; instead sizes are accounted so that they behave as an etcd
    /// operator expects a bbolt file to behave:
    /// - **in use** = [`DB_BASE_BYTES`] + for every retained revision of
    ///   every key (live values, overwritten history and tombstones)
    ///   `len(key) + len(value) + 64` + [`LEASE_BYTES`] per lease. It grows
    ///   with every write, history included, and shrinks as soon as a
    ///   compaction drops history.
    /// - **total** (etcd's `db_size`, what `--quota-backend-bytes` is checked
    ///   against, as etcd checks the file size) = the same with the MVCC part
    ///   replaced by its high-water mark since start or the last Defragment.
    ///   Compaction frees space for reuse (new writes fill it before total
    ///   grows again) but only Defragment gives it back, as with bbolt.
    ///
    /// The high-water mark is per member and restarts at "in use" when a
    /// member restarts (or installs a snapshot): the restart compacts, as
    /// etcd's defragment-on-start would.
    pub fn db_size_in_use(&self) -> i64 {
        DB_BASE_BYTES + self.mvcc.size_bytes() + LEASE_BYTES * self.leases.len() as i64
    }

    /// Total size (etcd's `db_size`); see [`db_size_in_use`](Self::db_size_in_use).
    pub fn db_size(&self) -> i64 {
        DB_BASE_BYTES + self.mvcc.peak_bytes() + LEASE_BYTES * self.leases.len() as i64
    }

    fn has_alarm(&self, t: pb::AlarmType) -> bool {
        self.alarms.iter().any(|a| a.alarm == t as i32)
    }

    /// Apply one client operation issued as `who` (etcd's authApplierV3):
    /// with auth enabled, writes are checked against the user's
    /// permissions and the auth revision the request was checked at, and
    /// auth management needs root. `who == None` is the server itself.
    /// `index` is the entry's raft index (simple tokens embed it).
    pub fn apply_as(
        &mut self,
        op: Op,
        who: Option<&AuthInfo>,
        index: u64,
        cfg: &ApplyConfig,
    ) -> Result<ApplyResult> {
        if let Some(ai) = who {
            self.check_write(ai, &op)?;
        }
        let Op::Auth(a) = op else {
            return self.apply(op, cfg);
        };
        let Some(a) = a.op else {
            return Err(Error::Internal("empty auth request".into()));
        };
        let user = match &a {
            AuthOp::UserDelete(r) => Some(r.name.clone()),
            AuthOp::UserChangePassword(r) => Some(r.name.clone()),
            _ => None,
        };
        let disable = matches!(a, AuthOp::Disable(_));
        let prefix = match &a {
            AuthOp::Authenticate(r) => r.simple_token.clone(),
            _ => String::new(),
        };
        match self.auth.apply(a)? {
            AuthApplied::Done => {
                if let Some(t) = &cfg.tokens {
                    if let Some(u) = user {
                        t.invalidate_user(&u);
                    }
                    if disable {
                        t.clear();
                    }
                }
                Ok(ApplyResult::Auth(None))
            }
            AuthApplied::Authenticated { name, revision } => {
                let Some(t) = &cfg.tokens else {
                    return Err(Error::Internal("no token provider".into()));
                };
                Ok(ApplyResult::Auth(Some(
                    t.assign(&name, revision, &prefix, index)?,
                )))
            }
        }
    }

    /// The apply-time permission check of one write.
    fn check_write(&self, ai: &AuthInfo, op: &Op) -> Result<()> {
        let a = &self.auth;
        if !a.enabled {
            return Ok(());
        }
        match op {
            Op::Put(p) => {
                a.is_op_permitted(Some(ai), &p.key, &[], PermType::Write)?;
                // etcd's checkLeasePuts: attaching to a lease needs write
                // on the keys already attached (or the user could not revoke it).
                self.check_lease_keys(ai, p.lease)?;
                a.check_put(Some(ai), p)
            }
            Op::DeleteRange(d) => a.check_delete(Some(ai), d),
            Op::Txn(t) => a.check_txn(Some(ai), t),
            // etcd's checkLeasePuts: write on every attached key.
            Op::LeaseRevoke(r) => self.check_lease_keys(ai, r.id),
            Op::Auth(r) => match &r.op {
                Some(o) => a.check_op(Some(ai), o),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Write permission on every key attached to `lease` (none: nothing to check).
    fn check_lease_keys(&self, ai: &AuthInfo, lease: i64) -> Result<()> {
        if let Some(l) = self.leases.get(lease) {
            for k in l.keys.iter() {
                self.auth
                    .is_op_permitted(Some(ai), k, &[], PermType::Write)?;
            }
        }
        Ok(())
    }

    /// Apply one operation. Errors are results for the client; the entry is
    /// applied either way (a failed op changes nothing).
    pub fn apply(&mut self, op: Op, cfg: &ApplyConfig) -> Result<ApplyResult> {
        // etcd's corrupt applier: the key space and leases are frozen
        // (compaction too, so the evidence stays); alarms, membership and
        // lease checkpoints still apply.
        if self.has_alarm(pb::AlarmType::Corrupt)
            && matches!(
                op,
                Op::Put(_)
                    | Op::DeleteRange(_)
                    | Op::Txn(_)
                    | Op::Compaction(_)
                    | Op::LeaseGrant(_)
                    | Op::LeaseRevoke(_)
            )
        {
            return Err(Error::Corrupt);
        }
        let nospace = self.has_alarm(pb::AlarmType::Nospace);
        match op {
            Op::Put(p) => {
                if nospace {
                    return Err(Error::NoSpace);
                }
                // Failpoint `strata::apply::put_value=return(PREFIX)`: a put
                // of a key starting with PREFIX stores a different value on
                // this member only, a silent divergence for the corruption
                // checks' tests.
                #[cfg(feature = "failpoints")]
                let p = corrupt_put_failpoint(p);
                let mut txn = self.mvcc.write();
                let r = kv::put(&mut txn, &mut self.leases, &p);
                let rev = txn.commit();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResult::Put(r))
            }
            Op::DeleteRange(d) => {
                let mut txn = self.mvcc.write();
                let r = kv::delete_range(&mut txn, &mut self.leases, &d);
                let rev = txn.commit();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResult::DeleteRange(r))
            }
            Op::Txn(t) => {
                if nospace && has_put(&t) {
                    return Err(Error::NoSpace);
                }
                let mut txn = self.mvcc.write();
                let r = kv::txn_write(&mut txn, &mut self.leases, &t);
                if let Err(e) = &r {
                    // Only a value that cannot be read back (local
                    // corruption, reported as Internal) fails a txn midway.
                    assert!(
                        !txn.has_changes() || matches!(e, Error::Internal(_)),
                        "invariant: txn checks run before any write"
                    );
                }
                let rev = txn.commit();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResult::Txn(r))
            }
            Op::Compaction(c) => {
                self.mvcc.compact(c.revision)?;
                Ok(ApplyResult::Compaction(pb::CompactionResponse {
                    header: header(self.mvcc.current_rev()),
                }))
            }
            Op::LeaseGrant(g) => {
                if nospace {
                    return Err(Error::NoSpace);
                }
                if g.ttl > MAX_LEASE_TTL {
                    return Err(Error::LeaseTtlTooLarge);
                }
                if self.leases.contains(g.id) {
                    return Err(Error::LeaseExist);
                }
                let ttl = g.ttl.max(cfg.min_lease_ttl);
                self.leases.grant(g.id, ttl);
                Ok(ApplyResult::LeaseGrant(pb::LeaseGrantResponse {
                    header: header(self.mvcc.current_rev()),
                    id: g.id,
                    ttl,
                    error: String::new(),
                }))
            }
            Op::LeaseRevoke(r) => {
                let Some(l) = self.leases.remove(r.id) else {
                    return Err(Error::LeaseNotFound);
                };
                let mut txn = self.mvcc.write();
                for k in &l.keys {
                    // Detach from nothing: the lease is already gone.
                    txn.delete_range(&KeyRange::new(k, &[]));
                }
                let rev = txn.commit();
                Ok(ApplyResult::LeaseRevoke(pb::LeaseRevokeResponse {
                    header: header(rev),
                }))
            }
            Op::LeaseCheckpoint(c) => {
                for cp in c.checkpoints {
                    self.leases.checkpoint(cp.id, cp.remaining_ttl);
                }
                Ok(ApplyResult::Empty)
            }
            Op::Alarm(a) => Ok(ApplyResult::Alarm(self.apply_alarm(&a))),
            Op::MemberAttr(m) => {
                self.publish_member(m);
                Ok(ApplyResult::Empty)
            }
            Op::MemberUpdate(m) => self.update_member(m),
            Op::Auth(_) => self.apply_as(op, None, self.applied_index + 1, cfg),
            Op::MemberAdd(_) | Op::MemberRemove(_) | Op::MemberPromote(_) => Err(Error::Internal(
                "membership change outside a conf-change entry".into(),
            )),
        }
    }

    fn apply_alarm(&mut self, a: &pb::AlarmRequest) -> pb::AlarmResponse {
        let mut resp = pb::AlarmResponse {
            header: header(self.mvcc.current_rev()),
            alarms: Vec::new(),
        };
        let m = pb::AlarmMember {
            member_id: a.member_id,
            alarm: a.alarm,
        };
        match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate) => {
                if a.alarm == pb::AlarmType::None as i32 {
                    return resp;
                }
                if !self.alarms.contains(&m) {
                    self.alarms.push(m);
                }
                resp.alarms.push(m);
            }
            Ok(AlarmAction::Deactivate) => {
                if let Some(pos) = self.alarms.iter().position(|x| *x == m) {
                    resp.alarms.push(self.alarms.remove(pos));
                }
            }
            _ => resp.alarms = self.alarms.clone(),
        }
        resp
    }
}

fn has_put(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success
        .iter()
        .chain(t.failure.iter())
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => has_put(t),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_alarm_freezes_the_key_space_and_leases_as_etcd_does() {
        let cfg = ApplyConfig {
            min_lease_ttl: 1,
            tokens: None,
        };
        let mut sm = StateMachine::default();
        let put = || {
            Op::Put(pb::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        };
        sm.apply(put(), &cfg).unwrap();
        sm.apply(
            Op::Alarm(pb::AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: 7,
                alarm: pb::AlarmType::Corrupt as i32,
            }),
            &cfg,
        )
        .unwrap();
        let refused = [
            put(),
            Op::DeleteRange(pb::DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            }),
            Op::Txn(pb::TxnRequest::default()),
            Op::Compaction(pb::CompactionRequest {
                revision: 1,
                ..Default::default()
            }),
            Op::LeaseGrant(pb::LeaseGrantRequest { ttl: 10, id: 1 }),
            Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 1 }),
        ];
        for op in refused {
            let what = format!("{op:?}");
            assert!(matches!(sm.apply(op, &cfg), Err(Error::Corrupt)), "{what}");
        }
        assert_eq!(sm.mvcc.current_rev(), 2, "nothing was written");
        // Alarms still apply: the alarm can be listed and disarmed.
        let r = sm.apply(
            Op::Alarm(pb::AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: 7,
                alarm: pb::AlarmType::Corrupt as i32,
            }),
            &cfg,
        );
        assert!(r.is_ok());
        sm.apply(put(), &cfg).unwrap();
        assert_eq!(sm.mvcc.current_rev(), 3);
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use crate::auth::AuthRequest;
    use proto::authpb;

    fn cfg() -> ApplyConfig {
        ApplyConfig {
            min_lease_ttl: 1,
            tokens: None,
        }
    }

    fn auth(sm: &mut StateMachine, op: AuthOp) {
        sm.apply(Op::Auth(AuthRequest { op: Some(op) }), &cfg())
            .unwrap();
    }

    /// root; alice with readwrite on [a, b); auth enabled.
    fn enabled() -> StateMachine {
        let mut sm = StateMachine::default();
        for u in ["root", "alice"] {
            auth(
                &mut sm,
                AuthOp::UserAdd(pb::AuthUserAddRequest {
                    name: u.into(),
                    hashed_password: "h".into(),
                    ..Default::default()
                }),
            );
        }
        auth(
            &mut sm,
            AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() }),
        );
        auth(
            &mut sm,
            AuthOp::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(authpb::Permission {
                    perm_type: authpb::permission::Type::Readwrite as i32,
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                }),
            }),
        );
        for (u, r) in [("alice", "r"), ("root", "root")] {
            auth(
                &mut sm,
                AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
                    user: u.into(),
                    role: r.into(),
                }),
            );
        }
        auth(&mut sm, AuthOp::Enable(Default::default()));
        sm
    }

    fn put(k: &str, lease: i64) -> Op {
        Op::Put(pb::PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }

    #[test]
    fn writes_are_rechecked_at_apply_against_the_auth_revision() {
        let mut sm = enabled();
        let rev = sm.auth.revision;
        let alice = AuthInfo {
            username: "alice".into(),
            revision: rev,
        };
        assert!(sm.apply_as(put("a1", 0), Some(&alice), 10, &cfg()).is_ok());
        assert_eq!(
            sm.apply_as(put("c", 0), Some(&alice), 11, &cfg())
                .unwrap_err(),
            Error::PermissionDenied
        );
        // The auth store changes between the request and its apply.
        auth(
            &mut sm,
            AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "x".into() }),
        );
        assert_eq!(
            sm.apply_as(put("a2", 0), Some(&alice), 12, &cfg())
                .unwrap_err(),
            Error::AuthOldRevision
        );
        assert_eq!(
            sm.apply_as(put("a2", 0), Some(&AuthInfo::default()), 13, &cfg())
                .unwrap_err(),
            Error::UserEmpty
        );
        // The server's own proposals are not checked.
        assert!(sm.apply_as(put("zz", 0), None, 14, &cfg()).is_ok());
        // Management needs root, and root's request applies.
        let mgmt = Op::Auth(AuthRequest {
            op: Some(AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "y".into() })),
        });
        let now = AuthInfo {
            username: "alice".into(),
            revision: sm.auth.revision,
        };
        assert_eq!(
            sm.apply_as(mgmt.clone(), Some(&now), 15, &cfg())
                .unwrap_err(),
            Error::PermissionDenied
        );
        let root = AuthInfo {
            username: "root".into(),
            revision: sm.auth.revision,
        };
        assert!(sm.apply_as(mgmt, Some(&root), 16, &cfg()).is_ok());
    }

    #[test]
    fn lease_revoke_and_lease_puts_need_write_on_attached_keys() {
        let mut sm = enabled();
        sm.apply(
            Op::LeaseGrant(pb::LeaseGrantRequest { ttl: 60, id: 7 }),
            &cfg(),
        )
        .unwrap();
        sm.apply(put("zz", 7), &cfg()).unwrap();
        let alice = AuthInfo {
            username: "alice".into(),
            revision: sm.auth.revision,
        };
        assert_eq!(
            sm.apply_as(put("a1", 7), Some(&alice), 20, &cfg())
                .unwrap_err(),
            Error::PermissionDenied,
            "attaching to a lease that holds a key alice cannot write"
        );
        assert_eq!(
            sm.apply_as(
                Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 7 }),
                Some(&alice),
                21,
                &cfg()
            )
            .unwrap_err(),
            Error::PermissionDenied
        );
        assert!(sm.leases.contains(7));
    }
}
