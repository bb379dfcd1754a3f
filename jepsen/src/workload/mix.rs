//! `mix`: the less common parts of the KV API under load: compaction at
//! older revisions, stale reads at old revisions, keys-only and limited
//! ranges, and multi-op transactions. Registers live at
//! `/jepsen/mix/reg/<k>`, transaction keys at `/jepsen/mix/txn/<k>`.
//!
//! Operations:
//! - `read` / `write` on register keys: exactly the [`super::register`]
//!   operations (unique values; `version`/`mod_revision` recorded).
//! - `read-at`: `key` set, invoke value `{"revision": r}` with `r` a recent
//!   past revision; a Range at revision `r`. Ok value
//!   `{"revision": r, "value": v}` (`v` null when the key did not exist at
//!   `r`), with `version`/`mod_revision` of the key as of `r` and `revision`
//!   the header's (current) revision. A compacted `r` is `fail`.
//! - `range`: `key` is the prefix `/jepsen/mix/`, invoke value
//!   `{"keys_only": b, "limit": l}`. Ok value `{"kvs": [[key, value,
//!   mod_revision, version], ...], "more": b, "count": n}`; `value` is null
//!   for keys-only ranges (and for keys whose value is not an integer).
//! - `mix-txn`: 2–4 micro-ops in the `wr` format (`[["r", key, null], ["w",
//!   key, v], ...]`) executed as ONE Txn with no compare: the ops run in
//!   order, atomically; a read after a write of the same key in the txn sees
//!   that write. Written keys are distinct within a txn. Ok value carries the
//!   reads' results. (Not named `txn`: the Elle checker reads every `txn` op
//!   as one model, so these would break an `append` run they join.)
//! - `compact`: value: the revision compacted to (about 100 revisions behind
//!   the newest one seen), issued by worker 0 about every second. A revision
//!   already compacted is `fail`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::Rng;
use serde_json::{json, Value};

use super::{header_rev, parse_int, prefix_end, register, spawn_workers, Completion, Ctx, Process};
use crate::client::call;
use crate::history::Op;

pub const PREFIX: &str = "/jepsen/mix/";

fn reg_key(k: usize) -> String {
    format!("{PREFIX}reg/{k}")
}

fn txn_key(k: usize) -> String {
    format!("{PREFIX}txn/{k}")
}

/// The newest revision any response showed.
struct Shared {
    latest: AtomicI64,
}

impl Shared {
    fn saw(&self, op: &Op) {
        if let Some(r) = op.revision {
            self.latest.fetch_max(r, Ordering::Relaxed);
        }
    }
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        latest: AtomicI64::new(1),
    });
    spawn_workers(&ctx, ctx.opts.concurrency, move |ctx, w| {
        worker(ctx, w, shared.clone())
    })
    .await
}

async fn worker(ctx: Ctx, w: u64, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    let mut last_compact = Instant::now();
    let keys = ctx.opts.keys;
    while !ctx.stop.is_cancelled() {
        let node = proc.node(&mut rng);
        let latest = shared.latest.load(Ordering::Relaxed);
        let done = if w == 0 && last_compact.elapsed() > Duration::from_secs(1) && latest > 150 {
            last_compact = Instant::now();
            compact(&ctx, proc.id, node, latest - 100).await
        } else {
            match rng.gen_range(0..100) {
                0..=24 => {
                    let key = reg_key(rng.gen_range(0..keys));
                    register::write(&ctx, proc.id, node, &key, register::unique_value()).await
                }
                25..=34 => {
                    let key = reg_key(rng.gen_range(0..keys));
                    register::read(&ctx, proc.id, node, &key, ctx.opts.serializable_reads).await
                }
                35..=49 => {
                    let key = reg_key(rng.gen_range(0..keys));
                    let at = (latest - rng.gen_range(0..200)).max(1);
                    read_at(&ctx, proc.id, node, &key, at).await
                }
                50..=64 => {
                    let keys_only = rng.gen_bool(0.5);
                    let limit = rng.gen_range(0..=keys as i64);
                    range(&ctx, proc.id, node, keys_only, limit).await
                }
                _ => {
                    let n = rng.gen_range(2..=4);
                    let mut written = Vec::new();
                    let mut mops = Vec::new();
                    for _ in 0..n {
                        let k = rng.gen_range(0..keys);
                        if rng.gen_bool(0.5) && !written.contains(&k) {
                            written.push(k);
                            mops.push((true, txn_key(k), register::unique_value()));
                        } else {
                            mops.push((false, txn_key(k), 0));
                        }
                    }
                    txn(&ctx, proc.id, node, &mops).await
                }
            }
        };
        shared.saw(&done);
        proc.after(&done).await;
    }
    Ok(())
}

async fn compact(ctx: &Ctx, process: u64, node: usize, revision: i64) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "compact", None, json!(revision), node);
    let req = CompactionRequest {
        revision,
        physical: false,
    };
    match call(ctx.client.kv(node).compact(req)).await {
        Ok(resp) => {
            inv.ok(Completion::value(json!(revision)).with_revision(header_rev(&resp.header)))
        }
        Err(e) => inv.error(&e, false),
    }
}

async fn read_at(ctx: &Ctx, process: u64, node: usize, key: &str, at: i64) -> Op {
    let inv = ctx.recorder.invoke(
        process,
        "read-at",
        Some(key.to_string()),
        json!({"revision": at}),
        node,
    );
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision: at,
        serializable: ctx.opts.serializable_reads,
        ..Default::default()
    };
    match call(ctx.client.kv(node).range(req)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            let kv = resp.kvs.first();
            inv.ok(Completion {
                value: json!({"revision": at, "value": kv.and_then(|kv| parse_int(&kv.value))}),
                revision: Some(rev),
                version: kv.map(|kv| kv.version),
                mod_revision: kv.map(|kv| kv.mod_revision),
            })
        }
        Err(e) => inv.error(&e, true),
    }
}

async fn range(ctx: &Ctx, process: u64, node: usize, keys_only: bool, limit: i64) -> Op {
    let inv = ctx.recorder.invoke(
        process,
        "range",
        Some(PREFIX.to_string()),
        json!({"keys_only": keys_only, "limit": limit}),
        node,
    );
    let req = RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: prefix_end(PREFIX),
        limit,
        keys_only,
        serializable: ctx.opts.serializable_reads,
        ..Default::default()
    };
    match call(ctx.client.kv(node).range(req)).await {
        Ok(resp) => {
            let kvs: Vec<Value> = resp
                .kvs
                .iter()
                .map(|kv| {
                    json!([
                        String::from_utf8_lossy(&kv.key),
                        parse_int(&kv.value),
                        kv.mod_revision,
                        kv.version
                    ])
                })
                .collect();
            inv.ok(
                Completion::value(json!({"kvs": kvs, "more": resp.more, "count": resp.count}))
                    .with_revision(header_rev(&resp.header)),
            )
        }
        Err(e) => inv.error(&e, true),
    }
}

/// One atomic multi-op Txn; `mops` are `(write, key, value)`.
async fn txn(ctx: &Ctx, process: u64, node: usize, mops: &[(bool, String, i64)]) -> Op {
    let invoke: Value = mops
        .iter()
        .map(|(w, k, v)| {
            if *w {
                json!(["w", k, v])
            } else {
                json!(["r", k, null])
            }
        })
        .collect();
    let inv = ctx.recorder.invoke(process, "mix-txn", None, invoke, node);
    let req = TxnRequest {
        compare: Vec::new(),
        success: mops
            .iter()
            .map(|(w, k, v)| RequestOp {
                request: Some(if *w {
                    request_op::Request::RequestPut(PutRequest {
                        key: k.as_bytes().to_vec(),
                        value: v.to_string().into_bytes(),
                        ..Default::default()
                    })
                } else {
                    request_op::Request::RequestRange(RangeRequest {
                        key: k.as_bytes().to_vec(),
                        ..Default::default()
                    })
                }),
            })
            .collect(),
        failure: Vec::new(),
    };
    let read_only = mops.iter().all(|(w, _, _)| !w);
    match call(ctx.client.kv(node).txn(req)).await {
        Ok(resp) => {
            let result: Value = mops
                .iter()
                .zip(&resp.responses)
                .map(|((w, k, v), r)| {
                    if *w {
                        json!(["w", k, v])
                    } else {
                        let read = match &r.response {
                            Some(response_op::Response::ResponseRange(rr)) => {
                                rr.kvs.first().and_then(|kv| parse_int(&kv.value))
                            }
                            _ => None,
                        };
                        json!(["r", k, read])
                    }
                })
                .collect();
            inv.ok(Completion::value(result).with_revision(header_rev(&resp.header)))
        }
        Err(e) => inv.error(&e, read_only),
    }
}
