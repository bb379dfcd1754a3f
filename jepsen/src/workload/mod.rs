//! Workloads: concurrent client processes that drive a cluster and record
//! what they did in the formats of [`crate::history`].
//!
//! - [`Recorder`] owns the run directory's `history.jsonl` and
//!   `watches.jsonl`, numbers operations in write order, stamps times, and
//!   hands out process and watcher numbers that are unique across every
//!   workload sharing it.
//! - [`run`] runs one [`WorkloadKind`] until `stop` is cancelled. Each worker
//!   is a [`Process`] that sends its operations to randomly chosen nodes
//!   (mostly a random "home" node that changes after every error, see
//!   [`Process::node`]), so faults on any node show up in the history. After
//!   an indefinite (`info`) completion the worker continues as a fresh
//!   process, as [`crate::history`] requires.
//! - [`crate::client`] classifies failures; no operation is retried behind
//!   the history's back.
//!
//! Key spaces (so workloads can run side by side): `register`
//! `/jepsen/register/<k>`, `append` `/jepsen/append/<k>`, `wr`
//! `/jepsen/wr/<k>`, `set` `/jepsen/set/<n>`, `watch` `/jepsen/watch/<k>`,
//! `k8s` `/registry/jepsen/<n>`, `lease` `/jepsen/lease/<k>`, `mix`
//! `/jepsen/mix/<k>`. Each module documents its operations.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, OpError};
use crate::history::{Op, OpType, WatchRecord};

pub mod append;
pub mod k8s;
pub mod lease;
pub mod mix;
pub mod register;
pub mod set;
pub mod watch;

/// Appends operations and watch records to a run directory; cheap to clone
/// and shared by every worker.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    history: Mutex<HistoryFile>,
    watches: Mutex<BufWriter<File>>,
    next_process: AtomicU64,
    next_watcher: AtomicU64,
}

struct HistoryFile {
    out: BufWriter<File>,
    next_index: usize,
}

impl Recorder {
    /// Creates (truncating) `<dir>/history.jsonl` and `<dir>/watches.jsonl`.
    /// Times are nanoseconds since `start`.
    pub fn create(dir: &Path, start: Instant) -> anyhow::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| -> anyhow::Result<BufWriter<File>> {
            let path = dir.join(name);
            let file =
                File::create(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(BufWriter::new(file))
        };
        Ok(Recorder {
            inner: Arc::new(Inner {
                start,
                history: Mutex::new(HistoryFile {
                    out: open("history.jsonl")?,
                    next_index: 0,
                }),
                watches: Mutex::new(open("watches.jsonl")?),
                next_process: AtomicU64::new(0),
                next_watcher: AtomicU64::new(0),
            }),
        })
    }

    /// Writes everything recorded so far to disk.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.inner.history.lock().unwrap().out.flush()?;
        self.inner.watches.lock().unwrap().flush()?;
        Ok(())
    }

    /// Nanoseconds since the run's start.
    pub fn now(&self) -> u64 {
        self.inner.start.elapsed().as_nanos() as u64
    }

    /// A process number no other worker of this run has used.
    pub fn new_process(&self) -> u64 {
        self.inner.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// A watcher number no other watcher of this run has used.
    pub fn new_watcher(&self) -> u64 {
        self.inner.next_watcher.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends `op`, setting its `index` (write order) and `time` (now).
    /// Returns the op as written. A write error is logged, not returned: a
    /// worker cannot do anything useful about it and the checker will see a
    /// truncated history.
    pub fn record(&self, mut op: Op) -> Op {
        let mut h = self.inner.history.lock().unwrap();
        op.index = h.next_index;
        op.time = self.now();
        h.next_index += 1;
        if let Err(e) = serde_json::to_writer(&mut h.out, &op)
            .map_err(anyhow::Error::from)
            .and_then(|_| h.out.write_all(b"\n").map_err(anyhow::Error::from))
        {
            tracing::error!("writing history: {e}");
        }
        op
    }

    /// Appends a watch record, setting its `time` to now.
    pub fn record_watch(&self, mut rec: WatchRecord) {
        let mut w = self.inner.watches.lock().unwrap();
        rec.time = self.now();
        if let Err(e) = serde_json::to_writer(&mut *w, &rec)
            .map_err(anyhow::Error::from)
            .and_then(|_| w.write_all(b"\n").map_err(anyhow::Error::from))
        {
            tracing::error!("writing watches: {e}");
        }
    }

    /// Records the invoke of an operation and returns a handle to complete
    /// it with.
    pub fn invoke(
        &self,
        process: u64,
        f: &str,
        key: Option<String>,
        value: Value,
        node: usize,
    ) -> Invocation {
        let op = self.record(Op {
            index: 0,
            process,
            time: 0,
            kind: OpType::Invoke,
            f: f.to_string(),
            key,
            value,
            revision: None,
            version: None,
            mod_revision: None,
            node: Some(node),
            error: None,
        });
        Invocation {
            recorder: self.clone(),
            op,
        }
    }
}

/// An invoked operation waiting for its completion line.
pub struct Invocation {
    recorder: Recorder,
    op: Op,
}

/// What a completion line carries besides its type.
#[derive(Clone, Debug, Default)]
pub struct Completion {
    pub value: Value,
    pub revision: Option<i64>,
    pub version: Option<i64>,
    pub mod_revision: Option<i64>,
}

impl Completion {
    pub fn value(value: Value) -> Self {
        Completion {
            value,
            ..Default::default()
        }
    }

    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = Some(revision);
        self
    }
}

impl Invocation {
    /// The invoke line as recorded.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Records an `ok` completion.
    pub fn ok(self, c: Completion) -> Op {
        self.finish(OpType::Ok, c, None)
    }

    /// Records a definite failure (`fail`) with `error`.
    pub fn fail(self, error: impl Into<String>, c: Completion) -> Op {
        self.finish(OpType::Fail, c, Some(error.into()))
    }

    /// Records a classified client error: `fail` when definite, else `info`.
    /// A read (`read_only`) is always `fail`: it had no effect either way.
    pub fn error(self, err: &OpError, read_only: bool) -> Op {
        let kind = if err.definite || read_only {
            OpType::Fail
        } else {
            OpType::Info
        };
        let value = self.op.value.clone();
        self.finish(kind, Completion::value(value), Some(err.message.clone()))
    }

    fn finish(self, kind: OpType, c: Completion, error: Option<String>) -> Op {
        let inv = self.op;
        self.recorder.record(Op {
            index: 0,
            process: inv.process,
            time: 0,
            kind,
            f: inv.f,
            key: inv.key,
            value: c.value,
            revision: c.revision,
            version: c.version,
            mod_revision: c.mod_revision,
            node: inv.node,
            error,
        })
    }
}

/// How long a worker pauses after a request error.
pub const ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// A worker's logical process: it takes a fresh number after an `info`.
///
/// It also chooses the node for each request: mostly its current "home"
/// node, sometimes (1 in 5) any node, and it moves home to a random node
/// after a request error. Faults thus hit every worker, but a hung node does
/// not hold all of them at once (with a fresh random node per request,
/// nearly every worker ends up waiting on the one that hangs).
pub struct Process {
    pub id: u64,
    recorder: Recorder,
    nodes: usize,
    home: Option<usize>,
}

impl Process {
    pub fn new(ctx: &Ctx) -> Self {
        Process {
            id: ctx.recorder.new_process(),
            recorder: ctx.recorder.clone(),
            nodes: ctx.client.nodes(),
            home: None,
        }
    }

    /// The node for the next request.
    pub fn node(&mut self, rng: &mut impl rand::Rng) -> usize {
        let nodes = self.nodes;
        let home = *self.home.get_or_insert_with(|| rng.gen_range(0..nodes));
        if rng.gen_ratio(1, 5) {
            rng.gen_range(0..nodes)
        } else {
            home
        }
    }

    /// Moves to a new process number if `completion` was indefinite; after
    /// any error other than a failed compare, moves home to a random node
    /// and backs off for [`ERROR_BACKOFF`] (so a dead node is not hammered
    /// in a tight loop).
    pub async fn after(&mut self, completion: &Op) {
        if completion.kind == OpType::Info {
            self.id = self.recorder.new_process();
        }
        let errored = matches!(completion.kind, OpType::Info | OpType::Fail)
            && completion.error.as_deref() != Some("compare failed");
        if errored {
            self.home = None;
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Register,
    Append,
    Wr,
    Set,
    Watch,
    K8s,
    Lease,
    Mix,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Register,
        WorkloadKind::Append,
        WorkloadKind::Wr,
        WorkloadKind::Set,
        WorkloadKind::Watch,
        WorkloadKind::K8s,
        WorkloadKind::Lease,
        WorkloadKind::Mix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Append => "append",
            WorkloadKind::Wr => "wr",
            WorkloadKind::Set => "set",
            WorkloadKind::Watch => "watch",
            WorkloadKind::K8s => "k8s",
            WorkloadKind::Lease => "lease",
            WorkloadKind::Mix => "mix",
        }
    }
}

impl FromStr for WorkloadKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown workload {s:?} (one of: {})",
                    WorkloadKind::ALL.map(|k| k.name()).join(", ")
                )
            })
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters of one workload run.
#[derive(Clone, Debug)]
pub struct WorkloadOpts {
    pub kind: WorkloadKind,
    /// Client URL per node (index = node), e.g. `http://10.77.0.11:2379`.
    pub endpoints: Vec<String>,
    /// Number of concurrent worker processes.
    pub concurrency: usize,
    /// Number of keys (registers, list keys, objects) the workload spreads
    /// over.
    pub keys: usize,
    pub seed: u64,
    /// Reads use `serializable: true` (served locally, may be stale) instead
    /// of linearizable reads.
    pub serializable_reads: bool,
}

/// Runs a workload until `stop` is cancelled, then lets in-flight requests
/// finish (each is bounded by the client's request timeout), runs the
/// workload's final operations (e.g. the set's final read) and flushes the
/// recorder.
pub async fn run(
    opts: WorkloadOpts,
    recorder: Recorder,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(opts.concurrency > 0, "concurrency must be at least 1");
    anyhow::ensure!(opts.keys > 0, "keys must be at least 1");
    let client = Client::new(&opts.endpoints)?;
    let ctx = Ctx {
        client,
        recorder: recorder.clone(),
        stop,
        opts: opts.clone(),
    };
    let result = match opts.kind {
        WorkloadKind::Register => register::run(ctx).await,
        WorkloadKind::Append => append::run(ctx, append::Model::ListAppend).await,
        WorkloadKind::Wr => append::run(ctx, append::Model::Wr).await,
        WorkloadKind::Set => set::run(ctx).await,
        WorkloadKind::Watch => watch::run(ctx).await,
        WorkloadKind::K8s => k8s::run(ctx).await,
        WorkloadKind::Lease => lease::run(ctx).await,
        WorkloadKind::Mix => mix::run(ctx).await,
    };
    recorder.flush()?;
    result
}

/// What every workload module gets.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub stop: CancellationToken,
    pub opts: WorkloadOpts,
}

impl Ctx {
    /// A deterministic RNG for worker `worker` of this run.
    pub fn rng(&self, worker: u64) -> rand::rngs::StdRng {
        use rand::SeedableRng;
        rand::rngs::StdRng::seed_from_u64(
            self.opts
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(worker)
                .wrapping_add(self.opts.kind as u64 * 1_000_003),
        )
    }

    /// A random node index.
    pub fn pick_node(&self, rng: &mut impl rand::Rng) -> usize {
        rng.gen_range(0..self.client.nodes())
    }
}

/// Spawns `n` workers running `body(ctx, worker)` and waits for all of them.
pub(crate) async fn spawn_workers<F, Fut>(ctx: &Ctx, n: usize, body: F) -> anyhow::Result<()>
where
    F: Fn(Ctx, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for w in 0..n {
        set.spawn(body(ctx.clone(), w as u64));
    }
    let mut first_err = None;
    while let Some(res) = set.join_next().await {
        let res = res.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The end of a prefix range: `prefix` with its last byte incremented.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Parses an integer value stored by a workload.
pub(crate) fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Response header revision (0 when absent).
pub(crate) fn header_rev(h: &Option<proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read_jsonl;

    #[test]
    fn kinds_parse_and_print() {
        for k in WorkloadKind::ALL {
            assert_eq!(k.to_string().parse::<WorkloadKind>().unwrap(), k);
        }
        assert!("nope".parse::<WorkloadKind>().is_err());
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }

    #[tokio::test]
    async fn recorder_numbers_ops_in_write_order_and_retires_processes() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::create(dir.path(), Instant::now()).unwrap();
        let ctx = Ctx {
            client: Client::new(&["127.0.0.1:1".to_string()]).unwrap(),
            recorder: rec.clone(),
            stop: CancellationToken::new(),
            opts: WorkloadOpts {
                kind: WorkloadKind::Register,
                endpoints: vec![],
                concurrency: 1,
                keys: 1,
                seed: 0,
                serializable_reads: false,
            },
        };
        let mut p = Process::new(&ctx);
        let inv = rec.invoke(p.id, "write", Some("k".into()), 1.into(), 0);
        let done = inv.error(&OpError::indefinite("timeout"), false);
        assert_eq!(done.kind, OpType::Info);
        p.after(&done).await;
        assert_ne!(p.id, done.process);
        let inv = rec.invoke(p.id, "read", Some("k".into()), Value::Null, 1);
        let done = inv.error(&OpError::indefinite("timeout"), true);
        assert_eq!(done.kind, OpType::Fail);
        rec.flush().unwrap();
        let ops: Vec<Op> = read_jsonl(&dir.path().join("history.jsonl")).unwrap();
        assert_eq!(ops.len(), 4);
        for (i, op) in ops.iter().enumerate() {
            assert_eq!(op.index, i);
        }
        assert!(ops.windows(2).all(|w| w[0].time <= w[1].time));
        assert_eq!(
            crate::checker::check_well_formed(&ops).valid,
            crate::checker::Validity::Valid
        );
    }
}
