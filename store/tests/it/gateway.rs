//! gateway: the JSON gateway under `/v3/*`, differentially against real
//! etcd 3.5's. The same HTTP requests go to both; status codes must match
//! and the JSON bodies must be equal after normalising what legitimately
//! differs between two clusters (cluster/member IDs, raft terms and
//! indexes, member names and URLs, db sizes, versions, hashes, snapshot
//! contents). Lease IDs are chosen by the client, so they compare as is.
//!
//! Covers every endpoint: KV (range options, txn compares,
//! deleterange, compaction), watch streaming (create, events with prev_kv,
//! cancel, compacted start, bad first request), lease grant / timetolive /
//! leases / revoke / keepalive (and the `/v3/kv/lease/*` aliases), the
//! cluster and maintenance endpoints, and bad input (malformed JSON, wrong
//! types, unknown fields, compacted and future revisions, range_end < key,
//! unknown paths, wrong methods), and `/v3/auth/*` with tokens in the
//! `Authorization` header.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::harness::{Etcd, Strata};

/// One open HTTP/1.1 response.
struct Open {
    status: u16,
    headers: http::HeaderMap,
    body: Option<hyper::body::Incoming>,
    buf: Vec<u8>,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Open {
    /// Close the connection: a stream must end when its reader goes away.
    fn drop(&mut self) {
        self.conn.abort();
    }
}

async fn send(endpoint: &str, method: &str, path: &str, body: &str) -> Open {
    send_token(endpoint, method, path, body, None).await
}

/// [`send`] with an `Authorization` header (an auth token).
async fn send_token(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Open {
    try_send_token(endpoint, method, path, body, Duration::from_secs(10), token)
        .await
        .unwrap_or_else(|| panic!("{endpoint}{path}: no response headers in 10 s"))
}

/// Send a request; `None` if no response head arrives within `wait`.
async fn try_send(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    wait: Duration,
) -> Option<Open> {
    try_send_token(endpoint, method, path, body, wait, None).await
}

async fn try_send_token(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    wait: Duration,
    token: Option<&str>,
) -> Option<Open> {
    let addr = endpoint.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &addr)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(wait, sender.send_request(req))
        .await
        .ok()?
        .unwrap();
    let (parts, body) = resp.into_parts();
    Some(Open {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Some(body),
        buf: Vec::new(),
        conn,
    })
}

impl Open {
    /// The whole body (bounded in time).
    async fn text(mut self) -> String {
        let body = self.body.take().expect("body read once");
        let b = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("body within 10 s")
            .unwrap()
            .to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// The next newline-terminated line, or `None` if none comes within `wait`.
    async fn line(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line).unwrap().trim_end().to_string());
            }
            let f =
                tokio::time::timeout_at(deadline, self.body.as_mut().expect("open body").frame())
                    .await;
            match f {
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// Replace values that legitimately differ between two clusters.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_status = m.contains_key("raftIndex");
            if is_status {
                // etcd 3.6's field (Strata reports a 3.6 server version);
                // etcd 3.5.1 has no quota in its status.
                m.remove("dbSizeQuota");
            }
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" | "leader" | "raftIndex"
                    | "raftTerm" | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" | "hash"
                    | "name" | "peerURLs" | "clientURLs" | "blob" | "remaining_bytes" | "token" => {
                        *x = Value::String("<norm>".into())
                    }
                    // The server version in a status (not a key's version).
                    "version" if is_status => *x = Value::String("<norm>".into()),
                    // Member IDs (not lease IDs: those are chosen).
                    "member" => {
                        if let Some(id) = x.get_mut("ID") {
                            *id = Value::String("<norm>".into());
                        }
                        normalize(x);
                    }
                    // Members come sorted by ID, which differ: sort them
                    // again once normalised.
                    "members" => {
                        if let Value::Array(ms) = x {
                            for m in ms.iter_mut() {
                                if let Some(id) = m.get_mut("ID") {
                                    *id = Value::String("<norm>".into());
                                }
                                normalize(m);
                            }
                            ms.sort_by_key(|m| m.to_string());
                        }
                    }
                    _ => normalize(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn norm_text(s: &str) -> Value {
    match serde_json::from_str::<Value>(s) {
        Ok(mut v) => {
            normalize(&mut v);
            v
        }
        Err(_) => Value::String(s.to_string()),
    }
}

struct Pair {
    etcd: String,
    strata: String,
}

impl Pair {
    /// Send the same unary request to both; status and normalised body must
    /// match. Returns etcd's normalised body.
    async fn same(&self, path: &str, body: &str) -> Value {
        self.same_method("POST", path, body).await
    }

    async fn same_method(&self, method: &str, path: &str, body: &str) -> Value {
        let e = send(&self.etcd, method, path, body).await;
        let s = send(&self.strata, method, path, body).await;
        let (es, ss) = (e.status, s.status);
        let (ect, sct) = (
            e.headers.get("content-type").cloned(),
            s.headers.get("content-type").cloned(),
        );
        for h in ["access-control-allow-origin", "grpc-metadata-content-type"] {
            assert_eq!(
                e.headers.get(h),
                s.headers.get(h),
                "{h} of {method} {path} {body}"
            );
        }
        let (et, st) = (e.text().await, s.text().await);
        assert_eq!(
            (es, norm_text(&et)),
            (ss, norm_text(&st)),
            "{method} {path} {body}\n etcd:   {es} {et}\n strata: {ss} {st}"
        );
        assert_eq!(ect, sct, "content-type of {path} {body}");

        norm_text(&et)
    }

    /// [`Pair::same`] with each server's own auth token (`None`: no
    /// `Authorization` header).
    async fn same_auth(&self, path: &str, body: &str, tokens: Option<&(String, String)>) -> Value {
        let (et, st) = match tokens {
            Some((e, s)) => (Some(e.as_str()), Some(s.as_str())),
            None => (None, None),
        };
        let e = send_token(&self.etcd, "POST", path, body, et).await;
        let s = send_token(&self.strata, "POST", path, body, st).await;
        let (es, ss) = (e.status, s.status);
        let (et, st) = (e.text().await, s.text().await);
        assert_eq!(
            (es, norm_text(&et)),
            (ss, norm_text(&st)),
            "{path} {body} (token: {})\n etcd:   {es} {et}\n strata: {ss} {st}",
            tokens.is_some()
        );
        norm_text(&et)
    }

    /// Authenticate on both; each server's own token.
    async fn login(&self, user: &str, password: &str) -> (String, String) {
        let body = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
        let tok = |endpoint: String| {
            let body = body.clone();
            async move {
                let o = send(&endpoint, "POST", "/v3/auth/authenticate", &body).await;
                assert_eq!(o.status, 200, "authenticate {user} on {endpoint}");
                let v: Value = serde_json::from_str(&o.text().await).unwrap();
                v["token"].as_str().expect("a token").to_string()
            }
        };
        (tok(self.etcd.clone()).await, tok(self.strata.clone()).await)
    }

    /// Open the same stream on both.
    async fn open(&self, path: &str, body: &str) -> (Open, Open) {
        let e = send(&self.etcd, "POST", path, body).await;
        let s = send(&self.strata, "POST", path, body).await;
        assert_eq!(e.status, s.status, "{path} {body}");
        for h in [
            "content-type",
            "grpc-metadata-content-type",
            "access-control-allow-origin",
        ] {
            assert_eq!(e.headers.get(h), s.headers.get(h), "{h} of {path} {body}");
        }
        (e, s)
    }
}

/// Read `n` lines from both streams and compare them.
async fn same_lines(what: &str, e: &mut Open, s: &mut Open, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let el = e.line(Duration::from_secs(10)).await;
        let sl = s.line(Duration::from_secs(10)).await;
        let el = el.unwrap_or_else(|| panic!("{what}: etcd sent no line {i}"));
        let sl = sl.unwrap_or_else(|| panic!("{what}: strata sent no line {i} (etcd: {el})"));
        assert_eq!(
            norm_text(&el),
            norm_text(&sl),
            "{what} line {i}\n etcd:   {el}\n strata: {sl}"
        );
        out.push(norm_text(&el));
    }
    out
}

/// Neither stream sends anything more within `wait`.
async fn both_quiet(what: &str, e: &mut Open, s: &mut Open, wait: Duration) {
    let (el, sl) = tokio::join!(e.line(wait), s.line(wait));
    assert_eq!(el, None, "{what}: etcd sent more");
    assert_eq!(sl, None, "{what}: strata sent more");
}

async fn pair() -> (Etcd, Strata, Pair) {
    let etcd = Etcd::start(&[]);
    let strata = Strata::start(&[]);
    // Both ready (leader elected) before the first request.
    let _ = etcd.client().await;
    let _ = strata.client().await;
    eprintln!("etcd at {}, strata at {}", etcd.endpoint, strata.endpoint);
    let p = Pair {
        etcd: etcd.endpoint.clone(),
        strata: strata.endpoint.clone(),
    };
    (etcd, strata, p)
}

// base64: a=YQ== b=Yg== c=Yw== d=ZA== z=eg== 1=MQ== 2=Mg== 3=Mw==
#[tokio::test]
async fn gateway_kv_matches_etcd() {
    let (_e, _s, p) = pair().await;
    let put = p
        .same("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#)
        .await;
    assert_eq!(put["header"]["revision"], "2");
    p.same("/v3/kv/put", r#"{"key":"Yg==","value":"Mg=="}"#)
        .await;
    p.same(
        "/v3/kv/put",
        r#"{"key":"Yw==","value":"Mw==","prev_kv":true}"#,
    )
    .await;
    let again = p
        .same(
            "/v3/kv/put",
            r#"{"key":"Yw==","value":"Mw==","prev_kv":true}"#,
        )
        .await;
    assert_eq!(again["prev_kv"]["version"], "1");
    // Range options.
    let r = p.same("/v3/kv/range", r#"{"key":"YQ=="}"#).await;
    assert_eq!(r["kvs"][0]["value"], "MQ==");
    let r = p
        .same(
            "/v3/kv/range",
            r#"{"key":"YQ==","range_end":"ZA==","limit":"2"}"#,
        )
        .await;
    assert_eq!(r["more"], true);
    assert_eq!(r["count"], "3");
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","limit":1}"#,
    )
    .await;
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","keys_only":true}"#,
    )
    .await;
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","count_only":true}"#,
    )
    .await;
    let r = p
        .same(
            "/v3/kv/range",
            r#"{"key":"YQ==","range_end":"ZA==","sort_order":"DESCEND","sort_target":"KEY"}"#,
        )
        .await;
    assert_eq!(r["kvs"][0]["key"], "Yw==");
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","sort_order":1,"sort_target":"MOD"}"#,
    )
    .await;
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","revision":"3"}"#,
    )
    .await;
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZA==","min_mod_revision":"3","max_create_revision":"4"}"#,
    )
    .await;
    p.same("/v3/kv/range", r#"{"key":"AA==","range_end":"AA=="}"#)
        .await;
    // jsonpb leniency: camelCase names, unknown fields, null, trailing data.
    p.same(
        "/v3/kv/range",
        r#"{"key":"YQ==","rangeEnd":"ZA==","keysOnly":true,"bogus":[1],"limit":null} trailing"#,
    )
    .await;
    // range_end < key: an empty answer, not an error.
    let r = p
        .same("/v3/kv/range", r#"{"key":"Yw==","range_end":"YQ=="}"#)
        .await;
    assert!(r.get("kvs").is_none());
    // Future revision.
    let r = p
        .same("/v3/kv/range", r#"{"key":"YQ==","revision":"100"}"#)
        .await;
    assert_eq!(r["code"], 11);
    // Txn: compares on value/version/mod/create, success and failure branches.
    let t = p
        .same(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"VALUE","value":"MQ=="},
                {"key":"Yg==","result":"GREATER","target":"VERSION","version":"0"}],
              "success":[{"request_range":{"key":"YQ=="}},{"request_put":{"key":"ZA==","value":"MQ==","prev_kv":true}}],
              "failure":[{"request_delete_range":{"key":"YQ=="}}]}"#,
        )
        .await;
    assert_eq!(t["succeeded"], true);
    let t = p
        .same(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","result":"LESS","target":"MOD","mod_revision":"2"}],
              "success":[{"requestPut":{"key":"YQ==","value":"Mg=="}}],
              "failure":[{"requestRange":{"key":"YQ==","range_end":"ZA=="}},
                {"request_txn":{"compare":[{"key":"eg==","target":"CREATE","create_revision":"0"}],"success":[{"request_range":{"key":"eg=="}}]}}]}"#,
        )
        .await;
    assert_eq!(t["succeeded"], Value::Null);
    p.same(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
    )
    .await;
    // DeleteRange with prev_kv.
    let d = p
        .same("/v3/kv/deleterange", r#"{"key":"ZA==","prev_kv":true}"#)
        .await;
    assert_eq!(d["deleted"], "1");
    p.same("/v3/kv/deleterange", r#"{"key":"eg=="}"#).await;
    // Compaction, then a compacted revision.
    p.same("/v3/kv/compaction", r#"{"revision":"4","physical":true}"#)
        .await;
    let c = p
        .same("/v3/kv/range", r#"{"key":"YQ==","revision":"3"}"#)
        .await;
    assert_eq!(
        c["message"],
        "etcdserver: mvcc: required revision has been compacted"
    );
    p.same("/v3/kv/compaction", r#"{"revision":"4"}"#).await;
    p.same("/v3/kv/compaction", r#"{"revision":"1000"}"#).await;
    p.same("/v3/kv/range", r#"{"key":"YQ==","revision":"4"}"#)
        .await;
    p.same("/v3/kv/range", r#"{}"#).await;
}

#[tokio::test]
async fn gateway_bad_input_matches_etcd() {
    let (_e, _s, p) = pair().await;
    p.same("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#)
        .await;
    for body in [
        r#"{"key":"#,
        r#"{"key":"YQ=="#,
        "{x}",
        r#"{"key" 1}"#,
        r#"{"key":"YQ==" "a":1}"#,
        "[]",
        "42",
        r#""str""#,
        "tru",
        "nul",
        r#"{"key":tx}"#,
        r#"{"key":"YQ==","limit":-}"#,
        r#"{"key":"YQ==","limit":1.}"#,
        r#"{"key":"YQ==","limit":1e}"#,
        "",
        "null",
        "   ",
    ] {
        p.same("/v3/kv/range", body).await;
    }
    // Wrong types.
    for body in [
        r#"{"key":5}"#,
        r#"{"key":true}"#,
        r#"{"key":{}}"#,
        r#"{"key":"YQ=!"}"#,
        r#"{"key":"YQ"}"#,
        r#"{"key":"Y"}"#,
        r#"{"key":"YQ==YQ=="}"#,
        r#"{"key":"YQ","range_end":"!"}"#,
        r#"{"key":"YQ==","limit":"x"}"#,
        r#"{"key":"YQ==","limit":"1x"}"#,
        r#"{"key":"YQ==","limit":""}"#,
        r#"{"key":"YQ==","limit":1.5}"#,
        r#"{"key":"YQ==","limit":"1.5"}"#,
        r#"{"key":"YQ==","limit":99999999999999999999}"#,
        r#"{"key":"YQ==","limit":{}}"#,
        r#"{"key":"YQ==","limit":[]}"#,
        r#"{"key":"YQ==","limit":true}"#,
        r#"{"key":"YQ==","keys_only":"true"}"#,
        r#"{"key":"YQ==","keys_only":1}"#,
        r#"{"key":"YQ==","sort_order":"BOGUS"}"#,
        r#"{"key":"YQ==","sort_order":1.5}"#,
        r#"{"key":"YQ==","sort_order":true}"#,
        r#"{"key":"YQ==","sort_order":"descend"}"#,
    ] {
        p.same("/v3/kv/range", body).await;
    }
    p.same("/v3/kv/txn", r#"{"compare":{}}"#).await;
    p.same("/v3/kv/txn", r#"{"compare":[1]}"#).await;
    p.same("/v3/kv/txn", r#"{"compare":[{"result":"NOPE"}]}"#)
        .await;
    p.same("/v3/lease/grant", r#"{"TTL":"-5","ID":"5"}"#).await;
    p.same("/v3/cluster/member/remove", r#"{"ID":"-1"}"#).await;
    p.same("/v3/cluster/member/remove", r#"{"ID":-1}"#).await;
    p.same("/v3/kv/put", r#"{"value":"MQ=="}"#).await;
    // Over --max-request-bytes (etcd's own check), and over the gRPC
    // receive limit (max-request-bytes + 512 KiB, grpc-go's message).
    use base64::Engine as _;
    for n in [1_600_000, 2_500_000] {
        let v = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n]);
        p.same("/v3/kv/put", &format!(r#"{{"key":"YQ==","value":"{v}"}}"#))
            .await;
    }
    p.same("/v3/kv/put", r#"{"key":"YQ==","lease":"77"}"#).await;
    // Unknown paths and wrong methods.
    p.same("/v3/kv/nothing", "{}").await;
    p.same("/v3/nothing", "{}").await;
    p.same("/v3/kv/range/", "{}").await;
    p.same("/v3/", "{}").await;
    p.same("/v3", "{}").await;
    p.same_method("GET", "/v3", "").await;
    p.same_method("GET", "/v3/kv/range", "").await;
    p.same_method("PUT", "/v3/kv/put", "{}").await;
    p.same_method("GET", "/v3/nothing", "").await;
    p.same_method("OPTIONS", "/v3/kv/range", "").await;
    p.same_method("OPTIONS", "/v3/nothing", "").await;
    // A malformed first watch request fails the call (Unknown, 500).
    p.same(
        "/v3/watch",
        r#"{"create_request":{"key":"YQ==","start_revision":"bad"}}"#,
    )
    .await;
    p.same("/v3/watch", r#"{"create_request":{"key":5}}"#).await;
    p.same(
        "/v3/watch",
        r#"{"create_request":{"key":"YQ==","filters":["NOPE"]}}"#,
    )
    .await;
    p.same(
        "/v3/watch",
        r#"{"create_request":{"key":"YQ==","filters":"NOPUT"}}"#,
    )
    .await;
    p.same("/v3/lease/keepalive", r#"{"ID":"x"}"#).await;
    p.same("/v3/maintenance/snapshot", r#"{"#).await;
}

#[tokio::test]
async fn gateway_watch_matches_etcd() {
    let (_e, _s, p) = pair().await;
    p.same("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#)
        .await;
    // A watcher with prev_kv on prefix "a", then events.
    let (mut e, mut s) = p
        .open(
            "/v3/watch",
            r#"{"create_request":{"key":"YQ==","range_end":"Yg==","prev_kv":true}}"#,
        )
        .await;
    assert_eq!(e.headers.get("content-type"), s.headers.get("content-type"));
    let created = same_lines("create", &mut e, &mut s, 1).await;
    assert_eq!(created[0]["result"]["created"], true);
    p.same("/v3/kv/put", r#"{"key":"YQ==","value":"Mg=="}"#)
        .await;
    p.same("/v3/kv/put", r#"{"key":"YWE=","value":"Mw=="}"#)
        .await;
    p.same("/v3/kv/put", r#"{"key":"Yg==","value":"Mw=="}"#)
        .await;
    p.same("/v3/kv/deleterange", r#"{"key":"YQ=="}"#).await;
    let ev = same_lines("events", &mut e, &mut s, 3).await;
    assert_eq!(ev[0]["result"]["events"][0]["prev_kv"]["value"], "MQ==");
    assert_eq!(ev[2]["result"]["events"][0]["type"], "DELETE");
    both_quiet("after events", &mut e, &mut s, Duration::from_millis(500)).await;
    drop((e, s));

    // Several requests in one body: create with a chosen ID, filters, cancel.
    let (mut e, mut s) = p
        .open(
            "/v3/watch",
            r#"{"create_request":{"key":"Yg==","watch_id":"7","filters":["NODELETE"]}}
               {"create_request":{"key":"Yw==","watch_id":"8"}}
               {"cancel_request":{"watch_id":"8"}}
               {"progress_request":{}}"#,
        )
        .await;
    let l = same_lines("multi", &mut e, &mut s, 4).await;
    assert_eq!(l[0]["result"]["watch_id"], "7");
    assert_eq!(l[2]["result"]["canceled"], true);
    assert_eq!(l[3]["result"]["watch_id"], "-1");
    p.same("/v3/kv/put", r#"{"key":"Yw==","value":"MQ=="}"#)
        .await;
    p.same("/v3/kv/deleterange", r#"{"key":"Yg=="}"#).await;
    p.same("/v3/kv/put", r#"{"key":"Yg==","value":"NA=="}"#)
        .await;
    let l = same_lines("filtered", &mut e, &mut s, 1).await;
    assert_eq!(l[0]["result"]["events"][0]["kv"]["value"], "NA==");
    both_quiet("filtered", &mut e, &mut s, Duration::from_millis(500)).await;
    drop((e, s));

    // History from an old revision, then a compacted start.
    let (mut e, mut s) = p
        .open(
            "/v3/watch",
            r#"{"create_request":{"key":"YQ==","start_revision":"2"}}"#,
        )
        .await;
    let l = same_lines("history", &mut e, &mut s, 2).await;
    assert!(l[1]["result"]["events"].is_array());
    drop((e, s));
    p.same("/v3/kv/compaction", r#"{"revision":"5","physical":true}"#)
        .await;
    let (mut e, mut s) = p
        .open(
            "/v3/watch",
            r#"{"create_request":{"key":"YQ==","start_revision":"2"}}"#,
        )
        .await;
    let l = same_lines("compacted", &mut e, &mut s, 2).await;
    assert_eq!(l[1]["result"]["compact_revision"], "5");
    drop((e, s));

    // A malformed request after the first stops the reading there: the
    // third create is never sent, the stream stays open.
    let (mut e, mut s) = p
        .open(
            "/v3/watch",
            r#"{"create_request":{"key":"YQ=="}} {"create_request":{"key":5}} {"create_request":{"key":"Yg=="}}"#,
        )
        .await;
    same_lines("bad second request", &mut e, &mut s, 1).await;
    both_quiet(
        "bad second request",
        &mut e,
        &mut s,
        Duration::from_millis(500),
    )
    .await;
    drop((e, s));

    // An empty body: the call starts but nothing is sent, not even the
    // response head (grpc-gateway writes it with the first message).
    let wait = Duration::from_millis(500);
    assert!(try_send(&p.etcd, "POST", "/v3/watch", "", wait)
        .await
        .is_none());
    assert!(try_send(&p.strata, "POST", "/v3/watch", "", wait)
        .await
        .is_none());
}

#[tokio::test]
async fn gateway_lease_cluster_maintenance_match_etcd() {
    let (_e, _s, p) = pair().await;
    let g = p
        .same("/v3/lease/grant", r#"{"TTL":"600","ID":"1234"}"#)
        .await;
    assert_eq!(g["ID"], "1234");
    p.same("/v3/lease/grant", r#"{"TTL":600,"ID":1234}"#).await;
    p.same(
        "/v3/kv/put",
        r#"{"key":"YQ==","value":"MQ==","lease":"1234"}"#,
    )
    .await;
    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let t = p.same(path, r#"{"ID":"1234","keys":true}"#).await;
        assert_eq!(t["keys"][0], "YQ==");
        p.same(path, r#"{"ID":"99"}"#).await;
    }
    for path in ["/v3/lease/leases", "/v3/kv/lease/leases"] {
        let l = p.same(path, "{}").await;
        assert_eq!(l["leases"][0]["ID"], "1234");
    }
    // Keepalive streams one answer per request.
    let (mut e, mut s) = p
        .open("/v3/lease/keepalive", r#"{"ID":"1234"} {"ID":"1234"}"#)
        .await;
    let k = same_lines("keepalive", &mut e, &mut s, 2).await;
    assert_eq!(k[0]["result"]["TTL"], "600");
    drop((e, s));
    let (mut e, mut s) = p.open("/v3/lease/keepalive", r#"{"ID":"99"}"#).await;
    let k = same_lines("keepalive missing", &mut e, &mut s, 1).await;
    assert!(k[0]["result"].get("TTL").is_none());
    drop((e, s));
    p.same("/v3/lease/revoke", r#"{"ID":"1234"}"#).await;
    p.same("/v3/lease/revoke", r#"{"ID":"1234"}"#).await;
    p.same("/v3/kv/lease/revoke", r#"{"ID":"1234"}"#).await;
    p.same("/v3/kv/range", r#"{"key":"YQ=="}"#).await;
    p.same("/v3/kv/lease/leases", "{}").await;

    // Cluster.
    let m = p.same("/v3/cluster/member/list", "{}").await;
    assert_eq!(m["members"].as_array().unwrap().len(), 1);
    p.same("/v3/cluster/member/list", r#"{"linearizable":true}"#)
        .await;
    // Membership changes for an unknown member: Strata alone (see below).
    for path in [
        "/v3/cluster/member/remove",
        "/v3/cluster/member/update",
        "/v3/cluster/member/promote",
    ] {
        let s = send(&p.strata, "POST", path, r#"{"ID":"5"}"#).await;
        assert_eq!(s.status, 404, "{path}");
        assert_eq!(
            s.text().await,
            r#"{"error":"etcdserver: member not found","code":5,"message":"etcdserver: member not found"}"#,
            "{path}"
        );
    }
    p.same("/v3/cluster/member/add", r#"{"peerURLs":["bad"]}"#)
        .await;
    p.same("/v3/cluster/member/add", r#"{}"#).await;
    // A learner added, updated and removed again. etcd 3.5.1 started by
    // the harness now and then holds a membership change (even one for an
    // unknown ID) past any test bound, so the changes that go through raft
    // are checked on Strata alone, against the answers etcd gives when it
    // does answer (recorded from runs that completed).
    let strata = |path: &'static str, body: String| {
        let ep = p.strata.clone();
        async move {
            let o = send(&ep, "POST", path, &body).await;
            (o.status, o.text().await)
        }
    };
    let (code, a) = strata(
        "/v3/cluster/member/add",
        r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#.into(),
    )
    .await;
    assert_eq!(code, 200, "{a}");
    let a: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(a["member"]["isLearner"], true);
    assert!(a["member"].get("name").is_none());
    assert!(a["header"].get("revision").is_none());
    assert_eq!(a["members"].as_array().unwrap().len(), 2);
    // Taken URLs (with another URL, so another ID: the same URLs within
    // the same second would collide on the ID first).
    assert_eq!(
        strata(
            "/v3/cluster/member/add",
            r#"{"peerURLs":["http://127.0.0.1:1","http://127.0.0.1:3"],"isLearner":true}"#.into()
        )
        .await,
        (
            400,
            r#"{"error":"etcdserver: Peer URLs already exists","code":9,"message":"etcdserver: Peer URLs already exists"}"#.into()
        )
    );
    // A second learner is one too many (--max-learners 1).
    assert_eq!(
        strata(
            "/v3/cluster/member/add",
            r#"{"peerURLs":["http://127.0.0.1:4"],"isLearner":true}"#.into()
        )
        .await,
        (
            400,
            r#"{"error":"etcdserver: too many learner members in cluster","code":9,"message":"etcdserver: too many learner members in cluster"}"#.into()
        )
    );
    // Updating and removing it.
    let l: Value = serde_json::from_str(
        &send(&p.strata, "POST", "/v3/cluster/member/list", "{}")
            .await
            .text()
            .await,
    )
    .unwrap();
    let id = l["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["isLearner"] == true)
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let body = format!(r#"{{"ID":"{id}","peerURLs":["http://127.0.0.1:2"]}}"#);
    let u = send(&p.strata, "POST", "/v3/cluster/member/update", &body).await;
    assert_eq!(u.status, 200);
    let u: Value = serde_json::from_str(&u.text().await).unwrap();
    assert!(u["header"].get("revision").is_none());
    let updated = u["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ID"] == id.as_str())
        .unwrap();
    assert_eq!(updated["peerURLs"][0], "http://127.0.0.1:2");
    let body = format!(r#"{{"ID":"{id}"}}"#);
    let r = send(&p.strata, "POST", "/v3/cluster/member/remove", &body).await;
    assert_eq!(r.status, 200);
    let r: Value = serde_json::from_str(&r.text().await).unwrap();
    assert_eq!(r["members"].as_array().unwrap().len(), 1);
    let r = send(&p.strata, "POST", "/v3/cluster/member/remove", &body).await;
    assert_eq!(r.status, 404);

    // Maintenance.
    let st = p.same("/v3/maintenance/status", "{}").await;
    assert!(st["header"]["revision"].is_string());
    let a = p.same("/v3/maintenance/alarm", r#"{"action":"GET"}"#).await;
    assert!(a.get("alarms").is_none());
    p.same(
        "/v3/maintenance/alarm",
        r#"{"action":"DEACTIVATE","alarm":"NOSPACE"}"#,
    )
    .await;
    p.same("/v3/maintenance/defragment", "{}").await;
    let h = p.same("/v3/maintenance/hash", "{}").await;
    assert!(h.get("hash").is_some());
    p.same("/v3/maintenance/transfer-leadership", r#"{"targetID":"5"}"#)
        .await;

    // HashKV: etcd 3.5 registers it on /v3/maintenance/hash too, where
    // Hash shadows it, and answers 404 on /v3/maintenance/hashkv; Strata
    // serves it there (as etcd 3.6 does), the one intended difference.
    let e = send(&p.etcd, "POST", "/v3/maintenance/hashkv", "{}").await;
    assert_eq!(e.status, 404);
    let s = send(
        &p.strata,
        "POST",
        "/v3/maintenance/hashkv",
        r#"{"revision":"0"}"#,
    )
    .await;
    assert_eq!(s.status, 200);
    let hk: Value = serde_json::from_str(&s.text().await).unwrap();
    assert_eq!(hk["compact_revision"], "-1");
    assert_eq!(hk["hash_revision"], "3");
    let s = send(
        &p.strata,
        "POST",
        "/v3/maintenance/hashkv",
        r#"{"revision":"99"}"#,
    )
    .await;
    assert_eq!(s.status, 400);

    // Downgrade is routed (Strata refuses it until it exists; not compared).
    let s = send(
        &p.strata,
        "POST",
        "/v3/maintenance/downgrade",
        r#"{"action":"VALIDATE","version":"3.5"}"#,
    )
    .await;
    assert_ne!(s.status, 404);

    // Snapshot: the same framing, a `{"result":{"blob":…}}` line per chunk;
    // the stream ends with the SHA-256 of everything before it.
    for ep in [&p.etcd, &p.strata] {
        let mut o = send(ep, "POST", "/v3/maintenance/snapshot", "{}").await;
        assert_eq!(o.status, 200);
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut all = Vec::new();
        while let Some(l) = o.line(Duration::from_secs(10)).await {
            let v: Value = serde_json::from_str(&l).unwrap();
            let blob = v["result"]["blob"]
                .as_str()
                .unwrap_or_else(|| panic!("{ep}: {l}"));
            all.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .unwrap(),
            );
        }
        assert!(all.len() > 32, "{ep}");
        let (data, sum) = all.split_at(all.len() - 32);
        assert_eq!(sha2::Sha256::digest(data).as_slice(), sum, "{ep}: checksum");
    }
}

/// `/v3/auth/*` and auth checks through the gateway: users, roles and
/// permissions managed over JSON, tokens from `/v3/auth/authenticate` in
/// the `Authorization` header, and the same denials as etcd's gateway.
#[tokio::test]
async fn gateway_auth_matches_etcd() {
    let (_etcd, _strata, p) = pair().await;
    // Before auth is enabled.
    p.same("/v3/auth/enable", "{}").await;
    p.same(
        "/v3/auth/user/add",
        r#"{"name":"root","password":"rootpw"}"#,
    )
    .await;
    p.same("/v3/auth/user/add", r#"{"name":"root","password":"x"}"#)
        .await;
    p.same("/v3/auth/user/add", r#"{"name":"","password":"x"}"#)
        .await;
    p.same("/v3/auth/enable", "{}").await;
    p.same("/v3/auth/role/add", r#"{"name":"root"}"#).await;
    p.same("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#)
        .await;
    p.same(
        "/v3/auth/user/add",
        r#"{"name":"alice","password":"alicepw"}"#,
    )
    .await;
    p.same("/v3/auth/role/add", r#"{"name":"ra"}"#).await;
    // READWRITE on the prefix "a" (range_end "b").
    p.same(
        "/v3/auth/role/grant",
        r#"{"name":"ra","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
    )
    .await;
    p.same("/v3/auth/user/grant", r#"{"user":"alice","role":"ra"}"#)
        .await;
    p.same("/v3/auth/user/grant", r#"{"user":"alice","role":"nope"}"#)
        .await;
    p.same("/v3/auth/role/get", r#"{"role":"ra"}"#).await;
    p.same("/v3/auth/user/get", r#"{"name":"alice"}"#).await;
    p.same("/v3/auth/user/list", "{}").await;
    p.same("/v3/auth/role/list", "{}").await;
    let v = p.same("/v3/auth/enable", "{}").await;
    assert!(v.get("error").is_none(), "auth enabled: {v}");

    // Auth on: no token, a bad password, a bad token.
    let v = p
        .same("/v3/kv/put", r#"{"key":"YTE=","value":"dg=="}"#)
        .await;
    assert_eq!(v["message"], "etcdserver: user name is empty", "{v}");
    let v = p
        .same(
            "/v3/auth/authenticate",
            r#"{"name":"alice","password":"wrong"}"#,
        )
        .await;
    assert_eq!(
        v["message"], "etcdserver: authentication failed, invalid user ID or password",
        "{v}"
    );
    let bad = ("bogus.1".to_string(), "bogus.1".to_string());
    let v = p
        .same_auth("/v3/kv/range", r#"{"key":"YTE="}"#, Some(&bad))
        .await;
    assert_eq!(v["message"], "etcdserver: invalid auth token", "{v}");

    // alice: her prefix only, no management.
    let alice = p.login("alice", "alicepw").await;
    let a = Some(&alice);
    let v = p
        .same_auth("/v3/kv/put", r#"{"key":"YTE=","value":"dg=="}"#, a)
        .await;
    assert!(v.get("header").is_some(), "alice writes a1: {v}");
    p.same_auth("/v3/kv/range", r#"{"key":"YTE="}"#, a).await;
    let v = p
        .same_auth("/v3/kv/put", r#"{"key":"Yg==","value":"dg=="}"#, a)
        .await;
    assert_eq!(v["message"], "etcdserver: permission denied", "{v}");
    p.same_auth("/v3/kv/range", r#"{"key":"Yg=="}"#, a).await;
    p.same_auth("/v3/kv/deleterange", r#"{"key":"Yg=="}"#, a)
        .await;
    p.same_auth(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"YTI=","value":"dg=="}},{"request_range":{"key":"Yg=="}}]}"#,
        a,
    )
    .await;
    p.same_auth("/v3/auth/user/list", "{}", a).await;
    p.same_auth("/v3/auth/role/add", r#"{"name":"x"}"#, a).await;
    p.same_auth("/v3/auth/user/get", r#"{"name":"alice"}"#, a)
        .await;
    p.same_auth("/v3/auth/status", "{}", a).await;

    // root: everything.
    let root = p.login("root", "rootpw").await;
    let r = Some(&root);
    p.same_auth("/v3/auth/status", "{}", r).await;
    p.same_auth("/v3/kv/range", r#"{"key":"YQ==","range_end":"Yw=="}"#, r)
        .await;
    p.same_auth("/v3/auth/user/list", "{}", r).await;
    p.same_auth(
        "/v3/auth/role/revoke",
        r#"{"role":"ra","key":"YQ==","range_end":"Yg=="}"#,
        r,
    )
    .await;
    // The revoke bumped the auth revision: alice's request is now denied.
    let v = p.same_auth("/v3/kv/range", r#"{"key":"YTE="}"#, a).await;
    assert!(v.get("error").is_some(), "alice lost her permission: {v}");
    p.same_auth(
        "/v3/auth/user/changepw",
        r#"{"name":"alice","password":"new"}"#,
        r,
    )
    .await;
    p.same_auth("/v3/auth/user/revoke", r#"{"name":"alice","role":"ra"}"#, r)
        .await;
    p.same_auth("/v3/auth/role/delete", r#"{"role":"ra"}"#, r)
        .await;
    p.same_auth("/v3/auth/user/delete", r#"{"name":"alice"}"#, r)
        .await;
    p.same_auth("/v3/auth/user/delete", r#"{"name":"root"}"#, r)
        .await;
    let v = p.same_auth("/v3/auth/disable", "{}", r).await;
    assert!(v.get("error").is_none(), "auth disabled: {v}");
    // Auth off again: no token needed.
    p.same("/v3/kv/put", r#"{"key":"Yg==","value":"dg=="}"#)
        .await;
}
