//! `set`: workers add unique integers, each as its own key
//! `/jepsen/set/<n>` (value `n`), and occasionally read the whole set; after
//! `stop`, a final read of the prefix (retried, each attempt recorded, until
//! one succeeds or five attempts fail).
//!
//! Operations: `add` (`key` the element's key, value: the integer; ok
//! `revision` is the put's) and `read` (no `key`, so register checkers that
//! partition by key leave it alone; invoke value null; ok value: the sorted
//! list of integers found, `revision` the read's). A set checker expects every acknowledged add in
//! the final read, and no element that was never added.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::etcdserverpb::{PutRequest, RangeRequest};
use rand::Rng;
use serde_json::{json, Value};

use super::{header_rev, parse_int, prefix_end, spawn_workers, Completion, Ctx, Process};
use crate::client::{call_within, REQUEST_TIMEOUT};
use crate::history::{Op, OpType};

pub const PREFIX: &str = "/jepsen/set/";

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let next = Arc::new(AtomicI64::new(0));
    let n = ctx.opts.concurrency;
    spawn_workers(&ctx, n, move |ctx, w| worker(ctx, w, next.clone())).await?;
    // The final read.
    let mut rng = ctx.rng(u64::MAX);
    let mut proc = Process::new(&ctx);
    for _ in 0..5 {
        let node = proc.node(&mut rng);
        let done = read(&ctx, proc.id, node).await;
        if done.kind == OpType::Ok {
            break;
        }
        proc.after(&done).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn worker(ctx: Ctx, w: u64, next: Arc<AtomicI64>) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    while !ctx.stop.is_cancelled() {
        let node = proc.node(&mut rng);
        let done = if rng.gen_ratio(1, 20) {
            read(&ctx, proc.id, node).await
        } else {
            add(&ctx, proc.id, node, next.fetch_add(1, Ordering::Relaxed)).await
        };
        proc.after(&done).await;
    }
    Ok(())
}

async fn add(ctx: &Ctx, process: u64, node: usize, n: i64) -> Op {
    let key = format!("{PREFIX}{n}");
    let inv = ctx
        .recorder
        .invoke(process, "add", Some(key.clone()), json!(n), node);
    let req = PutRequest {
        key: key.into_bytes(),
        value: n.to_string().into_bytes(),
        ..Default::default()
    };
    match call_within(REQUEST_TIMEOUT, ctx.client.kv(node).put(req)).await {
        Ok(resp) => inv.ok(Completion::value(json!(n)).with_revision(header_rev(&resp.header))),
        Err(e) => inv.error(&e, false),
    }
}

async fn read(ctx: &Ctx, process: u64, node: usize) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "read", None, Value::Null, node);
    let req = RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: prefix_end(PREFIX),
        serializable: ctx.opts.serializable_reads,
        ..Default::default()
    };
    // Whole-set reads grow with the run; give them more time.
    match call_within(REQUEST_TIMEOUT * 4, ctx.client.kv(node).range(req)).await {
        Ok(resp) => {
            let mut items: Vec<i64> = resp
                .kvs
                .iter()
                .filter_map(|kv| parse_int(&kv.value))
                .collect();
            items.sort_unstable();
            inv.ok(Completion::value(json!(items)).with_revision(header_rev(&resp.header)))
        }
        Err(e) => inv.error(&e, true),
    }
}
