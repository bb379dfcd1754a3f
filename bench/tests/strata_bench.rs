//! End-to-end tests of `strata-bench`: every subcommand, with small totals
//! and `--output json`, against a real Strata (built with `cargo build -p
//! store --bin strata` when needed) and a real etcd 3.5 (`$ETCD_BIN`, else
//! `$ETCD35_BIN` from `scripts/peers.env`, else
//! `~/.cache/strata/etcd-3.5/bin/etcd`; `scripts/install-peers.sh`
//! installs it). Each check looks at what the servers hold afterwards, not
//! only at the report; plus the failure modes (unreachable endpoint, bad
//! flags) and `--user` against an etcd with auth enabled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthEnableRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, RangeRequest,
};
use serde_json::Value;
use tonic::transport::Channel;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process on 127.0.0.1, killed (by PID) on drop.
struct Server {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// target/<profile> of this test binary.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `target/<profile>/strata`, built once per test run.
fn strata_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = profile_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "store", "--bin", "strata"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p store --bin strata");
            assert!(status.success(), "cargo build -p store --bin strata failed");
            dir.join("strata")
        })
        .clone()
}

fn etcd_bin() -> PathBuf {
    for var in ["ETCD_BIN", "ETCD35_BIN"] {
        if let Ok(p) = std::env::var(var) {
            return PathBuf::from(p);
        }
    }
    let cache = std::env::var("STRATA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata"));
    let p = cache.join("etcd-3.5/bin/etcd");
    assert!(
        p.exists(),
        "no etcd 3.5 at {}: run scripts/install-peers.sh (or set ETCD_BIN)",
        p.display()
    );
    p
}

/// Starts `bin` with etcd's single-member flags (Strata takes the same).
fn start(bin: &Path, name: &str) -> Server {
    start_with(bin, name, "http", &[])
}

/// [`start`] with a client URL scheme and extra flags.
fn start_with(bin: &Path, name: &str, scheme: &str, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let client = format!("{scheme}://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new(bin)
        .args(["--name", name, "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("{name}={peer}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    Server {
        child,
        endpoint: client,
        _dir: dir,
    }
}

/// A KV client once the server answers a linearizable read.
async fn ready(endpoint: &str) -> KvClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
        {
            let mut kv = KvClient::new(ch);
            if kv
                .range(RangeRequest {
                    key: b"ready".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                return kv;
            }
        }
        assert!(Instant::now() < deadline, "{endpoint} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs strata-bench; (exit code, stdout, stderr).
fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a workload with `--output json` against `endpoint`, checks the
/// schema and that every request succeeded; returns the object.
fn run_json(endpoint: &str, args: &[&str]) -> Value {
    let mut all = vec![
        "--endpoints",
        endpoint,
        "--conns",
        "2",
        "--clients",
        "8",
        "--output",
        "json",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = tokio::task::block_in_place(|| bench(&all));
    assert_eq!(code, 0, "strata-bench {all:?} failed: {err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("stdout of {all:?} is not one JSON object ({e}): {out:?}"));
    const COMMANDS: [&str; 8] = [
        "put",
        "range",
        "txn-put",
        "txn-mixed",
        "watch",
        "watch-latency",
        "watch-get",
        "lease-keepalive",
    ];
    let command = args
        .iter()
        .find(|a| COMMANDS.contains(a))
        .expect("a subcommand");
    check_schema(&v, command);
    assert_eq!(v["errors"], 0, "{args:?}: {v}");
    assert_eq!(v["ok"], v["total"], "{args:?}: {v}");
    v
}

/// The fields and types of the shared `--output json` schema.
fn check_schema(v: &Value, command: &str) {
    assert_eq!(v["tool"], "strata-bench");
    assert_eq!(v["command"], command);
    assert!(
        v["endpoints"].as_array().is_some_and(|a| !a.is_empty()),
        "{v}"
    );
    for k in ["conns", "clients", "total", "ok", "errors"] {
        assert!(v[k].is_u64(), "{k} in {v}");
    }
    assert!(v["errors_by_message"].is_object(), "{v}");
    assert!(v["extra"].is_object(), "{v}");
    let secs = v["elapsed_secs"].as_f64().unwrap();
    let rps = v["requests_per_sec"].as_f64().unwrap();
    assert!(secs > 0.0, "{v}");
    assert!(
        (rps - v["ok"].as_f64().unwrap() / secs).abs() < 1e-6 * rps.max(1.0),
        "{v}"
    );
    let l = &v["latency_ms"];
    let f = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{k} in {v}"))
    };
    assert!(f("stddev") >= 0.0);
    let ordered = [f("min"), f("p50"), f("p90"), f("p99"), f("p99_9"), f("max")];
    assert!(
        ordered.windows(2).all(|w| w[0] <= w[1]),
        "unordered percentiles: {l}"
    );
    assert!(f("min") <= f("mean") && f("mean") <= f("max"), "{l}");
    if v["ok"].as_u64().unwrap() > 0 {
        assert!(f("min") > 0.0, "{l}");
    }
}

/// Keys on the server, counted by key length (the workloads below use a
/// different --key-size each, so their keys never collide).
async fn keys_by_len(kv: &mut KvClient<Channel>) -> std::collections::BTreeMap<usize, usize> {
    let resp = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut m = std::collections::BTreeMap::new();
    for kv in resp.kvs {
        *m.entry(kv.key.len()).or_default() += 1;
    }
    m
}

async fn revision(kv: &mut KvClient<Channel>) -> i64 {
    kv.range(RangeRequest {
        key: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

/// Every subcommand against one server.
async fn exercise(endpoint: &str) {
    let mut kv = ready(endpoint).await;
    let ep = endpoint;

    // put: 100 sequential keys of 8 bytes.
    let v = run_json(
        ep,
        &[
            "put",
            "--sequential-keys",
            "--key-space-size",
            "100",
            "--total",
            "100",
            "--val-size",
            "16",
        ],
    );
    assert_eq!(v["total"], 100);
    assert_eq!(keys_by_len(&mut kv).await.get(&8), Some(&100));
    let value = kv
        .range(RangeRequest {
            key: vec![2, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        value.kvs[0].value.len(),
        16,
        "key 1 (varint 0x02) holds a 16-byte value"
    );

    // put with periodic compaction: the server ends up compacted.
    let before = revision(&mut kv).await;
    run_json(
        ep,
        &[
            "put",
            "--key-size",
            "9",
            "--total",
            "300",
            "--rate",
            "1000",
            "--compact-interval",
            "100ms",
            "--compact-index-delta",
            "10",
        ],
    );
    let old = kv
        .range(RangeRequest {
            key: b"x".to_vec(),
            revision: before,
            ..Default::default()
        })
        .await;
    let err = old.expect_err("the pre-run revision is compacted");
    assert!(err.message().contains("compacted"), "{err:?}");

    // txn-put: 10 txns of 5 puts each over 50 keys of 12 bytes, one revision per txn.
    let before = revision(&mut kv).await;
    let v = run_json(
        ep,
        &[
            "txn-put",
            "--txn-ops",
            "5",
            "--key-space-size",
            "50",
            "--key-size",
            "12",
            "--total",
            "10",
            "--target-leader",
        ],
    );
    assert_eq!(v["extra"]["txn_ops"], 5);
    assert_eq!(revision(&mut kv).await - before, 10);
    assert_eq!(keys_by_len(&mut kv).await.get(&12), Some(&50));

    // range: linearizable; serializable with a limit and count-only over all keys.
    run_json(ep, &["range", "foo", "--total", "200"]);
    run_json(
        ep,
        &[
            "range",
            "\u{1}",
            "\u{7f}",
            "--consistency",
            "s",
            "--limit",
            "5",
            "--count-only",
            "--total",
            "200",
        ],
    );

    // txn-mixed: 80% writes over 20 keys of 16 bytes.
    let v = run_json(
        ep,
        &[
            "txn-mixed",
            "--rw-ratio",
            "0.25",
            "--key-space-size",
            "20",
            "--key-size",
            "16",
            "--total",
            "200",
        ],
    );
    let (r, w) = (&v["extra"]["read"], &v["extra"]["write"]);
    assert_eq!(
        r["ok"].as_u64().unwrap() + w["ok"].as_u64().unwrap(),
        200,
        "{v}"
    );
    assert!(w["ok"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(keys_by_len(&mut kv).await.get(&16), Some(&20));

    // lease-keepalive: every renewal answered.
    let v = run_json(ep, &["lease-keepalive", "--total", "300"]);
    assert_eq!(v["ok"], 300);

    // watch: 100 watchers on 5 keys (20 each), 50 puts → 1000 events, each counted.
    let v = run_json(
        ep,
        &[
            "watch",
            "--streams",
            "4",
            "--watch-per-stream",
            "25",
            "--watched-key-total",
            "5",
            "--put-total",
            "50",
            "--key-size",
            "20",
            "--sequential-keys",
            "--key-space-size",
            "5",
        ],
    );
    let x = &v["extra"];
    assert_eq!(
        (x["watchers"].as_u64(), x["events_expected"].as_u64()),
        (Some(100), Some(1000)),
        "{v}"
    );
    assert_eq!(x["events_received"], 1000, "{v}");
    assert_eq!(
        (
            x["events_dropped"].as_u64(),
            x["events_unexpected"].as_u64()
        ),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["total"], 1000);
    assert_eq!(keys_by_len(&mut kv).await.get(&20), Some(&5));

    // watch-latency: 10 watchers, 20 puts → 200 events with a latency each.
    let v = run_json(
        ep,
        &[
            "watch-latency",
            "--streams",
            "2",
            "--watchers-per-stream",
            "5",
            "--put-total",
            "20",
            "--put-rate",
            "1000",
            "--prevkv",
        ],
    );
    let x = &v["extra"];
    assert_eq!(
        (x["events_expected"].as_u64(), x["events_received"].as_u64()),
        (Some(200), Some(200)),
        "{v}"
    );
    assert_eq!(x["events_dropped"], 0);
    assert_eq!(v["ok"], 200, "one latency sample per event: {v}");

    // watch-get: 100 unsynced watchers catch up on 4 old events each.
    let v = run_json(
        ep,
        &[
            "watch-get",
            "--watchers",
            "100",
            "--streams",
            "2",
            "--events",
            "4",
        ],
    );
    let x = &v["extra"];
    assert_eq!(
        (x["events_expected"].as_u64(), x["events_received"].as_u64()),
        (Some(400), Some(400)),
        "{v}"
    );
    assert_eq!(x["events_dropped"], 0);

    // The text report looks like etcd's.
    let (code, out, err) = tokio::task::block_in_place(|| {
        bench(&["--endpoints", ep, "--no-progress", "put", "--total", "20"])
    });
    assert_eq!(code, 0, "{err}");
    for part in [
        "Summary:",
        "Requests/sec:",
        "Response time histogram:",
        "Latency distribution:",
        "Percentiles (ms): p50",
    ] {
        assert!(out.contains(part), "{part:?} missing from {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_strata() {
    let s = tokio::task::block_in_place(|| start(&strata_bin(), "default"));
    exercise(&s.endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_etcd() {
    let s = start(&etcd_bin(), "default");
    exercise(&s.endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_token_against_etcd_with_auth() {
    let s = start(&etcd_bin(), "default");
    ready(&s.endpoint).await;
    let ch = Channel::from_shared(s.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auth = AuthClient::new(ch);
    auth.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: "pw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    auth.authenticate(AuthenticateRequest {
        name: "root".into(),
        password: "pw".into(),
    })
    .await
    .unwrap();

    let v = run_json(&s.endpoint, &["--user", "root:pw", "put", "--total", "50"]);
    assert_eq!(v["ok"], 50);

    // Without credentials every request fails, counted by etcd's message.
    let args = [
        "--endpoints",
        &s.endpoint,
        "--output",
        "json",
        "put",
        "--total",
        "5",
    ];
    let (code, out, err) = tokio::task::block_in_place(|| bench(&args));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["ok"].as_u64(), v["errors"].as_u64()),
        (Some(0), Some(5)),
        "{v}"
    );
    assert_eq!(
        v["errors_by_message"]["etcdserver: user name is empty"], 5,
        "{v}"
    );

    // A wrong password is fatal at connect time.
    let args = [
        "--endpoints",
        &s.endpoint,
        "--user",
        "root:nope",
        "put",
        "--total",
        "5",
    ];
    let (code, _, err) = tokio::task::block_in_place(|| bench(&args));
    assert_eq!(code, 1);
    assert!(
        err.contains("authenticate") && err.contains("authentication failed"),
        "{err}"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// (ca, cert, key).
fn tls_files(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench-ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "root");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

#[test]
fn tls_with_client_certificates_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let s = start_with(
        &etcd_bin(),
        "default",
        "https",
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
        ],
    );
    let hostport = s.endpoint.trim_start_matches("https://").to_string();
    let tls = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    // The server needs a moment to start: retry the dial for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let mut args = vec![
            "--endpoints",
            hostport.as_str(),
            "--output",
            "json",
            "--dial-timeout",
            "1s",
        ];
        args.extend_from_slice(&tls);
        args.extend_from_slice(&["put", "--total", "30"]);
        let (code, out, err) = bench(&args);
        if code == 0 {
            break out;
        }
        assert!(Instant::now() < deadline, "no TLS run succeeded: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["ok"].as_u64(), v["errors"].as_u64()),
        (Some(30), Some(0)),
        "{v}"
    );

    // Without a client certificate the handshake is refused: a clear, fatal error.
    let (code, _, err) = bench(&[
        "--endpoints",
        &s.endpoint,
        "--cacert",
        &ca,
        "--dial-timeout",
        "2s",
        "put",
        "--total",
        "3",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("dial error"), "{err}");
}

#[test]
fn unreachable_endpoint_and_bad_flags_fail_clearly() {
    let port = free_port();
    let ep = format!("127.0.0.1:{port}");
    let (code, out, err) = bench(&[
        "--endpoints",
        &ep,
        "--dial-timeout",
        "1s",
        "--output",
        "json",
        "put",
        "--total",
        "5",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("dial error") && err.contains(&ep), "{err}");

    let (code, _, err) = bench(&["put", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, _, err) = bench(&["range", "foo", "--consistency", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--consistency"), "{err}");
    let (code, _, err) = bench(&["range"]);
    assert_eq!(code, 2, "range needs a key: {err}");
    let (code, _, err) = bench(&[
        "--endpoints",
        &ep,
        "txn-put",
        "--txn-ops",
        "5",
        "--key-space-size",
        "2",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--txn-ops no larger than --key-space-size"),
        "{err}"
    );

    let (code, out, _) = bench(&["--help"]);
    assert_eq!(code, 0);
    for cmd in [
        "put",
        "range",
        "txn-put",
        "txn-mixed",
        "watch",
        "watch-latency",
        "watch-get",
        "lease-keepalive",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from --help");
    }
}
