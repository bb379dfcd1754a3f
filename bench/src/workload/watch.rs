//! Watch workloads: `watch`, `watch-latency` and `watch-get`, and the
//! stream machinery they share.
//!
//! Each watch stream is one task that queues all its create requests,
//! opens the bidirectional stream, maps `created` responses to watchers in
//! request order (servers answer creates on a stream in order), and then
//! counts every event per watcher. Puts that should produce events carry
//! their send time (nanoseconds since the run's epoch) in the first 8 bytes
//! of the value, so each event's put-to-event latency is measured exactly
//! without any shared state. After the puts, the run waits until every
//! event has arrived or nothing arrives for [`STALL`]; a watcher's dropped
//! events are then `expected - received` for that watcher, summed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest,
};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{block, closed_loop, latency_json, Ctx, Worker};
use crate::cli::{WatchArgs, WatchGetArgs, WatchLatencyArgs};
use crate::conn::Svc;
use crate::keys;
use crate::progress::Counter;
use crate::report::Report;
use crate::report::{status_message, Stats};

/// How long the run waits for missing events after the last one arrived.
pub const STALL: Duration = Duration::from_secs(10);

/// Checks `watch`'s flags.
pub fn validate_watch(a: &WatchArgs) -> Result<()> {
    keys::check_key_space(a.key_size, a.key_space_size)?;
    if a.streams == 0 || a.watch_per_stream == 0 || a.watched_key_total == 0 {
        bail!("--streams, --watch-per-stream and --watched-key-total must be at least 1");
    }
    Ok(())
}

/// Checks `watch-latency`'s flags.
pub fn validate_latency(a: &WatchLatencyArgs) -> Result<()> {
    if a.streams == 0 || a.watchers_per_stream == 0 || a.key_size == 0 {
        bail!("--streams, --watchers-per-stream and --key-size must be at least 1");
    }
    Ok(())
}

/// Checks `watch-get`'s flags.
pub fn validate_get(a: &WatchGetArgs) -> Result<()> {
    if a.streams == 0 || a.watchers == 0 {
        bail!("--streams and --watchers must be at least 1");
    }
    Ok(())
}

/// State all stream tasks of a run share.
struct Shared {
    /// Watcher creates answered (created, refused, or their stream failed).
    created: AtomicUsize,
    /// Events received over all watchers.
    received: AtomicU64,
    /// Woken on every created response and event batch.
    notify: Notify,
    /// Zero of the value stamps.
    epoch: Instant,
    /// Whether event values carry stamps (latency is measured).
    stamped: bool,
    /// Set once the event phase starts.
    progress: OnceLock<Counter>,
}

impl Shared {
    fn count(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = self.progress.get() {
            c.add(n);
        }
        self.notify.notify_waiters();
    }
}

/// What one stream saw.
struct StreamResult {
    /// Events per watcher of this stream, in creation order.
    received: Vec<u64>,
    /// Put-to-event latency of each stamped event, and watch errors.
    events: Stats,
    /// Time from opening the stream to each watcher's `created`.
    creates: Stats,
}

/// Opens a stream with `creates` and counts its events until `stop`.
async fn run_stream(
    mut client: WatchClient<Svc>,
    creates: Vec<WatchCreateRequest>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> StreamResult {
    let n = creates.len();
    let mut res = StreamResult {
        received: vec![0; n],
        events: Stats::default(),
        creates: Stats::default(),
    };
    // Queue every create before opening: a server may send the response
    // headers only with its first message. The sender stays alive (and the
    // request stream open) until the end.
    let (tx, rx) = mpsc::channel(n.max(1));
    for c in creates {
        tx.try_send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(c)),
        })
        .expect("invariant: channel holds every create");
    }
    let opened = Instant::now();
    let mut stream = tokio::select! {
        r = client.watch(ReceiverStream::new(rx)) => match r {
            Ok(s) => s.into_inner(),
            Err(s) => {
                res.events.err(status_message(&s));
                resolve(&shared, n);
                return res;
            }
        },
        _ = stop.cancelled() => return res,
    };
    let mut ids: HashMap<i64, usize> = HashMap::with_capacity(n);
    // Creates answered (created or refused).
    let mut answered = 0;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = stream.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                res.events.err("watch stream closed by the server");
                break;
            }
            Err(s) => {
                res.events.err(status_message(&s));
                break;
            }
        };
        if resp.created {
            if ids.len() < n && !resp.canceled {
                ids.insert(resp.watch_id, ids.len());
                res.creates.ok(opened.elapsed());
                answered += 1;
                resolve(&shared, 1);
            } else if ids.len() >= n {
                res.events.err("unexpected created response");
            }
        }
        if resp.canceled {
            let why = if resp.cancel_reason.is_empty() {
                "watch canceled".to_string()
            } else {
                resp.cancel_reason
            };
            res.events.err(why);
            if resp.created {
                // A create that failed: its watcher gets no events.
                answered += 1;
                resolve(&shared, 1);
            }
        }
        if resp.compact_revision != 0 {
            res.events.err(format!(
                "watch compacted at revision {}",
                resp.compact_revision
            ));
        }
        if resp.events.is_empty() {
            continue;
        }
        let Some(&w) = ids.get(&resp.watch_id) else {
            res.events
                .err(format!("events for unknown watch id {}", resp.watch_id));
            continue;
        };
        if shared.stamped {
            let now = shared.epoch.elapsed().as_nanos() as u64;
            for ev in &resp.events {
                if let Some(sent) = ev.kv.as_ref().and_then(|kv| keys::stamp_of(&kv.value)) {
                    res.events
                        .ok(Duration::from_nanos(now.saturating_sub(sent)));
                }
            }
        }
        let k = resp.events.len() as u64;
        res.received[w] += k;
        shared.count(k);
    }
    drop(tx);
    // A stream that ended early leaves its unanswered creates resolved, so
    // the run goes on (those watchers count as dropping every event).
    resolve(&shared, n.saturating_sub(answered));
    res
}

/// Marks `k` watcher creates as answered.
fn resolve(shared: &Shared, k: usize) {
    if k > 0 {
        shared.created.fetch_add(k, Ordering::Relaxed);
        shared.notify.notify_waiters();
    }
}

/// A set of running streams.
struct Streams {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<StreamResult>>,
    watchers: usize,
}

impl Streams {
    /// Starts stream `s` of `plan` on client `s % clients` (as etcd's tool).
    fn start(ctx: &Ctx, plan: Vec<Vec<WatchCreateRequest>>, stamped: bool) -> Streams {
        let shared = Arc::new(Shared {
            created: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            notify: Notify::new(),
            epoch: Instant::now(),
            stamped,
            progress: OnceLock::new(),
        });
        let stop = CancellationToken::new();
        let watchers = plan.iter().map(Vec::len).sum();
        let tasks = plan
            .into_iter()
            .enumerate()
            .map(|(s, creates)| {
                let client = ctx.conns.watch(s % ctx.global.clients);
                tokio::spawn(run_stream(client, creates, shared.clone(), stop.clone()))
            })
            .collect();
        Streams {
            shared,
            stop,
            tasks,
            watchers,
        }
    }

    /// Waits until `cond(shared)` holds, or nothing changed for [`STALL`];
    /// returns whether it holds.
    async fn wait_until(&self, cond: impl Fn(&Shared) -> bool) -> bool {
        let mut last = (usize::MAX, u64::MAX);
        let mut since = Instant::now();
        loop {
            let notified = self.shared.notify.notified();
            if cond(&self.shared) {
                return true;
            }
            let now = (
                self.shared.created.load(Ordering::Relaxed),
                self.shared.received.load(Ordering::Relaxed),
            );
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= STALL {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Waits until every watcher is created (or the streams stall).
    async fn wait_created(&self) -> Result<()> {
        let w = self.watchers;
        if !self
            .wait_until(|s| s.created.load(Ordering::Relaxed) >= w)
            .await
        {
            bail!(
                "only {} of {w} watchers were created within {STALL:?} of the last one",
                self.shared.created.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }

    /// Counts further events with `counter`.
    fn count_with(&self, counter: Counter) {
        // Called once per run; a second counter would be ignored.
        let _ = self.shared.progress.set(counter);
    }

    /// Stops the streams and collects their results, in stream order.
    async fn stop(self) -> Vec<StreamResult> {
        self.stop.cancel();
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            out.push(t.await.expect("invariant: stream tasks do not panic"));
        }
        out
    }
}

/// Per-watcher expectations against the results: (received, dropped,
/// extra) events, summed over watchers.
fn tally(results: &[StreamResult], expected: impl Fn(usize, usize) -> u64) -> (u64, u64, u64) {
    let (mut received, mut dropped, mut extra) = (0, 0, 0);
    for (s, r) in results.iter().enumerate() {
        for (w, &got) in r.received.iter().enumerate() {
            let want = expected(s, w);
            received += got;
            dropped += want.saturating_sub(got);
            extra += got.saturating_sub(want);
        }
    }
    (received, dropped, extra)
}

/// Counts `other`'s errors into `stats` as `"<what>: <message>"`.
fn add_errors(stats: &mut Stats, what: &str, other: &Stats) {
    for (m, n) in &other.errors {
        *stats.errors.entry(format!("{what}: {m}")).or_default() += n;
    }
}

/// The watcher figures every watch report carries in `extra`; `tallied`
/// is [`tally`]'s (received, dropped, unexpected).
fn insert_tally(
    r: &mut Report,
    watchers: u64,
    streams: u64,
    expected: u64,
    tallied: (u64, u64, u64),
) {
    let (received, dropped, unexpected) = tallied;
    r.extra.insert("watchers".into(), json!(watchers));
    r.extra.insert("streams".into(), json!(streams));
    r.extra.insert("events_expected".into(), json!(expected));
    r.extra.insert("events_received".into(), json!(received));
    r.extra.insert("events_dropped".into(), json!(dropped));
    r.extra
        .insert("events_unexpected".into(), json!(unexpected));
}

fn merge<'a>(it: impl Iterator<Item = &'a Stats>) -> Stats {
    let mut all = Stats::default();
    for s in it {
        all.merge(s);
    }
    all
}

fn create(key: Vec<u8>, start_revision: i64, prev_kv: bool) -> WatchCreateRequest {
    WatchCreateRequest {
        key,
        start_revision,
        prev_kv,
        ..Default::default()
    }
}

fn warn_streams_per_conn(ctx: &Ctx, streams: usize) {
    let conns = ctx.global.conns.min(ctx.global.clients);
    let wanted = 1 + streams / 100;
    if conns < wanted {
        eprintln!("warning: grpc limits 100 streams per client connection, have {conns} but need {wanted}");
    }
}

/// Puts to the watched keys; counts successes per watched-key index.
struct WatchPutWorker {
    kv: KvClient<Svc>,
    keys: Arc<Vec<Vec<u8>>>,
    ok_by_key: Arc<Vec<AtomicU64>>,
    epoch: Instant,
}

impl Worker for WatchPutWorker {
    async fn call(&mut self, i: u64) -> (usize, Result<(), tonic::Status>) {
        let k = (i % self.keys.len() as u64) as usize;
        let req = PutRequest {
            key: self.keys[k].clone(),
            value: keys::stamped_value(self.epoch, 8, &[]),
            ..Default::default()
        };
        let r = self.kv.put(req).await.map(|_| ());
        if r.is_ok() {
            self.ok_by_key[k].fetch_add(1, Ordering::Relaxed);
        }
        (0, r)
    }
}

/// Runs `watch`.
pub async fn run_watch(ctx: &Ctx, a: WatchArgs) -> Result<Report> {
    warn_streams_per_conn(ctx, a.streams);
    // The watched keys; equal keys (random picks can collide) share a key id.
    let mut rng = rand::thread_rng();
    let watched: Vec<Vec<u8>> = (0..a.watched_key_total as u64)
        .map(|i| {
            let n = if a.sequential_keys {
                i % a.key_space_size
            } else {
                rand::Rng::gen_range(&mut rng, 0..a.key_space_size)
            };
            keys::key(n, a.key_size)
        })
        .collect();
    let mut key_id: HashMap<&[u8], usize> = HashMap::new();
    let id_of: Vec<usize> = watched
        .iter()
        .map(|k| {
            let next = key_id.len();
            *key_id.entry(k.as_slice()).or_insert(next)
        })
        .collect();
    let distinct = key_id.len();
    // Watcher j = stream s, position p with j = s * per_stream + p watches watched[j % len].
    let per = a.watch_per_stream;
    let watched_by = |s: usize, p: usize| (s * per + p) % watched.len();
    let plan: Vec<Vec<WatchCreateRequest>> = (0..a.streams)
        .map(|s| {
            (0..per)
                .map(|p| create(watched[watched_by(s, p)].clone(), 0, false))
                .collect()
        })
        .collect();
    let mut watchers_on = vec![0u64; distinct];
    for s in 0..a.streams {
        for p in 0..per {
            watchers_on[id_of[watched_by(s, p)]] += 1;
        }
    }

    let watchers = a.streams * per;
    let created_at = Instant::now();
    let streams = Streams::start(ctx, plan, true);
    if let Err(e) = streams.wait_created().await {
        let results = streams.stop().await;
        let errs = merge(results.iter().map(|r| &r.events));
        return Err(e.context(format!("watch errors: {:?}", errs.errors)));
    }
    let create_elapsed = created_at.elapsed();

    // Put phase: every put to watched[i % len] should reach each watcher of that key.
    let planned: u64 = (0..a.put_total)
        .map(|i| watchers_on[id_of[(i % watched.len() as u64) as usize]])
        .sum();
    let progress = ctx.progress(planned, "events");
    streams.count_with(progress.counter());
    let keys_arc = Arc::new(watched.clone());
    let ok_by_key: Arc<Vec<AtomicU64>> =
        Arc::new((0..watched.len()).map(|_| AtomicU64::new(0)).collect());
    let workers: Vec<_> = (0..ctx.global.clients)
        .map(|c| WatchPutWorker {
            kv: ctx.conns.kv(c),
            keys: keys_arc.clone(),
            ok_by_key: ok_by_key.clone(),
            epoch: streams.shared.epoch,
        })
        .collect();
    let hidden = crate::progress::Progress::start(0, "", false);
    let puts = closed_loop(workers, a.put_total, a.put_rate, &hidden).await;
    let mut ok_puts_by_id = vec![0u64; distinct];
    for (k, n) in ok_by_key.iter().enumerate() {
        ok_puts_by_id[id_of[k]] += n.load(Ordering::Relaxed);
    }
    let expected: u64 = (0..distinct)
        .map(|d| ok_puts_by_id[d] * watchers_on[d])
        .sum();
    streams
        .wait_until(|s| s.received.load(Ordering::Relaxed) >= expected)
        .await;
    let results = streams.stop().await;
    progress.finish();
    let elapsed = created_at.elapsed() - create_elapsed;

    let (received, dropped, extra) = tally(&results, |s, p| ok_puts_by_id[id_of[watched_by(s, p)]]);
    let put_stats = puts.merged();
    let creates = merge(results.iter().map(|r| &r.creates));
    let mut main = merge(results.iter().map(|r| &r.events));
    add_errors(&mut main, "put", &put_stats);
    let mut r = ctx.report("watch", planned, main.clone(), elapsed);
    insert_tally(
        &mut r,
        watchers as u64,
        a.streams as u64,
        expected,
        (received, dropped, extra),
    );
    r.extra.insert("puts".into(), json!(put_stats.ok_count()));
    r.extra
        .insert("put_errors".into(), json!(put_stats.err_count()));
    r.extra
        .insert("put_latency_ms".into(), latency_json(&put_stats));
    r.extra
        .insert("create_secs".into(), json!(create_elapsed.as_secs_f64()));
    r.extra
        .insert("create_latency_ms".into(), latency_json(&creates));
    r.blocks
        .push(block("Watch creation summary:", creates, create_elapsed));
    r.blocks
        .push(block("Put summary:", put_stats, puts.elapsed));
    r.blocks.push(block(
        "Watch events received summary (put-to-event latency):",
        main,
        elapsed,
    ));
    r.notes.push(format!(
        "\nWatchers: {watchers} on {} streams; events expected {expected}, received {received}, dropped {dropped}, unexpected {extra}",
        a.streams
    ));
    Ok(r)
}

/// Runs `watch-latency`.
pub async fn run_latency(ctx: &Ctx, a: WatchLatencyArgs) -> Result<Report> {
    warn_streams_per_conn(ctx, a.streams);
    let key = keys::random_bytes(a.key_size);
    let pad = keys::random_bytes(a.val_size);
    let watchers = a.streams * a.watchers_per_stream;
    let plan: Vec<Vec<WatchCreateRequest>> = (0..a.streams)
        .map(|_| {
            (0..a.watchers_per_stream)
                .map(|_| create(key.clone(), 0, a.prevkv))
                .collect()
        })
        .collect();
    let streams = Streams::start(ctx, plan, true);
    if let Err(e) = streams.wait_created().await {
        let results = streams.stop().await;
        let errs = merge(results.iter().map(|r| &r.events));
        return Err(e.context(format!("watch errors: {:?}", errs.errors)));
    }
    let mut kv = KvClient::new(ctx.conns.dedicated().await?);
    let total = a.put_total * watchers as u64;
    let progress = ctx.progress(total, "events");
    streams.count_with(progress.counter());
    let limiter = crate::limiter::Limiter::new(a.put_rate);
    let mut puts = Stats::default();
    let start = Instant::now();
    for _ in 0..a.put_total {
        if let Some(l) = &limiter {
            l.wait().await;
        }
        let t = Instant::now();
        let req = PutRequest {
            key: key.clone(),
            value: keys::stamped_value(streams.shared.epoch, a.val_size, &pad),
            ..Default::default()
        };
        let r = kv.put(req).await.map(|_| ());
        puts.record(t.elapsed(), r);
    }
    let put_elapsed = start.elapsed();
    let expected = puts.ok_count() * watchers as u64;
    streams
        .wait_until(|s| s.received.load(Ordering::Relaxed) >= expected)
        .await;
    let elapsed = start.elapsed();
    let results = streams.stop().await;
    progress.finish();
    let ok_puts = puts.ok_count();
    let (received, dropped, extra) = tally(&results, |_, _| ok_puts);
    let mut main = merge(results.iter().map(|r| &r.events));
    add_errors(&mut main, "put", &puts);
    let mut r = ctx.report("watch-latency", total, main.clone(), elapsed);
    insert_tally(
        &mut r,
        watchers as u64,
        a.streams as u64,
        expected,
        (received, dropped, extra),
    );
    r.extra.insert("puts".into(), json!(ok_puts));
    r.extra.insert("put_errors".into(), json!(puts.err_count()));
    r.extra.insert("put_latency_ms".into(), latency_json(&puts));
    r.blocks.push(block("Put summary:", puts, put_elapsed));
    r.blocks.push(block(
        "Watch events summary (put-to-event latency):",
        main,
        elapsed,
    ));
    r.notes.push(format!(
        "\nWatchers: {watchers} on {} streams; events expected {expected}, received {received}, dropped {dropped}, unexpected {extra}",
        a.streams
    ));
    Ok(r)
}

/// Serializable gets of one key, back to back, until stopped.
async fn get_loop(mut kv: KvClient<Svc>, stop: CancellationToken) -> (Stats, Duration) {
    let mut st = Stats::default();
    let start = Instant::now();
    let req = RangeRequest {
        key: b"abc".to_vec(),
        serializable: true,
        ..Default::default()
    };
    loop {
        let t = Instant::now();
        let r = tokio::select! {
            r = kv.range(req.clone()) => r.map(|_| ()),
            _ = stop.cancelled() => break,
        };
        st.record(t.elapsed(), r);
    }
    (st, start.elapsed())
}

/// Runs `watch-get`.
pub async fn run_get(ctx: &Ctx, a: WatchGetArgs) -> Result<Report> {
    warn_streams_per_conn(ctx, a.streams);
    const KEY: &[u8] = b"watchkey";
    // History the watchers start behind: --events puts to one key.
    let mut kv = ctx.conns.kv(0);
    let mut rev = 0;
    for i in 0..a.events {
        let resp = kv
            .put(PutRequest {
                key: KEY.to_vec(),
                value: i.to_string().into_bytes(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
            .context("put the watched history")?;
        if i == 0 {
            rev = resp.into_inner().header.map_or(0, |h| h.revision);
        }
    }
    // Watcher i is on stream i % streams, watching from the first put.
    let plan: Vec<Vec<WatchCreateRequest>> = (0..a.streams)
        .map(|s| {
            (s..a.watchers)
                .step_by(a.streams)
                .map(|_| create(KEY.to_vec(), rev, false))
                .collect()
        })
        .collect();
    let expected = a.watchers as u64 * a.events;
    let progress = ctx.progress(expected, "events");
    let getter = KvClient::new(ctx.conns.dedicated().await?);
    let streams = Streams::start(ctx, plan, false);
    streams.count_with(progress.counter());
    let stop_gets = CancellationToken::new();
    let gets = tokio::spawn(get_loop(getter, stop_gets.clone()));
    let start = Instant::now();
    streams
        .wait_until(|s| s.received.load(Ordering::Relaxed) >= expected)
        .await;
    let catch_up = start.elapsed();
    stop_gets.cancel();
    let (get_stats, get_elapsed) = gets.await.expect("invariant: get loop does not panic");
    let results = streams.stop().await;
    progress.finish();
    let (received, dropped, extra) = tally(&results, |_, _| a.events);
    let watch_errors = merge(results.iter().map(|r| &r.events));
    let mut main = get_stats.clone();
    add_errors(&mut main, "watch", &watch_errors);
    let total = main.ok_count() + main.err_count();
    let mut r = ctx.report("watch-get", total, main, get_elapsed);
    insert_tally(
        &mut r,
        a.watchers as u64,
        a.streams as u64,
        expected,
        (received, dropped, extra),
    );
    r.extra
        .insert("catch_up_secs".into(), json!(catch_up.as_secs_f64()));
    r.blocks
        .push(block("Get during watch summary:", get_stats, get_elapsed));
    r.notes.push(format!(
        "\nWatchers: {} on {} streams caught up in {:.3} s; events expected {expected}, received {received}, dropped {dropped}, unexpected {extra}",
        a.watchers,
        a.streams,
        catch_up.as_secs_f64()
    ));
    if !watch_errors.errors.is_empty() {
        r.notes
            .push(format!("Watch errors: {:?}", watch_errors.errors));
    }
    Ok(r)
}
