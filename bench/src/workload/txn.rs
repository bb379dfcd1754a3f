//! `txn-put` (each Txn puts `--txn-ops` keys, key `(i * txn-ops + j) %
//! key-space-size`) and `txn-mixed` (each Txn is either one Range over the
//! read range, with probability rw/(1+rw), or one Put of key `i %
//! key-space-size`; reads and writes are reported separately).

use anyhow::{bail, Result};
use proto::etcdserverpb::{
    kv_client::KvClient, request_op::Request, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use super::{block, closed_loop, latency_json, Ctx, Worker};
use crate::cli::{TxnMixedArgs, TxnPutArgs};
use crate::conn::Svc;
use crate::keys;
use crate::report::Report;

/// Checks `txn-put`'s flags.
pub fn validate_put(a: &TxnPutArgs) -> Result<()> {
    keys::check_key_space(a.key_size, a.key_space_size)?;
    if a.txn_ops > a.key_space_size {
        bail!(
            "expected --txn-ops no larger than --key-space-size, got txn-ops({}) key-space-size({})",
            a.txn_ops,
            a.key_space_size
        );
    }
    Ok(())
}

/// Checks `txn-mixed`'s flags.
pub fn validate_mixed(a: &TxnMixedArgs) -> Result<()> {
    keys::check_key_space(a.key_size, a.key_space_size)?;
    if a.rw_ratio.is_nan() || a.rw_ratio < 0.0 {
        bail!(
            "--rw-ratio must be a non-negative number, got {}",
            a.rw_ratio
        );
    }
    Ok(())
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

struct TxnPutWorker {
    kv: KvClient<Svc>,
    ops: u64,
    key_size: usize,
    key_space: u64,
    value: Vec<u8>,
}

impl Worker for TxnPutWorker {
    async fn call(&mut self, i: u64) -> (usize, Result<(), tonic::Status>) {
        let success = (0..self.ops)
            .map(|j| {
                let n = (i.wrapping_mul(self.ops) + j) % self.key_space;
                put_op(keys::key(n, self.key_size), self.value.clone())
            })
            .collect();
        (
            0,
            self.kv
                .txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        )
    }
}

/// Runs `txn-put`.
pub async fn run_put(ctx: &Ctx, a: TxnPutArgs) -> Result<Report> {
    let value = keys::random_bytes(a.val_size);
    let workers: Vec<_> = (0..ctx.global.clients)
        .map(|c| TxnPutWorker {
            kv: ctx.conns.kv(c),
            ops: a.txn_ops,
            key_size: a.key_size,
            key_space: a.key_space_size,
            value: value.clone(),
        })
        .collect();
    let progress = ctx.progress(a.total, "txn-put");
    let out = closed_loop(workers, a.total, a.rate, &progress).await;
    progress.finish();
    let mut r = ctx.report("txn-put", a.total, out.merged(), out.elapsed);
    r.extra.insert("txn_ops".into(), json!(a.txn_ops));
    Ok(r)
}

/// The end of the range of every key with prefix `key` (etcd's `WithPrefix`).
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The read range of `txn-mixed`: none → every key (etcd's tool reads
/// `""` with prefix); key only → its prefix; key and end → `[key, end)`.
fn mixed_read_range(a: &TxnMixedArgs) -> (Vec<u8>, Vec<u8>) {
    let end = a
        .end
        .clone()
        .or_else(|| a.end_key.clone())
        .filter(|e| !e.is_empty());
    match (&a.key, end) {
        (None, _) => (vec![0], vec![0]),
        (Some(k), None) if k.is_empty() => (vec![0], vec![0]),
        (Some(k), None) => (k.clone().into_bytes(), prefix_end(k.as_bytes())),
        (Some(k), Some(e)) => (k.clone().into_bytes(), e.into_bytes()),
    }
}

struct MixedWorker {
    kv: KvClient<Svc>,
    read: TxnRequest,
    read_share: f64,
    key_size: usize,
    key_space: u64,
    value: Vec<u8>,
    rng: StdRng,
}

impl Worker for MixedWorker {
    async fn call(&mut self, i: u64) -> (usize, Result<(), tonic::Status>) {
        if self.rng.gen::<f64>() < self.read_share {
            (0, self.kv.txn(self.read.clone()).await.map(|_| ()))
        } else {
            let op = put_op(
                keys::key(i % self.key_space, self.key_size),
                self.value.clone(),
            );
            (
                1,
                self.kv
                    .txn(TxnRequest {
                        success: vec![op],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
            )
        }
    }
}

/// Runs `txn-mixed`.
pub async fn run_mixed(ctx: &Ctx, a: TxnMixedArgs) -> Result<Report> {
    let serializable = a.consistency == "s";
    let (key, range_end) = mixed_read_range(&a);
    let read = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key,
                range_end,
                limit: a.limit,
                serializable,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let value = keys::random_bytes(a.val_size);
    let read_share = a.rw_ratio / (1.0 + a.rw_ratio);
    let workers: Vec<_> = (0..ctx.global.clients)
        .map(|c| MixedWorker {
            kv: ctx.conns.kv(c),
            read: read.clone(),
            read_share,
            key_size: a.key_size,
            key_space: a.key_space_size,
            value: value.clone(),
            rng: StdRng::from_entropy(),
        })
        .collect();
    let progress = ctx.progress(a.total, "txn-mixed");
    let mut out = closed_loop(workers, a.total, a.rate, &progress).await;
    progress.finish();
    out.classes.resize_with(2, Default::default);
    let mut r = ctx.report("txn-mixed", a.total, out.merged(), out.elapsed);
    let (reads, writes) = (&out.classes[0], &out.classes[1]);
    for (name, s) in [("read", reads), ("write", writes)] {
        r.extra.insert(
            name.into(),
            json!({"ok": s.ok_count(), "errors": s.err_count(), "latency_ms": latency_json(s)}),
        );
    }
    r.preface.push(format!(
        "bench with {} range",
        if serializable {
            "serializable"
        } else {
            "linearizable"
        }
    ));
    let n = |s: &crate::report::Stats| s.ok_count() + s.err_count();
    r.blocks.push(block(
        format!("Total Read Ops: {}\nDetails:", n(reads)),
        reads.clone(),
        out.elapsed,
    ));
    r.blocks.push(block(
        format!("Total Write Ops: {}\nDetails:", n(writes)),
        writes.clone(),
        out.elapsed,
    ));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
