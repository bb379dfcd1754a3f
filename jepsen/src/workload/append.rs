//! `append` (Elle list-append) and `wr` (read/write registers): transactions
//! of 1–4 micro-ops over a small rotating pool of keys
//! (`/jepsen/append/<id>` or `/jepsen/wr/<id>`; a key is retired after 32
//! writes and replaced by a fresh one, so lists stay short).
//!
//! Every operation is `f: "txn"` with value `[[fn, key, arg], ...]` (`fn`
//! `"r"`, `"append"` or `"w"`; `key` the full key string). Appended elements
//! and written values are unique per run, so every read can be traced to its
//! writers.
//!
//! Execution is optimistic, like a kube-apiserver or STM client on etcd:
//! 1. one Txn of Ranges reads every key the transaction touches (atomically,
//!    at one revision, linearizable);
//! 2. the micro-ops are applied to those values locally (reads return the
//!    value as of that point in the transaction);
//! 3. if anything was written, one Txn commits
//!    `If(mod_revision(k) == seen(k) for every touched k) Then Put(...)`. A
//!    failed compare is `fail` (error `compare failed`): nothing was written.
//!
//! A read-only transaction completes at step 1. The committed transaction is
//! equivalent to running all its micro-ops atomically at the commit
//! revision, which lies inside the operation's real-time interval, so the
//! history is checkable for strict serializability. List values are stored
//! as comma-separated integers; wr values as one integer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use proto::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::Rng;
use serde_json::{json, Value};

use super::{header_rev, spawn_workers, Completion, Ctx, Process};
use crate::client::call;
use crate::history::Op;

/// Which transactional model a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// Elle list-append: `r` and `append`.
    ListAppend,
    /// Read/write registers: `r` and `w`.
    Wr,
}

impl Model {
    fn prefix(self) -> &'static str {
        match self {
            Model::ListAppend => "/jepsen/append/",
            Model::Wr => "/jepsen/wr/",
        }
    }

    fn write_fn(self) -> &'static str {
        match self {
            Model::ListAppend => "append",
            Model::Wr => "w",
        }
    }
}

/// Writes a key takes before it is retired from the pool.
const MAX_WRITES_PER_KEY: u32 = 32;

/// The rotating pool of active keys.
struct Pool {
    active: Vec<u64>,
    writes: HashMap<u64, u32>,
    next_id: u64,
}

struct Shared {
    model: Model,
    pool: Mutex<Pool>,
    next_value: AtomicI64,
}

/// One micro-op.
#[derive(Clone, Debug)]
struct Mop {
    write: bool,
    key: String,
    /// Written value / appended element.
    arg: i64,
}

/// Runs the `append` or `wr` workload.
pub async fn run(ctx: Ctx, model: Model) -> anyhow::Result<()> {
    let active_keys = ctx.opts.keys.clamp(1, 8) as u64;
    let shared = Arc::new(Shared {
        model,
        pool: Mutex::new(Pool {
            active: (0..active_keys).collect(),
            writes: HashMap::new(),
            next_id: active_keys,
        }),
        next_value: AtomicI64::new(1),
    });
    let n = ctx.opts.concurrency;
    spawn_workers(&ctx, n, move |ctx, w| worker(ctx, w, shared.clone())).await
}

async fn worker(ctx: Ctx, w: u64, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    while !ctx.stop.is_cancelled() {
        let node = proc.node(&mut rng);
        let mops = generate(&shared, &mut rng);
        let done = txn(&ctx, proc.id, node, shared.model, &mops).await;
        proc.after(&done).await;
    }
    Ok(())
}

fn generate(shared: &Shared, rng: &mut impl Rng) -> Vec<Mop> {
    let n = rng.gen_range(1..=4);
    let mut pool = shared.pool.lock().unwrap();
    let mut mops = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = rng.gen_range(0..pool.active.len());
        let id = pool.active[slot];
        let write = rng.gen_bool(0.5);
        let mut arg = 0;
        if write {
            arg = shared.next_value.fetch_add(1, Ordering::Relaxed);
            let count = pool.writes.entry(id).or_insert(0);
            *count += 1;
            if *count >= MAX_WRITES_PER_KEY {
                pool.writes.remove(&id);
                pool.active[slot] = pool.next_id;
                pool.next_id += 1;
            }
        }
        mops.push(Mop {
            write,
            key: format!("{}{id}", shared.model.prefix()),
            arg,
        });
    }
    mops
}

/// The stored value of a key, decoded.
#[derive(Clone, Debug, PartialEq)]
enum Stored {
    List(Vec<i64>),
    Int(Option<i64>),
}

impl Stored {
    fn decode(model: Model, bytes: Option<&[u8]>) -> Stored {
        let text = bytes.map(|b| String::from_utf8_lossy(b).into_owned());
        match model {
            Model::ListAppend => Stored::List(
                text.unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            ),
            Model::Wr => Stored::Int(text.and_then(|t| t.parse().ok())),
        }
    }

    fn encode(&self) -> String {
        match self {
            Stored::List(l) => l.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
            Stored::Int(v) => v.map(|v| v.to_string()).unwrap_or_default(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Stored::List(l) => json!(l),
            Stored::Int(v) => json!(v),
        }
    }

    fn apply(&mut self, arg: i64) {
        match self {
            Stored::List(l) => l.push(arg),
            Stored::Int(v) => *v = Some(arg),
        }
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Records and runs one transaction.
async fn txn(ctx: &Ctx, process: u64, node: usize, model: Model, mops: &[Mop]) -> Op {
    let invoke_value: Value = mops
        .iter()
        .map(|m| {
            if m.write {
                json!([model.write_fn(), m.key, m.arg])
            } else {
                json!(["r", m.key, null])
            }
        })
        .collect();
    let inv = ctx
        .recorder
        .invoke(process, "txn", None, invoke_value.clone(), node);
    let keys: Vec<String> = {
        let mut k: Vec<String> = mops.iter().map(|m| m.key.clone()).collect();
        k.sort();
        k.dedup();
        k
    };
    let read = TxnRequest {
        compare: Vec::new(),
        success: keys.iter().map(|k| range_op(k)).collect(),
        failure: Vec::new(),
    };
    let resp = match call(ctx.client.kv(node).txn(read)).await {
        Ok(r) => r,
        // Nothing was written yet: definitely no effect.
        Err(e) => return inv.error(&e, true),
    };
    let read_rev = header_rev(&resp.header);
    let mut state: BTreeMap<String, (Stored, i64)> = BTreeMap::new();
    for (key, r) in keys.iter().zip(resp.responses) {
        let kv = match r.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        };
        let mod_rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let stored = Stored::decode(model, kv.as_ref().map(|kv| kv.value.as_slice()));
        state.insert(key.clone(), (stored, mod_rev));
    }
    let seen: Vec<(String, i64)> = state.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
    let mut result = Vec::with_capacity(mops.len());
    let mut written: Vec<String> = Vec::new();
    for m in mops {
        let (stored, _) = state.get_mut(&m.key).expect("key was read");
        if m.write {
            stored.apply(m.arg);
            written.push(m.key.clone());
            result.push(json!([model.write_fn(), m.key, m.arg]));
        } else {
            result.push(json!(["r", m.key, stored.to_json()]));
        }
    }
    let result = Value::Array(result);
    if written.is_empty() {
        return inv.ok(Completion::value(result).with_revision(read_rev));
    }
    written.sort();
    written.dedup();
    let commit = TxnRequest {
        compare: seen
            .iter()
            .map(|(k, rev)| Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: k.as_bytes().to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(*rev)),
                range_end: Vec::new(),
            })
            .collect(),
        success: written
            .iter()
            .map(|k| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: state[k].0.encode().into_bytes(),
                    ..Default::default()
                })),
            })
            .collect(),
        failure: Vec::new(),
    };
    match call(ctx.client.kv(node).txn(commit)).await {
        Ok(r) if r.succeeded => {
            inv.ok(Completion::value(result).with_revision(header_rev(&r.header)))
        }
        Ok(r) => inv.fail(
            "compare failed",
            Completion::value(invoke_value).with_revision(header_rev(&r.header)),
        ),
        Err(e) => inv.error(&e, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_round_trip() {
        let mut l = Stored::decode(Model::ListAppend, Some(b"1,2,3"));
        l.apply(4);
        assert_eq!(l.encode(), "1,2,3,4");
        assert_eq!(
            Stored::decode(Model::ListAppend, None),
            Stored::List(vec![])
        );
        let mut w = Stored::decode(Model::Wr, None);
        assert_eq!(w.to_json(), Value::Null);
        w.apply(7);
        assert_eq!(Stored::decode(Model::Wr, Some(w.encode().as_bytes())), w);
    }

    #[test]
    fn pool_rotates_keys_after_max_writes() {
        use rand::SeedableRng;
        let shared = Shared {
            model: Model::ListAppend,
            pool: Mutex::new(Pool {
                active: vec![0],
                writes: HashMap::new(),
                next_id: 1,
            }),
            next_value: AtomicI64::new(1),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut per_key: HashMap<String, u32> = HashMap::new();
        for _ in 0..200 {
            for m in generate(&shared, &mut rng) {
                if m.write {
                    *per_key.entry(m.key).or_default() += 1;
                }
            }
        }
        assert!(per_key.len() > 1);
        assert!(per_key.values().all(|&n| n <= MAX_WRITES_PER_KEY));
    }
}
