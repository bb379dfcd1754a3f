//! `register`: independent read/write/compare-and-set registers, one per key
//! `/jepsen/register/<k>` for `k` in `0..keys`.
//!
//! Operations (the shapes of [`crate::history`]):
//! - `read`: a Range of the key, linearizable unless `serializable_reads`.
//!   Ok value: the integer stored, or null when the key is absent; `version`
//!   and `mod_revision` are the key's, `revision` is the header's.
//! - `write`: a Put of a value no other write of the run uses, with
//!   `prev_kv`. Ok: `revision` and `mod_revision` are the revision the put
//!   created; `version` is the previous version + 1 (1 for a new key).
//! - `cas`: value `[from, to]`, a Txn `If(value == from) Then Put(to)`. `from`
//!   is the last value any worker saw for the key, `to` is fresh. Ok carries
//!   the same fields as a write; a failed compare is `fail` with error
//!   `compare failed` (definite: the txn did nothing).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use proto::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::Rng;
use serde_json::{json, Value};

use super::{header_rev, parse_int, spawn_workers, Completion, Ctx, Process};
use crate::client::call;
use crate::history::Op;

/// The key of register `k`.
pub fn key(k: usize) -> String {
    format!("/jepsen/register/{k}")
}

/// Register values, unique across every workload of the process (the `watch`
/// workload writes these keys too).
static NEXT_VALUE: AtomicI64 = AtomicI64::new(1);

/// A value no other register write has used.
pub fn unique_value() -> i64 {
    NEXT_VALUE.fetch_add(1, Ordering::Relaxed)
}

/// State shared by the workers writing one set of registers.
pub struct Shared {
    /// The last value seen per key (for choosing a CAS's `from`).
    last: Mutex<Vec<Option<i64>>>,
}

impl Shared {
    pub fn new(keys: usize) -> Arc<Shared> {
        Arc::new(Shared {
            last: Mutex::new(vec![None; keys]),
        })
    }
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let shared = Shared::new(ctx.opts.keys);
    let n = ctx.opts.concurrency;
    spawn_workers(&ctx, n, move |ctx, w| worker(ctx, w, shared.clone())).await
}

/// One register process: random read/write/cas on random keys and nodes
/// until `ctx.stop`.
pub async fn worker(ctx: Ctx, w: u64, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    while !ctx.stop.is_cancelled() {
        let node = proc.node(&mut rng);
        let k = rng.gen_range(0..ctx.opts.keys);
        let key = key(k);
        let done = match rng.gen_range(0..3) {
            0 => read(&ctx, proc.id, node, &key, ctx.opts.serializable_reads).await,
            1 => {
                let v = unique_value();
                write(&ctx, proc.id, node, &key, v).await
            }
            _ => {
                let from = shared.last.lock().unwrap()[k];
                let to = unique_value();
                match from {
                    Some(from) => cas(&ctx, proc.id, node, &key, from, to).await,
                    None => write(&ctx, proc.id, node, &key, to).await,
                }
            }
        };
        if done.kind == crate::history::OpType::Ok {
            let seen = match done.f.as_str() {
                "cas" => done.value.get(1).and_then(Value::as_i64),
                _ => done.value.as_i64(),
            };
            if seen.is_some() {
                shared.last.lock().unwrap()[k] = seen;
            }
        }
        proc.after(&done).await;
    }
    Ok(())
}

/// Records and performs a register read of `key`.
pub async fn read(ctx: &Ctx, process: u64, node: usize, key: &str, serializable: bool) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "read", Some(key.to_string()), Value::Null, node);
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    };
    match call(ctx.client.kv(node).range(req)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            match resp.kvs.first() {
                Some(kv) => inv.ok(Completion {
                    value: parse_int(&kv.value).map_or(Value::Null, Value::from),
                    revision: Some(rev),
                    version: Some(kv.version),
                    mod_revision: Some(kv.mod_revision),
                }),
                None => inv.ok(Completion::value(Value::Null).with_revision(rev)),
            }
        }
        Err(e) => inv.error(&e, true),
    }
}

/// Records and performs a register write of `value` to `key`.
pub async fn write(ctx: &Ctx, process: u64, node: usize, key: &str, value: i64) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "write", Some(key.to_string()), json!(value), node);
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_string().into_bytes(),
        prev_kv: true,
        ..Default::default()
    };
    match call(ctx.client.kv(node).put(req)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            inv.ok(Completion {
                value: json!(value),
                revision: Some(rev),
                version: Some(resp.prev_kv.map_or(1, |p| p.version + 1)),
                mod_revision: Some(rev),
            })
        }
        Err(e) => inv.error(&e, false),
    }
}

/// Records and performs `cas(from, to)` on `key`.
pub async fn cas(ctx: &Ctx, process: u64, node: usize, key: &str, from: i64, to: i64) -> Op {
    let inv = ctx.recorder.invoke(
        process,
        "cas",
        Some(key.to_string()),
        json!([from, to]),
        node,
    );
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(compare::TargetUnion::Value(from.to_string().into_bytes())),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: to.to_string().into_bytes(),
                prev_kv: true,
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    match call(ctx.client.kv(node).txn(req)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            if !resp.succeeded {
                return inv.fail(
                    "compare failed",
                    Completion::value(json!([from, to])).with_revision(rev),
                );
            }
            let prev = resp.responses.into_iter().find_map(|r| match r.response {
                Some(response_op::Response::ResponsePut(p)) => Some(p.prev_kv),
                _ => None,
            });
            inv.ok(Completion {
                value: json!([from, to]),
                revision: Some(rev),
                version: Some(prev.flatten().map_or(1, |p| p.version + 1)),
                mod_revision: Some(rev),
            })
        }
        Err(e) => inv.error(&e, false),
    }
}
