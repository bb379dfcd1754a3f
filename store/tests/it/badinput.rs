//! badinput: malformed and out-of-limit requests, each sent to etcd 3.5
//! and to Strata started with the same flags; the outcome (the response's
//! essentials, or the gRPC code and message) must be identical, and after
//! every case both stores must still serve and hold all their data.
//!
//! Covered here: oversized requests (above `--max-request-bytes`, and above
//! the gRPC receive limit, unary and on a watch stream), txns above `--max-txn-ops`, inverted key ranges
//! for Range and DeleteRange, negative and huge revisions for Range and
//! Compact, and empty keys. A member started with a wrong
//! `--initial-cluster-token` is refused by its peers in
//! `cluster::member_with_wrong_token_is_refused`, and the randomized
//! `differential` test mixes many of these inputs into longer histories.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::harness::{Etcd, Strata};

/// What a call returned, in a form comparable across servers: the
/// essentials of a success, or "code: message" of a failure.
fn outcome<T>(r: Result<T, etcd_client::Error>, ok: impl Fn(&T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(&v)),
        Err(etcd_client::Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => format!("client error {e}"),
    }
}

/// The data every case must leave intact (written first on both servers).
const KEYS: [&str; 4] = ["a", "b", "c", "d"];

async fn seed(c: &mut Client) {
    for k in KEYS {
        c.put(k, format!("value of {k}"), None).await.unwrap();
    }
}

/// Still serving, nothing lost: a write works and every seeded key is there.
async fn check_intact(c: &mut Client, label: &str, case: &str) {
    c.put("probe", case, None)
        .await
        .unwrap_or_else(|e| panic!("{label} after {case}: a put fails: {e}"));
    let r = c
        .get("a", Some(GetOptions::new().with_range("e")))
        .await
        .unwrap_or_else(|e| panic!("{label} after {case}: a get fails: {e}"));
    let got: Vec<(String, String)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = KEYS
        .iter()
        .map(|k| (k.to_string(), format!("value of {k}")))
        .collect();
    assert_eq!(got, want, "{label} after {case}: data lost");
}

type Case = (
    &'static str,
    fn(Client) -> futures::future::BoxFuture<'static, String>,
);

fn cases() -> Vec<Case> {
    use futures::FutureExt;
    vec![
        ("put above --max-request-bytes", |mut c| {
            async move {
                outcome(c.put("big", vec![b'x'; 2000], None).await, |_| {
                    String::new()
                })
            }
            .boxed()
        }),
        ("txn above --max-request-bytes", |mut c| {
            async move {
                let t = Txn::new().and_then([
                    TxnOp::put("t1", vec![b'x'; 600], None),
                    TxnOp::put("t2", vec![b'x'; 600], None),
                ]);
                outcome(c.txn(t).await, |_| String::new())
            }
            .boxed()
        }),
        ("put above the gRPC receive limit", |mut c| {
            async move {
                // --max-request-bytes 1024 + 512 KiB of gRPC overhead.
                let huge = vec![b'y'; 1024 + 512 * 1024 + 100];
                outcome(c.put("huge", huge, None).await, |_| String::new())
            }
            .boxed()
        }),
        ("watch create above the gRPC receive limit", |mut c| {
            async move {
                let key = vec![b'w'; 1024 + 512 * 1024 + 100];
                match c.watch(key, None).await {
                    Err(e) => outcome::<()>(Err(e), |_| String::new()),
                    Ok(mut ws) => {
                        let m =
                            tokio::time::timeout(std::time::Duration::from_secs(10), ws.message())
                                .await
                                .expect("the watch stream answers");
                        outcome(m, |m| {
                            format!("{:?}", m.as_ref().map(|r| (r.created(), r.canceled())))
                        })
                    }
                }
            }
            .boxed()
        }),
        ("txn with too many ops", |mut c| {
            async move {
                let ops: Vec<TxnOp> = (0..5)
                    .map(|i| TxnOp::put(format!("m{i}"), "v", None))
                    .collect();
                outcome(c.txn(Txn::new().and_then(ops)).await, |_| String::new())
            }
            .boxed()
        }),
        ("txn with too many compares", |mut c| {
            async move {
                let cmps: Vec<Compare> = (0..5)
                    .map(|i| Compare::version(format!("m{i}"), CompareOp::Equal, 0))
                    .collect();
                outcome(c.txn(Txn::new().when(cmps)).await, |_| String::new())
            }
            .boxed()
        }),
        ("nested txns above the op budget", |mut c| {
            async move {
                let inner = |i: usize| {
                    TxnOp::txn(Txn::new().and_then([
                        TxnOp::put(format!("n{i}a"), "v", None),
                        TxnOp::put(format!("n{i}b"), "v", None),
                    ]))
                };
                outcome(
                    c.txn(Txn::new().and_then([inner(0), inner(1), inner(2)]))
                        .await,
                    |t| format!("succeeded {}", t.succeeded()),
                )
            }
            .boxed()
        }),
        ("range with range_end < key", |mut c| {
            async move {
                let r = c.get("c", Some(GetOptions::new().with_range("a"))).await;
                outcome(r, |r| format!("count {} kvs {}", r.count(), r.kvs().len()))
            }
            .boxed()
        }),
        ("range with range_end == key", |mut c| {
            async move {
                let r = c.get("c", Some(GetOptions::new().with_range("c"))).await;
                outcome(r, |r| format!("count {} kvs {}", r.count(), r.kvs().len()))
            }
            .boxed()
        }),
        ("delete with range_end < key", |mut c| {
            async move {
                let r = c
                    .delete("c", Some(etcd_client::DeleteOptions::new().with_range("a")))
                    .await;
                outcome(r, |r| {
                    format!(
                        "deleted {} rev {}",
                        r.deleted(),
                        r.header().unwrap().revision()
                    )
                })
            }
            .boxed()
        }),
        ("range at revision -1", |mut c| {
            async move {
                let r = c.get("a", Some(GetOptions::new().with_revision(-1))).await;
                outcome(r, |r| format!("count {}", r.count()))
            }
            .boxed()
        }),
        ("range at revision i64::MIN", |mut c| {
            async move {
                let r = c
                    .get("a", Some(GetOptions::new().with_revision(i64::MIN)))
                    .await;
                outcome(r, |r| format!("count {}", r.count()))
            }
            .boxed()
        }),
        ("range at revision i64::MAX", |mut c| {
            async move {
                let r = c
                    .get("a", Some(GetOptions::new().with_revision(i64::MAX)))
                    .await;
                outcome(r, |r| format!("count {}", r.count()))
            }
            .boxed()
        }),
        ("txn reading at a future revision", |mut c| {
            async move {
                let t = Txn::new().and_then([TxnOp::get(
                    "a",
                    Some(GetOptions::new().with_revision(1 << 40)),
                )]);
                outcome(c.txn(t).await, |t| format!("succeeded {}", t.succeeded()))
            }
            .boxed()
        }),
        ("compact at revision -5", |mut c| {
            async move { outcome(c.compact(-5, None).await, |_| String::new()) }.boxed()
        }),
        ("compact at revision i64::MAX", |mut c| {
            async move { outcome(c.compact(i64::MAX, None).await, |_| String::new()) }.boxed()
        }),
        ("put with an empty key", |mut c| {
            async move { outcome(c.put("", "v", None).await, |_| String::new()) }.boxed()
        }),
        ("range with an empty key", |mut c| {
            async move { outcome(c.get("", None).await, |r| format!("count {}", r.count())) }
                .boxed()
        }),
        ("delete with an empty key", |mut c| {
            async move {
                outcome(c.delete("", None).await, |r| {
                    format!("deleted {}", r.deleted())
                })
            }
            .boxed()
        }),
        ("txn putting an empty key", |mut c| {
            async move {
                let t = Txn::new().and_then([TxnOp::put("", "v", None)]);
                outcome(c.txn(t).await, |_| String::new())
            }
            .boxed()
        }),
        ("txn comparing an empty key", |mut c| {
            async move {
                let t = Txn::new()
                    .when([Compare::version("", CompareOp::Equal, 0)])
                    .and_then([TxnOp::get("a", None)]);
                outcome(c.txn(t).await, |t| format!("succeeded {}", t.succeeded()))
            }
            .boxed()
        }),
    ]
}

#[tokio::test]
async fn bad_inputs_match_etcd_and_harm_nothing() {
    let flags = ["--max-request-bytes", "1024", "--max-txn-ops", "4"];
    let e = Etcd::start(&flags);
    let s = Strata::start(&flags);
    let (mut ec, mut sc) = (e.client().await, s.client().await);
    seed(&mut ec).await;
    seed(&mut sc).await;
    let mut diffs = Vec::new();
    for (name, run) in cases() {
        let want = run(ec.clone()).await;
        let got = run(sc.clone()).await;
        eprintln!("{name}: etcd {want:?}");
        if want != got {
            diffs.push(format!("{name}:\n  etcd   {want}\n  strata {got}"));
        }
        check_intact(&mut ec, "etcd", name).await;
        check_intact(&mut sc, "strata", name).await;
    }
    // A fresh connection works too (a refused oversized message must not
    // have poisoned the server).
    let mut fresh = s.client().await;
    check_intact(&mut fresh, "strata (new connection)", "all cases").await;
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
}
