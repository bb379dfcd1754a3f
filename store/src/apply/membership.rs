//! apply::membership: the member table and how membership entries change it.
//!
//! Raft owns who votes ([`ConfState`], applied on the raft thread); the
//! state machine owns what etcd shows about members (name, peer and client
//! URLs, the learner flag) and the set of removed IDs. A conf-change entry
//! reaches [`StateMachine::apply_conf_change`] together with the ConfState
//! raft produced for it, so both stay in step at every applied index (and so
//! in every snapshot).

use proto::etcdserverpb as pb;
use raft::eraftpb::ConfState;

use super::StateMachine;
use crate::error::{Error, Result};
use crate::request::{ApplyResult, Op};

impl StateMachine {
    /// Apply a membership change. `cs` is raft's configuration after it, or
    /// `None` when raft refused the change (nothing changes then).
    pub fn apply_conf_change(&mut self, op: Op, cs: Option<ConfState>) -> Result<ApplyResult> {
        let Some(cs) = cs else {
            return Err(Error::Unhealthy);
        };
        match op {
            Op::MemberAdd(m) => {
                let e = self.members.entry(m.id).or_default();
                e.id = m.id;
                if !m.name.is_empty() {
                    e.name = m.name;
                }
                e.peer_ur_ls = m.peer_ur_ls;
            }
            Op::MemberRemove(m) => {
                self.members.remove(&m.id);
                self.removed.insert(m.id);
            }
            Op::MemberPromote(_) => {}
            other => {
                return Err(Error::Internal(format!(
                    "unexpected operation in a conf-change entry: {other:?}"
                )))
            }
        }
        self.set_conf_state(cs);
        Ok(ApplyResult::Members(self.member_list()))
    }

    /// Adopt raft's configuration: learner flags follow it, and members raft
    /// no longer knows are dropped.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.members
            .retain(|id, _| cs.voters.contains(id) || cs.learners.contains(id));
        for (id, m) in self.members.iter_mut() {
            m.is_learner = cs.learners.contains(id);
        }
        self.conf_state = cs;
    }

    /// A member publishes its name and client URLs.
    pub(super) fn publish_member(&mut self, m: pb::Member) {
        if self.removed.contains(&m.id) {
            return;
        }
        let e = self.members.entry(m.id).or_default();
        e.id = m.id;
        e.name = m.name;
        e.client_ur_ls = m.client_ur_ls;
        if e.peer_ur_ls.is_empty() {
            e.peer_ur_ls = m.peer_ur_ls;
        }
    }

    /// MemberUpdate: new peer URLs for an existing member.
    pub(super) fn update_member(&mut self, m: pb::Member) -> Result<ApplyResult> {
        if self
            .members
            .values()
            .any(|o| o.id != m.id && o.peer_ur_ls.iter().any(|u| m.peer_ur_ls.contains(u)))
        {
            return Err(Error::PeerUrlExist);
        }
        let Some(e) = self.members.get_mut(&m.id) else {
            return Err(Error::MemberNotFound);
        };
        e.peer_ur_ls = m.peer_ur_ls;
        Ok(ApplyResult::Members(self.member_list()))
    }

    /// Members in ID order.
    pub fn member_list(&self) -> Vec<pb::Member> {
        self.members.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str) -> pb::Member {
        pb::Member {
            id,
            peer_ur_ls: vec![url.into()],
            ..Default::default()
        }
    }

    #[test]
    fn add_promote_remove_follow_raft() {
        let mut sm = StateMachine::default();
        let cs = |v: &[u64], l: &[u64]| ConfState {
            voters: v.to_vec(),
            learners: l.to_vec(),
            ..Default::default()
        };
        sm.apply_conf_change(Op::MemberAdd(member(1, "http://a")), Some(cs(&[1], &[])))
            .unwrap();
        sm.apply_conf_change(Op::MemberAdd(member(2, "http://b")), Some(cs(&[1], &[2])))
            .unwrap();
        assert!(sm.members[&2].is_learner);
        // Refused by raft: nothing changes.
        assert!(sm
            .apply_conf_change(Op::MemberAdd(member(3, "http://c")), None)
            .is_err());
        assert!(!sm.members.contains_key(&3));
        sm.apply_conf_change(Op::MemberPromote(member(2, "")), Some(cs(&[1, 2], &[])))
            .unwrap();
        assert!(!sm.members[&2].is_learner);
        // Update to a URL in use fails; to a fresh one succeeds.
        assert_eq!(
            sm.update_member(member(2, "http://a")).unwrap_err(),
            Error::PeerUrlExist
        );
        sm.update_member(member(2, "http://b2")).unwrap();
        assert_eq!(sm.members[&2].peer_ur_ls, vec!["http://b2".to_string()]);
        let r = sm
            .apply_conf_change(Op::MemberRemove(member(1, "")), Some(cs(&[2], &[])))
            .unwrap();
        assert!(matches!(r, ApplyResult::Members(ref m) if m.len() == 1 && m[0].id == 2));
        assert!(sm.removed.contains(&1));
        // A removed member's late publish does not bring it back.
        sm.publish_member(member(1, "http://a"));
        assert!(!sm.members.contains_key(&1));
    }
}
