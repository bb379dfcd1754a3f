//! watch: criterion benchmarks of watch fan-out through Strata's watch
//! hub, the per-stream delivery pass of `server::watch` (driven through
//! its `LocalWatchStream` handle, without gRPC), on an in-process
//! single-member node. Each op is one write (applied to the node's state
//! machine untimed, as the apply thread would) followed by the timed part:
//! the delivery pass that a stream runs when the applied revision
//! advances, and the draining of its responses from the stream's
//! 256-response channel, as the gRPC layer would drain them.
//!
//! - `same_prefix/N`: N watchers on one stream all watch the written
//!   prefix: the write is delivered N times.
//! - `one_of_n/N`: N watchers each watch their own key; the write matches
//!   one of them, and the other N-1 still check the event.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::etcdserverpb as pb;
use store::apply::ApplyConfig;
use store::request::Op;
use store::server::watch::{LocalWatchReceiver, LocalWatchStream};
use support::{keep_recent, key, prefix, prefix_end, value, LocalNode, Scatter, KEEP_REVS};

/// Receive responses until they carried `events` events in all; returns
/// the number of responses.
async fn drain(rx: &mut LocalWatchReceiver, events: usize) -> usize {
    let (mut got, mut responses) = (0, 0);
    while got < events {
        let r = rx.recv().await.expect("stream open").expect("no error");
        got += r.events.len();
        responses += 1;
    }
    responses
}

/// A stream with one watcher per request in `creates`; the created
/// responses are drained.
fn stream_with(
    ln: &LocalNode,
    creates: Vec<pb::WatchCreateRequest>,
) -> (LocalWatchStream, LocalWatchReceiver) {
    let (mut st, mut rx) = LocalWatchStream::new(ln.node.clone(), 256);
    let n = creates.len();
    ln.rt.block_on(async {
        let create_all = async {
            for c in creates {
                assert!(st.create(c).await);
            }
        };
        let created = async {
            for _ in 0..n {
                let r = rx.recv().await.unwrap().unwrap();
                assert!(r.created && !r.canceled, "watch not created: {r:?}");
            }
        };
        tokio::join!(create_all, created);
    });
    (st, rx)
}

/// Time `iters` rounds of: put `keys[pick()]` (untimed), then deliver and
/// drain `expect` events (timed).
fn rounds(
    ln: &LocalNode,
    st: &mut LocalWatchStream,
    rx: &mut LocalWatchReceiver,
    iters: u64,
    mut pick: impl FnMut() -> Vec<u8>,
    expect: usize,
) -> Duration {
    let cfg = ApplyConfig {
        min_lease_ttl: 1,
        tokens: None,
    };
    let v = value(3);
    ln.rt.block_on(async {
        let mut total = Duration::ZERO;
        for i in 0..iters {
            {
                let mut sm = ln.node.state.write();
                let put = pb::PutRequest {
                    key: pick(),
                    value: v.clone(),
                    ..Default::default()
                };
                sm.apply(Op::Put(put), &cfg).expect("put");
                if i % KEEP_REVS == KEEP_REVS - 1 {
                    keep_recent(&mut sm.mvcc);
                }
            }
            let t0 = Instant::now();
            let (delivered, responses) = tokio::join!(st.deliver(), drain(rx, expect));
            total += t0.elapsed();
            assert!(delivered && responses == expect);
        }
        total
    })
}

fn fanout(c: &mut Criterion) {
    let ln = LocalNode::start(&["--unsafe-no-fsync"]);
    let mut g = c.benchmark_group("watch_fanout");
    // 10k deliveries take milliseconds: fewer samples keep the run short.
    g.sample_size(30);
    let big = support::size(10_000, 1_000);
    // Keys 0..1000 share one 1000-key prefix.
    let p = prefix(0, 1000);
    let mut at = Scatter::new(1000);
    for n in [1, 100, big] {
        let creates = (0..n)
            .map(|_| pb::WatchCreateRequest {
                key: p.clone(),
                range_end: prefix_end(&p),
                ..Default::default()
            })
            .collect();
        let (mut st, mut rx) = stream_with(&ln, creates);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("same_prefix", n), |b| {
            b.iter_custom(|iters| {
                rounds(&ln, &mut st, &mut rx, iters, || key(at.next().unwrap()), n)
            })
        });
    }
    for n in [100, big] {
        let creates = (0..n)
            .map(|i| pb::WatchCreateRequest {
                key: key(i),
                ..Default::default()
            })
            .collect();
        let (mut st, mut rx) = stream_with(&ln, creates);
        let mut at = Scatter::new(n);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("one_of_n", n), |b| {
            b.iter_custom(|iters| {
                rounds(&ln, &mut st, &mut rx, iters, || key(at.next().unwrap()), 1)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = fanout
}
criterion_main!(benches);
