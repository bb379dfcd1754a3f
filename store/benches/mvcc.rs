//! mvcc: criterion benchmarks of the in-memory MVCC key space
//! (`store::mvcc`) and the apply layer on top of it
//! (`StateMachine::apply`), without raft or gRPC: put, range (one key,
//! 100- and 1000-key prefixes, at an old revision), compare-and-put txns,
//! and raw key-index lookups. Stores are preloaded with 10k and 100k keys
//! of 35 bytes with 256-byte values (1k and 10k in test mode).

mod support;

use std::ops::Bound;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::etcdserverpb::{self as pb, compare, request_op};
use store::apply::{kv, ApplyConfig, StateMachine};
use store::mvcc::KeyRange;
use store::request::{ApplyResult, Op};
use support::{keep_recent, keys, prefix, prefix_end, preloaded, timed_chunks, value, Scatter};

fn sizes() -> [usize; 2] {
    [support::size(10_000, 1_000), support::size(100_000, 10_000)]
}

fn apply_cfg() -> ApplyConfig {
    ApplyConfig {
        min_lease_ttl: 1,
        tokens: None,
    }
}

/// One put per op, overwriting existing keys in scattered order. History
/// beyond the last 10k revisions is compacted away untimed.
fn put(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_put");
    g.throughput(Throughput::Elements(1));
    let v = value(1);
    for n in sizes() {
        let ks = keys(n);
        // The MVCC layer alone: one write txn, one put, commit.
        let (mut m, _) = preloaded(n, 1);
        let mut at = Scatter::new(n);
        g.bench_function(BenchmarkId::new("mvcc", n), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    &mut m,
                    iters,
                    |m| {
                        let mut t = m.write();
                        t.put(&ks[at.next().unwrap()], &v, 0);
                        black_box(t.commit());
                    },
                    keep_recent,
                )
            })
        });
        drop(m);
        // What the apply thread does per Put entry: lease checks, the
        // put, the response.
        let (m, _) = preloaded(n, 1);
        let mut sm = StateMachine {
            mvcc: m,
            ..Default::default()
        };
        let cfg = apply_cfg();
        let mut at = Scatter::new(n);
        g.bench_function(BenchmarkId::new("apply", n), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    &mut sm,
                    iters,
                    |sm| {
                        let p = pb::PutRequest {
                            key: ks[at.next().unwrap()].clone(),
                            value: v.clone(),
                            ..Default::default()
                        };
                        black_box(sm.apply(Op::Put(p), &cfg).unwrap());
                    },
                    |sm| keep_recent(&mut sm.mvcc),
                )
            })
        });
    }
    g.finish();
}

/// Range reads on a store where every key has two versions; "old" reads
/// are at the revision where only the first versions existed.
fn range(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_range");
    for n in sizes() {
        let ks = keys(n);
        let (m, old) = preloaded(n, 2);
        let single = |i: usize| KeyRange::new(&ks[i], &[]);
        let span = |i: usize, per: usize| {
            let first = i / per * per;
            let p = prefix(first, per);
            KeyRange::new(&p, &prefix_end(&p))
        };
        let singles: Vec<KeyRange> = (0..n).map(single).collect();
        let spans100: Vec<KeyRange> = (0..n / 100).map(|j| span(j * 100, 100)).collect();
        let spans1000: Vec<KeyRange> = (0..n / 1000).map(|j| span(j * 1000, 1000)).collect();
        // (name, ranges, keys per range, revision)
        let cases: [(&str, &[KeyRange], usize, i64); 5] = [
            ("single", &singles, 1, 0),
            ("prefix100", &spans100, 100, 0),
            ("prefix1000", &spans1000, 1000, 0),
            ("single_old_rev", &singles, 1, old),
            ("prefix1000_old_rev", &spans1000, 1000, old),
        ];
        for (name, ranges, per, rev) in cases {
            // Sanity: each range holds `per` keys at that revision.
            let r = m.range(&ranges[0], rev, 0, false).unwrap();
            assert_eq!(r.kvs.len(), per, "{name}");
            let want_version = if rev == 0 { 2 } else { 1 };
            assert!(r.kvs.iter().all(|kv| kv.version == want_version), "{name}");
            g.throughput(Throughput::Elements(per as u64));
            let mut at = Scatter::new(ranges.len());
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(m.range(&ranges[at.next().unwrap()], rev, 0, false).unwrap()))
            });
        }
        // The whole RangeRequest as the KV service serves it (decoding the
        // range, copying key-values into the response), for 1000 keys.
        let reqs: Vec<pb::RangeRequest> = (0..n / 1000)
            .map(|j| {
                let p = prefix(j * 1000, 1000);
                pb::RangeRequest {
                    range_end: prefix_end(&p),
                    key: p,
                    ..Default::default()
                }
            })
            .collect();
        assert_eq!(kv::range(&m, &reqs[0]).unwrap().kvs.len(), 1000);
        g.throughput(Throughput::Elements(1000));
        let mut at = Scatter::new(reqs.len());
        g.bench_function(BenchmarkId::new("request_prefix1000", n), |b| {
            b.iter(|| black_box(kv::range(&m, &reqs[at.next().unwrap()]).unwrap()))
        });
    }
    g.finish();
}

/// Kubernetes' optimistic update: a Txn "if mod_revision(key) == seen then
/// put(key)", applied as the apply thread applies it.
fn txn(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_txn");
    g.throughput(Throughput::Elements(1));
    let v = value(2);
    let cfg = apply_cfg();
    for n in sizes() {
        let ks = keys(n);
        let (m, _) = preloaded(n, 1);
        // Every key's mod revision, kept up to date from the responses.
        let mut seen: Vec<i64> = (0..n)
            .map(|i| {
                m.range(&KeyRange::new(&ks[i], &[]), 0, 0, false)
                    .unwrap()
                    .kvs[0]
                    .mod_revision
            })
            .collect();
        let mut sm = StateMachine {
            mvcc: m,
            ..Default::default()
        };
        let mut at = Scatter::new(n);
        g.bench_function(BenchmarkId::new("compare_mod_rev_put", n), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    &mut sm,
                    iters,
                    |sm| {
                        let i = at.next().unwrap();
                        let t = pb::TxnRequest {
                            compare: vec![pb::Compare {
                                result: compare::CompareResult::Equal as i32,
                                target: compare::CompareTarget::Mod as i32,
                                key: ks[i].clone(),
                                target_union: Some(compare::TargetUnion::ModRevision(seen[i])),
                                ..Default::default()
                            }],
                            success: vec![pb::RequestOp {
                                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                                    key: ks[i].clone(),
                                    value: v.clone(),
                                    ..Default::default()
                                })),
                            }],
                            failure: vec![],
                        };
                        let Ok(ApplyResult::Txn(r)) = sm.apply(Op::Txn(t), &cfg) else {
                            panic!("txn failed");
                        };
                        assert!(r.succeeded, "compare on the current mod revision failed");
                        seen[i] = r.header.unwrap().revision;
                    },
                    |sm| keep_recent(&mut sm.mvcc),
                )
            })
        });
    }
    g.finish();
}

/// The key index itself (an `imbl::OrdMap` from key to its history): point
/// lookups (present and absent keys) and ordered scans.
fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    for n in sizes() {
        let ks = keys(n);
        let (m, _) = preloaded(n, 1);
        let index = m.snapshot().index;
        g.throughput(Throughput::Elements(1));
        let mut at = Scatter::new(n);
        g.bench_function(BenchmarkId::new("get", n), |b| {
            b.iter(|| {
                let h = index.get(ks[at.next().unwrap()].as_slice()).unwrap();
                black_box(h.latest().is_some())
            })
        });
        // Absent keys that sort between present ones.
        let missing: Vec<Vec<u8>> = ks.iter().map(|k| [k.as_slice(), b"x"].concat()).collect();
        let mut at = Scatter::new(n);
        g.bench_function(BenchmarkId::new("get_missing", n), |b| {
            b.iter(|| black_box(index.get(missing[at.next().unwrap()].as_slice()).is_none()))
        });
        for per in [100, 1000] {
            let bounds: Vec<(Vec<u8>, Vec<u8>)> = (0..n / per)
                .map(|j| {
                    let p = prefix(j * per, per);
                    let e = prefix_end(&p);
                    (p, e)
                })
                .collect();
            let scan = |(s, e): &(Vec<u8>, Vec<u8>)| {
                index
                    .range::<_, [u8]>((
                        Bound::Included(s.as_slice()),
                        Bound::Excluded(e.as_slice()),
                    ))
                    .filter(|(_, h)| h.latest().is_some())
                    .count()
            };
            assert_eq!(scan(&bounds[0]), per);
            g.throughput(Throughput::Elements(per as u64));
            let mut at = Scatter::new(bounds.len());
            g.bench_function(BenchmarkId::new(format!("scan{per}"), n), |b| {
                b.iter(|| black_box(scan(&bounds[at.next().unwrap()])))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = put, range, txn, index
}
criterion_main!(benches);
