//! `lease`: keys attached to short leases that are kept alive for a while,
//! revoked, or left to expire. Keys are `/jepsen/lease/<k>` (`k` in
//! `0..keys`).
//!
//! Each worker holds up to three leases, each granted with a TTL of 2–4 s
//! and a fate chosen at grant: *keep alive* (a few keepalives ~1 s apart,
//! then expire), *revoke* (after 0.5–1.5 s) or *expire*. Between lease
//! actions it puts keys on its live leases and reads random keys.
//!
//! Operations (extending [`crate::history`]'s `lease` shapes):
//! - `grant`: invoke value: the TTL in seconds; ok value: the lease id.
//! - `put`: `key` set, value `{"lease": id, "value": v}` (`v` unique); ok
//!   `revision` is the put's. A put on an expired lease fails definitely
//!   (`requested lease not found`).
//! - `keepalive`: value: the lease id; one LeaseKeepAlive round trip. Ok
//!   value `{"lease": id, "ttl": ttl}` with the TTL the server granted; a
//!   reply with TTL ≤ 0 (the lease is gone) is `fail`, error
//!   `lease not found`.
//! - `revoke`: value: the lease id; ok `revision` is the revoke's.
//! - `read`: `key` set; ok value `{"lease": id, "value": v}` or null (absent
//!   key), with `revision`, `version`, `mod_revision` as for registers.

use std::time::{Duration, Instant};

use proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};
use rand::Rng;
use serde_json::{json, Value};

use super::{header_rev, parse_int, register, spawn_workers, Completion, Ctx, Process};
use crate::client::{call, OpError, REQUEST_TIMEOUT};
use crate::history::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    KeepAlive,
    Revoke,
    Expire,
}

struct Lease {
    id: i64,
    fate: Fate,
    granted: Instant,
    /// When the lease is expected to have expired (extended by keepalives).
    expires: Instant,
    keepalives_left: u32,
    last_keepalive: Instant,
}

fn lease_key(k: usize) -> String {
    format!("/jepsen/lease/{k}")
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    spawn_workers(&ctx, ctx.opts.concurrency, worker).await
}

async fn worker(ctx: Ctx, w: u64) -> anyhow::Result<()> {
    let mut rng = ctx.rng(w);
    let mut proc = Process::new(&ctx);
    let mut leases: Vec<Lease> = Vec::new();
    while !ctx.stop.is_cancelled() {
        let now = Instant::now();
        // Forget leases that must have expired by now (with a little slack,
        // so a few puts hit a just-expired lease and fail definitely).
        leases.retain(|l| l.expires + Duration::from_millis(300) > now);
        let node = proc.node(&mut rng);
        let due_revoke = leases.iter().position(|l| {
            l.fate == Fate::Revoke
                && now.duration_since(l.granted) > Duration::from_millis(500 + (l.id as u64 % 1000))
        });
        let due_keepalive = leases.iter().position(|l| {
            l.fate == Fate::KeepAlive
                && l.keepalives_left > 0
                && now.duration_since(l.last_keepalive) > Duration::from_secs(1)
        });
        let done = if let Some(i) = due_revoke {
            let l = leases.remove(i);
            revoke(&ctx, proc.id, node, l.id).await
        } else if let Some(i) = due_keepalive {
            let l = &mut leases[i];
            l.keepalives_left -= 1;
            l.last_keepalive = now;
            let (done, ttl) = keepalive(&ctx, proc.id, node, l.id).await;
            if let Some(ttl) = ttl {
                l.expires = now + Duration::from_secs(ttl as u64);
            }
            done
        } else if leases.len() < 3 && rng.gen_ratio(1, 4) {
            let ttl = rng.gen_range(2..=4);
            let (done, id) = grant(&ctx, proc.id, node, ttl).await;
            if let Some(id) = id {
                let fate = match rng.gen_range(0..3) {
                    0 => Fate::KeepAlive,
                    1 => Fate::Revoke,
                    _ => Fate::Expire,
                };
                leases.push(Lease {
                    id,
                    fate,
                    granted: now,
                    expires: now + Duration::from_secs(ttl as u64),
                    keepalives_left: rng.gen_range(1..=3),
                    last_keepalive: now,
                });
            }
            done
        } else if !leases.is_empty() && rng.gen_bool(0.5) {
            let l = &leases[rng.gen_range(0..leases.len())];
            let key = lease_key(rng.gen_range(0..ctx.opts.keys));
            put(&ctx, proc.id, node, &key, l.id).await
        } else {
            let key = lease_key(rng.gen_range(0..ctx.opts.keys));
            read(&ctx, proc.id, node, &key).await
        };
        proc.after(&done).await;
        // Leases are about time: pace the worker a little.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..50))).await;
    }
    Ok(())
}

async fn grant(ctx: &Ctx, process: u64, node: usize, ttl: i64) -> (Op, Option<i64>) {
    let inv = ctx
        .recorder
        .invoke(process, "grant", None, json!(ttl), node);
    let req = LeaseGrantRequest { ttl, id: 0 };
    match call(ctx.client.lease(node).lease_grant(req)).await {
        Ok(resp) if resp.error.is_empty() => {
            let id = resp.id;
            let done = inv.ok(Completion::value(json!(id)).with_revision(header_rev(&resp.header)));
            (done, Some(id))
        }
        Ok(resp) => (inv.fail(resp.error, Completion::value(json!(ttl))), None),
        Err(e) => (inv.error(&e, false), None),
    }
}

async fn put(ctx: &Ctx, process: u64, node: usize, key: &str, lease: i64) -> Op {
    let v = register::unique_value();
    let value = json!({"lease": lease, "value": v});
    let inv = ctx
        .recorder
        .invoke(process, "put", Some(key.to_string()), value.clone(), node);
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: v.to_string().into_bytes(),
        lease,
        ..Default::default()
    };
    match call(ctx.client.kv(node).put(req)).await {
        Ok(resp) => inv.ok(Completion::value(value).with_revision(header_rev(&resp.header))),
        Err(e) => inv.error(&e, false),
    }
}

async fn revoke(ctx: &Ctx, process: u64, node: usize, lease: i64) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "revoke", None, json!(lease), node);
    match call(
        ctx.client
            .lease(node)
            .lease_revoke(LeaseRevokeRequest { id: lease }),
    )
    .await
    {
        Ok(resp) => inv.ok(Completion::value(json!(lease)).with_revision(header_rev(&resp.header))),
        Err(e) => inv.error(&e, false),
    }
}

/// One keepalive round trip; returns the completion and the granted TTL.
async fn keepalive(ctx: &Ctx, process: u64, node: usize, lease: i64) -> (Op, Option<i64>) {
    let inv = ctx
        .recorder
        .invoke(process, "keepalive", None, json!(lease), node);
    let mut client = ctx.client.lease(node);
    let exchange = async {
        let reqs = tokio_stream::iter([LeaseKeepAliveRequest { id: lease }]);
        let mut stream = client.lease_keep_alive(reqs).await?.into_inner();
        match stream.message().await? {
            Some(resp) => Ok(resp),
            None => Err(tonic::Status::unavailable("keepalive stream closed")),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(resp)) if resp.ttl > 0 => {
            let done = inv.ok(Completion::value(json!({"lease": lease, "ttl": resp.ttl}))
                .with_revision(header_rev(&resp.header)));
            (done, Some(resp.ttl))
        }
        Ok(Ok(resp)) => (
            inv.fail(
                "lease not found",
                Completion::value(json!(lease)).with_revision(header_rev(&resp.header)),
            ),
            None,
        ),
        Ok(Err(status)) => (inv.error(&crate::client::classify(&status), false), None),
        Err(_) => (
            inv.error(&OpError::indefinite("client timeout"), false),
            None,
        ),
    }
}

async fn read(ctx: &Ctx, process: u64, node: usize, key: &str) -> Op {
    let inv = ctx
        .recorder
        .invoke(process, "read", Some(key.to_string()), Value::Null, node);
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable: ctx.opts.serializable_reads,
        ..Default::default()
    };
    match call(ctx.client.kv(node).range(req)).await {
        Ok(resp) => {
            let rev = header_rev(&resp.header);
            match resp.kvs.first() {
                Some(kv) => inv.ok(Completion {
                    value: json!({"lease": kv.lease, "value": parse_int(&kv.value)}),
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
