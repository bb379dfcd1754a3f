//! `range <key> [end]`: the same Range request `--total` times,
//! linearizable or serializable, with optional `--limit` and `--count-only`.

use anyhow::Result;
use proto::etcdserverpb::{kv_client::KvClient, RangeRequest};

use super::{closed_loop, Ctx, Worker};
use crate::cli::RangeArgs;
use crate::conn::Svc;
use crate::report::Report;

struct RangeWorker {
    kv: KvClient<Svc>,
    req: RangeRequest,
}

impl Worker for RangeWorker {
    async fn call(&mut self, _i: u64) -> (usize, Result<(), tonic::Status>) {
        (0, self.kv.range(self.req.clone()).await.map(|_| ()))
    }
}

/// Runs `range`.
pub async fn run(ctx: &Ctx, a: RangeArgs) -> Result<Report> {
    let serializable = a.consistency == "s";
    let req = RangeRequest {
        key: a.key.into_bytes(),
        range_end: a.end.unwrap_or_default().into_bytes(),
        limit: a.limit,
        serializable,
        count_only: a.count_only,
        ..Default::default()
    };
    let workers: Vec<_> = (0..ctx.global.clients)
        .map(|c| RangeWorker {
            kv: ctx.conns.kv(c),
            req: req.clone(),
        })
        .collect();
    let progress = ctx.progress(a.total, "range");
    let out = closed_loop(workers, a.total, a.rate, &progress).await;
    progress.finish();
    let mut r = ctx.report("range", a.total, out.merged(), out.elapsed);
    r.preface.push(format!(
        "bench with {} range",
        if serializable {
            "serializable"
        } else {
            "linearizable"
        }
    ));
    Ok(r)
}
