//! Maintenance and Cluster services: Status, Hash, HashKV, Alarm,
//! Defragment, Snapshot, MoveLeader and MemberList.

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::harness::{assert_err, Strata};

const WAIT: Duration = Duration::from_secs(10);

/// Parse "X.Y.Z[-suffix]" into (X, Y, Z).
fn semver(v: &str) -> (u64, u64, u64) {
    let core = v.split(['-', '+']).next().unwrap();
    let p: Vec<u64> = core
        .split('.')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("not a semver: {v:?}")))
        .collect();
    assert_eq!(p.len(), 3, "not a semver: {v:?}");
    (p[0], p[1], p[2])
}

fn alarms(r: &etcd_client::AlarmResponse) -> Vec<(u64, AlarmType)> {
    r.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

#[tokio::test]
async fn status_reports_version_leader_and_raft_progress() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let st = c.status().await.unwrap();
    let v = semver(st.version());
    assert!(
        v >= (3, 5, 13),
        "Kubernetes needs etcd >= 3.5.13, got {}",
        st.version()
    );
    let me = st.header().unwrap().member_id();
    assert_ne!(me, 0);
    assert_eq!(st.leader(), me, "a single member leads itself");
    assert!(st.raft_term() > 0);
    assert!(st.raft_index() > 0);
    assert!(st.raft_applied_index() > 0);
    assert!(st.raft_applied_index() <= st.raft_index());
    assert!(st.db_size() > 0, "db_size {}", st.db_size());
    assert!(st.raft_used_db_size() > 0 && st.raft_used_db_size() <= st.db_size());
    assert!(st.errors().is_empty(), "{:?}", st.errors());
    assert!(!st.is_learner());
    assert_eq!(st.header().unwrap().raft_term(), st.raft_term());

    // Progress after writes.
    for i in 0..5 {
        c.put(format!("k{i}"), vec![b'v'; 10_000], None)
            .await
            .unwrap();
    }
    let st2 = c.status().await.unwrap();
    assert!(st2.raft_applied_index() >= st.raft_applied_index() + 5);
    assert!(st2.raft_index() >= st2.raft_applied_index());
    assert!(
        st2.db_size() > st.db_size() + 40_000,
        "{} -> {}",
        st.db_size(),
        st2.db_size()
    );
    assert_eq!(st2.header().unwrap().revision(), 6);
    assert_eq!(st2.leader(), me);

    // The reported version can be set.
    let s2 = Strata::start(&["--emulated-etcd-version", "3.5.17"]);
    let mut c2 = s2.client().await;
    assert_eq!(c2.status().await.unwrap().version(), "3.5.17");
}

#[tokio::test]
async fn hash_and_hash_kv() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("a", "1", None).await.unwrap(); // 2
    let h1 = c.hash().await.unwrap().hash();
    assert_eq!(c.hash().await.unwrap().hash(), h1, "same state, same hash");
    let hk1 = c.hash_kv(0).await.unwrap();
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), hk1.hash());
    assert_eq!(hk1.header().unwrap().revision(), 2);
    assert_eq!(hk1.hash_revision(), 2);
    assert_eq!(
        hk1.compact_version(),
        -1,
        "etcd reports -1 before any compaction"
    );

    c.put("b", "2", None).await.unwrap(); // 3
    let h2 = c.hash().await.unwrap().hash();
    assert_ne!(h2, h1, "a write changes the hash");
    let hk2 = c.hash_kv(0).await.unwrap();
    assert_ne!(hk2.hash(), hk1.hash());
    assert_eq!(hk2.hash_revision(), 3);
    // HashKV at an old revision is stable across later writes.
    let at2 = c.hash_kv(2).await.unwrap();
    assert_eq!(
        at2.hash(),
        hk1.hash(),
        "HashKV(2) equals the hash taken at 2"
    );
    assert_eq!(at2.hash_revision(), 2);
    assert_eq!(at2.header().unwrap().revision(), 3);
    c.put("a", "again", None).await.unwrap(); // 4
    c.delete("b", None).await.unwrap(); // 5
    assert_eq!(c.hash_kv(2).await.unwrap().hash(), hk1.hash());
    assert_eq!(c.hash_kv(3).await.unwrap().hash(), hk2.hash());
    assert_ne!(c.hash_kv(5).await.unwrap().hash(), hk2.hash());
    // Reads do not change the hash.
    let h5 = c.hash().await.unwrap().hash();
    c.get("a", None).await.unwrap();
    assert_eq!(c.hash().await.unwrap().hash(), h5);

    assert_err(
        c.hash_kv(100).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Compaction is reported, and compacted revisions cannot be hashed.
    c.compact(4, None).await.unwrap();
    let hk = c.hash_kv(0).await.unwrap();
    assert_eq!(hk.compact_version(), 4);
    assert_eq!(hk.hash_revision(), 5);
    let hk_again = c.hash_kv(5).await.unwrap();
    assert_eq!(
        (hk_again.hash(), hk_again.compact_version()),
        (hk.hash(), 4)
    );
    assert_err(
        c.hash_kv(3).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

#[tokio::test]
async fn nospace_alarm_blocks_writes_but_not_reads_or_deletes() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("k1", "v", None).await.unwrap(); // 2
    c.put("k2", "v", None).await.unwrap(); // 3
    let me = c.status().await.unwrap().header().unwrap().member_id();

    let r = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(r.alarms().is_empty());

    let mut opts = AlarmOptions::new();
    opts.with_member(me);
    let r = c
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(opts))
        .await
        .unwrap();
    assert_eq!(alarms(&r), vec![(me, AlarmType::Nospace)]);
    let r = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms(&r), vec![(me, AlarmType::Nospace)]);
    let r = c
        .alarm(AlarmAction::Get, AlarmType::Nospace, None)
        .await
        .unwrap();
    assert_eq!(alarms(&r), vec![(me, AlarmType::Nospace)]);
    let r = c
        .alarm(AlarmAction::Get, AlarmType::Corrupt, None)
        .await
        .unwrap();
    assert!(r.alarms().is_empty(), "filtered by type");
    let st = c.status().await.unwrap();
    assert_eq!(st.errors(), [format!("memberID:{me} alarm:NOSPACE ")]);

    let nospace = "etcdserver: mvcc: database space exceeded";
    assert_err(
        c.put("k3", "v", None).await,
        Code::ResourceExhausted,
        nospace,
    );
    assert_err(
        c.put("k1", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::ResourceExhausted,
        nospace,
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::put("k3", "v", None)]))
            .await,
        Code::ResourceExhausted,
        nospace,
    );
    assert_err(
        c.lease_grant(60, None).await,
        Code::ResourceExhausted,
        nospace,
    );
    // Reads, deletes and delete-only txns still work.
    let g = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(g.count(), 2);
    assert_eq!(g.header().unwrap().revision(), 3);
    let d = c.delete("k2", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 4));
    let t = c
        .txn(Txn::new().and_then([
            TxnOp::delete("k1", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get("k", Some(GetOptions::new().with_prefix())),
        ]))
        .await
        .unwrap();
    assert_eq!(t.header().unwrap().revision(), 5);
    assert!(c.get("k3", None).await.unwrap().kvs().is_empty());

    let mut opts = AlarmOptions::new();
    opts.with_member(me);
    let r = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .unwrap();
    assert_eq!(alarms(&r), vec![(me, AlarmType::Nospace)]);
    let r = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(r.alarms().is_empty());
    assert!(c.status().await.unwrap().errors().is_empty());
    let p = c.put("k3", "v", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 6);
    c.lease_grant(60, None).await.unwrap();
}

#[tokio::test]
async fn defragment_keeps_data() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 0..20 {
        c.put("d", format!("{i}"), None).await.unwrap();
    }
    c.compact(15, None).await.unwrap();
    c.defragment().await.unwrap();
    let g = c.get("d", None).await.unwrap();
    assert_eq!(g.kvs()[0].value(), b"19");
    assert_eq!(g.kvs()[0].version(), 20);
    let g = c
        .get("d", Some(GetOptions::new().with_revision(15)))
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"13");
    let p = c.put("d", "x", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 22);
}

#[tokio::test]
async fn snapshot_stream_is_padded_and_checksummed() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(format!("snap/{i:03}"), vec![b'x'; 3000], None)
            .await
            .unwrap();
    }
    let mut stream = c.snapshot().await.unwrap();
    let mut data = Vec::new();
    let mut last_remaining = u64::MAX;
    let mut messages = 0;
    loop {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("snapshot stalled")
            .unwrap();
        let Some(m) = m else { break };
        messages += 1;
        data.extend_from_slice(m.blob());
        assert!(
            m.remaining_bytes() <= last_remaining,
            "remaining_bytes never grows"
        );
        last_remaining = m.remaining_bytes();
    }
    assert_eq!(last_remaining, 0, "the last message has nothing remaining");
    assert!(messages >= 2, "150 KB arrives in several messages");
    assert!(
        data.len() > 150_000,
        "snapshot holds the data: {} bytes",
        data.len()
    );
    assert_eq!(data.len() % 512, 32, "length {}", data.len());
    let (body, sum) = data.split_at(data.len() - 32);
    assert_eq!(sum, Sha256::digest(body).as_slice(), "trailing SHA-256");
    // The server keeps serving while and after streaming.
    let p = c.put("after", "1", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 52);
}

#[tokio::test]
async fn move_leader_to_self_and_unknown() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let st = c.status().await.unwrap();
    let me = st.header().unwrap().member_id();
    c.move_leader(me).await.unwrap();
    assert_eq!(c.status().await.unwrap().leader(), me);
    assert_err(
        c.move_leader(me.wrapping_add(1)).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    assert_err(
        c.move_leader(0).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    // Still the leader and serving.
    c.put("k", "v", None).await.unwrap();
    assert_eq!(c.status().await.unwrap().leader(), me);
}

#[tokio::test]
async fn member_list_has_one_member_with_advertised_url() {
    let s = Strata::start(&["--advertise-client-urls", "http://10.1.2.3:23790"]);
    let mut c = s.client().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    let r = c.member_list().await.unwrap();
    let ms = r.members();
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    assert_eq!(m.name(), "s1");
    assert_eq!(m.id(), me);
    assert_eq!(m.client_urls(), ["http://10.1.2.3:23790".to_string()]);
    assert!(!m.peer_urls().is_empty());
    assert!(!m.is_learner());
    assert_eq!(r.header().unwrap().member_id(), me);
}

#[tokio::test]
async fn member_list_default_advertises_the_bound_url() {
    // The harness listens on port 0 and sets no --advertise-client-urls:
    // the advertised URL must be the one clients actually reach.
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let r = c.member_list().await.unwrap();
    assert_eq!(r.members().len(), 1);
    let m = &r.members()[0];
    assert_eq!(m.name(), "s1");
    assert_eq!(m.client_urls(), std::slice::from_ref(&s.endpoint));
    // And that URL works.
    let mut c2 = etcd_client::Client::connect(m.client_urls(), None)
        .await
        .unwrap();
    c2.put("via-advertised", "1", None).await.unwrap();
}
