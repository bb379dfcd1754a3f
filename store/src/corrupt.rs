//! corrupt: corruption detection across members, with etcd 3.5's rules.
//!
//! - [`initial_check`] (`--experimental-initial-corrupt-check`, or the
//!   `InitialCorruptCheck` feature gate) runs once on a restarting member,
//!   after its raft log is replayed and before it serves clients. It
//!   compares its HashKV with every reachable peer's HashKV at the same
//!   revision; hashes are comparable only when the compact revisions are
//!   equal. A peer that has compacted past that revision or has not reached
//!   it is skipped. Any mismatch refuses the start ("found data
//!   inconsistency with peers"). A freshly bootstrapped or joining member is
//!   not checked (it has no state of its own yet), as in etcd.
//! - [`monitor`] (`--corrupt-check-time`, `--experimental-corrupt-check-time`)
//!   runs on every member but acts only while it leads: each period it
//!   fetches the peers' HashKV at its own revision and raises the
//!   replicated CORRUPT alarm for the first member found inconsistent
//!   (itself when its own hash changed at an unchanged revision; a follower
//!   ahead of it, or compacted further, or with another hash at the same
//!   compact revision). Apply then refuses writes with "etcdserver: corrupt
//!   cluster".
//!
//! The alarm names the inconsistent member, as etcd 3.5.1 (the reference
//! here) and 3.6 do; later 3.5 patch releases name member 0 instead. Either
//! way every member then refuses writes.
//!
//! Peers are asked through the peer service's `HashKv` RPC (etcd uses its
//! peer port too), which carries the asker's cluster ID. This module only
//! reads state and proposes the alarm; it never changes the state machine
//! itself. `main` calls both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use proto::etcdserverpb as pb;
use proto::raftpb::raft_client::RaftClient;

use crate::error::Error;
use crate::metrics::METRICS;
use crate::node::Node;
use crate::request::Op;

/// One peer's answer to a HashKV request.
struct PeerHash {
    id: u64,
    endpoints: Vec<String>,
    /// The answer, or the error of the last endpoint tried.
    result: Result<pb::HashKvResponse, Error>,
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// etcd's request timeout: 5 s plus two election timeouts.
fn request_timeout(node: &Node) -> Duration {
    Duration::from_secs(5) + 2 * node.cfg.election_timeout
}

/// gRPC metadata carrying the asking member's cluster ID (hex).
pub const CLUSTER_ID_HEADER: &str = "x-etcd-cluster-id";

/// What a peer answers to a member of another cluster.
pub const CLUSTER_ID_MISMATCH: &str = "etcdserver: cluster ID mismatch";

/// Map a peer's gRPC error back to the etcd error it stands for.
fn peer_error(s: &tonic::Status) -> Error {
    for e in [Error::Compacted, Error::FutureRev] {
        if s.message() == e.to_string() {
            return e;
        }
    }
    if s.message() == CLUSTER_ID_MISMATCH {
        return Error::Internal(CLUSTER_ID_MISMATCH.into());
    }
    Error::Internal(format!("{}: {}", s.code(), s.message()))
}

/// Ask one peer (each of its URLs in turn until one answers) for its
/// HashKV at `rev`.
async fn peer_hash(node: &Node, id: u64, urls: &[String], rev: i64, timeout: Duration) -> PeerHash {
    let mut last = Error::Internal("member has no peer URLs".into());
    for url in urls {
        let r = async {
            let ep = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Internal(e.to_string()))?
                .connect_timeout(Duration::from_secs(1));
            let ch = ep
                .connect()
                .await
                .map_err(|e| Error::Internal(format!("cannot connect: {e}")))?;
            let mut req = tonic::Request::new(pb::HashKvRequest { revision: rev });
            // The peer refuses members of another cluster (etcd sends its
            // cluster ID with the request too).
            if let Ok(v) = hex(node.cluster_id).parse() {
                req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
            }
            RaftClient::new(ch)
                .hash_kv(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| peer_error(&s))
        };
        let r = match tokio::time::timeout(timeout, r).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        };
        match r {
            Ok(resp) => {
                return PeerHash {
                    id,
                    endpoints: urls.to_vec(),
                    result: Ok(resp),
                }
            }
            Err(e) => {
                tracing::warn!(
                    "local-member-id" = %hex(node.member_id),
                    "requested-revision" = rev,
                    "remote-peer-id" = %hex(id),
                    "remote-peer-endpoint" = %url,
                    error = %e,
                    "failed hash kv request"
                );
                // A definite answer from this member: no other URL will differ.
                let definite = matches!(e, Error::Compacted | Error::FutureRev);
                last = e;
                if definite {
                    break;
                }
            }
        }
    }
    PeerHash {
        id,
        endpoints: urls.to_vec(),
        result: Err(last),
    }
}

/// Every other member's HashKV at `rev`, asked concurrently.
async fn peer_hashes(node: &Node, rev: i64) -> Vec<PeerHash> {
    let timeout = request_timeout(node);
    let peers: Vec<(u64, Vec<String>)> = node
        .members()
        .into_iter()
        .filter(|m| m.id != node.member_id)
        .map(|m| (m.id, m.peer_ur_ls))
        .collect();
    futures::future::join_all(
        peers
            .iter()
            .map(|(id, urls)| peer_hash(node, *id, urls, rev, timeout)),
    )
    .await
}

/// This member's (hash, revision, compact revision) at its current revision.
fn local_hash(node: &Node) -> anyhow::Result<(u32, i64, i64)> {
    let r = node
        .hash_kv(0)
        .map_err(|e| anyhow::anyhow!("{:x} failed to fetch hash ({e})", node.member_id))?;
    Ok((r.hash, r.hash_revision, r.compact_revision))
}

/// Wait (bounded) until the committed entries found on disk are applied, so
/// that the local hash covers the member's whole state, as etcd's backend
/// holds it at startup.
async fn wait_replayed(node: &Node) {
    let Some(commit) = node.restarted_commit else {
        return;
    };
    let mut rx = node.applied.clone();
    let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|a| a.index >= commit)).await;
}

/// What the initial check makes of a peer's HashKV at the local revision.
#[derive(Debug, PartialEq, Eq)]
enum Initial {
    /// Same hash.
    Match,
    /// Another hash over the same history (same compact revision).
    Mismatch,
    /// Another hash, but the histories differ in where they were compacted:
    /// not comparable, only logged.
    OtherCompaction,
}

/// The initial check's rule for one peer. `local` is (hash, revision,
/// compact revision); the peer hashed at the same revision.
fn initial_verdict(local: (u32, i64, i64), peer: &pb::HashKvResponse) -> Initial {
    let (h, _, crev) = local;
    if peer.hash == h {
        Initial::Match
    } else if peer.compact_revision == crev {
        Initial::Mismatch
    } else {
        Initial::OtherCompaction
    }
}

/// The initial corruption check (etcd's CheckInitialHashKV). Errors when
/// a peer at the same revision and compact revision has another hash.
pub async fn initial_check(node: &Arc<Node>) -> anyhow::Result<()> {
    if node.restarted_commit.is_none() {
        tracing::info!(
            "local-member-id" = %hex(node.member_id),
            "skipping initial corruption check; member was not initialized before"
        );
        return Ok(());
    }
    tracing::info!(
        "local-member-id" = %hex(node.member_id),
        timeout = ?request_timeout(node),
        "starting initial corruption check"
    );
    wait_replayed(node).await;
    let (h, rev, crev) = local_hash(node)?;
    let peers = peer_hashes(node, rev).await;
    let mut mismatch = Vec::new();
    for p in &peers {
        match &p.result {
            Ok(resp) => {
                let peer_rev = resp.header.as_ref().map_or(0, |h| h.revision);
                let log = |msg: &str| {
                    tracing::warn!(
                        "local-member-id" = %hex(node.member_id),
                        "local-member-revision" = rev,
                        "local-member-compact-revision" = crev,
                        "local-member-hash" = h,
                        "remote-peer-id" = %hex(p.id),
                        "remote-peer-endpoints" = ?p.endpoints,
                        "remote-peer-revision" = peer_rev,
                        "remote-peer-compact-revision" = resp.compact_revision,
                        "remote-peer-hash" = resp.hash,
                        "{msg}"
                    )
                };
                match initial_verdict((h, rev, crev), resp) {
                    Initial::Match => {}
                    Initial::Mismatch => {
                        log("found different hash values from remote peer");
                        mismatch.push(format!(
                            "peer {:x} ({}) has hash {} at revision {rev} (compact revision {crev}), local hash is {h}",
                            p.id,
                            p.endpoints.join(","),
                            resp.hash
                        ));
                    }
                    Initial::OtherCompaction => {
                        log("found different compact revision values from remote peer")
                    }
                }
            }
            Err(e) => {
                let msg = match e {
                    Error::FutureRev => "cannot fetch hash from slow remote peer",
                    Error::Internal(m) if m == CLUSTER_ID_MISMATCH => "cluster ID mismatch",
                    Error::Compacted => {
                        "cannot fetch hash from remote peer; local member is behind"
                    }
                    _ => continue,
                };
                tracing::warn!(
                    "local-member-id" = %hex(node.member_id),
                    "local-member-revision" = rev,
                    "local-member-compact-revision" = crev,
                    "local-member-hash" = h,
                    "remote-peer-id" = %hex(p.id),
                    "remote-peer-endpoints" = ?p.endpoints,
                    error = %e,
                    "{msg}"
                )
            }
        }
    }
    if !mismatch.is_empty() {
        METRICS
            .corruption_checks
            .with_label_values(&["mismatch"])
            .inc();
        bail!(
            "{:x} found data inconsistency with peers: {}",
            node.member_id,
            mismatch.join("; ")
        );
    }
    METRICS.corruption_checks.with_label_values(&["ok"]).inc();
    tracing::info!(
        "local-member-id" = %hex(node.member_id),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// The periodic corruption check (etcd's monitorKVHash): every
/// `--corrupt-check-time`, while this member leads, compare with the peers.
pub async fn monitor(node: Arc<Node>) {
    let period = node.cfg.corrupt_check_time;
    if period.is_zero() {
        return;
    }
    tracing::info!(
        "local-member-id" = %hex(node.member_id),
        interval = ?period,
        "enabled corruption checking"
    );
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if !node.status.is_leader() {
            continue;
        }
        if let Err(e) = check_hash_kv(&node).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

/// The inconsistent member found by one pass of the leader's check, if any.
/// `(h, rev, crev)` is the leader's hash before asking the peers and
/// `(h2, rev2, crev2)` after a linearizable barrier.
fn find_mismatch(
    me: u64,
    before: (u32, i64, i64),
    after: (u32, i64, i64),
    peers: &[(u64, &pb::HashKvResponse)],
) -> Option<u64> {
    let (h, rev, crev) = before;
    let (h2, rev2, crev2) = after;
    let mut found = None;
    let mut mismatch = |id: u64| {
        found.get_or_insert(id);
    };
    if h2 != h && rev2 == rev && crev == crev2 {
        tracing::warn!(
            "revision-1" = rev,
            "compact-revision-1" = crev,
            "hash-1" = h,
            "revision-2" = rev2,
            "compact-revision-2" = crev2,
            "hash-2" = h2,
            "found hash mismatch"
        );
        mismatch(me);
    }
    for (id, resp) in peers {
        let peer_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        // A follower is never ahead of the leader's applied state.
        if peer_rev > rev2 {
            tracing::warn!(
                "leader-revision" = rev2,
                "follower-revision" = peer_rev,
                "follower-peer-id" = %hex(*id),
                "revision from follower must be less than or equal to leader's"
            );
            mismatch(*id);
        }
        if resp.compact_revision > crev2 {
            tracing::warn!(
                "leader-compact-revision" = crev2,
                "follower-compact-revision" = resp.compact_revision,
                "follower-peer-id" = %hex(*id),
                "compact revision from follower must be less than or equal to leader's"
            );
            mismatch(*id);
        }
        // Same compact revision as the leader's when it hashed: the hashes
        // cover the same history and must match.
        if resp.compact_revision == crev && resp.hash != h {
            tracing::warn!(
                "leader-compact-revision" = crev2,
                "leader-hash" = h,
                "follower-compact-revision" = resp.compact_revision,
                "follower-hash" = resp.hash,
                "follower-peer-id" = %hex(*id),
                "same compact revision then hashes must match"
            );
            mismatch(*id);
        }
    }
    found
}

/// One pass of the leader's check (etcd's checkHashKV).
async fn check_hash_kv(node: &Arc<Node>) -> anyhow::Result<()> {
    let before = local_hash(node)?;
    let peers = peer_hashes(node, before.1).await;
    node.linearizable().await?;
    let after = local_hash(node)?;
    let answered: Vec<(u64, &pb::HashKvResponse)> = peers
        .iter()
        .filter_map(|p| p.result.as_ref().ok().map(|r| (p.id, r)))
        .collect();
    let culprit = find_mismatch(node.member_id, before, after, &answered);
    tracing::info!(
        "number-of-peers-checked" = answered.len(),
        "finished peer corruption check"
    );
    let Some(id) = culprit else {
        METRICS.corruption_checks.with_label_values(&["ok"]).inc();
        return Ok(());
    };
    METRICS
        .corruption_checks
        .with_label_values(&["mismatch"])
        .inc();
    let req = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Activate as i32,
        member_id: id,
        alarm: pb::AlarmType::Corrupt as i32,
    };
    if let Err(e) = node.propose(Op::Alarm(req)).await {
        tracing::warn!(
            "member-id" = %hex(id),
            error = %e,
            "failed to publish corrupt alarm"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(rev: i64, compact: i64, hash: u32) -> pb::HashKvResponse {
        pb::HashKvResponse {
            header: Some(pb::ResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            hash,
            compact_revision: compact,
            hash_revision: rev,
        }
    }

    #[test]
    fn leader_check_rules() {
        let me = 1;
        let s = (7, 10, 5);
        // All consistent.
        let ok = resp(10, 5, 7);
        assert_eq!(find_mismatch(me, s, s, &[(2, &ok), (3, &ok)]), None);
        // Another hash at the same compact revision: that follower.
        let bad = resp(10, 5, 8);
        assert_eq!(find_mismatch(me, s, s, &[(2, &ok), (3, &bad)]), Some(3));
        // Another hash at another compact revision is not comparable.
        let other = resp(10, 3, 8);
        assert_eq!(find_mismatch(me, s, s, &[(2, &other)]), None);
        // A follower ahead of the leader, or compacted further.
        let ahead = resp(11, 5, 7);
        assert_eq!(find_mismatch(me, s, s, &[(2, &ahead)]), Some(2));
        let compacted = resp(10, 6, 7);
        assert_eq!(find_mismatch(me, s, s, &[(2, &compacted)]), Some(2));
        // The leader's own hash changed at an unchanged revision: itself,
        // reported once (the first culprit wins).
        assert_eq!(find_mismatch(me, s, (9, 10, 5), &[(3, &bad)]), Some(me));
        // A new revision in between is not a mismatch.
        assert_eq!(find_mismatch(me, s, (9, 11, 5), &[(2, &ok)]), None);
    }

    #[test]
    fn initial_check_rules() {
        let local = (7, 10, 5);
        assert_eq!(initial_verdict(local, &resp(12, 5, 7)), Initial::Match);
        assert_eq!(initial_verdict(local, &resp(12, 5, 8)), Initial::Mismatch);
        assert_eq!(
            initial_verdict(local, &resp(12, 6, 8)),
            Initial::OtherCompaction
        );
        // Never compacted on either side (-1, as etcd reports it).
        let fresh = (7, 10, -1);
        assert_eq!(initial_verdict(fresh, &resp(10, -1, 9)), Initial::Mismatch);
    }

    #[test]
    fn peer_errors_map_back() {
        let s: tonic::Status = Error::Compacted.into();
        assert!(matches!(peer_error(&s), Error::Compacted));
        let s: tonic::Status = Error::FutureRev.into();
        assert!(matches!(peer_error(&s), Error::FutureRev));
        assert!(matches!(
            peer_error(&tonic::Status::unavailable("x")),
            Error::Internal(_)
        ));
    }
}
