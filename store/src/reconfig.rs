//! reconfig: membership changes, as etcd's Cluster service makes them.
//!
//! MemberAdd, MemberRemove and MemberPromote become raft ConfChangeV2
//! entries (one single change at a time, as etcd enforces) whose context is
//! the [`InternalRequest`] the apply thread completes; MemberUpdate is a
//! normal entry, since raft's membership does not change. Validation follows
//! etcd: peer URLs must parse and be unused, at most `--max-learners`
//! learners, and with `--strict-reconfig-check` no change that leaves too few
//! started or connected voters for a quorum. A promote is decided by the
//! leader (a follower forwards it over the peer transport), which refuses a
//! learner whose log lags 90% of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use proto::etcdserverpb as pb;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use sha1::{Digest, Sha1};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::raft::transport::PeerHandler;
use crate::raft::RaftMsg;
use crate::request::{ApplyResult, InternalRequest, Op};

/// How long a peer may be silent and still count as connected (etcd's HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// etcd's ID for a member added at runtime: SHA-1 of the sorted peer URLs
/// and the Unix time in seconds.
fn added_member_id(urls: &[String], now_secs: u64) -> u64 {
    let mut u: Vec<&str> = urls.iter().map(|s| s.as_str()).collect();
    u.sort();
    let mut h = Sha1::new();
    h.update(u.concat().as_bytes());
    h.update(now_secs.to_string().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("invariant: sha1 is 20 bytes"))
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Normalise and check peer URLs (etcd: "given member URLs are invalid").
fn check_urls(urls: &[String]) -> Result<Vec<String>> {
    if urls.is_empty() {
        return Err(Error::MemberBadUrls);
    }
    urls.iter()
        .map(|u| {
            let p = url::Url::parse(u).map_err(|_| Error::MemberBadUrls)?;
            if !matches!(p.scheme(), "http" | "https") || p.host_str().is_none() {
                return Err(Error::MemberBadUrls);
            }
            Ok(u.trim_end_matches('/').to_string())
        })
        .collect()
}

impl Node {
    /// Propose one membership change and wait until it is applied here.
    async fn propose_conf(
        &self,
        op: Op,
        kind: ConfChangeType,
        node: u64,
    ) -> Result<Vec<pb::Member>> {
        let id = self.next_id();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        cc.context = InternalRequest {
            id,
            op: Some(op),
            auth: None,
        }
        .encode_to_vec()
        .into();
        match self
            .submit(id, RaftMsg::ProposeConfChange { id, cc })
            .await?
        {
            ApplyResult::Members(m) => Ok(m),
            other => Err(Error::Internal(format!("unexpected result {other:?}"))),
        }
    }

    /// Voters that are connected: this member, and peers heard from recently.
    fn connected_voters(&self, voters: &[u64]) -> usize {
        voters
            .iter()
            .filter(|id| {
                **id == self.member_id || self.transport.active_within(**id, HEALTH_INTERVAL)
            })
            .count()
    }

    /// MemberAdd: returns the new member and the member list after it.
    pub async fn add_member(
        &self,
        peer_urls: &[String],
        is_learner: bool,
    ) -> Result<(pb::Member, Vec<pb::Member>)> {
        let urls = check_urls(peer_urls)?;
        let _g = self.conf_lock.lock().await;
        let member = {
            let sm = self.state.read();
            if !is_learner && self.cfg.strict_reconfig_check {
                // etcd's IsReadyToAddVotingMember: the started voters must
                // still be a quorum once the new one counts.
                let voters = &sm.conf_state.voters;
                let started = voters
                    .iter()
                    .filter(|id| sm.members.get(id).is_some_and(|m| !m.name.is_empty()))
                    .count();
                if started < quorum(voters.len() + 1) {
                    return Err(Error::MemberNotEnoughStarted);
                }
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let id = added_member_id(&urls, now);
            // etcd's ValidateConfigurationChange checks the ID, then the
            // URLs, then the learner count: the same URLs added twice within
            // a second (same ID) are "member ID already exist".
            if sm.members.contains_key(&id) || sm.removed.contains(&id) {
                return Err(Error::MemberExist);
            }
            if sm
                .members
                .values()
                .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
            {
                return Err(Error::PeerUrlExist);
            }
            if is_learner && sm.conf_state.learners.len() >= self.cfg.max_learners {
                return Err(Error::TooManyLearners);
            }
            pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: urls,
                client_ur_ls: vec![],
                is_learner,
            }
        };
        let kind = if is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .propose_conf(Op::MemberAdd(member.clone()), kind, member.id)
            .await?;
        Ok((member, members))
    }

    /// MemberRemove.
    pub async fn remove_member(&self, id: u64) -> Result<Vec<pb::Member>> {
        let _g = self.conf_lock.lock().await;
        {
            let sm = self.state.read();
            let Some(m) = sm.members.get(&id) else {
                return Err(Error::MemberNotFound);
            };
            if self.cfg.strict_reconfig_check && !m.is_learner {
                // etcd's mayRemoveMember: the remaining voters that are
                // connected must still form a quorum.
                let rest: Vec<u64> = sm
                    .conf_state
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| *v != id)
                    .collect();
                if self.connected_voters(&rest) < quorum(rest.len()) {
                    return Err(Error::MemberNotEnoughStarted);
                }
            }
        }
        self.propose_conf(
            Op::MemberRemove(pb::Member {
                id,
                ..Default::default()
            }),
            ConfChangeType::RemoveNode,
            id,
        )
        .await
    }

    /// MemberUpdate: new peer URLs.
    pub async fn update_member(&self, id: u64, peer_urls: &[String]) -> Result<Vec<pb::Member>> {
        // etcd parses the URLs first, but an empty list parses: a missing
        // member is then "member not found", not "URLs are invalid".
        let exists = self.state.read().members.contains_key(&id);
        if peer_urls.is_empty() && !exists {
            return Err(Error::MemberNotFound);
        }
        let urls = check_urls(peer_urls)?;
        if !exists {
            return Err(Error::MemberNotFound);
        }
        match self
            .propose(Op::MemberUpdate(pb::Member {
                id,
                peer_ur_ls: urls,
                ..Default::default()
            }))
            .await?
        {
            ApplyResult::Members(m) => Ok(m),
            other => Err(Error::Internal(format!("unexpected result {other:?}"))),
        }
    }

    /// MemberPromote: decided by the leader; a follower forwards it.
    pub async fn promote_member(&self, id: u64) -> Result<pb::MemberPromoteResponse> {
        {
            let sm = self.state.read();
            let Some(m) = sm.members.get(&id) else {
                return Err(Error::MemberNotFound);
            };
            if !m.is_learner {
                return Err(Error::MemberNotLearner);
            }
        }
        let leader = self.status.leader();
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if leader != self.member_id {
            let mut c = self.peer_client(leader)?;
            return match tokio::time::timeout(
                Duration::from_secs(5) + 2 * self.cfg.election_timeout,
                c.promote(pb::MemberPromoteRequest { id }),
            )
            .await
            {
                // The leader's member list is the one after the change.
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(status_to_error(&s)),
                Err(_) => Err(Error::Timeout),
            };
        }
        self.promote_local(id).await
    }

    async fn promote_local(&self, id: u64) -> Result<pb::MemberPromoteResponse> {
        let _g = self.conf_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        self.raft_tx
            .send_async(RaftMsg::Progress(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        let Some(progress) = rx.await.map_err(|_| Error::Stopped)? else {
            return Err(Error::NotLeader);
        };
        let leader_match = progress.get(&self.member_id).copied().unwrap_or(0);
        let learner_match = progress.get(&id).copied().unwrap_or(0);
        // etcd's isLearnerReady: within 90% of the leader's log.
        if (learner_match as f64) < (leader_match as f64) * 0.9 {
            return Err(Error::LearnerNotReady);
        }
        let members = self
            .propose_conf(
                Op::MemberPromote(pb::Member {
                    id,
                    ..Default::default()
                }),
                ConfChangeType::AddNode,
                id,
            )
            .await?;
        Ok(pb::MemberPromoteResponse {
            header: Some(self.header(self.current_rev())),
            members,
        })
    }
}

/// Map a forwarded call's status back to the error it carries.
fn status_to_error(s: &tonic::Status) -> Error {
    let all = [
        Error::MemberNotFound,
        Error::MemberNotLearner,
        Error::LearnerNotReady,
        Error::NoLeader,
        Error::NotLeader,
        Error::Unhealthy,
        Error::Timeout,
        Error::Stopped,
    ];
    all.into_iter()
        .find(|e| e.to_string() == s.message())
        .unwrap_or_else(|| Error::Internal(s.message().to_string()))
}

/// The peer-service side of a member.
pub struct NodePeer(pub std::sync::Arc<Node>);

#[tonic::async_trait]
impl PeerHandler for NodePeer {
    async fn renew(&self, id: i64) -> Result<i64> {
        self.0.renew_local(id).await
    }
    fn is_removed(&self, id: u64) -> bool {
        self.0.state.read().removed.contains(&id)
    }
    fn members(&self) -> Vec<pb::Member> {
        self.0.members()
    }
    fn touch(&self, from: u64) {
        self.0.transport.touch(from);
    }
    async fn remaining(&self, id: i64) -> Result<i64> {
        self.0.remaining_local(id).await
    }
    fn hash_kv(&self, rev: i64) -> Result<pb::HashKvResponse> {
        self.0.hash_kv(rev)
    }
    async fn promote(&self, id: u64) -> Result<pb::MemberPromoteResponse> {
        if !self.0.status.is_leader() {
            return Err(Error::NotLeader);
        }
        self.0.promote_local(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_member_ids_depend_on_urls_and_time() {
        let a = added_member_id(&["http://b".into(), "http://a".into()], 100);
        let b = added_member_id(&["http://a".into(), "http://b".into()], 100);
        assert_eq!(a, b, "URL order does not matter");
        assert_ne!(
            a,
            added_member_id(&["http://a".into(), "http://b".into()], 101)
        );
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(check_urls(&[]).unwrap_err(), Error::MemberBadUrls);
        assert_eq!(
            check_urls(&["not a url".into()]).unwrap_err(),
            Error::MemberBadUrls
        );
        assert_eq!(
            check_urls(&["http://127.0.0.1:2380/".into()]).unwrap(),
            vec!["http://127.0.0.1:2380".to_string()]
        );
    }
}
