//! `k8s`: what kube-apiserver does to etcd. Objects live at
//! `/registry/jepsen/<n>` (`n` in `0..keys`), each value a unique integer.
//! Writers use optimistic concurrency on `mod_revision` (the object's
//! resourceVersion) taken from an informer's cache; informers list and watch.
//!
//! Operations (`key` is the object's key; `value` is a JSON object):
//! - `create`: value `{"value": v}`; Txn `If(mod_revision(key) == 0) Then
//!   Put`. Ok `revision`: the object's new resourceVersion. A failed compare
//!   (already exists) is `fail`, error `compare failed`.
//! - `update`: value `{"value": v, "rv": rv}`; Txn `If(mod_revision == rv)
//!   Then Put Else Range` (the else branch refreshes the cache, as the
//!   apiserver's GuaranteedUpdate does). Ok `revision`: new resourceVersion;
//!   a stale `rv` is `fail`, error `compare failed`.
//! - `delete`: value `{"rv": rv}`; Txn `If(mod_revision == rv) Then
//!   DeleteRange Else Range`. Ok `revision`: the delete's revision.
//! - `list`: `key` is the prefix `/registry/jepsen/`; invoke value
//!   `{"limit": l}`. Pages of `l` keys: the first page at the current
//!   revision `R`, every later page from just after the previous page's last
//!   key with `revision: R`, so the whole list is one snapshot at `R`. Ok
//!   value: `[[key, value, mod_revision], ...]` in key order, `revision` R. A
//!   failed page (e.g. `R` compacted meanwhile) fails the list.
//!
//! Informers (two, each its own process for its lists): `list`, then a watch
//! of the prefix from `R + 1` with `prev_kv` and `progress_notify` (a
//! `start` record in `watches.jsonl`), keeping the writers' cache of
//! resourceVersions up to date. On disconnect the watch resumes like the
//! `watch` workload's; when the watch's start revision is compacted the
//! informer relists and starts a new watcher from the new list's revision
//! + 1, as a reflector does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch as tokio_watch;

use super::watch::{signal_drain, watch_loop, DrainRx, WatchEnd, WatchSpec};
use super::{
    header_rev, parse_int, prefix_end, register, spawn_workers, Completion, Ctx, Invocation,
    Process,
};
use crate::client::call;
use crate::history::{EventType, Op, OpType, WatchRecord, WatchRecordKind};

pub const PREFIX: &str = "/registry/jepsen/";

/// The writers' view of resourceVersions, fed by informers and by their own
/// responses.
type Cache = Arc<Mutex<HashMap<String, i64>>>;

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let cache: Cache = Arc::new(Mutex::new(HashMap::new()));
    let (drain_tx, drain_rx) = tokio_watch::channel(None);
    let mut informers = tokio::task::JoinSet::new();
    for i in 0..2u64 {
        let ctx = ctx.clone();
        let cache = cache.clone();
        let drain = drain_rx.clone();
        informers.spawn(async move { informer(ctx, 2000 + i, cache, drain).await });
    }
    let c = cache.clone();
    let writers = spawn_workers(&ctx, ctx.opts.concurrency, move |ctx, w| {
        worker(ctx, w, c.clone())
    })
    .await;
    let mut rng = ctx.rng(u64::MAX);
    signal_drain(&ctx, &drain_tx, &mut rng).await;
    while let Some(r) = informers.join_next().await {
        r?;
    }
    writers
}

fn object_key(n: usize) -> String {
    format!("{PREFIX}{n}")
}

async fn worker(ctx: Ctx, w: u64, cache: Cache) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    while !ctx.stop.is_cancelled() {
        let node = proc.node(&mut rng);
        let known: Option<(String, i64)> = {
            let c = cache.lock().unwrap();
            if c.is_empty() {
                None
            } else {
                let i = rng.gen_range(0..c.len());
                c.iter().nth(i).map(|(k, v)| (k.clone(), *v))
            }
        };
        let dice = rng.gen_range(0..100);
        let done = match (dice, known) {
            (0..=14, _) => {
                let limit = rng.gen_range(1..=4);
                list(&ctx, proc.id, node, limit, ctx.opts.serializable_reads)
                    .await
                    .0
            }
            (15..=24, Some((key, rv))) => delete(&ctx, proc.id, node, &key, rv, &cache).await,
            (25..=69, Some((key, rv))) => update(&ctx, proc.id, node, &key, rv, &cache).await,
            _ => {
                let key = object_key(rng.gen_range(0..ctx.opts.keys));
                create(&ctx, proc.id, node, &key, &cache).await
            }
        };
        proc.after(&done).await;
    }
    Ok(())
}

fn mod_rev_is(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Vec::new(),
    }
}

fn put_op(key: &str, value: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// The current mod revision in a failed optimistic txn's else-branch read.
fn refreshed_rv(responses: &[proto::etcdserverpb::ResponseOp]) -> Option<i64> {
    responses.iter().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => {
            Some(rr.kvs.first().map_or(0, |kv| kv.mod_revision))
        }
        _ => None,
    })
}

fn set_cache(cache: &Cache, key: &str, rv: Option<i64>) {
    let mut c = cache.lock().unwrap();
    match rv {
        Some(rv) if rv > 0 => {
            c.insert(key.to_string(), rv);
        }
        _ => {
            c.remove(key);
        }
    }
}

/// Records and runs one optimistic write txn (`If(...) Then write Else
/// Range(key)`), keeping the cache in step with the outcome.
async fn optimistic(
    ctx: &Ctx,
    inv: Invocation,
    txn: TxnRequest,
    cache: &Cache,
    on_ok: impl FnOnce(i64) -> Option<i64>,
) -> Op {
    let node = inv.op().node.unwrap_or(0);
    let key = inv.op().key.clone().unwrap_or_default();
    let value = inv.op().value.clone();
    match call(ctx.client.kv(node).txn(txn)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            if resp.succeeded {
                set_cache(cache, &key, on_ok(rev));
                inv.ok(Completion::value(value).with_revision(rev))
            } else {
                set_cache(cache, &key, refreshed_rv(&resp.responses));
                inv.fail(
                    "compare failed",
                    Completion::value(value).with_revision(rev),
                )
            }
        }
        Err(e) => inv.error(&e, false),
    }
}

fn invoke(ctx: &Ctx, process: u64, node: usize, f: &str, key: &str, value: Value) -> Invocation {
    ctx.recorder
        .invoke(process, f, Some(key.to_string()), value, node)
}

async fn create(ctx: &Ctx, process: u64, node: usize, key: &str, cache: &Cache) -> Op {
    let v = register::unique_value();
    let txn = TxnRequest {
        compare: vec![mod_rev_is(key, 0)],
        success: vec![put_op(key, v)],
        failure: vec![get_op(key)],
    };
    let inv = invoke(ctx, process, node, "create", key, json!({"value": v}));
    optimistic(ctx, inv, txn, cache, Some).await
}

async fn update(ctx: &Ctx, process: u64, node: usize, key: &str, rv: i64, cache: &Cache) -> Op {
    let v = register::unique_value();
    let txn = TxnRequest {
        compare: vec![mod_rev_is(key, rv)],
        success: vec![put_op(key, v)],
        failure: vec![get_op(key)],
    };
    let value = json!({"value": v, "rv": rv});
    let inv = invoke(ctx, process, node, "update", key, value);
    optimistic(ctx, inv, txn, cache, Some).await
}

async fn delete(ctx: &Ctx, process: u64, node: usize, key: &str, rv: i64, cache: &Cache) -> Op {
    let txn = TxnRequest {
        compare: vec![mod_rev_is(key, rv)],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                },
            )),
        }],
        failure: vec![get_op(key)],
    };
    let inv = invoke(ctx, process, node, "delete", key, json!({"rv": rv}));
    optimistic(ctx, inv, txn, cache, |_| None).await
}

/// A paged list at one revision. Returns the completion and, when ok, the
/// list's revision and items `(key, mod_revision)`.
async fn list(
    ctx: &Ctx,
    process: u64,
    node: usize,
    limit: i64,
    serializable: bool,
) -> (Op, Option<(i64, Vec<(String, i64)>)>) {
    let inv = ctx.recorder.invoke(
        process,
        "list",
        Some(PREFIX.to_string()),
        json!({"limit": limit}),
        node,
    );
    let end = prefix_end(PREFIX);
    let mut from = PREFIX.as_bytes().to_vec();
    let mut at = 0i64;
    let mut items: Vec<(String, i64, Option<i64>)> = Vec::new();
    loop {
        let req = RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit,
            revision: at,
            serializable,
            ..Default::default()
        };
        let resp = match call(ctx.client.kv(node).range(req)).await {
            Ok(r) => r,
            Err(e) => return (inv.error(&e, true), None),
        };
        if at == 0 {
            at = header_rev(&resp.header);
        }
        for kv in &resp.kvs {
            items.push((
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                parse_int(&kv.value),
            ));
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    let value: Value = items.iter().map(|(k, rev, v)| json!([k, v, rev])).collect();
    let done = inv.ok(Completion::value(value).with_revision(at));
    let listed = items.into_iter().map(|(k, rev, _)| (k, rev)).collect();
    (done, Some((at, listed)))
}

/// List, then watch from the list's revision + 1; relist when compacted.
async fn informer(ctx: Ctx, w: u64, cache: Cache, drain: DrainRx) {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    loop {
        if drain.borrow().is_some() {
            return;
        }
        let node = proc.node(&mut rng);
        // Informers list linearizably, as reflectors do on a relist.
        let (done, listed) = list(&ctx, proc.id, node, 3, false).await;
        proc.after(&done).await;
        let Some((rev, items)) = listed else {
            debug_assert_ne!(done.kind, OpType::Ok);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        {
            let mut c = cache.lock().unwrap();
            c.clear();
            c.extend(items);
        }
        let id = ctx.recorder.new_watcher();
        let spec = WatchSpec::prefix(PREFIX);
        let mut r = WatchRecord::new(id, 0, WatchRecordKind::Start);
        spec.declare(&mut r, rev + 1, node);
        ctx.recorder.record_watch(r);
        let c = cache.clone();
        let end = watch_loop(
            &ctx,
            &mut rng,
            id,
            &spec,
            rev + 1,
            node,
            false,
            drain.clone(),
            move |events| {
                let mut c = c.lock().unwrap();
                for e in events {
                    match e.kind {
                        EventType::Put => {
                            c.insert(e.kv.key.clone(), e.kv.mod_revision);
                        }
                        EventType::Delete => {
                            c.remove(&e.kv.key);
                        }
                    }
                }
            },
        )
        .await;
        match end {
            WatchEnd::Stopped => return,
            WatchEnd::Compacted { .. } => continue,
        }
    }
}
