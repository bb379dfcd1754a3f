//! Every workload runs for a few seconds against one real Strata node and one
//! real etcd 3.5.1 node (no faults). The history must be well formed, every
//! operation must complete `ok` (or `fail` for a legitimate compare miss),
//! watchers must receive events, and the HTML report must render.
//!
//! Strata's binary is `$STRATA_BIN`, else `<target dir>/debug/strata`
//! (built with `cargo build -p store --bin strata` when missing). etcd is
//! `~/.cache/strata/etcd-3.5/bin/etcd` (installed by
//! `scripts/install-peers.sh` when missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jepsen::checker::{check_well_formed, CheckResult, Validity};
use jepsen::history::{read_jsonl, Op, OpType, WatchRecord, WatchRecordKind};
use jepsen::workload::{self, Recorder, WorkloadKind, WorkloadOpts};
use tokio_util::sync::CancellationToken;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn strata_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("STRATA_BIN") {
            return PathBuf::from(p);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let bin = target.join("debug/strata");
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "store", "--bin", "strata"])
                .current_dir(workspace())
                .status()
                .expect("cargo build strata");
            assert!(status.success(), "building strata failed");
        }
        bin
    })
    .clone()
}

fn etcd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let home = std::env::var("HOME").expect("HOME");
        let bin = PathBuf::from(home).join(".cache/strata/etcd-3.5/bin/etcd");
        if !bin.exists() {
            let status = Command::new("bash")
                .arg(workspace().join("scripts/install-peers.sh"))
                .status()
                .expect("install-peers.sh");
            assert!(status.success(), "installing etcd failed");
        }
        bin
    })
    .clone()
}

fn free_port() -> u16 {
    jepsen::cluster::ports::free_port().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Server {
    Strata,
    Etcd,
}

/// One single-member server on free 127.0.0.1 ports, killed on drop.
struct Node {
    child: Option<Child>,
    endpoint: String,
    data: tempfile::TempDir,
    server: Server,
    client_port: u16,
    peer_port: u16,
}

impl Node {
    async fn start(server: Server) -> Node {
        let data = tempfile::tempdir().unwrap();
        let mut node = Node {
            child: None,
            endpoint: String::new(),
            data,
            server,
            client_port: free_port(),
            peer_port: free_port(),
        };
        node.endpoint = format!("http://127.0.0.1:{}", node.client_port);
        node.spawn();
        node.wait_ready().await;
        node
    }

    fn spawn(&mut self) {
        let bin = match self.server {
            Server::Strata => strata_bin(),
            Server::Etcd => etcd_bin(),
        };
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.data.path().join("server.log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", "n1", "--data-dir"])
            .arg(self.data.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start server");
        self.child = Some(child);
    }

    async fn wait_ready(&self) {
        let client = jepsen::client::Client::new(std::slice::from_ref(&self.endpoint)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = proto::etcdserverpb::RangeRequest {
                key: b"ready".to_vec(),
                ..Default::default()
            };
            if jepsen::client::call(client.kv(0).range(req)).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "{:?} did not start", self.server);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Run {
    dir: tempfile::TempDir,
    ops: Vec<Op>,
    watches: Vec<WatchRecord>,
}

async fn run_workload(kind: WorkloadKind, endpoints: Vec<String>, secs: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(dir.path(), Instant::now()).unwrap();
    let stop = CancellationToken::new();
    let opts = WorkloadOpts {
        kind,
        endpoints,
        concurrency: 4,
        keys: 5,
        seed: 42,
        serializable_reads: false,
    };
    let task = tokio::spawn(workload::run(opts, recorder.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("workload stops")
        .unwrap()
        .unwrap();
    recorder.flush().unwrap();
    let ops: Vec<Op> = read_jsonl(&dir.path().join("history.jsonl")).unwrap();
    let watches: Vec<WatchRecord> = read_jsonl(&dir.path().join("watches.jsonl")).unwrap();
    Run { dir, ops, watches }
}

/// Failures a fault-free run may legitimately record (a definite miss).
fn legit_fail(op: &Op) -> bool {
    let e = op.error.as_deref().unwrap_or("");
    e == "compare failed" || e.contains("lease not found") || e.contains("compacted")
}

fn assert_clean(kind: WorkloadKind, server: Server, run: &Run) {
    let mut stats: std::collections::BTreeMap<String, usize> = Default::default();
    for op in run.ops.iter().filter(|o| !o.is_invoke()) {
        *stats.entry(format!("{}:{:?}", op.f, op.kind)).or_default() += 1;
    }
    for w in &run.watches {
        *stats.entry(format!("watch:{:?}", w.kind)).or_default() += 1;
    }
    eprintln!("{kind} on {server:?}: {stats:?}");
    let wf = check_well_formed(&run.ops);
    assert_eq!(
        wf.valid,
        Validity::Valid,
        "{kind} on {server:?}: {}",
        wf.summary
    );
    let completions: Vec<&Op> = run.ops.iter().filter(|o| !o.is_invoke()).collect();
    let oks = completions.iter().filter(|o| o.kind == OpType::Ok).count();
    assert!(oks >= 10, "{kind} on {server:?}: only {oks} ok ops");
    for op in &completions {
        assert!(
            op.kind == OpType::Ok || (op.kind == OpType::Fail && legit_fail(op)),
            "{kind} on {server:?}: unexpected completion {op:?}"
        );
    }
    let invokes = run.ops.len() - completions.len();
    assert_eq!(
        invokes,
        completions.len(),
        "{kind} on {server:?}: an op never completed"
    );
    for (i, op) in run.ops.iter().enumerate() {
        assert_eq!(op.index, i);
    }
    // The report renders, with the timeline.
    let results: Vec<CheckResult> = vec![wf];
    let html = jepsen::report::write_html(run.dir.path(), &results).unwrap();
    let text = std::fs::read_to_string(html).unwrap();
    assert!(text.contains("<svg"), "report has no timeline");
}

async fn check(kind: WorkloadKind, server: Server) -> Run {
    check_for(kind, server, 3).await
}

async fn check_for(kind: WorkloadKind, server: Server, secs: u64) -> Run {
    let node = Node::start(server).await;
    let run = run_workload(kind, vec![node.endpoint.clone()], secs).await;
    assert_clean(kind, server, &run);
    run
}

fn oks<'a>(run: &'a Run, f: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
    run.ops
        .iter()
        .filter(move |o| o.kind == OpType::Ok && o.f == f)
}

async fn register(server: Server) {
    let run = check(WorkloadKind::Register, server).await;
    for op in oks(&run, "write") {
        assert!(op.revision.is_some() && op.version.is_some() && op.mod_revision.is_some());
    }
    assert!(oks(&run, "read").any(|o| o.value.is_i64() && o.version.is_some()));
    assert!(oks(&run, "cas").count() > 0, "no cas succeeded");
}

async fn append(server: Server) {
    let run = check(WorkloadKind::Append, server).await;
    let nonempty_read = oks(&run, "txn").any(|o| {
        o.value
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m[0] == "r" && m[2].as_array().is_some_and(|l| !l.is_empty()))
    });
    assert!(nonempty_read, "no read saw an appended element");
}

async fn wr(server: Server) {
    let run = check(WorkloadKind::Wr, server).await;
    assert!(oks(&run, "txn").any(|o| {
        o.value
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m[0] == "r" && m[2].is_i64())
    }));
}

async fn set(server: Server) {
    let run = check(WorkloadKind::Set, server).await;
    let added: std::collections::BTreeSet<i64> = oks(&run, "add")
        .map(|o| o.value.as_i64().unwrap())
        .collect();
    let last_read = oks(&run, "read").last().expect("a final read");
    let read: std::collections::BTreeSet<i64> = last_read
        .value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        added.is_subset(&read),
        "final read lost an acknowledged add"
    );
}

/// Per watcher: starts once, and event revisions strictly increase across
/// its responses (resumes included).
fn assert_watch_streams_ordered(watches: &[WatchRecord]) {
    let mut last: std::collections::HashMap<u64, i64> = Default::default();
    let mut started: std::collections::HashSet<u64> = Default::default();
    for w in watches {
        if w.kind == WatchRecordKind::Start {
            assert!(
                started.insert(w.watcher),
                "watcher {} started twice",
                w.watcher
            );
            assert!(w.start_revision.is_some() && w.key.is_some());
        } else {
            assert!(started.contains(&w.watcher), "record before start: {w:?}");
        }
        for e in &w.events {
            let prev = last.insert(w.watcher, e.kv.mod_revision).unwrap_or(0);
            assert!(
                e.kv.mod_revision > prev,
                "watcher {} went back: {w:?}",
                w.watcher
            );
        }
    }
}

async fn watch(server: Server) {
    let run = check(WorkloadKind::Watch, server).await;
    assert!(watch_events(&run.watches) > 0, "watchers saw no events");
    assert_watch_streams_ordered(&run.watches);
    let has = |k| run.watches.iter().any(|w| w.kind == k);
    assert!(has(WatchRecordKind::Created));
    assert!(has(WatchRecordKind::Progress), "no progress notification");
    // prev_kv is set on overwrites.
    assert!(run
        .watches
        .iter()
        .flat_map(|w| &w.events)
        .any(|e| e.prev_kv.is_some()));
    // Watchers drained: every event of an acknowledged register write was
    // seen by every prefix watcher that started before it.
    let last_write = oks(&run, "write")
        .map(|o| o.revision.unwrap())
        .max()
        .unwrap();
    for w in run.watches.iter().filter(|w| {
        w.kind == WatchRecordKind::Start && w.key.as_deref() == Some("/jepsen/register/")
    }) {
        let seen = run
            .watches
            .iter()
            .filter(|r| r.watcher == w.watcher)
            .flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision))
            .max()
            .unwrap_or(0);
        assert!(
            seen >= last_write,
            "watcher {} stopped at {seen} < {last_write}",
            w.watcher
        );
    }
}

async fn k8s(server: Server) {
    let run = check(WorkloadKind::K8s, server).await;
    for f in ["create", "update", "list"] {
        assert!(oks(&run, f).count() > 0, "no ok {f}");
    }
    assert!(watch_events(&run.watches) > 0, "informers saw no events");
    assert_watch_streams_ordered(&run.watches);
    // A list is one snapshot: no item newer than its revision.
    for op in oks(&run, "list") {
        for item in op.value.as_array().unwrap() {
            assert!(item[2].as_i64().unwrap() <= op.revision.unwrap(), "{op:?}");
        }
    }
}

async fn lease(server: Server) {
    let run = check_for(WorkloadKind::Lease, server, 6).await;
    for f in ["grant", "put", "read"] {
        assert!(oks(&run, f).count() > 0, "no ok {f}");
    }
    assert!(
        oks(&run, "read").any(|o| o.value["lease"].as_i64().is_some_and(|l| l != 0)),
        "no read saw a key attached to a lease"
    );
    assert!(oks(&run, "revoke").count() + oks(&run, "keepalive").count() > 0);
}

async fn mix(server: Server) {
    let run = check_for(WorkloadKind::Mix, server, 4).await;
    for f in ["write", "read", "read-at", "range", "mix-txn"] {
        assert!(oks(&run, f).count() > 0, "no ok {f}");
    }
    assert!(oks(&run, "range").any(|o| {
        o.value["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|kv| kv[1].is_null())
    }));
    // Inside one txn, a read after a write of the same key sees that write.
    for op in oks(&run, "mix-txn") {
        let mut written: std::collections::HashMap<&str, i64> = Default::default();
        for m in op.value.as_array().unwrap() {
            let key = m[1].as_str().unwrap();
            if m[0] == "w" {
                written.insert(key, m[2].as_i64().unwrap());
            } else if let Some(v) = written.get(key) {
                assert_eq!(m[2].as_i64(), Some(*v), "{op:?}");
            }
        }
    }
    // A read at an old revision never sees a newer write.
    for op in oks(&run, "read-at") {
        let at = op.value["revision"].as_i64().unwrap();
        assert!(op.mod_revision.unwrap_or(0) <= at, "{op:?}");
    }
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn strata() {
                super::$name(Server::Strata).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                super::$name(Server::Etcd).await;
            }
        }
    };
}

on_both!(register);
on_both!(append);
on_both!(wr);
on_both!(set);
on_both!(watch);
on_both!(k8s);
on_both!(lease);
on_both!(mix);
on_both!(watch_resumes);
on_both!(watch_restarts_after_compaction);

/// Records of one watcher after the first record of `kind`.
fn after_first(
    watches: &[WatchRecord],
    kind: WatchRecordKind,
) -> Option<(&WatchRecord, Vec<&WatchRecord>)> {
    let first = watches.iter().find(|w| w.kind == kind)?;
    let rest = watches
        .iter()
        .filter(|w| w.watcher == first.watcher && w.time >= first.time)
        .collect();
    Some((first, rest))
}

/// Watchers survive a server crash: each logs `disconnected`, resumes with
/// a `resumed` record from where it was, and keeps receiving events.
async fn watch_resumes(server: Server) {
    let mut node = Node::start(server).await;
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(dir.path(), Instant::now()).unwrap();
    let stop = CancellationToken::new();
    let opts = WorkloadOpts {
        kind: WorkloadKind::Watch,
        endpoints: vec![node.endpoint.clone()],
        concurrency: 3,
        keys: 3,
        seed: 3,
        serializable_reads: false,
    };
    let task = tokio::spawn(workload::run(opts, recorder.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.restart().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let ops: Vec<Op> = read_jsonl(&dir.path().join("history.jsonl")).unwrap();
    let watches: Vec<WatchRecord> = read_jsonl(&dir.path().join("watches.jsonl")).unwrap();
    assert_eq!(check_well_formed(&ops).valid, Validity::Valid);
    assert_watch_streams_ordered(&watches);
    let (disc, rest) = after_first(&watches, WatchRecordKind::Disconnected)
        .unwrap_or_else(|| panic!("no watcher disconnected: {watches:?}"));
    let resumed = rest
        .iter()
        .find(|w| w.kind == WatchRecordKind::Resumed)
        .expect("no resume after disconnect");
    // It resumes after the last event it saw.
    let last_seen = watches
        .iter()
        .filter(|w| w.watcher == disc.watcher && w.time <= disc.time)
        .flat_map(|w| w.events.iter().map(|e| e.kv.mod_revision))
        .max()
        .unwrap_or(0);
    assert!(resumed.start_revision.unwrap() > last_seen);
    assert!(
        watches
            .iter()
            .any(|w| w.kind == WatchRecordKind::Events && w.time > resumed.time),
        "no events after resuming"
    );
}

/// A watcher whose start revision was compacted logs `compacted` and
/// restarts from the reported compact revision.
async fn watch_restarts_after_compaction(server: Server) {
    let node = Node::start(server).await;
    let client = jepsen::client::Client::new(std::slice::from_ref(&node.endpoint)).unwrap();
    let mut rev = 0;
    for i in 0..50 {
        let put = proto::etcdserverpb::PutRequest {
            key: format!("/jepsen/register/{}", i % 3).into_bytes(),
            value: format!("{}", 1_000_000 + i).into_bytes(),
            ..Default::default()
        };
        rev = jepsen::client::call(client.kv(0).put(put))
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    let compact = proto::etcdserverpb::CompactionRequest {
        revision: rev,
        physical: true,
    };
    jepsen::client::call(client.kv(0).compact(compact))
        .await
        .unwrap();
    let run = run_workload(WorkloadKind::Watch, vec![node.endpoint.clone()], 2).await;
    assert_watch_streams_ordered(&run.watches);
    let compacted: Vec<&WatchRecord> = run
        .watches
        .iter()
        .filter(|w| w.kind == WatchRecordKind::Compacted)
        .collect();
    assert!(
        !compacted.is_empty(),
        "no watcher was compacted: {:?}",
        run.watches
    );
    for c in &compacted {
        assert_eq!(c.compact_revision, Some(rev));
        let rest: Vec<&WatchRecord> = run
            .watches
            .iter()
            .filter(|w| w.watcher == c.watcher && w.time >= c.time)
            .collect();
        let resumed = rest
            .iter()
            .find(|w| w.kind == WatchRecordKind::Resumed)
            .expect("no restart after compaction");
        assert_eq!(resumed.start_revision, Some(rev));
        // Restarted at the compact revision: the writes the test made at
        // `rev` and after come through (register watchers), or at least a
        // progress notification does (the append-prefix watcher).
        assert!(rest
            .iter()
            .any(|w| matches!(w.kind, WatchRecordKind::Events | WatchRecordKind::Progress)));
    }
    let register_watchers: Vec<u64> = run
        .watches
        .iter()
        .filter(|w| {
            w.kind == WatchRecordKind::Start
                && w.key
                    .as_deref()
                    .is_some_and(|k| k.starts_with("/jepsen/register/"))
        })
        .map(|w| w.watcher)
        .collect();
    assert!(
        compacted
            .iter()
            .any(|c| register_watchers.contains(&c.watcher)),
        "no register watcher was compacted"
    );
    assert!(compacted
        .iter()
        .any(|c| run.watches.iter().any(|w| w.watcher == c.watcher
            && w.time > c.time
            && w.events.iter().any(|e| e.kv.mod_revision == rev))));
}

/// A server killed while requests are in flight: the writes in flight end
/// `info` (they may have been applied), the reads `fail`, and requests to
/// the dead node are refused before sending (definite).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_mid_request_is_info_for_writes_and_fail_for_reads() {
    let mut node = Node::start(Server::Etcd).await;
    let endpoint = node.endpoint.clone();
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(dir.path(), Instant::now()).unwrap();
    let stop = CancellationToken::new();
    let opts = WorkloadOpts {
        kind: WorkloadKind::Register,
        endpoints: vec![endpoint],
        concurrency: 8,
        keys: 3,
        seed: 7,
        serializable_reads: false,
    };
    let task = tokio::spawn(workload::run(opts, recorder.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGSTOP first so requests pile up in flight, then SIGKILL.
    let pid = node.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let ops: Vec<Op> = read_jsonl(&dir.path().join("history.jsonl")).unwrap();
    assert_eq!(check_well_formed(&ops).valid, Validity::Valid);
    let failed: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o.kind, OpType::Fail | OpType::Info))
        .collect();
    assert!(
        failed
            .iter()
            .any(|o| o.f != "read" && o.kind == OpType::Info),
        "no write or cas ended info: {failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|o| o.f == "read" && o.kind == OpType::Fail),
        "no read failed"
    );
    assert!(
        !failed
            .iter()
            .any(|o| o.f == "read" && o.kind == OpType::Info),
        "a read ended info"
    );
    // After the kill, writes are refused before sending: definite.
    assert!(
        failed.iter().any(|o| o.f != "read"
            && o.kind == OpType::Fail
            && o.error
                .as_deref()
                .is_some_and(|e| e.contains("not connected"))),
        "no refused write was definite: {failed:?}"
    );
}

fn watch_events(watches: &[WatchRecord]) -> usize {
    watches
        .iter()
        .filter(|w| w.kind == WatchRecordKind::Events)
        .map(|w| w.events.len())
        .sum()
}
