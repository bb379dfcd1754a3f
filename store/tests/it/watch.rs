//! Watch service: many watchers per stream, history replay, filters,
//! progress, client-chosen IDs, cancel, fragmentation, compaction and a
//! slow reader. Mostly driven through the raw tonic `WatchClient` from the
//! `proto` crate for exact control over every request and response field.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use prost::Message;
use proto::etcdserverpb::{
    self as pb, watch_client::WatchClient, watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use proto::mvccpb::{self, event::EventType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::Strata;

// ---------------------------------------------------------------- helpers

const WAIT: Duration = Duration::from_secs(10);

/// One raw bidi Watch stream.
struct RawWatch {
    tx: mpsc::Sender<pb::WatchRequest>,
    client: WatchClient<tonic::transport::Channel>,
    /// The request stream until the call is started. The call starts on the
    /// first read, so that requests queued before it go out with it (a
    /// grpc-go server sends no response headers before its first message).
    pending: Option<ReceiverStream<pb::WatchRequest>>,
    rx: Option<tonic::Streaming<pb::WatchResponse>>,
    /// Highest event revision received so far on this stream.
    max_event_rev: i64,
}

impl RawWatch {
    async fn open(endpoint: &str) -> RawWatch {
        let client = WatchClient::connect(endpoint.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        RawWatch {
            tx,
            client,
            pending: Some(ReceiverStream::new(rx)),
            rx: None,
            max_event_rev: 0,
        }
    }

    async fn stream(&mut self) -> &mut tonic::Streaming<pb::WatchResponse> {
        if self.rx.is_none() {
            let req = self.pending.take().unwrap();
            let call = tokio::time::timeout(WAIT, self.client.watch(req));
            let rx = call.await.expect("watch call timed out").unwrap();
            self.rx = Some(rx.into_inner());
        }
        self.rx.as_mut().unwrap()
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(pb::WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&self, c: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    /// Create a watcher and return its ID from the `created` response.
    async fn create_ok(&mut self, c: pb::WatchCreateRequest) -> i64 {
        self.create(c).await;
        let r = self.next().await;
        assert!(r.created && !r.canceled, "expected created: {r:?}");
        assert!(r.events.is_empty());
        assert!(r.header.is_some());
        r.watch_id
    }

    async fn cancel(&self, id: i64) {
        self.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: id,
        }))
        .await;
    }

    async fn request_progress(&self) {
        self.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
            .await;
    }

    /// The next response, failing the test after [`WAIT`].
    async fn next(&mut self) -> pb::WatchResponse {
        match self.next_within(WAIT).await {
            Some(r) => r,
            None => panic!("no watch response within {WAIT:?}"),
        }
    }

    /// The next response if one arrives within `d`.
    async fn next_within(&mut self, d: Duration) -> Option<pb::WatchResponse> {
        let rx = self.stream().await;
        match tokio::time::timeout(d, rx.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => {
                for ev in &r.events {
                    let rev = ev.kv.as_ref().unwrap().mod_revision;
                    self.max_event_rev = self.max_event_rev.max(rev);
                }
                Some(r)
            }
            Ok(other) => panic!("watch stream ended: {other:?}"),
        }
    }

    /// Send a WatchProgressRequest and return every response that precedes
    /// its answer, plus the answer's revision. Checks that the answer bounds
    /// every event delivered on the stream so far.
    async fn until_progress(&mut self) -> (Vec<pb::WatchResponse>, i64) {
        self.request_progress().await;
        let mut out = Vec::new();
        loop {
            let r = self.next().await;
            if is_progress_all(&r) {
                let rev = r.header.as_ref().unwrap().revision;
                assert!(
                    rev >= self.max_event_rev,
                    "progress revision {rev} is below a delivered event ({})",
                    self.max_event_rev
                );
                return (out, rev);
            }
            out.push(r);
        }
    }
}

fn is_progress_all(r: &pb::WatchResponse) -> bool {
    r.watch_id == -1 && !r.created && !r.canceled && r.events.is_empty()
}

fn wc(key: &str, end: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// (key, PUT|DEL, mod_revision) of one event.
fn ev(e: &mvccpb::Event) -> (String, &'static str, i64) {
    let kv = e.kv.as_ref().unwrap();
    (
        String::from_utf8(kv.key.clone()).unwrap(),
        if e.r#type == EventType::Put as i32 {
            "PUT"
        } else {
            "DEL"
        },
        kv.mod_revision,
    )
}

/// Events per watch ID, in arrival order.
fn by_watcher(rs: &[pb::WatchResponse]) -> BTreeMap<i64, Vec<(String, &'static str, i64)>> {
    let mut m: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for r in rs {
        assert!(
            !r.created && !r.canceled,
            "unexpected control response {r:?}"
        );
        m.entry(r.watch_id)
            .or_default()
            .extend(r.events.iter().map(ev));
    }
    m
}

fn owned(v: &[(&str, &'static str, i64)]) -> Vec<(String, &'static str, i64)> {
    v.iter().map(|(k, t, r)| (k.to_string(), *t, *r)).collect()
}

async fn put_many(c: &etcd_client::Client, keys: Vec<String>, value: Vec<u8>, par: usize) {
    futures::stream::iter(keys)
        .map(|k| {
            let mut c = c.clone();
            let v = value.clone();
            async move {
                c.put(k, v, None).await.unwrap();
            }
        })
        .buffer_unordered(par)
        .collect::<Vec<()>>()
        .await;
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn many_watchers_on_one_stream_each_get_only_their_keys() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let a = w.create_ok(wc("a", "")).await; // one key
    let b = w.create_ok(wc("b/", "b0")).await; // prefix b/
    let cc = w.create_ok(wc("c", "e")).await; // [c, e)
    let d = w.create_ok(wc("x", "\0")).await; // from x
    let e = w.create_ok(wc("\0", "\0")).await; // everything
    let a2 = w.create_ok(wc("a", "")).await; // a second watcher on the same key
    assert_eq!(
        vec![a, b, cc, d, e, a2],
        vec![0, 1, 2, 3, 4, 5],
        "server-assigned IDs"
    );

    for k in ["a", "b/1", "b2", "c", "d/1", "e", "x", "zz"] {
        c.put(k, "v", None).await.unwrap(); // revs 2..=9
    }
    c.delete("b/1", None).await.unwrap(); // 10
    c.txn(Txn::new().and_then([TxnOp::put("a", "t", None), TxnOp::put("c", "t", None)]))
        .await
        .unwrap(); // 11

    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 11);
    let got = by_watcher(&rs);
    let want_a = owned(&[("a", "PUT", 2), ("a", "PUT", 11)]);
    assert_eq!(got[&a], want_a);
    assert_eq!(got[&a2], want_a);
    assert_eq!(got[&b], owned(&[("b/1", "PUT", 3), ("b/1", "DEL", 10)]));
    assert_eq!(
        got[&cc],
        owned(&[("c", "PUT", 5), ("d/1", "PUT", 6), ("c", "PUT", 11)])
    );
    assert_eq!(got[&d], owned(&[("x", "PUT", 8), ("zz", "PUT", 9)]));
    assert_eq!(
        got[&e],
        owned(&[
            ("a", "PUT", 2),
            ("b/1", "PUT", 3),
            ("b2", "PUT", 4),
            ("c", "PUT", 5),
            ("d/1", "PUT", 6),
            ("e", "PUT", 7),
            ("x", "PUT", 8),
            ("zz", "PUT", 9),
            ("b/1", "DEL", 10),
            ("a", "PUT", 11),
            ("c", "PUT", 11),
        ])
    );
    assert_eq!(got.len(), 6);
    // A revision's events reach a watcher in one response (no fragmenting asked).
    let txn_resp: Vec<&pb::WatchResponse> = rs
        .iter()
        .filter(|r| r.watch_id == e && r.events.iter().any(|x| ev(x).2 == 11))
        .collect();
    assert_eq!(txn_resp.len(), 1);
    assert!(txn_resp[0].events.iter().filter(|x| ev(x).2 == 11).count() == 2);
    // Every event response carries a header at least as new as its events.
    for r in &rs {
        let h = r.header.as_ref().expect("header").revision;
        assert!(r.events.iter().all(|x| ev(x).2 <= h), "{r:?}");
    }
}

#[tokio::test]
async fn start_revision_replays_history_with_prev_kv() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("k", "v1", None).await.unwrap(); // 2
    c.put("k", "v2", None).await.unwrap(); // 3
    c.delete("k", None).await.unwrap(); // 4
    c.put("k", "v3", None).await.unwrap(); // 5
    c.put("other", "o", None).await.unwrap(); // 6

    let mut w = RawWatch::open(&s.endpoint).await;
    // Both creates are sent at once: replay may start before the second
    // `created` answer, so pick the control responses out.
    w.create(pb::WatchCreateRequest {
        start_revision: 2,
        prev_kv: true,
        ..wc("k", "")
    })
    .await;
    w.create(pb::WatchCreateRequest {
        start_revision: 4,
        ..wc("k", "")
    })
    .await;
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 6);
    let created: Vec<i64> = rs
        .iter()
        .filter(|r| r.created)
        .map(|r| r.watch_id)
        .collect();
    assert_eq!(created, vec![0, 1]);
    let (full, from4) = (0, 1);
    let rs: Vec<pb::WatchResponse> = rs.into_iter().filter(|r| !r.created).collect();
    let evs: Vec<mvccpb::Event> = rs
        .iter()
        .filter(|r| r.watch_id == full)
        .flat_map(|r| r.events.clone())
        .collect();
    assert_eq!(evs.len(), 4, "{evs:?}");
    let kv = |e: &mvccpb::Event| e.kv.clone().unwrap();
    let t = |e: &mvccpb::Event| e.r#type;
    // (value, create_revision, mod_revision, version) of an event's kv.
    let summary = |e: &mvccpb::Event| {
        let k = kv(e);
        (k.value, k.create_revision, k.mod_revision, k.version)
    };
    // PUT v1: a create, no prev_kv.
    assert_eq!(t(&evs[0]), EventType::Put as i32);
    assert_eq!(summary(&evs[0]), (b"v1".to_vec(), 2, 2, 1));
    assert!(evs[0].prev_kv.is_none());
    // PUT v2 with prev v1.
    let k1 = kv(&evs[1]);
    assert_eq!(
        (k1.value.as_slice(), k1.mod_revision, k1.version),
        (&b"v2"[..], 3, 2)
    );
    let p1 = evs[1].prev_kv.clone().unwrap();
    assert_eq!(
        (p1.value.as_slice(), p1.mod_revision, p1.version),
        (&b"v1"[..], 2, 1)
    );
    // DELETE: only key and mod_revision; prev is v2.
    assert_eq!(t(&evs[2]), EventType::Delete as i32);
    assert_eq!(
        kv(&evs[2]),
        mvccpb::KeyValue {
            key: b"k".to_vec(),
            mod_revision: 4,
            ..Default::default()
        }
    );
    let p2 = evs[2].prev_kv.clone().unwrap();
    assert_eq!(
        (p2.value.as_slice(), p2.mod_revision, p2.version),
        (&b"v2"[..], 3, 2)
    );
    // PUT v3: a new generation.
    assert_eq!(summary(&evs[3]), (b"v3".to_vec(), 5, 5, 1));
    assert!(evs[3].prev_kv.is_none());

    let got = by_watcher(&rs);
    assert_eq!(got[&from4], owned(&[("k", "DEL", 4), ("k", "PUT", 5)]));
    assert!(
        rs.iter()
            .filter(|r| r.watch_id == from4)
            .flat_map(|r| &r.events)
            .all(|e| e.prev_kv.is_none()),
        "prev_kv only when asked"
    );

    // Live events after the replay, with prev_kv.
    c.put("k", "v4", None).await.unwrap(); // 7
    let (rs, _) = w.until_progress().await;
    let got = by_watcher(&rs);
    assert_eq!(got[&full], owned(&[("k", "PUT", 7)]));
    assert_eq!(got[&from4], owned(&[("k", "PUT", 7)]));
    let live = rs.iter().find(|r| r.watch_id == full).unwrap();
    assert_eq!(live.events[0].prev_kv.as_ref().unwrap().value, b"v3");

    // A start revision in the future: only events from that revision on.
    let fut = w
        .create_ok(pb::WatchCreateRequest {
            start_revision: 10,
            ..wc("f", "")
        })
        .await;
    for i in 8..=10 {
        c.put("f", format!("{i}"), None).await.unwrap();
    }
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 10);
    assert_eq!(by_watcher(&rs)[&fut], owned(&[("f", "PUT", 10)]));
}

#[tokio::test]
async fn noput_and_nodelete_filters() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let noput = w
        .create_ok(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..wc("f/", "f0")
        })
        .await;
    let nodel = w
        .create_ok(pb::WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            prev_kv: true,
            ..wc("f/", "f0")
        })
        .await;
    let both = w
        .create_ok(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
            ..wc("f/", "f0")
        })
        .await;
    let all = w.create_ok(wc("f/", "f0")).await;
    c.put("f/a", "1", None).await.unwrap(); // 2
    c.put("f/b", "1", None).await.unwrap(); // 3
    c.delete("f/a", None).await.unwrap(); // 4
    c.put("f/b", "2", None).await.unwrap(); // 5
    c.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // 6
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 6);
    let got = by_watcher(&rs);
    assert_eq!(got[&noput], owned(&[("f/a", "DEL", 4), ("f/b", "DEL", 6)]));
    assert_eq!(
        got[&nodel],
        owned(&[("f/a", "PUT", 2), ("f/b", "PUT", 3), ("f/b", "PUT", 5)])
    );
    assert_eq!(got[&all].len(), 5);
    assert!(
        !got.contains_key(&both),
        "a watcher filtering everything gets nothing"
    );
    // The filtered watcher still gets prev_kv on what it does receive.
    let last_put = rs
        .iter()
        .filter(|r| r.watch_id == nodel)
        .flat_map(|r| &r.events)
        .next_back()
        .unwrap();
    assert_eq!(last_put.prev_kv.as_ref().unwrap().value, b"1");
}

#[tokio::test]
async fn periodic_progress_notify() {
    let s = Strata::start(&["--watch-progress-notify-interval", "200ms"]);
    let mut c = s.client().await;
    c.put("p", "1", None).await.unwrap(); // 2
    let mut w = RawWatch::open(&s.endpoint).await;
    let with = w
        .create_ok(pb::WatchCreateRequest {
            progress_notify: true,
            ..wc("p", "")
        })
        .await;
    let without = w.create_ok(wc("p", "")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1300);
    let mut notes = Vec::new();
    while let Some(r) = w
        .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert_ne!(
            r.watch_id, without,
            "no progress for a watcher that did not ask: {r:?}"
        );
        assert_eq!(r.watch_id, with);
        assert!(r.events.is_empty() && !r.created && !r.canceled, "{r:?}");
        assert_eq!(r.header.as_ref().unwrap().revision, 2);
        notes.push(r);
    }
    assert!(
        notes.len() >= 3,
        "expected a notification about every 200ms, got {}",
        notes.len()
    );
    // The notifications move with the store's revision.
    c.put("other", "x", None).await.unwrap(); // 3
    let mut seen = Vec::new();
    loop {
        let r = w.next().await;
        assert_eq!((r.watch_id, r.events.len()), (with, 0));
        let rev = r.header.as_ref().unwrap().revision;
        seen.push(rev);
        if rev == 3 {
            break;
        }
        // A notification may have raced the put, but not many.
        assert!(seen.len() < 3, "revisions seen: {seen:?}");
    }

    // etcd-client's progress_notify option reaches the server too.
    let mut ws = c
        .watch("p", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.created());
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.events().is_empty() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), 3);
}

#[tokio::test]
async fn progress_request_waits_until_every_watcher_is_synced() {
    let s = Strata::start(&["--unsafe-no-fsync"]);
    let c = s.client().await;
    // More history than one delivery pass (1000 revisions) covers.
    let keys: Vec<String> = (0..1500).map(|i| format!("h/{i:05}")).collect();
    put_many(&c, keys, b"v".to_vec(), 64).await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let live = w.create_ok(wc("zzz", "")).await;
    // A lagging watcher replaying all history...
    w.create(pb::WatchCreateRequest {
        start_revision: 2,
        ..wc("h/", "h0")
    })
    .await;
    // ...and a progress request right behind it.
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 1501);
    assert!(rs[0].created);
    let replay = rs[0].watch_id;
    assert_ne!(replay, live);
    let evs = by_watcher(&rs[1..]);
    let got = &evs[&replay];
    assert_eq!(got.len(), 1500, "all history before the progress answer");
    assert!(got.iter().map(|e| e.2).eq(2..=1501));
    assert!(!evs.contains_key(&live));

    // After live writes, a progress answer again bounds every event.
    let mut c2 = c.clone();
    c2.put("zzz", "1", None).await.unwrap(); // 1502
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 1502);
    assert_eq!(by_watcher(&rs)[&live], owned(&[("zzz", "PUT", 1502)]));

    // etcd-client's request_progress: answered with watch_id -1.
    let mut ws = c2
        .watch("h/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.created());
    ws.request_progress().await.unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.watch_id(), -1);
    assert!(r.events().is_empty());
    assert_eq!(r.header().unwrap().revision(), 1502);
}

#[tokio::test]
async fn client_chosen_and_duplicate_watch_ids() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let seven = w
        .create_ok(pb::WatchCreateRequest {
            watch_id: 7,
            ..wc("k", "")
        })
        .await;
    assert_eq!(seven, 7);
    // Auto IDs skip nothing below 7, and never collide with a chosen one.
    assert_eq!(w.create_ok(wc("k", "")).await, 0);
    assert_eq!(w.create_ok(wc("k", "")).await, 1);
    for dup in [7, 1] {
        w.create(pb::WatchCreateRequest {
            watch_id: dup,
            ..wc("other", "")
        })
        .await;
        let r = w.next().await;
        assert!(r.created && r.canceled, "{r:?}");
        assert_eq!(r.watch_id, -1);
        assert_eq!(
            r.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        assert!(r.header.is_some());
    }
    // An empty range is refused the same way.
    w.create(wc("b", "a")).await;
    let r = w.next().await;
    assert!(r.created && r.canceled, "{r:?}");
    assert_eq!(
        (r.watch_id, r.cancel_reason.as_str()),
        (-1, "mvcc: watcher range is empty")
    );

    // The original watchers are unaffected; the refused ones do not exist.
    c.put("k", "1", None).await.unwrap();
    c.put("other", "1", None).await.unwrap();
    let (rs, _) = w.until_progress().await;
    let got = by_watcher(&rs);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 1, 7]);
    for id in [0, 1, 7] {
        assert_eq!(got[&id], owned(&[("k", "PUT", 2)]));
    }
    // A freed ID can be chosen again.
    w.cancel(7).await;
    let r = w.next().await;
    assert!(r.canceled && r.watch_id == 7);
    assert_eq!(
        w.create_ok(pb::WatchCreateRequest {
            watch_id: 7,
            ..wc("other", "")
        })
        .await,
        7
    );
    // etcd-client can choose the ID too.
    let mut ws = c
        .watch("k", Some(WatchOptions::new().with_watch_id(42)))
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.created());
    assert_eq!(r.watch_id(), 42);
}

#[tokio::test]
async fn cancel_stops_events() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let keep = w.create_ok(wc("keep", "")).await;
    let gone = w.create_ok(wc("k", "")).await;
    c.put("k", "1", None).await.unwrap(); // 2
    let r = w.next().await;
    assert_eq!((r.watch_id, r.events.len()), (gone, 1));
    w.cancel(gone).await;
    let r = w.next().await;
    assert!(r.canceled && !r.created, "{r:?}");
    assert_eq!(r.watch_id, gone);
    assert_eq!(r.compact_revision, 0);
    assert_eq!(r.header.as_ref().unwrap().revision, 2);
    // Cancelling an unknown ID answers nothing.
    w.cancel(99).await;
    c.put("k", "2", None).await.unwrap(); // 3
    c.put("keep", "1", None).await.unwrap(); // 4
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 4);
    let got = by_watcher(&rs);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![keep]);
    assert_eq!(got[&keep], owned(&[("keep", "PUT", 4)]));

    // Through etcd-client.
    let mut ws = c.watch("e", None).await.unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.created());
    let id = r.watch_id();
    c.put("e", "1", None).await.unwrap(); // 5
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 5);
    ws.cancel(id).await.unwrap();
    let r = tokio::time::timeout(WAIT, ws.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.canceled());
    assert_eq!(r.watch_id(), id);
}

#[tokio::test]
async fn fragmented_responses_reassemble() {
    let s = Strata::start(&["--max-request-bytes", "2048"]);
    let mut c = s.client().await;
    // History: six 1 KiB values, replayed into one response per watcher.
    for i in 1..=6 {
        c.put(format!("f/{i}"), vec![b'0' + i as u8; 1024], None)
            .await
            .unwrap(); // revs 2..=7
    }
    let mut w = RawWatch::open(&s.endpoint).await;
    let frag = w
        .create_ok(pb::WatchCreateRequest {
            start_revision: 2,
            fragment: true,
            ..wc("f/", "f0")
        })
        .await;
    let (rs, _) = w.until_progress().await;
    assert!(
        rs.len() >= 2,
        "expected several fragments, got {}",
        rs.len()
    );
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.watch_id, frag);
        assert_eq!(r.fragment, i + 1 < rs.len(), "fragment flag of part {i}");
        assert!(r.header.is_some());
        assert!(
            r.events.len() == 1 || r.encoded_len() < 2048,
            "a multi-event fragment stays under the limit"
        );
    }
    let evs: Vec<_> = rs.iter().flat_map(|r| r.events.iter()).collect();
    assert_eq!(evs.len(), 6);
    for (i, e) in evs.iter().enumerate() {
        let kv = e.kv.as_ref().unwrap();
        assert_eq!(kv.key, format!("f/{}", i + 1).into_bytes());
        assert_eq!(kv.value, vec![b'1' + i as u8; 1024]);
        assert_eq!(kv.mod_revision, i as i64 + 2);
    }
    // Without `fragment` the same replay arrives whole.
    let whole = w
        .create_ok(pb::WatchCreateRequest {
            start_revision: 2,
            ..wc("f/", "f0")
        })
        .await;
    let (rs, _) = w.until_progress().await;
    assert_eq!(rs.len(), 1);
    assert_eq!(
        (rs[0].watch_id, rs[0].events.len(), rs[0].fragment),
        (whole, 6, false)
    );
    w.cancel(whole).await;
    assert!(w.next().await.canceled);

    // Live: one txn whose events (with prev_kv) exceed the limit.
    c.put("t/1", vec![b'a'; 900], None).await.unwrap(); // 8
    c.put("t/2", vec![b'b'; 900], None).await.unwrap(); // 9
    let live = w
        .create_ok(pb::WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..wc("t/", "t0")
        })
        .await;
    let t = c
        .txn(Txn::new().and_then([
            TxnOp::put("t/1", vec![b'c'; 900], None),
            TxnOp::put("t/2", vec![b'd'; 900], None),
        ]))
        .await
        .unwrap();
    assert_eq!(t.header().unwrap().revision(), 10);
    let mut parts = vec![w.next().await];
    while parts.last().unwrap().fragment {
        parts.push(w.next().await);
    }
    assert_eq!(
        parts.len(),
        2,
        "two ~1.8 KiB events do not fit in one 2 KiB response"
    );
    let evs: Vec<_> = parts.iter().flat_map(|r| r.events.iter()).collect();
    assert!(parts.iter().all(|r| r.watch_id == live));
    assert_eq!(evs.len(), 2);
    for (e, (k, v, pv)) in evs.iter().zip([("t/1", b'c', b'a'), ("t/2", b'd', b'b')]) {
        let kv = e.kv.as_ref().unwrap();
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (k.as_bytes(), 10));
        assert_eq!(kv.value, vec![v; 900]);
        assert_eq!(e.prev_kv.as_ref().unwrap().value, vec![pv; 900]);
    }
    let (rs, rev) = w.until_progress().await;
    assert!(rs.is_empty(), "{rs:?}");
    assert_eq!(rev, 10);
}

#[tokio::test]
async fn compacted_start_revision_is_cancelled() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 2..=6 {
        c.put("k", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    c.compact(5, None).await.unwrap();
    let mut w = RawWatch::open(&s.endpoint).await;
    for start in [1, 3, 4] {
        w.create(pb::WatchCreateRequest {
            start_revision: start,
            ..wc("k", "")
        })
        .await;
        let created = w.next().await;
        assert!(created.created && !created.canceled, "{created:?}");
        let r = w.next().await;
        assert!(r.canceled, "start {start}: {r:?}");
        assert_eq!(r.watch_id, created.watch_id);
        assert_eq!(r.compact_revision, 5, "start {start}");
        assert!(r.events.is_empty());
    }
    // Watching from exactly the compact revision works.
    let ok = w
        .create_ok(pb::WatchCreateRequest {
            start_revision: 5,
            ..wc("k", "")
        })
        .await;
    let (rs, rev) = w.until_progress().await;
    assert_eq!(rev, 6);
    assert_eq!(
        by_watcher(&rs)[&ok],
        owned(&[("k", "PUT", 5), ("k", "PUT", 6)])
    );

    // etcd-client sees the same cancellation.
    let mut ws = c
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, ws.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if r.canceled() {
            last = Some(r);
            break;
        }
        assert!(r.created());
    }
    let r = last.expect("a canceled response");
    assert_eq!(r.compact_revision(), 5);
    // The store itself is unaffected.
    let g = c
        .get("k", Some(GetOptions::new().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"5");
}

#[tokio::test]
async fn slow_watcher_gets_every_event_once_in_order() {
    let s = Strata::start(&["--unsafe-no-fsync"]);
    let c = s.client().await;
    let mut w = RawWatch::open(&s.endpoint).await;
    let id = w
        .create_ok(pb::WatchCreateRequest {
            prev_kv: true,
            ..wc("s/", "s0")
        })
        .await;
    let other = w.create_ok(wc("unrelated", "")).await;
    // 5000 writes while nobody reads the stream (~2.5 MB of events with
    // prev_kv: the transport and stream buffers fill up long before the end).
    const N: usize = 5000;
    let keys: Vec<String> = (0..N).map(|i| format!("s/{:04}", i % 2500)).collect();
    put_many(&c, keys, vec![b'x'; 256], 64).await;
    let mut c2 = c.clone();
    let last = c2
        .get(
            "s/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(last.header().unwrap().revision(), N as i64 + 1);

    // Now read everything.
    let mut revs = Vec::with_capacity(N);
    let mut versions: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    while revs.len() < N {
        let r = w.next().await;
        assert_eq!(r.watch_id, id, "{r:?}");
        assert!(!r.canceled, "slow watcher was cancelled: {r:?}");
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            revs.push(kv.mod_revision);
            // Per key, versions 1 then 2, and the second carries the first as prev_kv.
            let v = versions.entry(kv.key.clone()).or_default();
            *v += 1;
            assert_eq!(kv.version, *v);
            assert_eq!(e.prev_kv.is_some(), *v == 2);
        }
    }
    assert_eq!(revs.len(), N);
    assert!(
        revs.iter().copied().eq(2..=(N as i64 + 1)),
        "every revision exactly once, in order"
    );
    assert_eq!(versions.len(), 2500);
    let (rs, rev) = w.until_progress().await;
    assert!(rs.is_empty(), "nothing after the last event: {rs:?}");
    assert_eq!(rev, N as i64 + 1);
    let _ = other;
}
