//! membership: member and cluster identity, derived exactly as etcd derives
//! them, so that the same flags give the same IDs on etcd and on Strata.
//!
//! member ID = first 8 bytes (big-endian) of SHA-1(sorted peer URLs joined,
//! then the cluster token); cluster ID = first 8 bytes of SHA-1 of the
//! sorted member IDs, each 8 bytes big-endian.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

/// One cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Member name.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (known for the local member).
    pub client_urls: Vec<String>,
    /// Whether the member is a raft learner.
    pub is_learner: bool,
}

/// etcd's computeMemberId (without the timestamp used for added members).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(|s| s.as_str()).collect();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("invariant: sha1 is 20 bytes"))
}

/// etcd's RaftCluster.genID.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("invariant: sha1 is 20 bytes"))
}

/// Members from `--initial-cluster`, sorted by ID.
pub fn initial_members(cluster: &BTreeMap<String, Vec<String>>, token: &str) -> Vec<Member> {
    let mut v: Vec<Member> = cluster
        .iter()
        .map(|(name, urls)| Member {
            id: member_id(urls, token),
            name: name.clone(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    v.sort_by_key(|m| m.id);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_etcd_default_ids() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
