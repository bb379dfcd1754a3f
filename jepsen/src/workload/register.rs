//! `register`: independent read/write/compare-and-set registers: `keys`
//! slots, slot `k` on key `/jepsen/register/<k>`, then after
//! [`OPS_PER_KEY`] operations on `/jepsen/register/<k>.1`, `.2`, ... (a
//! fresh, absent key each time), so no key's history grows without bound.
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

/// The prefix of every register key.
pub const PREFIX: &str = "/jepsen/register/";

/// The key of register `k`.
pub fn key(k: usize) -> String {
    format!("{PREFIX}{k}")
}

/// Register values, unique across every workload of the process (the `watch`
/// workload writes these keys too).
static NEXT_VALUE: AtomicI64 = AtomicI64::new(1);

/// A value no other register write has used.
pub fn unique_value() -> i64 {
    NEXT_VALUE.fetch_add(1, Ordering::Relaxed)
}

/// Operations started on one register key before workers move to a fresh
/// key (Jepsen's independent keys): the linearizability search is
/// exponential in concurrent indefinite ops per key, so each key's history
/// stays short however long the run is.
pub const OPS_PER_KEY: u32 = 200;

/// One of the `keys` register slots: which key generation it is on.
#[derive(Clone, Copy, Default)]
struct Slot {
    generation: u64,
    ops: u32,
    /// The last value seen on the current key (for choosing a CAS's `from`).
    last: Option<i64>,
}

/// State shared by the workers writing one set of registers.
pub struct Shared {
    slots: Mutex<Vec<Slot>>,
}

impl Shared {
    pub fn new(keys: usize) -> Arc<Shared> {
        Arc::new(Shared {
            slots: Mutex::new(vec![Slot::default(); keys]),
        })
    }

    /// Claims one op on slot `k`: the key to use and the last value seen
    /// on it. Moves the slot to a fresh key every [`OPS_PER_KEY`] ops.
    fn claim(&self, k: usize) -> (String, Option<i64>) {
        let mut slots = self.slots.lock().unwrap();
        let slot = &mut slots[k];
        if slot.ops >= OPS_PER_KEY {
            *slot = Slot {
                generation: slot.generation + 1,
                ..Slot::default()
            };
        }
        slot.ops += 1;
        (slot_key(k, slot.generation), slot.last)
    }

    /// Records a value seen on `key` (ignored once the slot moved on).
    fn saw(&self, k: usize, key: &str, v: i64) {
        let mut slots = self.slots.lock().unwrap();
        let slot = &mut slots[k];
        if slot_key(k, slot.generation) == key {
            slot.last = Some(v);
        }
    }
}

/// The key of slot `k` in its `generation`.
fn slot_key(k: usize, generation: u64) -> String {
    if generation == 0 {
        key(k)
    } else {
        format!("{PREFIX}{k}.{generation}")
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
        let (key, last) = shared.claim(k);
        let done = match rng.gen_range(0..3) {
            0 => read(&ctx, proc.id, node, &key, ctx.opts.serializable_reads).await,
            1 => {
                let v = unique_value();
                write(&ctx, proc.id, node, &key, v).await
            }
            _ => {
                let to = unique_value();
                match last {
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
            if let Some(v) = seen {
                shared.saw(k, &key, v);
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
