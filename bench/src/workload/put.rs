//! `put`: Put requests of `--key-size` keys (sequential or random in
//! `--key-space-size`) and one random `--val-size` value, with optional
//! periodic compaction (`--compact-interval`, `--compact-index-delta`).

use anyhow::Result;
use proto::etcdserverpb::{kv_client::KvClient, CompactionRequest, PutRequest, RangeRequest};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{closed_loop, Ctx, Worker};
use crate::cli::PutArgs;
use crate::conn::Svc;
use crate::keys;
use crate::report::Report;

/// Checks the key flags.
pub fn validate(a: &PutArgs) -> Result<()> {
    keys::check_key_space(a.key_size, a.key_space_size)
}

struct PutWorker {
    kv: KvClient<Svc>,
    key: Vec<u8>,
    value: Vec<u8>,
    key_space: u64,
    sequential: bool,
    rng: StdRng,
}

impl Worker for PutWorker {
    async fn call(&mut self, i: u64) -> (usize, Result<(), tonic::Status>) {
        let n = if self.sequential {
            i % self.key_space
        } else {
            self.rng.gen_range(0..self.key_space)
        };
        keys::write_key(&mut self.key, n);
        let req = PutRequest {
            key: self.key.clone(),
            value: self.value.clone(),
            ..Default::default()
        };
        (0, self.kv.put(req).await.map(|_| ()))
    }
}

/// Runs `put`.
pub async fn run(ctx: &Ctx, a: PutArgs) -> Result<Report> {
    let value = keys::random_bytes(a.val_size);
    let workers: Vec<_> = (0..ctx.global.clients)
        .map(|c| PutWorker {
            kv: ctx.conns.kv(c),
            key: vec![0; a.key_size],
            value: value.clone(),
            key_space: a.key_space_size,
            sequential: a.sequential_keys,
            rng: StdRng::from_entropy(),
        })
        .collect();
    let compactor = (!a.compact_interval.is_zero()).then(|| {
        let kv = ctx.conns.kv(0);
        tokio::spawn(compact_every(kv, a.compact_interval, a.compact_index_delta))
    });
    let progress = ctx.progress(a.total, "put");
    let out = closed_loop(workers, a.total, a.rate, &progress).await;
    progress.finish();
    if let Some(c) = compactor {
        c.abort();
    }
    Ok(ctx.report("put", a.total, out.merged(), out.elapsed))
}

/// Every `interval`, compacts to the current revision minus `delta`.
async fn compact_every(mut kv: KvClient<Svc>, interval: std::time::Duration, delta: i64) {
    loop {
        tokio::time::sleep(interval).await;
        let rev = match kv
            .range(RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().header.map_or(0, |h| h.revision),
            Err(s) => {
                eprintln!("compaction: get revision: {}", s.message());
                continue;
            }
        };
        let to = (rev - delta).max(0);
        if to == 0 {
            continue;
        }
        if let Err(s) = kv
            .compact(CompactionRequest {
                revision: to,
                physical: false,
            })
            .await
        {
            eprintln!("compaction at revision {to}: {}", s.message());
        }
    }
}
