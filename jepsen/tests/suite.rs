//! The CI suite: short runs against a 3-node Strata in network namespaces.
//!
//! - register + append + watch under partition and kill nemeses must come
//!   out valid with zero anomalies;
//! - the harness must catch a real anomaly: serializable reads checked as
//!   linearizable, with a follower partitioned away, must be reported as a
//!   linearizability violation.
//!
//! Needs root, `ip` and `iptables` (scripts/test-all.sh installs them) and a
//! Strata binary (`STRATA_BIN`, else the newest target/{release,debug}/strata).
//! The runs share the machine's two cores, so they take turns.

use std::path::PathBuf;
use std::time::Duration;

use jepsen::checker::Validity;
use jepsen::cluster::{default_bin, ServerKind};
use jepsen::nemesis::{Action, NemesisKind, Schedule};
use jepsen::runner::{run_test, summary_table, Outcome, TestOpts};
use tokio_util::sync::CancellationToken;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the jepsen suite needs root for network namespaces (run it as root, as CI does)"
    );
    for (tool, flag) in [("ip", "-V"), ("iptables", "--version")] {
        let ok = std::process::Command::new(tool)
            .arg(flag)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "`{tool}` is missing: apt-get install iproute2 iptables");
    }
}

fn opts(
    name: &str,
    workloads: &[&str],
    nemeses: &str,
    secs: u64,
    seed: u64,
) -> (TestOpts, tempfile::TempDir) {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("jepsen-{name}-"))
        .tempdir()
        .unwrap();
    let o = TestOpts {
        server: ServerKind::Strata,
        bin: default_bin(ServerKind::Strata).expect("a strata binary (cargo build -p store)"),
        nodes: 3,
        workloads: workloads.iter().map(|s| s.to_string()).collect(),
        nemeses: NemesisKind::parse_list(nemeses).unwrap(),
        time_limit: Duration::from_secs(secs),
        seed,
        concurrency: 4,
        keys: 6,
        out: tmp.path().join("run"),
        netns: true,
        serializable_reads: false,
        progress: false,
        abort: CancellationToken::new(),
    };
    (o, tmp)
}

async fn run(o: TestOpts) -> Outcome {
    let out = run_test(o).await.expect("the run itself failed");
    eprint!("{}", summary_table(&out));
    out
}

/// Keeps the run directory of a failed run for inspection.
fn keep(tmp: tempfile::TempDir) -> PathBuf {
    tmp.keep()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_append_watch_under_partitions_and_kills_are_valid() {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_privileges();
    let (o, tmp) = opts(
        "short",
        &["register", "append", "watch"],
        "partition,kill",
        60,
        20261204,
    );
    let out = run(o).await;
    let faults = std::fs::read_to_string(out.dir.join("faults.jsonl")).unwrap();
    let history = std::fs::read_to_string(out.dir.join("history.jsonl")).unwrap();
    let bad: Vec<_> = out
        .results
        .iter()
        .filter(|r| r.valid != Validity::Valid || !r.anomalies.is_empty())
        .collect();
    if !bad.is_empty() || out.valid != Validity::Valid {
        let dir = keep(tmp);
        panic!("anomalies (run kept in {}): {bad:#?}", dir.display());
    }
    // It really ran faults and operations.
    assert!(faults.lines().count() >= 5, "too few faults:\n{faults}");
    assert!(
        history
            .lines()
            .filter(|l| l.contains("\"type\":\"ok\""))
            .count()
            > 100,
        "too few acknowledged operations"
    );
    for checker in ["hashkv", "server-logs", "well-formed"] {
        assert!(
            out.results.iter().any(|r| r.checker == checker),
            "{checker} did not run"
        );
    }
}

/// A seed whose partition-only schedule isolates one node (a follower, or
/// a minority half) at least twice: serializable reads on the isolated node
/// then go stale while the majority keeps writing.
fn isolating_seed(from: u64, secs: u64) -> u64 {
    (from..from + 10_000)
        .find(|&s| {
            let sch =
                Schedule::generate(s, &[NemesisKind::Partition], 3, Duration::from_secs(secs));
            sch.steps
                .iter()
                .take(3)
                .filter(|st| matches!(st.action, Action::Isolate { .. } | Action::Halves { .. }))
                .count()
                >= 2
        })
        .expect("a seed with isolating partitions")
}

/// Serializable reads may be stale by design: checked as linearizable under
/// isolating partitions, the harness must report the violation, for etcd
/// as for Strata (otherwise it proves nothing).
async fn serializable_reads_are_caught(server: ServerKind) {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_privileges();
    let mut seed = 7;
    let mut tries = Vec::new();
    for _ in 0..3 {
        seed = isolating_seed(seed, 25);
        let (mut o, _tmp) = opts("serializable", &["register"], "partition", 25, seed);
        o.server = server;
        o.bin = default_bin(server).expect("a server binary (scripts/install-peers.sh for etcd)");
        o.serializable_reads = true;
        o.keys = 3;
        o.concurrency = 6;
        let out = run(o).await;
        let lin: Vec<_> = out
            .results
            .iter()
            .filter(|r| r.checker.contains("linear"))
            .collect();
        assert!(!lin.is_empty(), "no linearizability checker ran");
        if lin.iter().any(|r| r.valid == Validity::Invalid) {
            assert_eq!(out.valid, Validity::Invalid);
            return;
        }
        tries.push((
            seed,
            lin.iter().map(|r| r.summary.clone()).collect::<Vec<_>>(),
        ));
        seed += 1;
    }
    panic!("{server}: stale serializable reads were never reported: {tries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_reads_under_partitions_are_caught_as_nonlinearizable() {
    serializable_reads_are_caught(ServerKind::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_serializable_reads_under_partitions_are_caught_as_nonlinearizable() {
    serializable_reads_are_caught(ServerKind::Etcd).await;
}

/// Isolating the leader makes the rest elect another one; healing brings
/// the cluster back; a member replaced with a wiped data dir rejoins. In
/// both networks: namespaces + iptables, and the 127.0.0.1 proxies.
async fn faults_take_effect(netns: bool) {
    use jepsen::cluster::{Cluster, ClusterOpts};
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(ClusterOpts {
        server: ServerKind::Strata,
        bin: default_bin(ServerKind::Strata).expect("a strata binary"),
        nodes: 3,
        netns,
        dir: tmp.path().to_path_buf(),
    })
    .await
    .unwrap();
    let old = c.leader().await.expect("a leader");
    for other in (0..3).filter(|&o| o != old) {
        c.net.drop_link(old, other).unwrap();
        c.net.drop_link(other, old).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let new = loop {
        let others = (0..3).filter(|&o| o != old);
        let mut leaders = Vec::new();
        for o in others {
            if let Ok((_, l, _, _)) = c.status(o).await {
                leaders.push(l);
            }
        }
        let old_id = c.status(old).await.map(|s| s.0).ok();
        if leaders.len() == 2
            && leaders[0] == leaders[1]
            && leaders[0] != 0
            && Some(leaders[0]) != old_id
        {
            break leaders[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader behind the partition: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    c.net.heal().unwrap();
    c.wait_healthy(Duration::from_secs(30)).await.unwrap();
    assert_ne!(new, 0);
    // Clients cut off from a node cannot reach it.
    c.net.cut_client(0).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(3), c.status(0))
        .await
        .map(|r| r.is_err())
        .unwrap_or(true));
    c.net.heal().unwrap();
    let mut d = serde_json::json!({});
    jepsen::nemesis::member_replace(&mut c, 1, &mut d)
        .await
        .unwrap();
    c.wait_healthy(Duration::from_secs(30)).await.unwrap();
    assert!(d["added_id"].is_string(), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_namespace_faults_take_effect() {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_privileges();
    faults_take_effect(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_faults_take_effect() {
    let _turn = ONE_AT_A_TIME.lock().await;
    faults_take_effect(false).await;
}
