//! grpc: end-to-end criterion benchmarks of one in-process Strata member
//! serving etcd's KV API over gRPC on 127.0.0.1, driven by `etcd-client`:
//! a Put of a 256-byte value (raft commit with fsync, the default; and with
//! `--unsafe-no-fsync`) and a linearizable single-key Range, one request
//! at a time.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use support::{key, value, LocalNode, Scatter};

const KEYS: usize = 10_000;

fn kv(c: &mut Criterion) {
    let mut g = c.benchmark_group("grpc");
    // A Put with fsync takes milliseconds: fewer samples keep the run short.
    g.sample_size(30).throughput(Throughput::Elements(1));
    let v = value(7);
    for (name, flags) in [("fsync", &[][..]), ("no_fsync", &["--unsafe-no-fsync"][..])] {
        let mut ln = LocalNode::start(flags);
        let endpoint = ln.serve();
        let mut client = ln
            .rt
            .block_on(etcd_client::Client::connect([endpoint], None))
            .expect("connect");
        let mut at = Scatter::new(KEYS);
        g.bench_function(BenchmarkId::new("put", name), |b| {
            b.iter(|| {
                let k = key(at.next().unwrap());
                ln.rt.block_on(client.put(k, v.clone(), None)).expect("put")
            })
        });
        if name == "no_fsync" {
            // Reads hit existing keys: write every one first.
            let keys = support::size(KEYS, 10);
            ln.rt.block_on(async {
                for i in 0..keys {
                    client.put(key(i), v.clone(), None).await.expect("put");
                }
            });
            let mut at = Scatter::new(keys);
            g.bench_function("range_one_key_linearizable", |b| {
                b.iter(|| {
                    let r = ln
                        .rt
                        .block_on(client.get(key(at.next().unwrap()), None))
                        .expect("get");
                    assert_eq!(r.kvs().len(), 1);
                    r
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = kv
}
criterion_main!(benches);
