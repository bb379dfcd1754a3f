//! KV service: Range, Put, DeleteRange, Txn and Compact against a real
//! `strata` process, through `etcd-client` and (where exact field control
//! is needed) the raw tonic client from the `proto` crate.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use proto::etcdserverpb::{self as pb, kv_client::KvClient};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::Strata;

// ---------------------------------------------------------------- helpers

/// The gRPC status of a failed etcd-client call.
fn grpc_status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> tonic::Status {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Assert an etcd-client call failed with exactly `code` and `msg`.
fn assert_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, code: Code, msg: &str) {
    let s = grpc_status(r);
    assert_eq!((s.code(), s.message()), (code, msg), "status: {s:?}");
}

/// Assert a raw tonic call failed with exactly `code` and `msg`.
fn assert_raw_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    match r {
        Err(s) => assert_eq!((s.code(), s.message()), (code, msg), "status: {s:?}"),
        Ok(v) => panic!("expected {code:?} {msg:?}, got Ok({v:?})"),
    }
}

async fn raw(s: &Strata) -> KvClient<Channel> {
    KvClient::connect(s.endpoint.clone()).await.unwrap()
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key().to_vec()).unwrap())
        .collect()
}

fn raw_keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

async fn current_rev(c: &mut etcd_client::Client) -> i64 {
    rev_of(c.get("\0", None).await.unwrap().header())
}

fn range_req(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- Range

#[tokio::test]
async fn range_limit_more_count_and_old_revisions() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for (i, k) in ["r/a", "r/b", "r/c", "r/d", "r/e"].iter().enumerate() {
        let p = c.put(*k, format!("{}", i + 1), None).await.unwrap();
        assert_eq!(rev_of(p.header()), i as i64 + 2);
    }
    c.put("q", "outside", None).await.unwrap(); // rev 7
    c.put("s", "outside", None).await.unwrap(); // rev 8

    let pre = || GetOptions::new().with_prefix();
    for (limit, want, more) in [
        (1, vec!["r/a"], true),
        (2, vec!["r/a", "r/b"], true),
        (4, vec!["r/a", "r/b", "r/c", "r/d"], true),
        (5, vec!["r/a", "r/b", "r/c", "r/d", "r/e"], false),
        (6, vec!["r/a", "r/b", "r/c", "r/d", "r/e"], false),
        (0, vec!["r/a", "r/b", "r/c", "r/d", "r/e"], false),
    ] {
        let r = c.get("r/", Some(pre().with_limit(limit))).await.unwrap();
        assert_eq!(keys(r.kvs()), want, "limit {limit}");
        assert_eq!(r.more(), more, "more at limit {limit}");
        assert_eq!(r.count(), 5, "count ignores the limit ({limit})");
        assert_eq!(rev_of(r.header()), 8);
    }
    let r = c.get("r/c", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (&b"3"[..], 4, 4, 1, 0)
    );

    // Overwrite and read the old revisions back.
    let p = c.put("r/a", "1b", None).await.unwrap();
    assert_eq!(rev_of(p.header()), 9);
    for (rev, val, modrev, ver) in [
        (2, "1", 2, 1),
        (8, "1", 2, 1),
        (9, "1b", 9, 2),
        (0, "1b", 9, 2),
    ] {
        let r = c
            .get("r/a", Some(GetOptions::new().with_revision(rev)))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 1, "at rev {rev}");
        let kv = &r.kvs()[0];
        assert_eq!(kv.value_str().unwrap(), val, "value at rev {rev}");
        assert_eq!(kv.create_revision(), 2);
        assert_eq!(kv.mod_revision(), modrev);
        assert_eq!(kv.version(), ver);
        assert_eq!(
            rev_of(r.header()),
            9,
            "header carries the current revision, not the requested one"
        );
    }
    // Rev 1 is the empty initial store.
    let r = c.get("r/", Some(pre().with_revision(1))).await.unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    // At rev 4 only three keys existed; limit+more+count apply to that view.
    let r = c
        .get("r/", Some(pre().with_revision(4).with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["r/a", "r/b"]);
    assert!(r.more());
    assert_eq!(r.count(), 3);
    assert_eq!(r.kvs()[0].value(), b"1");

    assert_err(
        c.get("r/a", Some(GetOptions::new().with_revision(10)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
}

#[tokio::test]
async fn range_sort_orders_and_targets() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    // Final state (chosen so every target orders the keys differently):
    //   s/a: create 3, mod 7, version 2, value x
    //   s/b: create 4, mod 4, version 1, value z
    //   s/c: create 2, mod 6, version 3, value y
    for (k, v) in [
        ("s/c", "y"),
        ("s/a", "x"),
        ("s/b", "z"),
        ("s/c", "y"),
        ("s/c", "y"),
        ("s/a", "x"),
    ] {
        c.put(k, v, None).await.unwrap();
    }
    let mut kv = raw(&s).await;
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let cases: &[(T, O, &[&str])] = &[
        (T::Key, O::None, &["s/a", "s/b", "s/c"]),
        (T::Key, O::Ascend, &["s/a", "s/b", "s/c"]),
        (T::Key, O::Descend, &["s/c", "s/b", "s/a"]),
        (T::Create, O::Ascend, &["s/c", "s/a", "s/b"]),
        (T::Create, O::Descend, &["s/b", "s/a", "s/c"]),
        (T::Mod, O::Ascend, &["s/b", "s/c", "s/a"]),
        (T::Mod, O::Descend, &["s/a", "s/c", "s/b"]),
        (T::Version, O::Ascend, &["s/b", "s/a", "s/c"]),
        (T::Version, O::Descend, &["s/c", "s/a", "s/b"]),
        (T::Value, O::Ascend, &["s/a", "s/c", "s/b"]),
        (T::Value, O::Descend, &["s/b", "s/c", "s/a"]),
        // A non-KEY target with order NONE sorts ascending (etcd).
        (T::Version, O::None, &["s/b", "s/a", "s/c"]),
        (T::Value, O::None, &["s/a", "s/c", "s/b"]),
    ];
    for (t, o, want) in cases {
        let r = kv
            .range(pb::RangeRequest {
                sort_target: *t as i32,
                sort_order: *o as i32,
                ..range_req("s/", "s0")
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(raw_keys(&r), *want, "sort {t:?} {o:?}");
        assert_eq!((r.count, r.more), (3, false));
    }
    // Sort then limit: the limit applies to the sorted result.
    for (t, o, limit, want) in [
        (T::Mod, O::Descend, 2, vec!["s/a", "s/c"]),
        (T::Key, O::Descend, 1, vec!["s/c"]),
        (T::Create, O::Ascend, 2, vec!["s/c", "s/a"]),
        (T::Version, O::None, 1, vec!["s/b"]),
        (T::Value, O::Descend, 3, vec!["s/b", "s/c", "s/a"]),
    ] {
        let r = kv
            .range(pb::RangeRequest {
                sort_target: t as i32,
                sort_order: o as i32,
                limit,
                ..range_req("s/", "s0")
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(raw_keys(&r), want, "sort {t:?} {o:?} limit {limit}");
        assert_eq!(r.more, limit < 3, "more for limit {limit}");
        assert_eq!(r.count, 3);
    }
    // etcd-client's sort helper reaches the same server path.
    let r = c
        .get(
            "s/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(
                        etcd_client::SortTarget::Mod,
                        etcd_client::SortOrder::Descend,
                    )
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["s/a"]);
    assert!(r.more());
    // Unknown enum values are rejected.
    assert_raw_err(
        kv.range(pb::RangeRequest {
            sort_order: 9,
            ..range_req("s/", "s0")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    );
    assert_raw_err(
        kv.range(pb::RangeRequest {
            sort_target: 9,
            ..range_req("s/", "s0")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    );
}

#[tokio::test]
async fn range_keys_only_count_only_serializable() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for k in ["o/1", "o/2", "o/3", "o/4"] {
        c.put(k, format!("value-of-{k}"), None).await.unwrap();
    }
    c.put("o/2", "again", None).await.unwrap(); // rev 6

    let r = c
        .get("o/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["o/1", "o/2", "o/3", "o/4"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    let kv2 = &r.kvs()[1];
    assert_eq!(
        (kv2.create_revision(), kv2.mod_revision(), kv2.version()),
        (3, 6, 2),
        "keys_only keeps the metadata"
    );

    for limit in [0, 1, 10] {
        let r = c
            .get(
                "o/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_limit(limit),
                ),
            )
            .await
            .unwrap();
        assert!(r.kvs().is_empty(), "count_only returns no kvs");
        assert_eq!(r.count(), 4, "limit {limit}");
        assert!(!r.more(), "count_only never sets more (limit {limit})");
        assert_eq!(rev_of(r.header()), 6);
    }
    let r = c
        .get(
            "o/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(3),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 2);

    let lin = c
        .get("o/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let ser = c
        .get(
            "o/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(format!("{:?}", lin.kvs()), format!("{:?}", ser.kvs()));
    assert_eq!(rev_of(ser.header()), 6);
    assert_eq!(ser.count(), 4);
    // A serializable read still sees this client's own completed write.
    c.put("o/5", "x", None).await.unwrap();
    let ser = c
        .get("o/5", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(ser.kvs()[0].value(), b"x");
}

#[tokio::test]
async fn range_mod_and_create_revision_filters() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("f/a", "1", None).await.unwrap(); // rev 2
    c.put("f/b", "1", None).await.unwrap(); // rev 3
    c.put("f/c", "1", None).await.unwrap(); // rev 4
    c.put("f/a", "2", None).await.unwrap(); // rev 5
                                            // a: create 2 mod 5; b: create 3 mod 3; c: create 4 mod 4
    let base = || GetOptions::new().with_prefix();
    let cases: Vec<(GetOptions, Vec<&str>)> = vec![
        (base().with_min_mod_revision(4), vec!["f/a", "f/c"]),
        (base().with_max_mod_revision(4), vec!["f/b", "f/c"]),
        (base().with_min_create_revision(3), vec!["f/b", "f/c"]),
        (base().with_max_create_revision(3), vec!["f/a", "f/b"]),
        (
            base().with_min_mod_revision(4).with_max_create_revision(3),
            vec!["f/a"],
        ),
        (
            base().with_min_mod_revision(3).with_max_mod_revision(4),
            vec!["f/b", "f/c"],
        ),
        (base().with_min_mod_revision(6), vec![]),
    ];
    for (opts, want) in cases {
        let dbg = format!("{opts:?}");
        let r = c.get("f/", Some(opts)).await.unwrap();
        assert_eq!(keys(r.kvs()), want, "{dbg}");
        assert_eq!(r.count(), 3, "count ignores the filters: {dbg}");
        assert!(!r.more(), "{dbg}");
    }
    // Filter then limit: `more` reflects the filtered list.
    let r = c
        .get("f/", Some(base().with_min_mod_revision(4).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["f/a"]);
    assert!(r.more());
    let r = c
        .get("f/", Some(base().with_min_mod_revision(5).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["f/a"]);
    assert!(!r.more());
    // Filters evaluate against the historical view.
    let r = c
        .get("f/", Some(base().with_revision(4).with_max_mod_revision(2)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["f/a"]);
    assert_eq!(r.kvs()[0].value(), b"1");
}

#[tokio::test]
async fn range_end_from_key_prefix_and_explicit() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for k in ["a", "b", "b/1", "b/2", "b0", "c"] {
        c.put(k, "v", None).await.unwrap();
    }
    c.put(vec![0xffu8, 0xff], "v", None).await.unwrap();
    let mut kv = raw(&s).await;
    // (key, range_end, expected keys)
    type Case<'a> = (&'a [u8], &'a [u8], &'a [&'a [u8]]);
    let cases: &[Case] = &[
        // range_end "\0": every key >= key.
        (
            b"b",
            b"\0",
            &[b"b", b"b/1", b"b/2", b"b0", b"c", b"\xff\xff"],
        ),
        // key "\0" + range_end "\0": all keys.
        (
            b"\0",
            b"\0",
            &[b"a", b"b", b"b/1", b"b/2", b"b0", b"c", b"\xff\xff"],
        ),
        // prefix "b/" is [b/, b0).
        (b"b/", b"b0", &[b"b/1", b"b/2"]),
        (b"b", b"c", &[b"b", b"b/1", b"b/2", b"b0"]),
        (b"a", b"b", &[b"a"]),
        // A single key; and a missing one.
        (b"b/1", b"", &[b"b/1"]),
        (b"zz", b"", &[]),
        // range_end <= key: empty.
        (b"c", b"b", &[]),
        (b"b", b"b", &[]),
    ];
    for (key, end, want) in cases {
        let r = kv
            .range(pb::RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(got, *want, "key {key:?} end {end:?}");
        assert_eq!(r.count, want.len() as i64);
    }
    let r = c
        .get("b/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["b/1", "b/2"]);
    let r = c
        .get("b0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(r.count(), 3);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 7);
}

// ---------------------------------------------------------------- Put

#[tokio::test]
async fn put_prev_kv_lease_ignore_value_ignore_lease() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let p = c
        .put("p/k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(rev_of(p.header()), 2);
    assert!(p.prev_key().is_none(), "no prev_kv on create");
    let p = c
        .put("p/k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(rev_of(p.header()), 3);
    let prev = p.prev_key().expect("prev_kv");
    assert_eq!(
        (
            prev.key(),
            prev.value(),
            prev.create_revision(),
            prev.mod_revision(),
            prev.version()
        ),
        (&b"p/k"[..], &b"v1"[..], 2, 2, 1)
    );
    let p = c.put("p/k", "v3", None).await.unwrap();
    assert!(p.prev_key().is_none(), "prev_kv only when asked");

    // Lease attach.
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let p = c
        .put(
            "p/l",
            "with-lease",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    assert_eq!(
        rev_of(p.header()),
        5,
        "lease grant does not bump the revision"
    );
    let kv = c.get("p/l", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease);

    // ignore_lease keeps the lease and changes the value.
    c.put(
        "p/l",
        "new-value",
        Some(PutOptions::new().with_ignore_lease()),
    )
    .await
    .unwrap();
    let kv = c.get("p/l", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version()),
        (&b"new-value"[..], lease, 2)
    );

    // ignore_value keeps the value; the lease is replaced (here: removed).
    let p = c
        .put(
            "p/l",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(p.prev_key().unwrap().lease(), lease);
    let kv = c.get("p/l", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version(), kv.mod_revision()),
        (&b"new-value"[..], 0, 3, 7)
    );
    let ttl = c
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert!(
        ttl.keys().is_empty(),
        "key detached from the lease: {:?}",
        ttl.keys()
    );
    // ignore_value + a new lease attaches it, value unchanged.
    c.put(
        "p/l",
        "",
        Some(PutOptions::new().with_ignore_value().with_lease(lease)),
    )
    .await
    .unwrap();
    let kv = c.get("p/l", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.lease()), (&b"new-value"[..], lease));
    // Both flags: a pure "touch" (new mod_revision and version, same value and lease).
    let p = c
        .put(
            "p/l",
            "",
            Some(PutOptions::new().with_ignore_value().with_ignore_lease()),
        )
        .await
        .unwrap();
    let kv = c.get("p/l", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version(), kv.mod_revision()),
        (&b"new-value"[..], lease, 5, rev_of(p.header()))
    );

    // Error cases; none of them bumps the revision.
    let before = current_rev(&mut c).await;
    assert_err(
        c.put("p/l", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_err(
        c.put(
            "p/l",
            "x",
            Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_err(
        c.put("p/missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_err(
        c.put(
            "p/missing",
            "x",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_err(
        c.put(
            "p/k",
            "x",
            Some(PutOptions::new().with_lease(lease + 12345)),
        )
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(
        current_rev(&mut c).await,
        before,
        "failed puts write nothing"
    );
    assert!(c.get("p/missing", None).await.unwrap().kvs().is_empty());
    assert_eq!(c.get("p/k", None).await.unwrap().kvs()[0].value(), b"v3");
    // The next successful write gets exactly the next revision.
    let p = c.put("p/k", "v4", None).await.unwrap();
    assert_eq!(rev_of(p.header()), before + 1);
}

#[tokio::test]
async fn empty_key_is_rejected_everywhere() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let msg = "etcdserver: key is not provided";
    assert_err(c.get("", None).await, Code::InvalidArgument, msg);
    assert_err(c.put("", "v", None).await, Code::InvalidArgument, msg);
    assert_err(c.delete("", None).await, Code::InvalidArgument, msg);
    assert_err(
        c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        Code::InvalidArgument,
        msg,
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        Code::InvalidArgument,
        msg,
    );
    assert_err(
        c.txn(Txn::new().or_else([TxnOp::get("", None)])).await,
        Code::InvalidArgument,
        msg,
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::txn(Txn::new().and_then([TxnOp::delete("", None)]))]))
            .await,
        Code::InvalidArgument,
        msg,
    );
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn request_too_large() {
    let s = Strata::start(&["--max-request-bytes", "1024"]);
    let mut c = s.client().await;
    let msg = "etcdserver: request is too large";
    assert_err(
        c.put("big", vec![b'x'; 2000], None).await,
        Code::InvalidArgument,
        msg,
    );
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("t1", vec![b'x'; 600], None),
            TxnOp::put("t2", vec![b'x'; 600], None),
        ]))
        .await,
        Code::InvalidArgument,
        msg,
    );
    let p = c.put("small", vec![b'x'; 900], None).await.unwrap();
    assert_eq!(rev_of(p.header()), 2, "rejected requests wrote nothing");

    // Beyond --max-request-bytes + 512 KiB the gRPC layer itself refuses the
    // message. That must be a clean status, and the server must stay healthy.
    let huge = vec![b'y'; 1024 + 512 * 1024 + 4096];
    let st = grpc_status(c.put("huge", huge, None).await);
    // etcd's (grpc-go's) answer, not tonic's OutOfRange.
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .starts_with("grpc: received message larger than max (")
            && st
                .message()
                .ends_with(&format!(" vs. {})", 1024 + 512 * 1024)),
        "{st:?}"
    );
    // The same connection keeps working.
    let p = c.put("after", "ok", None).await.unwrap();
    assert_eq!(rev_of(p.header()), 3);
    let r = c.get("after", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"ok");
    assert!(c.get("huge", None).await.unwrap().kvs().is_empty());
    let mut fresh = s.client().await;
    assert_eq!(fresh.get("small", None).await.unwrap().count(), 1);
}

// ---------------------------------------------------------------- DeleteRange

#[tokio::test]
async fn delete_range_prev_kv_count_and_no_empty_revision() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for k in ["d/a", "d/b", "d/c", "e"] {
        c.put(k, format!("v-{k}"), None).await.unwrap(); // revs 2..=5
    }
    let d = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(d.deleted(), 3);
    assert_eq!(rev_of(d.header()), 6, "one revision for the whole range");
    assert_eq!(keys(d.prev_kvs()), vec!["d/a", "d/b", "d/c"]);
    let pb = &d.prev_kvs()[1];
    assert_eq!(
        (
            pb.value(),
            pb.create_revision(),
            pb.mod_revision(),
            pb.version()
        ),
        (&b"v-d/b"[..], 3, 3, 1)
    );
    assert_eq!(
        c.get("d/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        0
    );
    assert_eq!(c.get("e", None).await.unwrap().count(), 1);
    // Still readable at the previous revision.
    let r = c
        .get("d/", Some(GetOptions::new().with_prefix().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(r.count(), 3);

    // Deleting nothing does not create a revision.
    let d = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((d.deleted(), d.prev_kvs().len()), (0, 0));
    assert_eq!(rev_of(d.header()), 6);
    let d = c.delete("nope", None).await.unwrap();
    assert_eq!((d.deleted(), rev_of(d.header())), (0, 6));
    let p = c.put("x", "1", None).await.unwrap();
    assert_eq!(rev_of(p.header()), 7);

    // Without prev_kv: count only.
    let d = c.delete("e", None).await.unwrap();
    assert_eq!(
        (d.deleted(), d.prev_kvs().len(), rev_of(d.header())),
        (1, 0, 8)
    );
    // Explicit range [a, x) and from-key.
    c.put("m1", "1", None).await.unwrap();
    c.put("m2", "1", None).await.unwrap();
    let d = c
        .delete("m", Some(DeleteOptions::new().with_range("m2")))
        .await
        .unwrap();
    assert_eq!((d.deleted(), rev_of(d.header())), (1, 11));
    let d = c
        .delete("m", Some(DeleteOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(d.deleted(), 2, "m2 and x");
    assert_eq!(
        c.get("\0", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn version_and_create_revision_across_delete_and_recreate() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("g", "a", None).await.unwrap(); // 2
    c.put("g", "b", None).await.unwrap(); // 3
    let kv = c.get("g", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );
    let d = c.delete("g", None).await.unwrap(); // 4
    assert_eq!((d.deleted(), rev_of(d.header())), (1, 4));
    assert!(c.get("g", None).await.unwrap().kvs().is_empty());
    let p = c
        .put("g", "c", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap(); // 5
    assert!(p.prev_key().is_none(), "a deleted key has no prev_kv");
    let kv = c.get("g", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"c"[..], 5, 5, 1),
        "a re-create starts a new generation"
    );
    c.put("g", "d", None).await.unwrap(); // 6
    let kv = c.get("g", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (5, 6, 2)
    );
    // The old generation is still visible at its revisions; the gap is empty.
    let old = c
        .get("g", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(
        (
            old.kvs()[0].value(),
            old.kvs()[0].create_revision(),
            old.kvs()[0].version()
        ),
        (&b"b"[..], 2, 2)
    );
    let gap = c
        .get("g", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert!(gap.kvs().is_empty());
    // Txn compares see the new generation.
    let t = c
        .txn(Txn::new().when([
            Compare::create_revision("g", CompareOp::Equal, 5),
            Compare::version("g", CompareOp::Equal, 2),
        ]))
        .await
        .unwrap();
    assert!(t.succeeded());
}

// ---------------------------------------------------------------- Txn

#[tokio::test]
async fn txn_every_compare_target_and_result() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("c/k", "m", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 2
    c.put("c/k", "m", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 3
                   // c/k: version 2, create 2, mod 3, lease `lease`, value "m".
    type Mk = fn(i64, CompareOp) -> Compare;
    let numeric: [(&str, i64, Mk); 4] = [
        ("version", 2, |v, op| Compare::version("c/k", op, v)),
        ("create", 2, |v, op| Compare::create_revision("c/k", op, v)),
        ("mod", 3, |v, op| Compare::mod_revision("c/k", op, v)),
        ("lease", lease, |v, op| Compare::lease("c/k", op, v)),
    ];
    let mut cases: Vec<(String, Compare, bool)> = Vec::new();
    for (name, f, mk) in numeric {
        for (op, opn) in [
            (CompareOp::Equal, "=="),
            (CompareOp::Greater, ">"),
            (CompareOp::Less, "<"),
            (CompareOp::NotEqual, "!="),
        ] {
            for (x, xn) in [(f - 1, "f-1"), (f, "f"), (f + 1, "f+1")] {
                let want = match opn {
                    "==" => f == x,
                    ">" => f > x,
                    "<" => f < x,
                    _ => f != x,
                };
                cases.push((format!("{name} {opn} {xn}"), mk(x, op), want));
            }
        }
    }
    for (x, ops) in [
        ("l", [false, true, false, true]),
        ("m", [true, false, false, false]),
        ("n", [false, false, true, true]),
        ("", [false, true, false, true]),
        ("mm", [false, false, true, true]),
    ] {
        for (op, want) in [
            CompareOp::Equal,
            CompareOp::Greater,
            CompareOp::Less,
            CompareOp::NotEqual,
        ]
        .into_iter()
        .zip(ops)
        {
            cases.push((
                format!("value {op:?} {x:?}"),
                Compare::value("c/k", op, x),
                want,
            ));
        }
    }
    assert_eq!(cases.len(), 4 * 4 * 3 + 5 * 4);
    for (name, cmp, want) in cases {
        let t = c
            .txn(Txn::new().when([cmp]).and_then([TxnOp::get("c/k", None)]))
            .await
            .unwrap();
        assert_eq!(t.succeeded(), want, "{name}");
        assert_eq!(
            t.op_responses().len(),
            usize::from(want),
            "{name}: branch taken"
        );
        assert_eq!(rev_of(t.header()), 3, "{name}: read-only txn");
    }
    // Several compares are ANDed.
    let t = c
        .txn(Txn::new().when([
            Compare::version("c/k", CompareOp::Equal, 2),
            Compare::value("c/k", CompareOp::Equal, "x"),
        ]))
        .await
        .unwrap();
    assert!(!t.succeeded());
}

#[tokio::test]
async fn txn_range_compares_missing_keys_nested_and_readonly() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("p/a", "1", None).await.unwrap(); // 2
    c.put("p/b", "1", None).await.unwrap(); // 3

    // Compare over a range: every key in it must satisfy the compare.
    let run = |cmp: Compare| Txn::new().when([cmp]).and_then([TxnOp::get("p/a", None)]);
    assert!(c
        .txn(run(
            Compare::version("p/", CompareOp::Equal, 1).with_prefix()
        ))
        .await
        .unwrap()
        .succeeded());
    c.put("p/b", "2", None).await.unwrap(); // 4
    for (cmp, want) in [
        (
            Compare::version("p/", CompareOp::Equal, 1).with_prefix(),
            false,
        ),
        (
            Compare::version("p/", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            Compare::version("p/a", CompareOp::Equal, 1).with_range("p/b"),
            true,
        ),
        (
            Compare::value("p/", CompareOp::Equal, "1").with_prefix(),
            false,
        ),
        (
            Compare::mod_revision("p/", CompareOp::Less, 5).with_prefix(),
            true,
        ),
        (
            Compare::mod_revision("p/", CompareOp::Less, 4).with_prefix(),
            false,
        ),
        // An empty range behaves like a missing key.
        (
            Compare::version("q/", CompareOp::Equal, 0).with_prefix(),
            true,
        ),
        (
            Compare::value("q/", CompareOp::NotEqual, "x").with_prefix(),
            false,
        ),
    ] {
        let dbg = format!("{cmp:?}");
        assert_eq!(c.txn(run(cmp)).await.unwrap().succeeded(), want, "{dbg}");
    }

    // A missing key compares as zero; a VALUE compare on it is always false.
    for (cmp, want) in [
        (Compare::version("nope", CompareOp::Equal, 0), true),
        (Compare::create_revision("nope", CompareOp::Equal, 0), true),
        (Compare::mod_revision("nope", CompareOp::Equal, 0), true),
        (Compare::lease("nope", CompareOp::Equal, 0), true),
        (Compare::version("nope", CompareOp::Less, 1), true),
        (Compare::version("nope", CompareOp::Greater, 0), false),
        (Compare::mod_revision("nope", CompareOp::NotEqual, 0), false),
        (Compare::value("nope", CompareOp::Equal, ""), false),
        (Compare::value("nope", CompareOp::NotEqual, "x"), false),
        (Compare::value("nope", CompareOp::Less, "x"), false),
        (Compare::value("nope", CompareOp::Greater, ""), false),
    ] {
        let dbg = format!("{cmp:?}");
        assert_eq!(c.txn(run(cmp)).await.unwrap().succeeded(), want, "{dbg}");
    }

    // A read-only txn is served as a read: no revision bump.
    let before = current_rev(&mut c).await;
    assert_eq!(before, 4);
    let t = c
        .txn(
            Txn::new()
                .when([Compare::version("p/a", CompareOp::Equal, 1)])
                .and_then([
                    TxnOp::get("p/", Some(GetOptions::new().with_prefix())),
                    TxnOp::get("p/a", Some(GetOptions::new().with_revision(2))),
                ])
                .or_else([TxnOp::get("p/b", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(rev_of(t.header()), 4);
    let resps = t.op_responses();
    assert_eq!(resps.len(), 2);
    match &resps[0] {
        TxnOpResponse::Get(g) => {
            assert_eq!(keys(g.kvs()), vec!["p/a", "p/b"]);
            assert_eq!(g.kvs()[1].value(), b"2");
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    match &resps[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), 2),
        other => panic!("expected a range response, got {other:?}"),
    }
    assert_eq!(current_rev(&mut c).await, before);
    // A write txn whose taken branch writes nothing also does not bump.
    let t = c
        .txn(
            Txn::new()
                .when([Compare::value("p/a", CompareOp::Equal, "no")])
                .and_then([TxnOp::put("p/z", "z", None)])
                .or_else([TxnOp::get("p/a", None)]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded());
    assert_eq!(rev_of(t.header()), 4);
    assert_eq!(current_rev(&mut c).await, 4);
    assert!(c.get("p/z", None).await.unwrap().kvs().is_empty());

    // A write txn: one revision for all ops; a range later in the branch
    // sees the earlier writes; the response order follows the ops.
    let t = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision("w/new", CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put("w/new", "1", None),
                    TxnOp::put("p/a", "changed", Some(PutOptions::new().with_prev_key())),
                    TxnOp::delete("p/b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("", Some(GetOptions::new().with_all_keys())),
                ]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(rev_of(t.header()), 5);
    let resps = t.op_responses();
    assert_eq!(resps.len(), 4);
    match &resps[1] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().unwrap().value(), b"1"),
        other => panic!("put expected, got {other:?}"),
    }
    match &resps[2] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"2");
        }
        other => panic!("delete expected, got {other:?}"),
    }
    match &resps[3] {
        TxnOpResponse::Get(g) => {
            assert_eq!(keys(g.kvs()), vec!["p/a", "w/new"]);
            assert_eq!(g.kvs()[0].value(), b"changed");
            assert!(g.kvs().iter().all(|kv| kv.mod_revision() == 5));
        }
        other => panic!("range expected, got {other:?}"),
    }
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["p/a", "w/new"]);
    assert!(r.kvs().iter().all(|kv| kv.mod_revision() == 5));

    // Nested txn: every compare is evaluated against the state before the
    // txn runs, so the inner compare still sees n/x missing.
    let t = c
        .txn(
            Txn::new()
                .when([Compare::version("n/x", CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put("n/x", "1", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version("n/x", CompareOp::Equal, 0)])
                            .and_then([TxnOp::put("n/y", "then", None)])
                            .or_else([TxnOp::put("n/y", "else", None)]),
                    ),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::value("p/a", CompareOp::Equal, "nope")])
                            .and_then([TxnOp::put("n/z", "then", None)])
                            .or_else([TxnOp::put("n/z", "else", None), TxnOp::get("n/x", None)]),
                    ),
                ]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(rev_of(t.header()), 6);
    let resps = t.op_responses();
    assert_eq!(resps.len(), 3);
    match &resps[1] {
        TxnOpResponse::Txn(inner) => {
            assert!(inner.succeeded());
            assert_eq!(inner.op_responses().len(), 1);
            assert!(matches!(inner.op_responses()[0], TxnOpResponse::Put(_)));
        }
        other => panic!("nested txn response expected, got {other:?}"),
    }
    match &resps[2] {
        TxnOpResponse::Txn(inner) => {
            assert!(!inner.succeeded());
            let r = inner.op_responses();
            assert_eq!(r.len(), 2);
            match &r[1] {
                TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"1"),
                other => panic!("range expected, got {other:?}"),
            }
        }
        other => panic!("nested txn response expected, got {other:?}"),
    }
    let r = c
        .get("n/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<(String, String, i64)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("n/x".to_string(), "1".to_string(), 6),
            ("n/y".to_string(), "then".to_string(), 6),
            ("n/z".to_string(), "else".to_string(), 6),
        ]
    );

    // A txn put on a missing lease fails the whole txn; nothing is written.
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("t/1", "a", None),
            TxnOp::put("t/2", "b", Some(PutOptions::new().with_lease(424242))),
        ]))
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("t/1", "a", None),
            TxnOp::put("t/2", "", Some(PutOptions::new().with_ignore_value())),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::get(
            "p/a",
            Some(GetOptions::new().with_revision(100)),
        )]))
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_eq!(current_rev(&mut c).await, 6);
    assert!(c.get("t/1", None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn txn_duplicate_keys_and_too_many_ops() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let dup = "etcdserver: duplicate key given in txn request";
    let bad: Vec<(&str, Txn)> = vec![
        (
            "put twice",
            Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]),
        ),
        (
            "put twice in else",
            Txn::new().or_else([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]),
        ),
        (
            "put then delete",
            Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::delete("a", None)]),
        ),
        (
            "put inside deleted range",
            Txn::new().and_then([
                TxnOp::delete("x/", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("x/1", "1", None),
            ]),
        ),
        (
            "put in outer and nested",
            Txn::new().and_then([
                TxnOp::put("a", "1", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put("a", "2", None)])),
            ]),
        ),
    ];
    for (name, t) in bad {
        let r = c.txn(t).await;
        let st = grpc_status(r);
        assert_eq!(
            (st.code(), st.message()),
            (Code::InvalidArgument, dup),
            "{name}"
        );
    }
    // Allowed: the same key in mutually exclusive branches, overlapping
    // deletes, and reads of written keys.
    let ok: Vec<(&str, Txn)> = vec![
        (
            "then and else",
            Txn::new()
                .and_then([TxnOp::put("a", "1", None)])
                .or_else([TxnOp::put("a", "2", None)]),
        ),
        (
            "nested then and else",
            Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .and_then([TxnOp::put("b", "1", None)])
                    .or_else([TxnOp::put("b", "2", None)]),
            )]),
        ),
        (
            "overlapping deletes",
            Txn::new().and_then([
                TxnOp::delete("a", None),
                TxnOp::delete("a", Some(DeleteOptions::new().with_prefix())),
            ]),
        ),
        (
            "put and get",
            Txn::new().and_then([TxnOp::put("c", "1", None), TxnOp::get("c", None)]),
        ),
    ];
    for (name, t) in ok {
        c.txn(t).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(
        c.get("a", None).await.unwrap().count(),
        0,
        "deleted by the overlapping deletes"
    );
    assert_eq!(c.get("b", None).await.unwrap().kvs()[0].value(), b"1");

    // Default --max-txn-ops is 128: the limit applies per list.
    let many = "etcdserver: too many operations in txn request";
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("m/{i:03}"), "v", None))
            .collect()
    };
    let cmps = |n: usize| -> Vec<Compare> {
        (0..n)
            .map(|i| Compare::version(format!("m/{i:03}"), CompareOp::Equal, 0))
            .collect()
    };
    assert_err(
        c.txn(Txn::new().and_then(puts(129))).await,
        Code::InvalidArgument,
        many,
    );
    assert_err(
        c.txn(Txn::new().or_else(puts(129))).await,
        Code::InvalidArgument,
        many,
    );
    assert_err(
        c.txn(Txn::new().when(cmps(129))).await,
        Code::InvalidArgument,
        many,
    );
    let t = c
        .txn(
            Txn::new()
                .when(cmps(128))
                .and_then(puts(128))
                .or_else(puts(128)),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(
        c.get(
            "m/",
            Some(GetOptions::new().with_prefix().with_count_only())
        )
        .await
        .unwrap()
        .count(),
        128
    );

    // A server started with --max-txn-ops 3.
    let s3 = Strata::start(&["--max-txn-ops", "3"]);
    let mut c3 = s3.client().await;
    assert_err(
        c3.txn(Txn::new().and_then(puts(4))).await,
        Code::InvalidArgument,
        many,
    );
    assert_err(
        c3.txn(Txn::new().when(cmps(4))).await,
        Code::InvalidArgument,
        many,
    );
    assert_err(
        c3.txn(Txn::new().and_then([TxnOp::txn(Txn::new().or_else(puts(4)))]))
            .await,
        Code::InvalidArgument,
        many,
    );
    let t = c3
        .txn(Txn::new().when(cmps(3)).and_then(puts(3)).or_else(puts(3)))
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(rev_of(t.header()), 2);
}

// ---------------------------------------------------------------- Compact

#[tokio::test]
async fn compact_then_read_and_errors() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 1..=5 {
        c.put("k", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    c.put("other", "o", None).await.unwrap(); // 7
    let r = c.compact(4, None).await.unwrap();
    assert_eq!(rev_of(r.header()), 7);

    let compacted = "etcdserver: mvcc: required revision has been compacted";
    for rev in [2, 3] {
        assert_err(
            c.get("k", Some(GetOptions::new().with_revision(rev))).await,
            Code::OutOfRange,
            compacted,
        );
    }
    // The compact revision itself stays readable.
    let r = c
        .get("k", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"3");
    assert_eq!(r.kvs()[0].version(), 3);
    let r = c
        .get("k", Some(GetOptions::new().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"4");
    let r = c.get("k", None).await.unwrap();
    assert_eq!(
        (
            r.kvs()[0].value(),
            r.kvs()[0].create_revision(),
            r.kvs()[0].version()
        ),
        (&b"5"[..], 2, 5),
        "compaction keeps create_revision and version"
    );
    // A key whose only revision is newer than the compaction is unaffected.
    assert_eq!(c.get("other", None).await.unwrap().count(), 1);
    // Also inside a txn.
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(3)))]))
            .await,
        Code::OutOfRange,
        compacted,
    );
    // Compacting again at or below the compact revision.
    assert_err(c.compact(4, None).await, Code::OutOfRange, compacted);
    assert_err(c.compact(3, None).await, Code::OutOfRange, compacted);
    // Compacting the future.
    assert_err(
        c.compact(100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Compact is not a write: no revision bump.
    assert_eq!(current_rev(&mut c).await, 7);
    // Compacting up to the current revision works (physical too), and the
    // current state remains readable.
    let r = c
        .compact(
            7,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert_eq!(rev_of(r.header()), 7);
    assert_err(
        c.get("k", Some(GetOptions::new().with_revision(6))).await,
        Code::OutOfRange,
        compacted,
    );
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), vec!["k", "other"]);
    let p = c.put("k", "6", None).await.unwrap();
    assert_eq!(rev_of(p.header()), 8);
}
