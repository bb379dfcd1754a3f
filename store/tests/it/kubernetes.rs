//! kubernetes: kube-apiserver's exact etcd call patterns, replayed through
//! `etcd-client` against a real 3-member cluster, with no Kubernetes binary.
//!
//! One scenario ([`scenario`]) runs against Strata and, unchanged, against
//! real etcd 3.5, so that its expectations are etcd's. Its phases:
//! - CAS create / update / delete exactly as the apiserver writes them,
//!   resourceVersion from `header.revision` and `mod_revision`;
//! - concurrent writers on every member (private objects and contended
//!   `GuaranteedUpdate` loops) while watchers (`WithRev(rv+1)`,
//!   `WithPrevKV`, `WithPrefix`, `WithProgressNotify`, `hasleader`) receive
//!   RequestProgress every 100 ms, paged lists run at a fixed revision, and
//!   `/registry/health` is probed on every member; halfway, the leader
//!   moves (reads retry on Unavailable, as clientv3's do);
//! - the compaction CAS on `compact_rev_key` by two apiservers, watches
//!   created on a compacted revision, and 64 watchers on one stream that
//!   stop reading while compaction overtakes them;
//! - one lease shared by 200 Events, which all expire together;
//! - `Maintenance.Status` versions, and a leader-requiring watch losing its
//!   quorum.
//!
//! What it checks is what the apiserver relies on: a progress response
//! bounds every event before it and none after it, every update and delete
//! event carries the exact previous object, a watch delivers every
//! acknowledged write once and in revision order, paged lists equal one read
//! at their revision, and compacted watches are cancelled with
//! `compact_revision`.
//!
//! The progress properties are asserted only for members whose
//! `Maintenance.Status` version passes kube-apiserver's check (>= 3.5.13,
//! which turns RequestWatchProgress on). etcd 3.5.1 does not pass it, and
//! does violate them: it answers RequestProgress at once, ahead of events
//! still queued (etcd #15220, fixed in 3.5.8), so its run counts and prints
//! the violations instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchResponseStream,
};
use futures::StreamExt;

use crate::harness::{Cluster, EtcdCluster};

const WAIT: Duration = Duration::from_secs(10);
/// kube-apiserver sends RequestProgress this often while consistent reads
/// wait for its watch cache.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Periodic per-watcher progress notifications (kubeadm sets 5 s; shorter
/// here so that several arrive during the traffic).
const NOTIFY_FLAGS: &[&str] = &["--experimental-watch-progress-notify-interval", "300ms"];
const WRITERS: usize = 9;
const OPS_PER_WRITER: usize = 100;
const SHARED: &[&str] = &[
    "/registry/configmaps/kube-system/shared-0",
    "/registry/configmaps/kube-system/shared-1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strata_serves_kube_apiserver_traffic() {
    let t = tokio::task::spawn_blocking(|| Procs::Strata(Cluster::start_with(3, NOTIFY_FLAGS)))
        .await
        .unwrap();
    bounded(scenario(t)).await;
}

/// The same scenario against etcd 3.5.1, to show the expectations are
/// etcd's. (On 2026-12-05 it once stalled the suite for over 13 minutes
/// and was run by hand until 2026-12-06; the likely cause, not confirmed,
/// was an etcd member failing to bind a port taken from the ephemeral
/// range, which the harness no longer hands out. A stall now fails the
/// test instead of hanging the suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_serves_the_same_kube_apiserver_traffic() {
    let t = tokio::task::spawn_blocking(|| Procs::Etcd(EtcdCluster::start(3, NOTIFY_FLAGS)))
        .await
        .unwrap();
    bounded(scenario(t)).await;
}

/// Run a scenario, failing it if it takes over 5 minutes (it takes about
/// 10 s on its own).
async fn bounded(run: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .is_err()
    {
        panic!("the scenario did not finish within 5 minutes");
    }
}

// ---------------------------------------------------------------- targets

/// The three members under test.
enum Procs {
    Strata(Cluster),
    Etcd(EtcdCluster),
}

impl Procs {
    fn name(&self) -> &'static str {
        match self {
            Procs::Strata(_) => "strata",
            Procs::Etcd(_) => "etcd",
        }
    }

    fn endpoints(&self) -> Vec<String> {
        match self {
            Procs::Strata(c) => (0..3).map(|i| c.endpoint(i)).collect(),
            Procs::Etcd(c) => c.endpoints.clone(),
        }
    }

    fn kill(&mut self, i: usize) {
        match self {
            Procs::Strata(c) => c.node(i).kill(),
            Procs::Etcd(c) => {
                let _ = c.children[i].kill();
                let _ = c.children[i].wait();
            }
        }
    }
}

/// A client of one member; `require_leader` adds the `hasleader=true`
/// metadata kube-apiserver puts on its watch contexts.
async fn connect(ep: &str, require_leader: bool) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let opts = ConnectOptions::new().with_require_leader(require_leader);
        if let Ok(mut c) = Client::connect([ep], Some(opts)).await {
            if c.get("/registry/health", None).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{ep} never served a linearizable read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// `clientv3.GetPrefixRangeEnd`.
fn prefix_end(p: &str) -> Vec<u8> {
    let mut e = p.as_bytes().to_vec();
    *e.last_mut().unwrap() += 1;
    e
}

// ---------------------------------------------------------------- kube's writes

/// The outcome of an optimistic update or delete.
#[derive(Debug)]
enum Cas {
    /// Done: the new resourceVersion (`header.revision`).
    Ok(i64),
    /// The precondition failed; the Else-Get's object, if it exists.
    Conflict(Option<KeyValue>),
}

/// Create: `Txn(If mod_revision(k)==0 Then Put)`. The new resourceVersion,
/// or `None` if the key exists (AlreadyExists).
async fn create(c: &mut Client, key: &str, value: &[u8], lease: i64) -> Option<i64> {
    let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    let r = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, opts)]),
        )
        .await
        .unwrap_or_else(|e| panic!("create {key}: {e}"));
    if r.succeeded() {
        Some(rev_of(r.header()))
    } else {
        assert!(r.op_responses().is_empty(), "a create has no Else branch");
        None
    }
}

/// Update: `Txn(If mod_revision(k)==rv Then Put Else Get)`.
async fn update(c: &mut Client, key: &str, rv: i64, value: &[u8]) -> Cas {
    optimistic(c, key, rv, TxnOp::put(key, value, None)).await
}

/// Delete: `Txn(If mod_revision(k)==rv Then DeleteRange Else Get)`.
async fn delete(c: &mut Client, key: &str, rv: i64) -> Cas {
    optimistic(c, key, rv, TxnOp::delete(key, None)).await
}

async fn optimistic(c: &mut Client, key: &str, rv: i64, op: TxnOp) -> Cas {
    let r = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, rv)])
                .and_then([op])
                .or_else([TxnOp::get(key, None)]),
        )
        .await
        .unwrap_or_else(|e| panic!("optimistic write of {key}: {e}"));
    let mut resps = r.op_responses();
    assert_eq!(resps.len(), 1);
    match (r.succeeded(), resps.pop().unwrap()) {
        (true, TxnOpResponse::Put(_)) => Cas::Ok(rev_of(r.header())),
        (true, TxnOpResponse::Delete(d)) => {
            assert_eq!(d.deleted(), 1, "delete of {key} at rv {rv}");
            Cas::Ok(rev_of(r.header()))
        }
        (false, TxnOpResponse::Get(g)) => {
            assert!(g.kvs().len() <= 1);
            Cas::Conflict(g.kvs().first().cloned())
        }
        (ok, other) => panic!("txn succeeded={ok} answered {other:?}"),
    }
}

/// A Range, retried on Unavailable ("leader changed" while the leader
/// moves) as clientv3 retries its repeatable requests.
async fn range(c: &mut Client, key: impl Into<Vec<u8>>, o: GetOptions) -> etcd_client::GetResponse {
    let key = key.into();
    let mut tries = 0;
    loop {
        match c.get(key.clone(), Some(o.clone())).await {
            Ok(r) => return r,
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == tonic::Code::Unavailable && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("range {}: {e}", String::from_utf8_lossy(&key)),
        }
    }
}

/// Get: a Range with limit 1; the object and its resourceVersion.
async fn get(c: &mut Client, key: &str) -> Option<(Vec<u8>, i64)> {
    let r = c
        .get(key, Some(GetOptions::new().with_limit(1)))
        .await
        .unwrap();
    r.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
}

/// List: pages of `limit` at the revision of the first (linearizable) page,
/// each next page from `lastKey+"\x00"`. Returns that revision and the
/// concatenated pages, checking `count` and `more` on every page.
async fn paged_list(c: &mut Client, prefix: &str, limit: i64) -> (i64, Vec<KeyValue>) {
    let end = prefix_end(prefix);
    let mut key = prefix.as_bytes().to_vec();
    let mut rev = 0;
    let mut total = None;
    let mut out: Vec<KeyValue> = Vec::new();
    loop {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if rev != 0 {
            o = o.with_revision(rev);
        }
        let r = range(c, key.clone(), o).await;
        if rev == 0 {
            rev = rev_of(r.header());
        }
        let total = *total.get_or_insert(r.count() as usize);
        assert_eq!(
            r.count() as usize,
            total - out.len(),
            "count of a page is what remains from its key at the list's revision"
        );
        assert!(r.kvs().len() as i64 <= limit);
        out.extend(r.kvs().iter().cloned());
        assert_eq!(r.more(), out.len() < total, "more");
        if !r.more() {
            return (rev, out);
        }
        key = out.last().unwrap().key().to_vec();
        key.push(0);
    }
}

fn kv_tuple(kv: &KeyValue) -> (Vec<u8>, Vec<u8>, i64, i64, i64, i64) {
    (
        kv.key().to_vec(),
        kv.value().to_vec(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

// ---------------------------------------------------------------- the log of acknowledged writes

/// One acknowledged write (each is its own revision).
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    rev: i64,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
    /// The object the write replaced (value, resourceVersion).
    prev: Option<(Vec<u8>, i64)>,
}

#[derive(Default)]
struct Log {
    acked: Mutex<Vec<Acked>>,
    max_rev: AtomicI64,
}

impl Log {
    fn push(&self, a: Acked) {
        self.max_rev.fetch_max(a.rev, Ordering::SeqCst);
        self.acked.lock().unwrap().push(a);
    }

    fn sorted(&self) -> Vec<Acked> {
        let mut v = self.acked.lock().unwrap().clone();
        v.sort_by_key(|a| a.rev);
        for w in v.windows(2) {
            assert!(w[0].rev < w[1].rev, "two acked writes at {}", w[0].rev);
        }
        v
    }

    /// The live objects after every acked write: key -> (value, rv).
    fn model(&self) -> BTreeMap<String, (Vec<u8>, i64)> {
        let mut m = BTreeMap::new();
        for a in self.sorted() {
            match a.value {
                Some(v) => m.insert(a.key, (v, a.rev)),
                None => m.remove(&a.key),
            };
        }
        m
    }
}

// ---------------------------------------------------------------- watch collection

/// A watcher as kube-apiserver creates it.
#[derive(Clone, Debug)]
struct Spec {
    prefix: String,
    start: i64,
}

fn kube_watch(s: &Spec) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_progress_notify()
        .with_start_revision(s.start)
}

/// One delivered event.
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    rev: i64,
    key: String,
    value: Option<Vec<u8>>,
    prev: Option<(Vec<u8>, i64)>,
}

/// The responses of one watch stream, split per watcher and checked as they
/// arrive.
struct Collector {
    name: String,
    specs: Vec<Spec>,
    ids: Vec<i64>,
    events: Vec<Vec<Ev>>,
    /// Per watcher: (events delivered before it, revision) of each progress
    /// response that applies to it.
    progress: Vec<Vec<(usize, i64)>>,
    /// Highest revision of a stream-wide (RequestProgress) answer.
    all_progress: i64,
    responses: usize,
    /// Whether progress responses must be exact (the member reports a
    /// version kube-apiserver trusts with RequestWatchProgress). Otherwise
    /// violations are only counted: etcd before 3.5.8 answers
    /// RequestProgress at once, ahead of pending events (etcd #15220).
    strict: bool,
    violations: usize,
}

impl Collector {
    fn new(name: String, specs: Vec<Spec>, strict: bool) -> Collector {
        let n = specs.len();
        Collector {
            name,
            specs,
            ids: Vec::new(),
            events: vec![Vec::new(); n],
            progress: vec![Vec::new(); n],
            all_progress: 0,
            responses: 0,
            strict,
            violations: 0,
        }
    }

    fn index(&self, id: i64) -> usize {
        self.ids
            .iter()
            .position(|&i| i == id)
            .unwrap_or_else(|| panic!("{}: response for unknown watch {id}", self.name))
    }

    /// A progress ordering property: asserted when strict, else counted.
    fn progress_ok(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            assert!(!self.strict, "{}: {}", self.name, what());
            self.violations += 1;
        }
    }

    fn handle(&mut self, r: &WatchResponse) {
        let name = self.name.clone();
        self.responses += 1;
        let hrev = rev_of(r.header());
        if r.created() {
            assert!(!r.canceled(), "{name}: create refused: {r:?}");
            assert!(self.ids.len() < self.specs.len(), "{name}: extra created");
            self.ids.push(r.watch_id());
            return;
        }
        assert!(!r.canceled(), "{name}: watch cancelled: {r:?}");
        if r.events().is_empty() {
            // A progress response: stream-wide (RequestProgress) or periodic.
            let targets: Vec<usize> = if r.watch_id() == -1 {
                self.all_progress = self.all_progress.max(hrev);
                (0..self.ids.len()).collect()
            } else {
                vec![self.index(r.watch_id())]
            };
            for w in targets {
                let before = self.events[w].last().map_or(0, |e| e.rev);
                self.progress_ok(hrev >= before, || {
                    format!("watch {w}: progress at {hrev} after an event at {before}")
                });
                self.progress[w].push((self.events[w].len(), hrev));
            }
            return;
        }
        let w = self.index(r.watch_id());
        let bound = self.progress[w].iter().map(|p| p.1).max().unwrap_or(0);
        for e in r.events() {
            let name = &self.name;
            let kv = e.kv().expect("event kv");
            let key = String::from_utf8(kv.key().to_vec()).unwrap();
            let rev = kv.mod_revision();
            assert!(
                key.starts_with(&self.specs[w].prefix),
                "{name}: {key} outside the watch"
            );
            assert!(rev <= hrev, "{name}: event {rev} above its header {hrev}");
            self.progress_ok(rev > bound, || {
                format!("watch {w}: event {key}@{rev} after a progress response at {bound}")
            });
            let name = &self.name;
            if let Some(last) = self.events[w].last() {
                assert!(
                    (rev, &key) > (last.rev, &last.key),
                    "{name} watch {w}: {key}@{rev} after {}@{}",
                    last.key,
                    last.rev
                );
            }
            let value = match e.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            let prev = e.prev_kv().map(|p| (p.value().to_vec(), p.mod_revision()));
            if e.event_type() == EventType::Delete || kv.version() > 1 {
                // kube-apiserver rejects a non-create event without prev_kv.
                assert!(prev.is_some(), "{name}: {key}@{rev} without prev_kv");
            }
            self.events[w].push(Ev {
                rev,
                key,
                value,
                prev,
            });
        }
    }

    /// Every acked write under each watcher's prefix from its start, once,
    /// in order, with its previous object; and every progress response
    /// splits the events exactly at its revision.
    fn check(&mut self, log: &[Acked]) {
        for (w, s) in self.specs.clone().iter().enumerate() {
            let want: Vec<Ev> = log
                .iter()
                .filter(|a| a.key.starts_with(&s.prefix) && a.rev >= s.start)
                .map(|a| Ev {
                    rev: a.rev,
                    key: a.key.clone(),
                    value: a.value.clone(),
                    prev: a.prev.clone(),
                })
                .collect();
            let got = &self.events[w];
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, e, "{} watch {w} ({s:?}): event {i}", self.name);
            }
            assert_eq!(
                got.len(),
                want.len(),
                "{} watch {w} ({s:?}): number of events",
                self.name
            );
            let late: Vec<(i64, i64)> = self.progress[w]
                .iter()
                .filter_map(|&(pos, rev)| got.get(pos).map(|e| (rev, e.rev)))
                .filter(|&(rev, next)| next <= rev)
                .collect();
            for (rev, next) in late {
                self.progress_ok(false, || {
                    format!("watch {w}: progress at {rev} came before the event at {next}")
                });
            }
        }
    }
}

/// Open one watch stream on `c` with the watchers `specs` (created one by
/// one, as clientv3 does), then read it until a RequestProgress answer
/// reaches `until` (once that is set), sending RequestProgress every 100 ms.
/// When not strict, progress answers prove nothing, so it reads until every
/// write of `log` (complete once `until` is set) has arrived.
async fn watch_stream(
    name: String,
    mut c: Client,
    specs: Vec<Spec>,
    until: Arc<AtomicI64>,
    strict: bool,
    log: Arc<Log>,
) -> Collector {
    let mut col = Collector::new(name, specs.clone(), strict);
    let mut ws = c
        .watch(specs[0].prefix.clone(), Some(kube_watch(&specs[0])))
        .await
        .unwrap();
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            ws.watch(spec.prefix.clone(), Some(kube_watch(spec)))
                .await
                .unwrap();
        }
        while col.ids.len() <= i {
            let r = next(&mut ws).await;
            col.handle(&r);
        }
    }
    let (mut tx, mut rx) = ws.split();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let ticker = tokio::spawn(async move {
        while !stop2.load(Ordering::SeqCst) {
            tokio::time::sleep(PROGRESS_EVERY).await;
            if tx.request_progress().await.is_err() {
                return;
            }
        }
    });
    read_until(&mut col, &mut rx, &until, &log).await;
    stop.store(true, Ordering::SeqCst);
    ticker.await.unwrap();
    col
}

async fn read_until(
    col: &mut Collector,
    rx: &mut WatchResponseStream,
    until: &AtomicI64,
    log: &Log,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut want: Option<Vec<usize>> = None;
    loop {
        let r = tokio::time::timeout(WAIT, rx.message())
            .await
            .unwrap_or_else(|_| panic!("{}: no watch response in {WAIT:?}", col.name))
            .unwrap()
            .expect("stream open");
        col.handle(&r);
        let u = until.load(Ordering::SeqCst);
        if u > 0 && col.strict && col.all_progress >= u {
            return;
        }
        if u > 0 && !col.strict {
            let want = want.get_or_insert_with(|| {
                let acked = log.sorted();
                col.specs
                    .iter()
                    .map(|s| {
                        acked
                            .iter()
                            .filter(|a| a.key.starts_with(&s.prefix) && a.rev >= s.start)
                            .count()
                    })
                    .collect()
            });
            if col.events.iter().map(Vec::len).eq(want.iter().copied()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{}: never caught up", col.name);
    }
}

// ---------------------------------------------------------------- writers

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn object(tag: &str, len: usize) -> Vec<u8> {
    let mut v = format!("{{\"kind\":\"Pod\",\"tag\":\"{tag}\",\"pad\":\"").into_bytes();
    v.resize(len, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// One apiserver-like client: creates, updates (sometimes with a stale rv,
/// which must fail and return the current object), deletes its own pods,
/// and runs GuaranteedUpdate loops on the shared configmaps.
/// Halfway through, it waits at `pause` and then `resume` (the leader moves
/// in between).
async fn writer(
    mut c: Client,
    w: usize,
    log: Arc<Log>,
    shared: HashMap<String, (Vec<u8>, i64)>,
    pause: Arc<tokio::sync::Barrier>,
    resume: Arc<tokio::sync::Barrier>,
) {
    let mut rng = Lcg(w as u64 + 1);
    let ns = format!("ns{}", w % 3);
    let mut mine: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
    let mut shared = shared;
    for i in 0..OPS_PER_WRITER {
        if i == OPS_PER_WRITER / 2 {
            pause.wait().await;
            resume.wait().await;
        }
        let tag = format!("w{w}-{i}");
        let val = object(&tag, 100 + rng.next(300));
        let op = rng.next(10);
        if op < 3 || mine.len() < 3 {
            let key = format!("/registry/pods/{ns}/w{w}-pod-{i:03}");
            let rv = create(&mut c, &key, &val, 0).await.expect("new key");
            log.push(Acked {
                key: key.clone(),
                rev: rv,
                value: Some(val.clone()),
                prev: None,
            });
            // Creating it again is AlreadyExists.
            if i % 7 == 0 {
                assert_eq!(create(&mut c, &key, b"again", 0).await, None);
            }
            mine.insert(key, (val, rv));
        } else if op < 7 {
            let key = mine.keys().nth(rng.next(mine.len())).unwrap().clone();
            let (old, rv) = mine[&key].clone();
            if i % 5 == 0 {
                // A stale resourceVersion: the Else-Get returns the object.
                match update(&mut c, &key, rv - 1, &val).await {
                    Cas::Conflict(Some(kv)) => {
                        assert_eq!((kv.value(), kv.mod_revision()), (&old[..], rv), "{key}")
                    }
                    other => panic!("stale update of {key} at {}: {other:?}", rv - 1),
                }
            }
            match update(&mut c, &key, rv, &val).await {
                Cas::Ok(nrv) => {
                    assert!(nrv > rv);
                    log.push(Acked {
                        key: key.clone(),
                        rev: nrv,
                        value: Some(val.clone()),
                        prev: Some((old, rv)),
                    });
                    mine.insert(key, (val, nrv));
                }
                other => panic!("update of {key} at {rv}: {other:?}"),
            }
        } else if op < 9 {
            let key = mine.keys().nth(rng.next(mine.len())).unwrap().clone();
            let (old, rv) = mine.remove(&key).unwrap();
            if i % 3 == 0 {
                match delete(&mut c, &key, rv + 1000).await {
                    Cas::Conflict(Some(kv)) => {
                        assert_eq!((kv.value(), kv.mod_revision()), (&old[..], rv))
                    }
                    other => panic!("stale delete of {key}: {other:?}"),
                }
            }
            match delete(&mut c, &key, rv).await {
                Cas::Ok(drv) => log.push(Acked {
                    key: key.clone(),
                    rev: drv,
                    value: None,
                    prev: Some((old, rv)),
                }),
                other => panic!("delete of {key} at {rv}: {other:?}"),
            }
            // Deleting it again finds nothing.
            if i % 4 == 0 {
                assert!(matches!(
                    delete(&mut c, &key, rv).await,
                    Cas::Conflict(None)
                ));
            }
        } else {
            // GuaranteedUpdate: retry on the Else-Get's object until it sticks.
            let key = SHARED[rng.next(SHARED.len())].to_string();
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < 100, "{key}: no progress");
                let (old, rv) = shared[&key].clone();
                let val = object(&format!("{tag}-{attempts}"), 120);
                match update(&mut c, &key, rv, &val).await {
                    Cas::Ok(nrv) => {
                        log.push(Acked {
                            key: key.clone(),
                            rev: nrv,
                            value: Some(val.clone()),
                            prev: Some((old, rv)),
                        });
                        shared.insert(key, (val, nrv));
                        break;
                    }
                    Cas::Conflict(Some(kv)) => {
                        assert!(kv.mod_revision() > rv, "{key}: conflict went back in time");
                        shared.insert(key.clone(), (kv.value().to_vec(), kv.mod_revision()));
                    }
                    Cas::Conflict(None) => panic!("{key} vanished"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- the scenario

async fn scenario(mut procs: Procs) {
    let t0 = Instant::now();
    let name = procs.name();
    let eps = procs.endpoints();
    let mut clients = Vec::new();
    for ep in &eps {
        clients.push(connect(ep, false).await);
    }
    eprintln!("[{name}] cluster ready in {:?}", t0.elapsed());

    let strict = status_and_health(name, &mut clients).await;
    crud(&mut clients[0].clone()).await;
    let t = Instant::now();
    traffic(name, &eps, &clients, strict).await;
    eprintln!("[{name}] traffic phase {:?}", t.elapsed());
    let t = Instant::now();
    compaction(name, &eps, &clients).await;
    eprintln!("[{name}] compaction phase {:?}", t.elapsed());
    let t = Instant::now();
    shared_lease(name, &eps, &clients).await;
    eprintln!("[{name}] lease phase {:?}", t.elapsed());
    let t = Instant::now();
    require_leader(&mut procs, &eps).await;
    eprintln!("[{name}] require-leader phase {:?}", t.elapsed());
    eprintln!("[{name}] total {:?}", t0.elapsed());
}

/// `x.y.z` (ignoring any pre-release or build suffix) as numbers.
fn semver(v: &str) -> (u64, u64, u64) {
    let core = v.split(['-', '+']).next().unwrap();
    let p: Vec<u64> = core
        .split('.')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{v:?} is not a semver"))
        })
        .collect();
    assert_eq!(p.len(), 3, "{v:?} is not a semver");
    (p[0], p[1], p[2])
}

/// Maintenance.Status per endpoint (kube's version check) and the
/// `/registry/health` linearizable get on every member, followers included.
/// Returns whether every member passes kube-apiserver's version check
/// (>= 3.5.13), which turns on RequestWatchProgress.
async fn status_and_health(name: &str, clients: &mut [Client]) -> bool {
    let mut followers = 0;
    let mut trusted = true;
    for (i, c) in clients.iter_mut().enumerate() {
        let s = c.status().await.unwrap();
        let v = semver(s.version());
        if name == "strata" {
            assert!(
                v >= (3, 5, 13),
                "member {i} reports {}: kube-apiserver would turn off RequestWatchProgress",
                s.version()
            );
        } else {
            eprintln!("[{name}] member {i} reports version {}", s.version());
        }
        trusted &= v >= (3, 5, 13);
        assert!(s.db_size() > 0);
        if s.leader() != s.header().unwrap().member_id() {
            followers += 1;
        }
        let r = tokio::time::timeout(Duration::from_secs(2), c.get("/registry/health", None))
            .await
            .expect("health within kube's 2 s")
            .unwrap();
        assert!(r.kvs().is_empty());
    }
    assert_eq!(followers, 2, "one leader, two followers");
    trusted
}

/// The single-object protocol, step by step.
async fn crud(c: &mut Client) {
    let k = "/registry/secrets/default/s1";
    let rv1 = create(c, k, b"v1", 0).await.expect("created");
    assert_eq!(create(c, k, b"dup", 0).await, None, "AlreadyExists");
    assert_eq!(get(c, k).await, Some((b"v1".to_vec(), rv1)));
    let Cas::Ok(rv2) = update(c, k, rv1, b"v2").await else {
        panic!("update")
    };
    assert!(rv2 > rv1);
    match update(c, k, rv1, b"v3").await {
        Cas::Conflict(Some(kv)) => assert_eq!((kv.value(), kv.mod_revision()), (&b"v2"[..], rv2)),
        other => panic!("stale update: {other:?}"),
    }
    match delete(c, k, rv1).await {
        Cas::Conflict(Some(kv)) => assert_eq!(kv.mod_revision(), rv2),
        other => panic!("stale delete: {other:?}"),
    }
    let Cas::Ok(rv3) = delete(c, k, rv2).await else {
        panic!("delete")
    };
    assert!(rv3 > rv2);
    assert_eq!(get(c, k).await, None);
    assert!(matches!(delete(c, k, rv2).await, Cas::Conflict(None)));
    assert!(matches!(update(c, k, rv2, b"x").await, Cas::Conflict(None)));
    // GetCurrentResourceVersion: a linearizable get on the resource prefix.
    // The failed txns above were reads: the revision is still the delete's.
    let r = c
        .get(
            "/registry/secrets/",
            Some(GetOptions::new().with_prefix().with_limit(1)),
        )
        .await
        .unwrap();
    assert_eq!(rev_of(r.header()), rv3);
    assert!(r.kvs().is_empty());
}

/// Writers on every member, watchers (one stream per member plus one that
/// starts late and must catch up), paged lists and health probes, all at once.
async fn traffic(name: &str, eps: &[String], clients: &[Client], strict: bool) {
    let log = Arc::new(Log::default());
    let mut c0 = clients[0].clone();
    // Initial objects, then LIST, then watch from the list's rv+1.
    let mut shared = HashMap::new();
    for (i, key) in SHARED.iter().enumerate() {
        let v = object(&format!("shared-{i}"), 120);
        let rv = create(&mut c0, key, &v, 0).await.unwrap();
        log.push(Acked {
            key: key.to_string(),
            rev: rv,
            value: Some(v.clone()),
            prev: None,
        });
        shared.insert(key.to_string(), (v, rv));
    }
    for i in 0..30 {
        let key = format!("/registry/pods/ns{}/seed-{i:02}", i % 3);
        let v = object(&key, 150);
        let rv = create(&mut c0, &key, &v, 0).await.unwrap();
        log.push(Acked {
            key,
            rev: rv,
            value: Some(v),
            prev: None,
        });
    }
    let (rv0, listed) = paged_list(&mut c0, "/registry/pods/", 7).await;
    assert_eq!(listed.len(), 30);
    let specs = vec![
        Spec {
            prefix: "/registry/pods/".into(),
            start: rv0 + 1,
        },
        Spec {
            prefix: "/registry/configmaps/".into(),
            start: rv0 + 1,
        },
        // No writes here: a RequestProgress must still be answered once
        // this watcher is synced (etcd before 3.5.13 never answered).
        Spec {
            prefix: "/registry/secrets/".into(),
            start: rv0 + 1,
        },
    ];

    let until = Arc::new(AtomicI64::new(0));
    let mut watchers = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let c = connect(ep, true).await;
        watchers.push(tokio::spawn(watch_stream(
            format!("[{name}] stream on member {i}"),
            c,
            specs.clone(),
            until.clone(),
            strict,
            log.clone(),
        )));
    }

    let done = Arc::new(AtomicBool::new(false));
    // Paged lists at a fixed revision against one full read there, on every
    // member in turn; the first page is linearizable.
    let lists = {
        let (clients, done, log) = (clients.to_vec(), done.clone(), log.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) || n < 3 {
                let mut c = clients[n % clients.len()].clone();
                let acked_before = log.max_rev.load(Ordering::SeqCst);
                let (rev, pages) = paged_list(&mut c, "/registry/pods/", 5 + n as i64 % 4).await;
                assert!(
                    rev >= acked_before,
                    "list at {rev} misses a write acked at {acked_before}"
                );
                let full = range(
                    &mut c,
                    "/registry/pods/",
                    GetOptions::new().with_prefix().with_revision(rev),
                )
                .await;
                let a: Vec<_> = pages.iter().map(kv_tuple).collect();
                let b: Vec<_> = full.kvs().iter().map(kv_tuple).collect();
                assert!(a == b, "paged list at {rev} differs from one read");
                let count = range(
                    &mut c,
                    "/registry/pods/",
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_revision(rev),
                )
                .await;
                assert!(count.kvs().is_empty());
                assert_eq!(count.count() as usize, a.len());
                n += 1;
            }
            n
        })
    };
    // kube's health checks, on every member.
    let health = {
        let (clients, done) = (clients.to_vec(), done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                for c in &clients {
                    let mut c = c.clone();
                    let probe = range(&mut c, "/registry/health", GetOptions::new());
                    tokio::time::timeout(Duration::from_secs(2), probe)
                        .await
                        .expect("health within 2 s");
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    let t_writers = Instant::now();
    let pause = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let resume = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                clients[w % clients.len()].clone(),
                w,
                log.clone(),
                shared.clone(),
                pause.clone(),
                resume.clone(),
            ))
        })
        .collect();

    // A watch that starts late from the list's rv: it replays history while
    // the writers go on, then goes live.
    let started = Instant::now();
    while log.acked.lock().unwrap().len() < 32 + WRITERS * OPS_PER_WRITER / 3 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = tokio::spawn(watch_stream(
        format!("[{name}] late stream on member 1"),
        connect(&eps[1], true).await,
        specs.clone(),
        until.clone(),
        strict,
        log.clone(),
    ));
    watchers.push(late);

    // Halfway, the leader moves (an apiserver sees leader changes); the
    // watches on every member must go on with nothing lost or repeated.
    let first_half = t_writers.elapsed();
    pause.wait().await;
    let moved = Instant::now();
    let (from, to) = move_leader(clients).await;
    eprintln!(
        "[{name}] leader moved from member {from} to {to} in {:?}",
        moved.elapsed()
    );
    resume.wait().await;
    let resumed = Instant::now();

    for w in writers {
        w.await.unwrap();
    }
    eprintln!(
        "[{name}] writers: first half {first_half:?}, second half {:?}",
        resumed.elapsed()
    );
    done.store(true, Ordering::SeqCst);
    let end = log.max_rev.load(Ordering::SeqCst);
    until.store(end, Ordering::SeqCst);
    let lists = lists.await.unwrap();
    let health = health.await.unwrap();

    let acked = log.sorted();
    for w in watchers {
        let mut col = w.await.unwrap();
        col.check(&acked);
        let progress: usize = col.progress.iter().map(Vec::len).sum();
        eprintln!(
            "{}: {} responses, {:?} events, {progress} progress checks, {} progress ordering violations{}",
            col.name,
            col.responses,
            col.events.iter().map(Vec::len).collect::<Vec<_>>(),
            col.violations,
            if strict { "" } else { " (counted, not asserted: etcd #15220, fixed in 3.5.8)" }
        );
    }

    // The final state: a full read equals the model, and count_only agrees.
    let model = log.model();
    let mut c = clients[2].clone();
    let (rev, all) = paged_list(&mut c, "/registry/", 50).await;
    assert!(rev >= end);
    let got: BTreeMap<String, (Vec<u8>, i64)> = all
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key().to_vec()).unwrap(),
                (kv.value().to_vec(), kv.mod_revision()),
            )
        })
        .filter(|(k, _)| k.starts_with("/registry/pods/") || k.starts_with("/registry/configmaps/"))
        .collect();
    assert!(got == model, "final state differs from the acked writes");
    let pods = model
        .keys()
        .filter(|k| k.starts_with("/registry/pods/"))
        .count();
    let count = c
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert!(count.kvs().is_empty());
    assert_eq!(count.count() as usize, pods);
    eprintln!(
        "[{name}] {} acked writes (revisions {}..={end}), {lists} paged lists, {health} health probes, {pods} pods left",
        acked.len(),
        rv0 + 1
    );
}

/// Moves the leadership to the next member; returns (old, new) indexes.
async fn move_leader(clients: &[Client]) -> (usize, usize) {
    let mut ids = Vec::new();
    let mut leader = 0;
    for c in clients {
        let s = c.clone().status().await.unwrap();
        ids.push(s.header().unwrap().member_id());
        leader = s.leader();
    }
    let from = ids.iter().position(|&i| i == leader).expect("a leader");
    let to = (from + 1) % ids.len();
    clients[from].clone().move_leader(ids[to]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let s = clients[to].clone().status().await.unwrap();
        if s.leader() == ids[to] {
            return (from, to);
        }
        assert!(Instant::now() < deadline, "leadership never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// kube-apiserver's compactor (one round): `Txn(If version(compact_rev_key)
/// == t Then Put(compact_rev_key, rev) Else Get(compact_rev_key))`, and on
/// success `Compact(rev)` (none on the first round, whose rev is 0).
/// Returns (won, the new t, the revision to compact next round).
async fn compact_round(c: &mut Client, t: i64, rev: i64) -> (bool, i64, i64) {
    let key = "compact_rev_key";
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version(key, CompareOp::Equal, t)])
                .and_then([TxnOp::put(key, rev.to_string(), None)])
                .or_else([TxnOp::get(key, None)]),
        )
        .await
        .unwrap();
    let cur_rev = rev_of(r.header());
    if !r.succeeded() {
        let Some(TxnOpResponse::Get(g)) = r.op_responses().pop() else {
            panic!("Else-Get answer expected")
        };
        return (false, g.kvs()[0].version(), cur_rev);
    }
    if rev != 0 {
        c.compact(rev, None).await.unwrap();
    }
    (true, t + 1, cur_rev)
}

/// Two apiservers race the compaction CAS each round; exactly one wins and
/// compacts. Then watches from a compacted revision are cancelled with
/// `compact_revision`, on every member.
async fn compaction(name: &str, eps: &[String], clients: &[Client]) {
    let (mut a, mut b) = (clients[0].clone(), clients[1].clone());
    let (mut sa, mut sb) = ((0i64, 0i64), (0i64, 0i64));
    let mut compacted = 0;
    let mut w = clients[2].clone();
    for round in 1..=4 {
        let (ra, rb) = tokio::join!(
            compact_round(&mut a, sa.0, sa.1),
            compact_round(&mut b, sb.0, sb.1)
        );
        assert!(
            ra.0 ^ rb.0,
            "round {round}: exactly one apiserver wins: {ra:?} {rb:?}"
        );
        let winner_rev = if ra.0 { sa.1 } else { sb.1 };
        assert_eq!(ra.1, round, "both now know the key's version");
        assert_eq!(rb.1, round);
        if winner_rev != 0 {
            assert!(winner_rev > compacted);
            compacted = winner_rev;
        }
        sa = (ra.1, ra.2);
        sb = (rb.1, rb.2);
        // Some traffic between rounds.
        for i in 0..5 {
            let k = format!("/registry/pods/ns0/compact-{round}-{i}");
            create(&mut w, &k, b"x", 0).await.unwrap();
        }
    }
    assert!(compacted > 0);
    let g = a.get("compact_rev_key", None).await.unwrap();
    assert_eq!(g.kvs()[0].version(), 4);
    // A read below the compaction fails the way the apiserver expects.
    match a
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_revision(compacted - 1)),
        )
        .await
    {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange);
            assert_eq!(
                s.message(),
                "etcdserver: mvcc: required revision has been compacted"
            );
        }
        other => panic!("read below the compaction: {other:?}"),
    }

    // A watch created on a compacted revision: cancelled with
    // compact_revision, so that the apiserver relists.
    for (i, ep) in eps.iter().enumerate() {
        let mut c = connect(ep, true).await;
        // Make sure this member has applied the compaction.
        c.get("/registry/health", None).await.unwrap();
        for start in [1, compacted - 1] {
            let spec = Spec {
                prefix: "/registry/pods/".into(),
                start,
            };
            let mut ws = c
                .watch(spec.prefix.clone(), Some(kube_watch(&spec)))
                .await
                .unwrap();
            let mut seen = Vec::new();
            let cancel = loop {
                let r = next(&mut ws).await;
                if r.canceled() {
                    break r;
                }
                assert!(r.created() && r.events().is_empty(), "[{name}] {r:?}");
                seen.push(r);
                assert!(seen.len() <= 1);
            };
            assert_eq!(
                cancel.compact_revision(),
                compacted,
                "[{name}] member {i}, watch from {start}: {cancel:?}"
            );
            assert!(cancel.events().is_empty());
        }
        // From the compacted revision itself the watch works.
        let spec = Spec {
            prefix: "/registry/pods/ns0/compact-".into(),
            start: compacted,
        };
        let mut ws = c
            .watch(spec.prefix.clone(), Some(kube_watch(&spec)))
            .await
            .unwrap();
        let r = next(&mut ws).await;
        assert!(r.created() && !r.canceled());
        let r = next(&mut ws).await;
        assert!(!r.canceled() && !r.events().is_empty(), "[{name}] {r:?}");
        assert!(r.events()[0].kv().unwrap().mod_revision() >= compacted);
    }
    lagging_watch_is_compacted(name, &eps[1], &mut clients[0].clone()).await;
}

/// The next response on a watch stream (within [`WAIT`], stream open).
async fn next(ws: &mut etcd_client::WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, ws.message())
        .await
        .expect("watch response")
        .unwrap()
        .expect("stream open")
}

async fn next_raw(
    s: &mut tonic::Streaming<proto::etcdserverpb::WatchResponse>,
) -> proto::etcdserverpb::WatchResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("watch response")
        .unwrap()
        .expect("stream open")
}

/// Watchers that fall behind (their client stops reading, so the stream's
/// buffers and HTTP/2 window fill up) while compaction overtakes them: each
/// gets a gapless prefix of the events, then a cancel with
/// `compact_revision`, never a silent gap. 64 watchers on one stream, as
/// the apiserver multiplexes its watches, fill the buffers within a few
/// writes.
async fn lagging_watch_is_compacted(name: &str, ep: &str, c: &mut Client) {
    use proto::etcdserverpb as pb;
    const WATCHERS: usize = 64;
    const WRITES: usize = 40;
    let prefix = "/registry/leases/lag/";
    let channel = tonic::transport::Endpoint::from_shared(ep.to_string())
        .unwrap()
        .initial_stream_window_size(4096)
        .initial_connection_window_size(4096)
        .connect()
        .await
        .unwrap();
    let mut client = pb::watch_client::WatchClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(WATCHERS + 1);
    let start = rev_of(c.get(prefix, None).await.unwrap().header()) + 1;
    for _ in 0..WATCHERS {
        let create = pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            start_revision: start,
            prev_kv: true,
            progress_notify: true,
            ..Default::default()
        };
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
    }
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while ids.len() < WATCHERS {
        let r = next_raw(&mut stream).await;
        assert!(r.created && !r.canceled && r.events.is_empty(), "{r:?}");
        ids.push(r.watch_id);
    }
    // Writes nobody reads, then a compaction past all of them.
    let mut want: Vec<Ev> = Vec::new();
    let mut objs: HashMap<String, (Vec<u8>, i64)> = HashMap::new();
    for i in 0..WRITES {
        let key = format!("{prefix}k{}", i % 8);
        let val = format!("v{i}").into_bytes();
        let (rev, prev) = match objs.get(&key).cloned() {
            None => (create(c, &key, &val, 0).await.unwrap(), None),
            Some((old, rv)) => match update(c, &key, rv, &val).await {
                Cas::Ok(nrv) => (nrv, Some((old, rv))),
                other => panic!("{other:?}"),
            },
        };
        objs.insert(key.clone(), (val.clone(), rev));
        want.push(Ev {
            rev,
            key,
            value: Some(val),
            prev,
        });
    }
    let compact = want.last().unwrap().rev;
    c.compact(compact, None).await.unwrap();
    // Now read everything.
    let mut got: HashMap<i64, Vec<Ev>> = HashMap::new();
    let mut cancelled: HashMap<i64, i64> = HashMap::new();
    while cancelled.len() < WATCHERS {
        let r = next_raw(&mut stream).await;
        assert!(!r.created, "{r:?}");
        assert!(
            !cancelled.contains_key(&r.watch_id),
            "[{name}] response after the cancel: {r:?}"
        );
        if r.canceled {
            assert!(r.events.is_empty());
            cancelled.insert(r.watch_id, r.compact_revision);
            continue;
        }
        let evs = got.entry(r.watch_id).or_default();
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            evs.push(Ev {
                rev: kv.mod_revision,
                key: String::from_utf8(kv.key.clone()).unwrap(),
                value: Some(kv.value.clone()),
                prev: e
                    .prev_kv
                    .as_ref()
                    .map(|p| (p.value.clone(), p.mod_revision)),
            });
        }
    }
    let mut delivered = Vec::new();
    let mut no_prev = 0;
    for id in &ids {
        assert_eq!(
            cancelled[id], compact,
            "[{name}] watch {id}: compact_revision"
        );
        let evs = got.remove(id).unwrap_or_default();
        assert!(
            evs.len() < want.len(),
            "[{name}] watch {id} got every event, yet was cancelled"
        );
        for (g, w) in evs.iter().zip(&want) {
            assert_eq!(
                (g.rev, &g.key, &g.value),
                (w.rev, &w.key, &w.value),
                "[{name}] watch {id}: a gapless prefix"
            );
            // prev_kv is read when the event is sent: an event sent after
            // the compaction of its previous revision has none (etcd's
            // sendLoop; kube-apiserver then fails the watch and relists).
            if g.prev != w.prev {
                assert!(
                    g.prev.is_none() && g.rev - 1 < compact,
                    "[{name}] watch {id}: prev_kv of {g:?}"
                );
                no_prev += 1;
            }
        }
        assert!(want[evs.len()].rev < compact);
        delivered.push(evs.len());
    }
    delivered.sort();
    eprintln!(
        "[{name}] {WATCHERS} lagging watchers cancelled at compaction {compact} after {}..={} of {WRITES} events ({no_prev} sent without prev_kv, after the compaction)",
        delivered[0],
        delivered[WATCHERS - 1]
    );
}

/// One lease shared by 200 Events (kube's `--event-ttl`): when it expires,
/// every Event goes in one revision and watchers see each DELETE with the
/// Event as prev_kv.
async fn shared_lease(name: &str, eps: &[String], clients: &[Client]) {
    const N: usize = 200;
    const TTL: i64 = 3;
    let mut c = clients[1].clone();
    let rv = rev_of(c.get("/registry/events/", None).await.unwrap().header());
    let spec = Spec {
        prefix: "/registry/events/".into(),
        start: rv + 1,
    };
    let mut streams = Vec::new();
    for i in [0, 2] {
        let mut wc = connect(&eps[i], true).await;
        let mut ws = wc
            .watch(spec.prefix.clone(), Some(kube_watch(&spec)))
            .await
            .unwrap();
        let r = next(&mut ws).await;
        assert!(r.created());
        streams.push((i, ws));
    }
    let granted = Instant::now();
    let lease = c.lease_grant(TTL, None).await.unwrap().id();
    let created: Vec<(String, Vec<u8>, i64)> = futures::stream::iter(0..N)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            async move {
                let key = format!("/registry/events/ns{}/ev-{i:03}", i % 4);
                let v = object(&key, 200);
                let rev = create(&mut c, &key, &v, lease).await.expect("new event");
                (key, v, rev)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let creating = granted.elapsed();
    assert_eq!(created.len(), N);
    let count = |c: Client| async move {
        let mut c = c;
        let r = c
            .get(
                "/registry/events/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert!(r.kvs().is_empty());
        r.count()
    };
    if creating < Duration::from_secs(TTL as u64 - 1) {
        assert_eq!(count(c.clone()).await, N as i64);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(c.clone()).await != 0 {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = granted.elapsed();
    assert!(
        gone >= Duration::from_millis(TTL as u64 * 1000 - 500),
        "expired after {gone:?}, TTL {TTL}s"
    );
    let by_key: HashMap<&str, (&[u8], i64)> = created
        .iter()
        .map(|(k, v, r)| (k.as_str(), (&v[..], *r)))
        .collect();
    for (i, mut ws) in streams {
        let mut puts = 0;
        let mut deletes: Vec<i64> = Vec::new();
        let mut last = 0;
        while deletes.len() < N {
            let r = tokio::time::timeout(WAIT, ws.message())
                .await
                .unwrap_or_else(|_| panic!("[{name}] member {i}: {} deletes seen", deletes.len()))
                .unwrap()
                .unwrap();
            assert!(!r.canceled());
            for e in r.events() {
                let kv = e.kv().unwrap();
                let key = std::str::from_utf8(kv.key()).unwrap();
                let (v, crev) = by_key[key];
                assert!(kv.mod_revision() >= last, "in order");
                last = kv.mod_revision();
                match e.event_type() {
                    EventType::Put => {
                        puts += 1;
                        assert_eq!(
                            (kv.value(), kv.mod_revision(), kv.lease()),
                            (v, crev, lease)
                        );
                        assert!(e.prev_kv().is_none());
                    }
                    EventType::Delete => {
                        let p = e.prev_kv().expect("DELETE with prev_kv");
                        assert_eq!(
                            (p.key(), p.value(), p.mod_revision(), p.lease()),
                            (kv.key(), v, crev, lease)
                        );
                        deletes.push(kv.mod_revision());
                    }
                }
            }
        }
        assert_eq!(puts, N);
        assert!(
            deletes.iter().all(|&d| d == deletes[0]),
            "[{name}] one revoke, one revision: {:?}",
            deletes.iter().collect::<std::collections::BTreeSet<_>>()
        );
    }
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "the lease is gone");
    eprintln!("[{name}] {N} events on one lease: created in {creating:?}, gone after {gone:?}");
}

/// A watch opened with `hasleader=true` fails with "etcdserver: no leader"
/// once its member loses quorum; one without it stays open.
async fn require_leader(procs: &mut Procs, eps: &[String]) {
    let mut strict = connect(&eps[0], true).await;
    let mut plain = connect(&eps[0], false).await;
    let mut ws = strict
        .watch("/registry/pods/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut wp = plain
        .watch("/registry/pods/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    for w in [&mut ws, &mut wp] {
        let r = next(w).await;
        assert!(r.created());
    }
    let lost = Instant::now();
    procs.kill(1);
    procs.kill(2);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.message())
            .await
            .expect("the leader-requiring watch ended")
        {
            Ok(Some(r)) => assert!(r.events().is_empty(), "{r:?}"),
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert_eq!(s.message(), "etcdserver: no leader");
        }
        other => panic!("{other:?}"),
    }
    eprintln!(
        "[{}] no-leader watch error after {:?}",
        procs.name(),
        lost.elapsed()
    );
    // The stream without the requirement is still open.
    let r = tokio::time::timeout(Duration::from_millis(300), wp.message()).await;
    assert!(r.is_err(), "the plain watch answered {r:?}");
}
