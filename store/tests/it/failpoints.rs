//! Fault injection driven over HTTP, as the Jepsen harness drives it (cargo
//! feature `failpoints`; run with `cargo test -p store --features
//! failpoints --test it failpoints`): the `/debug/failpoints` round trip and
//! what each failpoint's actions do, the skewable lease clock
//! (`/debug/clock`), and `/debug/powerfail` (lose every unsynced write,
//! abort): it must never lose an acknowledged write, on one member or in a
//! 3-member cluster, while a disk that lies about fsync (a failpoint) must
//! lose some, or the simulation proves nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};

use crate::harness::{connect, current_rev, put_rev, Cluster, Strata};

/// One plain HTTP/1.1 request to a member's client URL: (status, body).
/// Status 0 when the connection broke before an answer (powerfail).
fn http(endpoint: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() || out.is_empty() {
        return (0, String::new());
    }
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Set failpoint `name` to `actions` on the member at `endpoint`.
fn set_failpoint(endpoint: &str, name: &str, actions: &str) {
    let (code, body) = http(
        endpoint,
        "PUT",
        &format!("/debug/failpoints/{name}"),
        actions,
    );
    assert_eq!(code, 204, "{body}");
}

fn clear_failpoint(endpoint: &str, name: &str) {
    let (code, body) = http(endpoint, "DELETE", &format!("/debug/failpoints/{name}"), "");
    assert_eq!(code, 204, "{body}");
}

#[tokio::test]
async fn http_control_round_trip_and_actions() {
    let s = Strata::start(&[]);
    let ep = s.endpoint.clone();
    let mut c = s.client().await;
    let (code, list) = http(&ep, "GET", "/debug/failpoints", "");
    assert_eq!((code, list.as_str()), (200, ""));
    set_failpoint(&ep, "strata::watch::before_send", "25%2*sleep(10)");
    set_failpoint(&ep, "strata::snapshot::save", "return");
    let (code, list) = http(&ep, "GET", "/debug/failpoints", "");
    assert_eq!(code, 200);
    assert_eq!(
        list,
        "strata::snapshot::save=return\nstrata::watch::before_send=25%2*sleep(10)\n"
    );
    let (code, one) = http(&ep, "GET", "/debug/failpoints/strata::snapshot::save", "");
    assert_eq!((code, one.as_str()), (200, "return\n"));
    let (code, body) = http(
        &ep,
        "PUT",
        "/debug/failpoints/strata::snapshot::save",
        "bogus(1",
    );
    assert_eq!(code, 400, "{body}");
    clear_failpoint(&ep, "strata::snapshot::save");
    clear_failpoint(&ep, "strata::watch::before_send");
    let (code, list) = http(&ep, "GET", "/debug/failpoints", "");
    assert_eq!((code, list.as_str()), (200, ""));
    let (code, _) = http(&ep, "GET", "/debug/failpoints/strata::snapshot::save", "");
    assert_eq!(code, 404);
    // The usual routes still answer next to these.
    assert_eq!(http(&ep, "GET", "/health", "").0, 200);

    // sleep before the raft write: a slow disk delays the write's ack.
    set_failpoint(&ep, "strata::raft::before_persist", "1*sleep(400)");
    let t = Instant::now();
    c.put("slow", "1", None).await.unwrap();
    let slow = t.elapsed();
    clear_failpoint(&ep, "strata::raft::before_persist");
    assert!(slow >= Duration::from_millis(400), "{slow:?}");

    // return before apply: applied, but the client is told it timed out
    // (an indefinite failure).
    set_failpoint(&ep, "strata::apply::before_apply", "1*return");
    let e = c.put("indefinite", "1", None).await.unwrap_err();
    assert!(e.to_string().contains("request timed out"), "{e}");
    clear_failpoint(&ep, "strata::apply::before_apply");
    let got = c.get("indefinite", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1", "the write took effect");

    // pause before apply: writes wait until the failpoint is deleted.
    set_failpoint(&ep, "strata::apply::before_apply", "pause");
    let mut c2 = c.clone();
    let put = tokio::spawn(async move { c2.put("paused", "1", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!put.is_finished(), "apply is paused");
    let ep2 = ep.clone();
    tokio::task::spawn_blocking(move || clear_failpoint(&ep2, "strata::apply::before_apply"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the put completes once the pause is lifted")
        .unwrap()
        .unwrap();

    // The lease clock.
    let (code, body) = http(&ep, "GET", "/debug/clock", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert!(v["offset_ms"].as_f64().unwrap().abs() < 1.0, "{body}");
    assert_eq!(v["rate"], 1.0);
    let (code, body) = http(
        &ep,
        "PUT",
        "/debug/clock",
        r#"{"offset_ms": -1500, "rate": 2}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["offset_ms"].as_f64(), v["rate"].as_f64()),
        (Some(-1500.0), Some(2.0))
    );
    for bad in [r#"{"rate": -1}"#, r#"{"skew": 1}"#, "{}", "nope"] {
        let (code, body) = http(&ep, "PUT", "/debug/clock", bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
}

/// Put `n` keys `prefix{i}` and return key → value.
async fn fill(c: &mut Client, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}{i:03}"), format!("v{i}"));
        c.put(k.clone(), v.clone(), None).await.unwrap();
        m.insert(k, v);
    }
    m
}

async fn read_prefix(c: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn panic_after_persist_crashes_the_member_and_it_restarts_intact() {
    let mut s = Strata::start(&[]);
    let mut c = s.client().await;
    let want = fill(&mut c, "p/", 20).await;
    set_failpoint(&s.endpoint, "strata::raft::after_persist", "panic");
    // The write reaches the log, then the member dies before answering.
    assert!(c.put("p/durable", "x", None).await.is_err());
    let st = s.wait_exit();
    assert!(!st.success(), "{st:?}");
    assert!(
        s.log_text()
            .contains("failpoint strata::raft::after_persist panic"),
        "{}",
        s.log_text()
    );
    // The failpoint was set at runtime: a restart runs without it.
    s.restart();
    let mut c = s.client().await;
    let mut got = read_prefix(&mut c, "p/").await;
    // The entry was durable before the crash, and a single member's log is
    // the whole cluster's: it commits after the restart.
    assert_eq!(got.remove("p/durable").as_deref(), Some("x"));
    assert_eq!(got, want);
    c.put("p/after", "1", None).await.unwrap();
}

#[tokio::test]
async fn watch_send_return_ends_the_stream_and_a_resume_sees_no_gap() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let start = current_rev(&mut c).await + 1;
    let mut stream = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .unwrap();
    let mut puts = Vec::new();
    for i in 0..5 {
        puts.push(put_rev(&mut c, format!("w/{i}"), "v").await);
    }
    let mut seen: Vec<i64> = Vec::new();
    while seen.len() < 5 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events")
            .unwrap()
            .expect("stream open");
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    set_failpoint(&s.endpoint, "strata::watch::before_send", "1*return");
    for i in 5..10 {
        puts.push(put_rev(&mut c, format!("w/{i}"), "v").await);
    }
    // The next response is dropped and the stream ends with an error.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream must end")
        {
            Ok(Some(r)) => seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision())),
            Ok(None) => break "closed".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        ended.contains("strata::watch::before_send") || ended == "closed",
        "{ended}"
    );
    assert!(seen.len() < 10, "a response must have been dropped");
    clear_failpoint(&s.endpoint, "strata::watch::before_send");
    // Resume from the last revision received + 1, as a client does.
    let from = seen.last().unwrap() + 1;
    let mut stream = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .unwrap();
    while seen.len() < 10 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("resumed events")
            .unwrap()
            .expect("stream open");
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(seen, puts, "every event exactly once, in order");
}

#[tokio::test]
async fn clock_offset_expires_a_lease_early() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let granted = Instant::now();
    let lease = c.lease_grant(5, None).await.unwrap().id();
    c.put("l/k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let before = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(before >= 3, "{before}");
    // The lease clock jumps 4 s ahead: about 1 s is left.
    let (code, body) = http(&s.endpoint, "PUT", "/debug/clock", r#"{"offset_ms": 4000}"#);
    assert_eq!(code, 200, "{body}");
    let after = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(after <= 1, "TTL left after the jump: {after}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if c.get("l/k", None).await.unwrap().kvs().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = granted.elapsed();
    eprintln!("a 5 s lease with the lease clock 4 s ahead expired after {took:?}");
    // Well before its real TTL (the lease loop checks every 500 ms).
    assert!(took < Duration::from_millis(4500), "{took:?}");
    let e = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(e.ttl(), -1, "revoked");
}

/// Acknowledged puts of concurrent writers: key → (value, revision).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

/// Put fresh keys `pf/{task}/{n}` on `endpoints` until `stop` (errors are
/// indefinite: not recorded, retried with the next key).
async fn writer(endpoints: Vec<String>, task: usize, acked: Acked, stop: Arc<AtomicBool>) {
    let mut c = Client::connect(&endpoints, None).await.unwrap();
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (k, v) = (format!("pf/{task}/{n:06}"), format!("v{n}"));
        match tokio::time::timeout(Duration::from_secs(3), c.put(k.clone(), v.clone(), None)).await
        {
            Ok(Ok(r)) => {
                let rev = r.header().unwrap().revision();
                acked.lock().unwrap().insert(k, (v, rev));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Run 4 writers against `endpoints` until `powerfail` (called once at
/// least 200 puts were acknowledged) returns; the acknowledged puts.
async fn write_through_powerfail(
    endpoints: Vec<String>,
    powerfail: impl FnOnce() + Send + 'static,
) -> BTreeMap<String, (String, i64)> {
    let acked: Acked = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|t| tokio::spawn(writer(endpoints.clone(), t, acked.clone(), stop.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(powerfail).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let m = acked.lock().unwrap().clone();
    m
}

/// POST /debug/powerfail to `s` (it never answers) and reap the process.
fn powerfail(s: &mut Strata) {
    let (code, _) = http(&s.endpoint, "POST", "/debug/powerfail", "");
    assert_eq!(code, 0, "powerfail answered");
    let st = s.wait_exit();
    assert!(!st.success());
    assert!(
        s.log_text()
            .contains("powerfail: dropped every write not fsynced"),
        "{}",
        s.log_text()
    );
}

async fn missing(c: &mut Client, acked: &BTreeMap<String, (String, i64)>) -> Vec<String> {
    let got = read_prefix(c, "pf/").await;
    acked
        .iter()
        .filter(|(k, (v, _))| got.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn powerfail_loses_no_acknowledged_write_on_one_member() {
    let s = Arc::new(Mutex::new(Strata::start(&[])));
    let ep = s.lock().unwrap().endpoint.clone();
    let s2 = s.clone();
    let acked = write_through_powerfail(vec![ep], move || powerfail(&mut s2.lock().unwrap())).await;
    let mut s = Arc::try_unwrap(s).ok().unwrap().into_inner().unwrap();
    let log = s.log_text();
    let dropped = log
        .lines()
        .rev()
        .find(|l| l.contains("powerfail: dropped"))
        .unwrap()
        .to_string();
    eprintln!("{} acknowledged puts; {dropped}", acked.len());
    s.restart();
    let mut c = s.client().await;
    let lost = missing(&mut c, &acked).await;
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
    // Revisions went on from where the acknowledged writes left them.
    let max = acked.values().map(|(_, r)| *r).max().unwrap();
    assert!(current_rev(&mut c).await >= max);
    c.put("pf-after", "1", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn powerfail_with_a_disk_that_lies_about_fsync_loses_acknowledged_writes() {
    let mut s = Strata::start(&[]);
    let mut c = s.client().await;
    set_failpoint(&s.endpoint, "strata::raft::before_persist", "return");
    let want = fill(&mut c, "pf/lie/", 20).await;
    let acked: BTreeMap<String, (String, i64)> =
        want.into_iter().map(|(k, v)| (k, (v, 0))).collect();
    powerfail(&mut s);
    s.restart();
    let mut c = s.client().await;
    let lost = missing(&mut c, &acked).await;
    eprintln!(
        "lying fsync: {} of {} acknowledged puts lost",
        lost.len(),
        acked.len()
    );
    assert!(!lost.is_empty(), "the simulated power loss dropped nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn powerfail_of_the_leader_loses_no_acknowledged_write_and_members_agree() {
    let mut cl = Cluster::start(3);
    let leader = cl.leader().await;
    let eps: Vec<String> = (0..3).map(|i| cl.endpoint(i)).collect();
    let node = Arc::new(Mutex::new(cl.nodes[leader].take().unwrap()));
    let n2 = node.clone();
    let acked =
        write_through_powerfail(eps.clone(), move || powerfail(&mut n2.lock().unwrap())).await;
    let mut n = Arc::try_unwrap(node).ok().unwrap().into_inner().unwrap();
    // The others elect a new leader and go on; the old one rejoins.
    n.restart();
    cl.nodes[leader] = Some(n);
    let other = (leader + 1) % 3;
    let mut c = cl.client(other).await;
    c.put("pf-after", "1", None).await.unwrap();
    let lost = missing(&mut c, &acked).await;
    eprintln!(
        "{} acknowledged puts across a leader powerfail",
        acked.len()
    );
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
    // Every member reaches the same revision with the same HashKV.
    let rev = current_rev(&mut c).await;
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = connect(&cl.endpoint(i)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = m
                .get("\0", Some(GetOptions::new().with_serializable()))
                .await;
            if r.is_ok_and(|r| r.header().unwrap().revision() >= rev) {
                break;
            }
            assert!(Instant::now() < deadline, "member {i} never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hashes.push(m.hash_kv(rev).await.unwrap().hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

fn snap_files(s: &Strata) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.data_dir.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn snapshot_save_return_abandons_the_snapshot_and_a_restart_recovers() {
    let mut s = Strata::start(&["--snapshot-count", "10"]);
    let mut c = s.client().await;
    set_failpoint(&s.endpoint, "strata::snapshot::save", "return");
    let mut want = fill(&mut c, "s/", 30).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_text().contains("abandoned the snapshot") {
        assert!(Instant::now() < deadline, "no snapshot was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        snap_files(&s).iter().all(|f| !f.ends_with(".snap")),
        "{:?}",
        snap_files(&s)
    );
    clear_failpoint(&s.endpoint, "strata::snapshot::save");
    want.extend(fill(&mut c, "t/", 30).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !snap_files(&s).iter().any(|f| f.ends_with(".snap")) {
        assert!(Instant::now() < deadline, "no snapshot after clearing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill();
    s.restart();
    let mut c = s.client().await;
    let mut got = read_prefix(&mut c, "s/").await;
    got.extend(read_prefix(&mut c, "t/").await);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_send_return_fails_sends_and_raft_retries() {
    let mut cl = Cluster::start_with(
        3,
        &["--snapshot-count", "10", "--snapshot-catchup-entries", "0"],
    );
    let leader = cl.leader().await;
    let f = (leader + 1) % 3;
    cl.node(f).kill();
    let mut c = cl.client(leader).await;
    // Enough entries for several snapshots: the log the follower would
    // need is compacted away, so it can only catch up by a snapshot.
    let want = fill(&mut c, "ss/", 60).await;
    set_failpoint(
        &cl.endpoint(leader),
        "strata::snapshot::before_send",
        "2*return",
    );
    // The follower serves once the third attempt delivered a snapshot.
    cl.node(f).restart();
    let log = cl.node(leader).log_text();
    let failed = log
        .matches("failpoint strata::snapshot::before_send failed the send")
        .count();
    assert_eq!(failed, 2, "{log}");
    assert!(cl
        .node(f)
        .log_text()
        .contains("installed snapshot from the leader"));
    let mut m = cl.client(f).await;
    let got = read_prefix(&mut m, "ss/").await;
    assert_eq!(got, want);
}

/// A lease granted through a follower is applied there before the leader's
/// (lagging) apply thread has it; a keepalive sent right after, through the
/// other follower, is forwarded to the leader and must still find the lease
/// (the leader waits for its applied index to reach its commit index, as
/// etcd's waitAppliedIndex does), not answer TTL 0 ("requested lease not
/// found" in etcd's clients).
#[tokio::test]
async fn keepalive_right_after_a_grant_through_a_follower_finds_the_lease() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut via_a = cluster.client(followers[0]).await;
    let mut via_b = cluster.client(followers[1]).await;
    set_failpoint(
        &cluster.endpoint(leader),
        "strata::apply::before_apply",
        "sleep(300)",
    );
    for round in 0..3 {
        let id = via_a.lease_grant(30, None).await.unwrap().id();
        // Opening the stream sends the first keepalive and reads its answer;
        // etcd-client turns a TTL-0 answer into "lease not found".
        let (mut keeper, mut stream) = via_b
            .lease_keep_alive(id)
            .await
            .unwrap_or_else(|e| panic!("round {round}: keepalive of lease {id:x}: {e}"));
        keeper.keep_alive().await.unwrap();
        let resp = stream.message().await.unwrap().expect("a second answer");
        assert_eq!((resp.id(), resp.ttl()), (id, 30), "round {round}");
    }
    clear_failpoint(&cluster.endpoint(leader), "strata::apply::before_apply");
}

/// A member accepts client connections only once its name and client URLs
/// are applied, as etcd waits for its publish: its very first answer comes
/// after the publish entry is applied. (It used to serve as soon as a
/// leader was known; another member's `member list` could then show it
/// without name and client URLs.) The apply failpoint holds each apply
/// back 300 ms; an idle member proposes nothing after its publish, so the
/// applied index of its first answer must already be the final one.
#[tokio::test]
async fn clients_are_served_only_once_the_member_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Strata::try_start_env(
        &tmp.path().join("data"),
        "solo",
        &[],
        &[("FAILPOINTS", "strata::apply::before_apply=sleep(300)")],
    )
    .unwrap();
    let mut c = s.client().await;
    let first = c.status().await.unwrap().raft_applied_index();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = c.status().await.unwrap().raft_applied_index();
    assert_eq!(first, later, "answered before the publish was applied");
    let r = c.member_list().await.unwrap();
    assert_eq!(r.members()[0].name(), "solo");
}
