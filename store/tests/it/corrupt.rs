//! Corruption detection across members: the initial check
//! (`--experimental-initial-corrupt-check`) and the leader's periodic check
//! (`--corrupt-check-time`). A member is made to diverge silently with the
//! `strata::apply::put_value` failpoint (cargo feature `failpoints`; those
//! tests run with `cargo test -p store --features failpoints --test it
//! corrupt`). The healthy-cluster test runs in every build.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmType, GetOptions};

use crate::harness::{put_rev, Cluster};

/// Wait until member `c` has applied `rev` (serializable reads are local).
async fn wait_rev(c: &mut etcd_client::Client, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = c
            .get("x", Some(GetOptions::new().with_serializable()))
            .await
        {
            if r.header().unwrap().revision() >= rev {
                return;
            }
        }
        assert!(Instant::now() < deadline, "member did not reach {rev}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every member with both checks on starts, serves, and passes the
/// periodic check and (after a restart) the initial check.
#[tokio::test]
async fn healthy_cluster_with_checks_starts_serves_and_restarts() {
    let mut cl = Cluster::start_with(
        3,
        &[
            "--experimental-initial-corrupt-check",
            "--corrupt-check-time",
            "300ms",
        ],
    );
    let mut c = cl.client(0).await;
    for i in 0..50 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.compact(20, None).await.unwrap();
    let rev = put_rev(&mut c, "last", "x").await;
    let leader = cl.leader().await;
    // Several periodic passes, all clean.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cl
        .node(leader)
        .log_text()
        .contains("\"number-of-peers-checked\":2")
    {
        assert!(
            Instant::now() < deadline,
            "no periodic check compared with both peers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = crate::membership::http_get(&cl.endpoint(leader), "/metrics");
    assert!(
        metrics.contains("strata_corruption_checks_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"mismatch\""), "{metrics}");
    assert!(metrics.contains("etcd_mvcc_hash_rev_duration_seconds_count"));
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 0, "an alarm was raised");
    for i in 0..3 {
        let mut m = cl.client(i).await;
        wait_rev(&mut m, rev).await;
        assert_eq!(
            m.hash_kv(rev).await.unwrap().hash(),
            c.hash_kv(rev).await.unwrap().hash()
        );
    }
    // A restarted member passes the initial check and serves again.
    for i in 0..3 {
        cl.node(i).terminate();
        cl.node(i).restart();
        let log = cl.node(i).log_text();
        assert!(log.contains("starting initial corruption check"), "{log}");
        assert!(
            log.contains("initial corruption checking passed; no corruption"),
            "{log}"
        );
    }
    // All members down, then restarted together: each checks whichever
    // peers already answer, none blocks the others.
    for n in cl.nodes.iter_mut() {
        n.as_mut().unwrap().terminate();
    }
    std::thread::scope(|sc| {
        for n in cl.nodes.iter_mut() {
            sc.spawn(move || n.as_mut().unwrap().restart());
        }
    });
    let mut c = cl.client(1).await;
    let r = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 50);
    c.put("after", "restart", None).await.unwrap();
}

/// The peer service's HashKv (what the checks ask) answers as the client
/// HashKV does, with etcd's errors, and refuses another cluster's members.
#[tokio::test]
async fn peer_hash_kv_matches_client_hash_kv_and_checks_the_cluster_id() {
    use proto::etcdserverpb::HashKvRequest;
    use proto::raftpb::raft_client::RaftClient;

    let cl = Cluster::start(1);
    let mut c = cl.client(0).await;
    for i in 0..10 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    c.compact(5, None).await.unwrap();
    let rev = put_rev(&mut c, "k", "v").await;
    let cluster_id = c.status().await.unwrap().header().unwrap().cluster_id();
    let mut peer = RaftClient::connect(format!("http://127.0.0.1:{}", cl.ports[0]))
        .await
        .unwrap();
    let ask = |rev: i64, cluster: Option<u64>| {
        let mut r = tonic::Request::new(HashKvRequest { revision: rev });
        if let Some(id) = cluster {
            r.metadata_mut()
                .insert("x-etcd-cluster-id", format!("{id:x}").parse().unwrap());
        }
        r
    };
    for r in [rev, rev - 1, 0] {
        let want = c.hash_kv(r).await.unwrap();
        let got = peer
            .hash_kv(ask(r, Some(cluster_id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.hash, want.hash(), "revision {r}");
        assert_eq!(got.compact_revision, want.compact_version());
        assert_eq!(got.header.unwrap().revision, rev);
    }
    let e = peer.hash_kv(ask(rev + 1, None)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    let e = peer.hash_kv(ask(3, None)).await.unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = peer
        .hash_kv(ask(rev, Some(cluster_id ^ 1)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: cluster ID mismatch"
        )
    );
}

#[cfg(feature = "failpoints")]
mod diverged {
    use super::*;
    use crate::harness::{initial_cluster, peer_flags, Strata};
    use etcd_client::AlarmOptions;

    const FAILPOINT: (&str, &str) = ("FAILPOINTS", "strata::apply::put_value=return(bad/)");

    /// Three members; member 2 stores a different value for every put of a
    /// key under `bad/`.
    fn diverging_cluster(dir: &std::path::Path, extra: &[&str]) -> Vec<Strata> {
        let (ports, initial) = initial_cluster(3);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let mut flags = peer_flags(ports[i], &initial, "it-corrupt");
                flags.extend(extra.iter().map(|s| s.to_string()));
                let d = dir.join(format!("n{i}"));
                std::thread::spawn(move || {
                    let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
                    let env: &[(&str, &str)] = if i == 2 { &[FAILPOINT] } else { &[] };
                    Strata::try_start_env(&d, &format!("n{i}"), &f, env)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("member did not start: {e}"))
            })
            .collect()
    }

    /// Write through member 0 and check that member 2 really diverged (and
    /// that the others did not): the failpoint works, and nothing else
    /// (CRC, raft) noticed.
    async fn diverge(nodes: &[Strata]) -> i64 {
        let mut c = nodes[0].client().await;
        c.put("good", "1", None).await.unwrap();
        let rev = put_rev(&mut c, "bad/k", "v").await;
        let mut hashes = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut m = n.client().await;
            wait_rev(&mut m, rev).await;
            let v = m
                .get("bad/k", Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            let want: &[u8] = if i == 2 { b"v-diverged" } else { b"v" };
            assert_eq!(v.kvs()[0].value(), want, "member {i}");
            hashes.push(m.hash_kv(rev).await.unwrap().hash());
        }
        assert_eq!(hashes[0], hashes[1]);
        assert_ne!(hashes[0], hashes[2]);
        rev
    }

    #[tokio::test]
    async fn initial_check_refuses_a_diverged_member() {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = diverging_cluster(tmp.path(), &[]);
        diverge(&nodes).await;
        let id2 = {
            let mut c = nodes[2].client().await;
            c.status().await.unwrap().header().unwrap().member_id()
        };
        // Restarted with the check, the diverged member (whose bug replays
        // with its log) refuses to start.
        nodes[2].terminate();
        let mut flags = nodes[2].extra_args();
        flags.push("--experimental-initial-corrupt-check".into());
        let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        let d = nodes[2].data_dir.clone();
        let started = Instant::now();
        let err = match Strata::try_start_env(&d, "n2", &f, &[FAILPOINT]) {
            Ok(_) => panic!("the diverged member started"),
            Err(log) => log,
        };
        assert!(started.elapsed() < Duration::from_secs(30));
        let want = format!("{id2:x} found data inconsistency with peers");
        assert!(err.contains(&want), "{err}");
        assert!(
            err.contains("found different hash values from remote peer"),
            "{err}"
        );
        for field in [
            "local-member-hash",
            "remote-peer-id",
            "remote-peer-hash",
            "remote-peer-compact-revision",
        ] {
            assert!(err.contains(field), "{field} missing: {err}");
        }
        // The same check with the InitialCorruptCheck feature gate.
        let mut flags = nodes[2].extra_args();
        flags.push("--feature-gates=InitialCorruptCheck=true".into());
        let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        assert!(Strata::try_start_env(&d, "n2", &f, &[FAILPOINT]).is_err());

        // A healthy member restarted with the check passes (the diverged
        // one, down, is skipped) and serves.
        nodes[1].terminate();
        let mut flags = nodes[1].extra_args();
        flags.push("--experimental-initial-corrupt-check".into());
        let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        let d1 = nodes[1].data_dir.clone();
        let n1 = Strata::try_start_env(&d1, "n1", &f, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(n1
            .log_text()
            .contains("initial corruption checking passed; no corruption"));
        let mut c = n1.client().await;
        c.put("still", "writable", None).await.unwrap();
    }

    #[tokio::test]
    async fn periodic_check_raises_corrupt_and_writes_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let nodes = diverging_cluster(tmp.path(), &["--experimental-corrupt-check-time", "500ms"]);
        // Let a healthy member lead, so the alarm names the diverged one.
        let mut ids = Vec::new();
        for n in &nodes {
            let mut c = n.client().await;
            ids.push(c.status().await.unwrap().header().unwrap().member_id());
        }
        let mut c0 = nodes[0].client().await;
        let leader = c0.status().await.unwrap().leader();
        if leader == ids[2] {
            let mut c2 = nodes[2].client().await;
            c2.move_leader(ids[0]).await.unwrap();
        }
        // No alarm while the members agree.
        c0.put("fine", "1", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a = c0
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert_eq!(a.alarms().len(), 0, "an alarm was raised");

        diverge(&nodes).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let alarm = loop {
            let a = c0
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await
                .unwrap();
            if let Some(m) = a.alarms().first() {
                break (m.member_id(), m.alarm());
            }
            assert!(Instant::now() < deadline, "no CORRUPT alarm raised");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let leader = c0.status().await.unwrap().leader();
        assert_ne!(leader, ids[2], "leadership moved to the diverged member");
        assert_eq!(alarm, (ids[2], AlarmType::Corrupt));
        let li = ids.iter().position(|i| *i == leader).unwrap();
        let metrics = crate::membership::http_get(&nodes[li].endpoint, "/metrics");
        assert!(
            metrics.contains("strata_corruption_checks_total{result=\"mismatch\"}"),
            "{metrics}"
        );
        // Every member refuses writes with etcd's error, and reports the alarm.
        for n in &nodes {
            let mut c = n.client().await;
            crate::harness::assert_err(
                c.put("after", "x", None).await,
                tonic::Code::DataLoss,
                "etcdserver: corrupt cluster",
            );
            let st = c.status().await.unwrap();
            assert_eq!(st.errors(), [format!("memberID:{} alarm:CORRUPT ", ids[2])],);
        }
        // As etcd: compaction and lease grants are refused too, reads work.
        crate::harness::assert_err(
            c0.compact(2, None).await,
            tonic::Code::DataLoss,
            "etcdserver: corrupt cluster",
        );
        crate::harness::assert_err(
            c0.lease_grant(60, None).await,
            tonic::Code::DataLoss,
            "etcdserver: corrupt cluster",
        );
        let g = c0.get("good", None).await.unwrap();
        assert_eq!(g.kvs()[0].value(), b"1");
        let a = c0
            .alarm(
                AlarmAction::Get,
                AlarmType::Corrupt,
                Some(AlarmOptions::new()),
            )
            .await
            .unwrap();
        assert_eq!(a.alarms().len(), 1);
    }
}
