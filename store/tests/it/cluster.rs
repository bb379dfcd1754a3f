//! Multi-member clusters: real `strata` processes on 127.0.0.1 talking raft
//! to each other over the peer transport (launched by the harness's
//! [`Cluster`]): replication, failover, bootstrap checks, lease forwarding
//! and leadership transfer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::harness::{
    current_rev, initial_cluster, peer_flags, put_rev, start_all, Cluster, Strata,
};

async fn hashkv_all(c: &Cluster) -> Vec<u32> {
    let mut out = Vec::new();
    for n in c.nodes.iter().flatten() {
        let mut cl = n.client().await;
        // Make this member current first: a linearizable read waits for apply.
        cl.get("sync", None).await.unwrap();
        let rev = current_rev(&mut cl).await;
        out.push(cl.hash_kv(rev).await.unwrap().hash());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_replicate_and_serve_from_any_member() {
    let c = Cluster::start(3);
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = c.client(follower).await;
    // A write through a follower is forwarded to the leader.
    let put = f.put("k", "v1", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    for i in 0..3 {
        let mut ci = c.client(i).await;
        let r = ci.get("k", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"v1", "member {i}");
        assert_eq!(r.kvs()[0].mod_revision(), rev, "member {i}");
    }
    // Watchers on different members see the same events in the same order.
    let mut w0 = c.client(0).await;
    let mut w2 = c.client(2).await;
    let mut s0 = w0
        .watch("w", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut s2 = w2
        .watch("w", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    for i in 0..20 {
        let mut ci = c.client(i % 3).await;
        ci.put(format!("w{i:02}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    async fn collect(s: &mut etcd_client::WatchStream) -> Vec<(Vec<u8>, i64)> {
        let mut got = Vec::new();
        while got.len() < 20 {
            let r = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .expect("watch stalled")
                .unwrap()
                .unwrap();
            for e in r.events() {
                let kv = e.kv().unwrap();
                got.push((kv.key().to_vec(), kv.mod_revision()));
            }
        }
        got
    }
    let e0 = collect(&mut s0).await;
    let e2 = collect(&mut s2).await;
    assert_eq!(e0, e2);
    let hashes = hashkv_all(&c).await;
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV differs: {hashes:?}"
    );
    // Every member publishes its client URLs through raft, so any member
    // lists all of them.
    let endpoints: Vec<String> = c
        .nodes
        .iter()
        .flatten()
        .map(|n| n.endpoint.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = f.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);
        let mut urls: Vec<String> = members
            .members()
            .iter()
            .flat_map(|m| m.client_urls().to_vec())
            .collect();
        urls.sort();
        let mut want = endpoints.clone();
        want.sort();
        if urls == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client URLs never published: {urls:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_under_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let leader = c.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let endpoints: Vec<String> = survivors
        .iter()
        .map(|i| c.nodes[*i].as_ref().unwrap().endpoint.clone())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let ep = endpoints[w % endpoints.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = crate::harness::connect(&ep).await;
            let mut acked = BTreeMap::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = format!("load/{w}/{i:05}");
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(3), cl.put(k.clone(), "x", None)).await
                {
                    acked.insert(k, r.header().unwrap().revision());
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    c.nodes[leader].as_mut().unwrap().kill();
    // A new leader appears and writes resume.
    let mut probe = crate::harness::connect(&endpoints[0]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), probe.put("probe", "1", None)).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the leader was killed"
        );
    }
    eprintln!(
        "failover: first write {:?} after the leader kill",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 10,
        "too few writes acknowledged: {}",
        acked.len()
    );
    // Bring the old leader back: it catches up; nothing acknowledged is lost anywhere.
    c.nodes[leader].as_mut().unwrap().restart();
    for i in 0..3 {
        let mut cl = c.client(i).await;
        let all = cl
            .get("load/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let have: BTreeMap<String, i64> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        for (k, rev) in &acked {
            assert_eq!(
                have.get(k),
                Some(rev),
                "member {i} lost acknowledged write {k}"
            );
        }
    }
    let hashes = hashkv_all(&c).await;
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV differs: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_with_wrong_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ports, initial) = initial_cluster(3);
    // The two members with the right token form a quorum ...
    let specs = (0..2)
        .map(|i| (format!("n{i}"), peer_flags(ports[i], &initial, "good")))
        .collect();
    let good: Vec<Strata> = start_all(tmp.path(), specs)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("member did not start: {e}")))
        .collect();
    // ... and the third, started with another token, is refused by them.
    let mut bad = std::process::Command::new(crate::harness::strata_bin())
        .args(["--name", "n2", "--data-dir"])
        .arg(tmp.path().join("n2"))
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(peer_flags(ports[2], &initial, "other-cluster"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut c = good[0].client().await;
    c.put("k", "v", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs: String = good.iter().map(|s| s.log_text()).collect();
        if logs.contains("another cluster") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the good members never logged the refused member"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cluster keeps working with its two members.
    c.put("k", "v2", None).await.unwrap();
    let _ = bad.kill();
    let _ = bad.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_keepalive_through_a_follower_reaches_the_leader() {
    let c = Cluster::start(3);
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = c.client(follower).await;
    let lease = f.lease_grant(2, None).await.unwrap();
    let id = lease.id();
    f.put(
        "leased",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await
    .unwrap();
    let (mut keeper, mut responses) = f.lease_keep_alive(id).await.unwrap();
    // Keep it alive through the follower for longer than its TTL.
    for _ in 0..8 {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("keepalive response")
            .unwrap()
            .unwrap();
        assert_eq!(r.id(), id);
        assert!(
            r.ttl() > 0,
            "the follower forwarded the renewal to the leader"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = f.get("leased", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1, "the kept-alive lease did not expire");
    // TimeToLive on the follower reports the leader's clock (etcd forwards
    // it), not a countdown from the grant that ignores renewals.
    let t = f.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(t.granted_ttl(), 2);
    assert!(
        t.ttl() >= 1,
        "a kept-alive lease has time left: {}",
        t.ttl()
    );
    // An unknown lease answers TTL 0 through a follower too (etcd-client
    // turns a first answer of TTL 0 into "lease not found").
    let e = match f.lease_keep_alive(0x7777).await {
        Ok(_) => panic!("an unknown lease must not be renewed"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("lease not found"), "{e}");
    // Without keepalives the leader expires it and every member sees the key go.
    drop(keeper);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f.get("leased", None).await.unwrap().kvs().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_leadership_to_the_target() {
    let c = Cluster::start(3);
    let leader = c.leader().await;
    let target = (leader + 2) % 3;
    let target_id = {
        let mut t = c.client(target).await;
        t.status().await.unwrap().header().unwrap().member_id()
    };
    // Only the leader can move leadership.
    let mut not_leader = c.client((leader + 1) % 3).await;
    let e = not_leader.move_leader(target_id).await.unwrap_err();
    assert!(e.to_string().contains("etcdserver: not leader"), "{e}");
    let mut l = c.client(leader).await;
    let e = l.move_leader(0xdead).await.unwrap_err();
    assert!(
        e.to_string().contains("etcdserver: bad leader transferee"),
        "{e}"
    );
    l.move_leader(target_id).await.unwrap();
    assert_eq!(c.leader().await, target, "leadership moved");
    let mut t = c.client(target).await;
    let st = t.status().await.unwrap();
    assert_eq!(st.leader(), target_id);
    // The cluster keeps serving writes through the old leader.
    l.put("after-move", "1", None).await.unwrap();
}

/// Send `sig` (e.g. "STOP", "CONT") to a member process this test started.
fn signal(s: &Strata, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(s.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", s.child.id());
}

/// The member ID `i` reports.
async fn member_id(c: &Cluster, i: usize) -> u64 {
    let mut cl = c.client(i).await;
    cl.status().await.unwrap().header().unwrap().member_id()
}

/// Wait until one of `among` reports itself leader, other than `not`;
/// never talks to members outside `among` (they may be stopped).
async fn leader_among(c: &Cluster, among: &[usize], not: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for &i in among {
            let mut cl = c.client(i).await;
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), cl.status()).await {
                let me = s.header().unwrap().member_id();
                if s.leader() == me && me != not {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no new leader among {among:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A put that retries (bounded) while the cluster elects a leader.
async fn put_eventually(cl: &mut Client, k: &str, v: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), cl.put(k, v, None)).await {
            Ok(Ok(r)) => return r.header().unwrap().revision(),
            other => assert!(
                Instant::now() < deadline,
                "put {k} never succeeded: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hammer `endpoint` with linearizable reads of `key` from several clients
/// for `window`: every read must fail (or time out) or return `want`. Returns
/// how many reads succeeded.
async fn linearizable_reads_never_stale(
    clients: Vec<Client>,
    key: &'static str,
    want: &'static [u8],
    window: Duration,
) -> usize {
    let until = Instant::now() + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut cl| {
            tokio::spawn(async move {
                let mut ok = 0;
                while Instant::now() < until {
                    if let Ok(Ok(r)) =
                        tokio::time::timeout(Duration::from_millis(700), cl.get(key, None)).await
                    {
                        let got = r.kvs().first().map(|kv| kv.value().to_vec());
                        assert_eq!(
                            got.as_deref(),
                            Some(want),
                            "a linearizable read returned stale data"
                        );
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

async fn clients_to(endpoint: &str, n: usize) -> Vec<Client> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(crate::harness::connect(endpoint).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumed_old_leader_never_serves_a_stale_linearizable_read() {
    let c = Cluster::start(3);
    let old = c.leader().await;
    let old_id = member_id(&c, old).await;
    let mut l = c.client(old).await;
    l.put("k", "old", None).await.unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    for &i in &others {
        let mut cl = c.client(i).await;
        assert_eq!(cl.get("k", None).await.unwrap().kvs()[0].value(), b"old");
    }
    // Connections to the old leader, opened while it still runs.
    let ep = c.nodes[old].as_ref().unwrap().endpoint.clone();
    let readers = clients_to(&ep, 4).await;
    let mut serializable = crate::harness::connect(&ep).await;
    signal(c.nodes[old].as_ref().unwrap(), "STOP");
    let new = leader_among(&c, &others, old_id).await;
    let mut n = c.client(new).await;
    put_eventually(&mut n, "k", "new").await;
    signal(c.nodes[old].as_ref().unwrap(), "CONT");
    let ok = linearizable_reads_never_stale(readers, "k", b"new", Duration::from_secs(2)).await;
    // A serializable read may still see the old value; nothing is asserted.
    let s = tokio::time::timeout(
        Duration::from_secs(1),
        serializable.get("k", Some(GetOptions::new().with_serializable())),
    )
    .await;
    eprintln!(
        "old leader: {ok} linearizable reads succeeded in the window; serializable read: {:?}",
        s.ok()
            .and_then(|r| r.ok())
            .map(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
    );
    // The old leader rejoins as a follower and serves the new value.
    let mut cl = c.client(old).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), cl.get("k", None)).await {
            assert_eq!(r.kvs()[0].value(), b"new");
            break;
        }
        assert!(Instant::now() < deadline, "the old leader never recovered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumed_follower_never_serves_a_stale_linearizable_read() {
    let c = Cluster::start(3);
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    let mut l = c.client(leader).await;
    l.put("k", "old", None).await.unwrap();
    let mut fc = c.client(f).await;
    assert_eq!(fc.get("k", None).await.unwrap().kvs()[0].value(), b"old");
    let ep = c.nodes[f].as_ref().unwrap().endpoint.clone();
    let readers = clients_to(&ep, 4).await;
    signal(c.nodes[f].as_ref().unwrap(), "STOP");
    // The leader and the other follower commit without it.
    for i in 0..20 {
        l.put(format!("fill{i}"), "x", None).await.unwrap();
    }
    l.put("k", "new", None).await.unwrap();
    signal(c.nodes[f].as_ref().unwrap(), "CONT");
    let ok = linearizable_reads_never_stale(readers, "k", b"new", Duration::from_secs(2)).await;
    assert!(
        ok > 0,
        "no linearizable read on the resumed follower succeeded"
    );
    eprintln!("resumed follower: {ok} linearizable reads, all new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_survive_losing_two_including_the_leader() {
    let mut c = Cluster::start(5);
    for i in 0..5 {
        let mut cl = c.client(i).await;
        cl.put(format!("via{i}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    let leader = c.leader().await;
    let other = (leader + 1) % 5;
    // Kill -9 a minority: the leader and one follower.
    c.nodes[leader].take().unwrap().kill();
    c.nodes[other].take().unwrap().kill();
    let survivors: Vec<usize> = (0..5).filter(|i| c.nodes[*i].is_some()).collect();
    for &i in &survivors {
        let mut cl = c.client(i).await;
        put_eventually(&mut cl, &format!("after{i}"), "y").await;
    }
    for &i in &survivors {
        let mut cl = c.client(i).await;
        let r = cl
            .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
            .await
            .unwrap();
        let keys: Vec<String> = r
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        for k in (0..5)
            .map(|j| format!("via{j}"))
            .chain(survivors.iter().map(|j| format!("after{j}")))
        {
            assert!(keys.contains(&k), "member {i} lacks {k}: {keys:?}");
        }
    }
    let hashes = hashkv_all(&c).await;
    assert_eq!(hashes.len(), 3);
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV differs: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seven_members_serve_one_write_from_every_member() {
    let c = Cluster::start(7);
    let mut w = c.client(3).await;
    let rev = put_rev(&mut w, "seven", "7").await;
    for i in 0..7 {
        let mut cl = c.client(i).await;
        let r = cl.get("seven", None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "member {i}");
        assert_eq!(r.kvs()[0].value(), b"7", "member {i}");
        assert_eq!(r.kvs()[0].mod_revision(), rev, "member {i}");
    }
}

/// Grant a `ttl`-second lease through the leader of `c`; returns (leader, id).
async fn grant_via_leader(c: &Cluster, ttl: i64) -> (usize, i64) {
    let leader = c.leader().await;
    let mut l = c.client(leader).await;
    let id = l.lease_grant(ttl, None).await.unwrap().id();
    l.put(
        "leased",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await
    .unwrap();
    (leader, id)
}

async fn ttl_on(c: &Cluster, i: usize, id: i64) -> i64 {
    let mut cl = c.client(i).await;
    let r = cl.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(r.granted_ttl(), 20);
    r.ttl()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_checkpoints_carry_the_remaining_ttl_to_a_new_leader() {
    // Two clusters side by side: one checkpointing every second, one with
    // etcd's default (no checkpoints: a new leader grants a full TTL).
    let with = std::thread::spawn(|| {
        Cluster::start_with(
            3,
            &[
                "--experimental-enable-lease-checkpoint",
                "--experimental-lease-checkpoint-interval",
                "1s",
            ],
        )
    });
    let mut off = Cluster::start(3);
    let mut on = with.join().unwrap();
    let (on_leader, on_id) = grant_via_leader(&on, 20).await;
    let (off_leader, off_id) = grant_via_leader(&off, 20).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    on.nodes[on_leader].take().unwrap().kill();
    off.nodes[off_leader].take().unwrap().kill();
    let on_new = on.leader().await;
    let off_new = off.leader().await;
    let on_ttl = ttl_on(&on, on_new, on_id).await;
    let off_ttl = ttl_on(&off, off_new, off_id).await;
    eprintln!("after failover: TTL {on_ttl} with checkpoints, {off_ttl} without");
    assert!(
        (5..=16).contains(&on_ttl),
        "the new leader continued the checkpointed remaining TTL: {on_ttl}"
    );
    assert!(
        off_ttl >= 17,
        "without checkpoints a new leader grants a full TTL: {off_ttl}"
    );
    // A KeepAlive renews to the full TTL (and clears the checkpoint);
    // TimeToLive on a follower reports the renewed lease too.
    let mut l = on.client(on_new).await;
    let (mut keeper, mut responses) = l.lease_keep_alive(on_id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("keepalive response")
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl(), 20);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let follower = (0..3)
        .find(|i| *i != on_new && on.nodes[*i].is_some())
        .unwrap();
    let f_ttl = ttl_on(&on, follower, on_id).await;
    assert!(f_ttl >= 17, "the follower reports the renewal: {f_ttl}");
    let mut f = on.client(follower).await;
    assert_eq!(f.get("leased", None).await.unwrap().kvs().len(), 1);
}

/// Linearizable reads through every member at once: each member's
/// ReadIndex rounds reach the leader's pending-read table (followers
/// forward theirs), where raft-rs drops a round whose context is already
/// pending. Contexts used to be a bare per-member counter, so the leader's
/// round n and a follower's round n collided and the dropped one was
/// re-issued after 300 ms (counted in etcd_server_slow_read_indexes_total).
/// No round may need a retry in a healthy cluster. A round is re-issued
/// after 3 heartbeat intervals, so the cluster runs with 500 ms ones (a
/// retry after 1.5 s; with the harness's 50 ms, a round merely slowed by a
/// loaded machine was re-issued too). Even 1.5 s is reached now and then
/// with the whole suite beside this test (debug builds of the servers), so
/// a burst of reads with a retry gets one more burst: colliding contexts
/// cause retries in every burst of 300 reads per client (both bursts
/// had some in 6 of 6 runs before the fix), a slow machine only now and
/// then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_through_every_member_need_no_readindex_retry() {
    let mut cl = Cluster::start_with(
        3,
        &["--heartbeat-interval", "500", "--election-timeout", "2500"],
    );
    cl.leader().await;
    let mut c = cl.client(0).await;
    c.put("k", "v", None).await.unwrap();
    let endpoints: Vec<String> = (0..3).map(|i| cl.node(i).endpoint.clone()).collect();
    let retried = || -> Vec<u64> {
        endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let m = crate::membership::http_get(ep, "/metrics");
                m.lines()
                    .find_map(|l| l.strip_prefix("etcd_server_slow_read_indexes_total "))
                    .unwrap_or_else(|| panic!("member {i} exports no slow read counter"))
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let mut bursts = Vec::new();
    for _ in 0..2 {
        let before = retried();
        let mut tasks = Vec::new();
        for i in 0..3 {
            for _ in 0..8 {
                let mut c = cl.client(i).await;
                tasks.push(tokio::spawn(async move {
                    for _ in 0..300 {
                        c.get("k", None).await.unwrap();
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let after = retried();
        let burst: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        if burst.iter().all(|n| *n == 0) {
            return;
        }
        bursts.push(burst);
    }
    panic!("members re-issued ReadIndex rounds in both bursts: {bursts:?}");
}
