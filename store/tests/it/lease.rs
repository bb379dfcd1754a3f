//! Lease service: Grant, Revoke, KeepAlive, TimeToLive, Leases and expiry,
//! through `etcd-client` and the raw tonic `LeaseClient`.

use std::time::{Duration, Instant};

use etcd_client::{
    GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use proto::etcdserverpb::{self as pb, lease_client::LeaseClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::harness::{assert_err, current_rev, Strata};

const WAIT: Duration = Duration::from_secs(10);

async fn sorted_ids(c: &mut etcd_client::Client) -> Vec<i64> {
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn grant_server_and_client_ids_min_ttl_and_errors() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let g = c.lease_grant(10, None).await.unwrap();
    assert!(g.id() > 0, "server-chosen IDs are positive: {}", g.id());
    assert_eq!(g.ttl(), 10);
    assert_eq!(g.error(), "");
    assert_eq!(g.header().unwrap().revision(), 1, "grant is not a KV write");
    let g2 = c.lease_grant(10, None).await.unwrap();
    assert!(g2.id() > 0);
    assert_ne!(g.id(), g2.id());

    let mine = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
        .await
        .unwrap();
    assert_eq!((mine.id(), mine.ttl()), (12345, 30));
    assert_err(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_err(
        c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(g.id())))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    // The failed grant left the existing lease alone.
    let ttl = c.lease_time_to_live(12345, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 30);

    // Minimum TTL: 1.5 election timeouts (default 1 s), rounded up = 2 s.
    for asked in [0, 1, 2] {
        let g = c.lease_grant(asked, None).await.unwrap();
        assert_eq!(g.ttl(), 2, "asked {asked}");
        let t = c.lease_time_to_live(g.id(), None).await.unwrap();
        assert_eq!(t.granted_ttl(), 2);
    }
    assert_err(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    let big = c.lease_grant(9_000_000_000, None).await.unwrap();
    assert_eq!(big.ttl(), 9_000_000_000);
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn revoke_deletes_all_attached_keys_in_one_revision() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let l = c.lease_grant(60, None).await.unwrap().id();
    let with = || Some(PutOptions::new().with_lease(l));
    c.put("l/1", "a", with()).await.unwrap(); // 2
    c.put("l/2", "b", with()).await.unwrap(); // 3
    c.put("l/3", "c", with()).await.unwrap(); // 4
    c.put("keep", "k", None).await.unwrap(); // 5
    c.put("l/4", "d", with()).await.unwrap(); // 6
    c.put("l/4", "d2", None).await.unwrap(); // 7: detached again
    let ttl = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let mut ks = ttl.keys().to_vec();
    ks.sort();
    assert_eq!(ks, vec![b"l/1".to_vec(), b"l/2".to_vec(), b"l/3".to_vec()]);

    let mut ws = c
        .watch(
            "\0",
            Some(WatchOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .unwrap();
    let created = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(created.created());

    let r = c.lease_revoke(l).await.unwrap();
    assert_eq!(
        r.header().unwrap().revision(),
        8,
        "one revision for all deletes"
    );
    let all = c
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let left: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(left, vec![&b"keep"[..], &b"l/4"[..]]);
    let before = c
        .get("l/", Some(GetOptions::new().with_prefix().with_revision(7)))
        .await
        .unwrap();
    assert_eq!(before.count(), 4);

    let w = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let evs: Vec<(Vec<u8>, i64, Vec<u8>)> = w
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e.event_type(), etcd_client::EventType::Delete);
            (
                e.kv().unwrap().key().to_vec(),
                e.kv().unwrap().mod_revision(),
                e.prev_kv().unwrap().value().to_vec(),
            )
        })
        .collect();
    let mut evs = evs;
    evs.sort();
    assert_eq!(
        evs,
        vec![
            (b"l/1".to_vec(), 8, b"a".to_vec()),
            (b"l/2".to_vec(), 8, b"b".to_vec()),
            (b"l/3".to_vec(), 8, b"c".to_vec()),
        ],
        "three deletes delivered together, all at revision 8"
    );

    let t = c.lease_time_to_live(l, None).await.unwrap();
    assert_eq!((t.id(), t.ttl()), (l, -1));
    let msg = "etcdserver: requested lease not found";
    assert_err(c.lease_revoke(l).await, Code::NotFound, msg);
    assert_err(c.lease_revoke(777).await, Code::NotFound, msg);
    assert_err(
        c.put("x", "y", Some(PutOptions::new().with_lease(l))).await,
        Code::NotFound,
        msg,
    );
    assert_err(
        c.put("x", "y", Some(PutOptions::new().with_lease(777)))
            .await,
        Code::NotFound,
        msg,
    );
    // A lease without keys revokes without a new revision.
    let empty = c.lease_grant(60, None).await.unwrap().id();
    let r = c.lease_revoke(empty).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 8);
    assert_eq!(current_rev(&mut c).await, 8);
}

#[tokio::test]
async fn keepalive_stream_returns_ttl_and_zero_for_unknown() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let l = c.lease_grant(20, None).await.unwrap().id();

    let mut raw = LeaseClient::connect(s.endpoint.clone()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    // Queue the first request before the call: a grpc-go server sends no
    // response headers before its first message.
    tx.send(pb::LeaseKeepAliveRequest { id: l }).await.unwrap();
    let call = raw.lease_keep_alive(ReceiverStream::new(rx));
    let mut stream = tokio::time::timeout(WAIT, call)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((r.id, r.ttl), (l, 20));
    let mut ask = async |id: i64| -> pb::LeaseKeepAliveResponse {
        tx.send(pb::LeaseKeepAliveRequest { id }).await.unwrap();
        tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert!(r.header.is_some());
    let r = ask(98765).await;
    assert_eq!((r.id, r.ttl), (98765, 0), "unknown lease: TTL 0");
    // The stream stays usable after an unknown ID.
    let r = ask(l).await;
    assert_eq!((r.id, r.ttl), (l, 20));
    c.lease_revoke(l).await.unwrap();
    let r = ask(l).await;
    assert_eq!((r.id, r.ttl), (l, 0), "revoked lease: TTL 0");

    // etcd-client's keeper.
    let l2 = c.lease_grant(7, None).await.unwrap().id();
    let (mut keeper, mut ks) = c.lease_keep_alive(l2).await.unwrap();
    assert_eq!(keeper.id(), l2);
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, ks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((r.id(), r.ttl()), (l2, 7));

    // A keepalive resets the remaining TTL.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = c.lease_time_to_live(l2, None).await.unwrap();
    assert!(t.ttl() <= 5, "time passed: {}", t.ttl());
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, ks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl(), 7);
    let t = c.lease_time_to_live(l2, None).await.unwrap();
    assert!((6..=7).contains(&t.ttl()), "renewed: {}", t.ttl());
}

#[tokio::test]
async fn time_to_live_keys_and_missing_lease() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let l = c.lease_grant(60, None).await.unwrap().id();
    for k in ["t/b", "t/a", "t/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(l)))
            .await
            .unwrap();
    }
    c.delete("t/c", None).await.unwrap();
    let t = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(t.id(), l);
    assert_eq!(t.granted_ttl(), 60);
    assert!((58..=60).contains(&t.ttl()), "ttl {}", t.ttl());
    let mut keys = t.keys().to_vec();
    keys.sort();
    assert_eq!(
        keys,
        vec![b"t/a".to_vec(), b"t/b".to_vec()],
        "deleted keys detach"
    );
    let t = c.lease_time_to_live(l, None).await.unwrap();
    assert!(t.keys().is_empty(), "keys only when asked");
    assert_eq!(t.granted_ttl(), 60);

    let t = c
        .lease_time_to_live(4242, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!((t.id(), t.ttl(), t.granted_ttl()), (4242, -1, 0));
    assert!(t.keys().is_empty());
}

#[tokio::test]
async fn leases_lists_every_live_lease() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    assert!(sorted_ids(&mut c).await.is_empty());
    let mut ids = Vec::new();
    for (i, ttl) in [100, 50, 200].into_iter().enumerate() {
        let g = c
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(i as i64 + 1)))
            .await
            .unwrap();
        ids.push(g.id());
    }
    let auto = c.lease_grant(10, None).await.unwrap().id();
    ids.push(auto);
    ids.sort();
    assert_eq!(sorted_ids(&mut c).await, ids);
    c.lease_revoke(2).await.unwrap();
    ids.retain(|id| *id != 2);
    assert_eq!(sorted_ids(&mut c).await, ids);
    let r = c.leases().await.unwrap();
    assert!(r.header().is_some());
}

#[tokio::test]
async fn expiry_deletes_keys_unless_kept_alive() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let start = Instant::now();
    let dying = c.lease_grant(2, None).await.unwrap().id();
    let kept = c.lease_grant(2, None).await.unwrap().id();
    c.put("e/dying", "1", Some(PutOptions::new().with_lease(dying)))
        .await
        .unwrap();
    c.put("e/kept", "1", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let (mut keeper, mut ks) = c.lease_keep_alive(kept).await.unwrap();
    let ka = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match tokio::time::timeout(WAIT, ks.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                other => panic!("keepalive failed: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });

    // The unrenewed lease expires: its key is deleted within ~6 s.
    loop {
        let r = c.get("e/dying", None).await.unwrap();
        if r.kvs().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "a 2 s lease was not revoked within 6 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = start.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1900),
        "expired too early: {gone_after:?}"
    );
    let t = c.lease_time_to_live(dying, None).await.unwrap();
    assert_eq!(t.ttl(), -1);
    assert_eq!(sorted_ids(&mut c).await, vec![kept]);

    // The kept-alive one survives well past its TTL.
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(start.elapsed())).await;
    let r = c.get("e/kept", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1, "kept-alive lease lost its key");
    assert_eq!(r.kvs()[0].lease(), kept);
    let t = c.lease_time_to_live(kept, None).await.unwrap();
    assert!(t.ttl() >= 1, "kept lease ttl {}", t.ttl());
    ka.abort();
}
