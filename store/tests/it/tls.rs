//! TLS: https client listeners driven by real etcdctl (3.5 and 3.4) with
//! `--cacert`, client certificate auth (a cert from the trusted CA works; no
//! cert and a cert from another CA are refused at the handshake, as by a
//! real etcd 3.5 with the same flags), the verified client CN reaching the
//! request, mixed http+https client listeners, `--listen-metrics-urls` over
//! http and https (curl), clear startup errors for bad TLS flags, and a
//! 3-member cluster on https peer URLs with `--peer-client-cert-auth` that
//! elects, replicates, forwards, lets a properly certified member join (by
//! a raft snapshot over TLS) and refuses one whose cert comes from another CA.
//!
//! Certificates are generated here with rcgen. etcdctl comes from
//! `scripts/install-peers.sh` (`$ETCDCTL35_BIN`/`$ETCDCTL34_BIN`, see
//! `scripts/peers.env`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};

use crate::harness::{free_port, start_all, wait_value, Cluster, Etcd, Strata};

// ---------------------------------------------------------------- certificates

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM).
    pem: PathBuf,
}

/// A certificate and its key, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let kp = KeyPair::generate().unwrap();
        let cert = p.self_signed(&kp).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(p, kp),
            pem,
        }
    }

    fn pem(&self) -> &str {
        self.pem.to_str().unwrap()
    }

    /// A certificate with CN `cn` for both server and client auth, valid for
    /// 127.0.0.1 and localhost.
    fn issue(&self, dir: &Path, file: &str, cn: &str) -> Pair {
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A serial derived from the file name, so a CRL can name it.
        p.serial_number = Some(SerialNumber::from(serial_of(file)));
        let kp = KeyPair::generate().unwrap();
        let cert = p.signed_by(&kp, &self.issuer).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, kp.serialize_pem()).unwrap();
        pair
    }
}

fn serial_of(file: &str) -> u64 {
    file.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    }) >> 1
}

impl Ca {
    /// A CRL of this CA revoking the certificates issued as `files`.
    fn crl(&self, dir: &Path, files: &[&str]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: files
                .iter()
                .map(|f| RevokedCertParams {
                    serial_number: SerialNumber::from(serial_of(f)),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        let path = dir.join("crl.pem");
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

/// The PKI of a test: a CA with a server cert and client certs for `alice`
/// and `root`, and an unrelated CA with its own server and `alice` certs.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Pair,
    alice: Pair,
    other_ca: Ca,
    other_server: Pair,
    other_alice: Pair,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let other_ca = Ca::new(d, "other-ca");
    Pki {
        server: ca.issue(d, "server", "server"),
        alice: ca.issue(d, "alice", "alice"),
        other_server: other_ca.issue(d, "other-server", "server"),
        other_alice: other_ca.issue(d, "other-alice", "alice"),
        ca,
        other_ca,
        dir,
    }
}

// -------------------------------------------------------------------- clients

fn etcdctl_bin(version: &str) -> PathBuf {
    let (var, default) = match version {
        "3.4" => ("ETCDCTL34_BIN", PathBuf::from("/usr/bin/etcdctl")),
        _ => (
            "ETCDCTL35_BIN",
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/strata/etcd-3.5/bin/etcdctl"),
        ),
    };
    let p = std::env::var(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        p.exists(),
        "no etcdctl {version} at {}: run scripts/install-peers.sh",
        p.display()
    );
    p
}

/// Run etcdctl `version` against `endpoint` with TLS flags `tls` and
/// command `args`; bounded by its dial/command timeouts and a 30 s kill.
/// Returns (success, stdout, stderr).
fn etcdctl(version: &str, endpoint: &str, tls: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("30")
        .arg(etcdctl_bin(version))
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=3s",
            "--command-timeout=5s",
        ])
        .args(tls)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// etcdctl put then get; panics with its output unless both work.
fn put_get(version: &str, endpoint: &str, tls: &[&str], key: &str, value: &str) {
    let (ok, out, err) = etcdctl(version, endpoint, tls, &["put", key, value]);
    assert!(
        ok && out.trim() == "OK",
        "etcdctl {version} put on {endpoint}: {out} {err}"
    );
    let (ok, out, err) = etcdctl(version, endpoint, tls, &["get", key]);
    assert!(ok, "etcdctl {version} get on {endpoint}: {err}");
    assert_eq!(
        out,
        format!("{key}\n{value}\n"),
        "etcdctl {version} get on {endpoint}"
    );
}

/// curl `url` (with `--cacert`/`--cert` flags in `tls`); (HTTP status, body).
fn curl(url: &str, tls: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(tls)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Start a single member; panics with its log if it does not serve.
fn start(extra: &[&str]) -> Strata {
    Strata::start(extra)
}

/// Start a single member expected to fail; its log (bounded by the
/// harness's start timeout).
fn start_fails(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    match Strata::try_start_in(&tmp.path().join("d"), extra) {
        Ok(s) => panic!("strata started with {extra:?}: {}", s.log_text()),
        Err(log) => log,
    }
}

fn https_url() -> String {
    format!("https://127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------- tests

#[test]
fn https_client_url_serves_etcdctl_35_and_34_with_cacert() {
    let p = pki();
    let url = https_url();
    let s = start(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
    ]);
    assert!(s.endpoint.starts_with("https://"), "{}", s.endpoint);
    let tls = ["--cacert", p.ca.pem()];
    put_get("3.5", &s.endpoint, &tls, "k35", "v35");
    put_get("3.4", &s.endpoint, &tls, "k34", "v34");
    // A client that trusts another CA refuses the server's certificate.
    let (ok, _, err) = etcdctl(
        "3.5",
        &s.endpoint,
        &["--cacert", p.other_ca.pem()],
        &["get", "k35"],
    );
    assert!(!ok, "a client trusting another CA must not connect");
    assert!(
        err.contains("certificate signed by unknown authority")
            || err.contains("deadline exceeded"),
        "{err}"
    );
    // Plain HTTP on the https port gets no answer from the gRPC services.
    let (ok, _, _) = etcdctl(
        "3.5",
        &s.endpoint.replace("https://", "http://"),
        &[],
        &["get", "k35"],
    );
    assert!(!ok, "plaintext gRPC on an https listener must fail");
}

/// The outcomes of the three client-cert-auth cases against `endpoint`:
/// (with alice's cert, without a cert, with a cert from another CA).
fn client_cert_auth_cases(endpoint: &str, p: &Pki) -> [(bool, String); 3] {
    let ca = ["--cacert", p.ca.pem()];
    let with = [
        ca[0],
        ca[1],
        "--cert",
        p.alice.cert(),
        "--key",
        p.alice.key(),
    ];
    let wrong = [
        ca[0],
        ca[1],
        "--cert",
        p.other_alice.cert(),
        "--key",
        p.other_alice.key(),
    ];
    let run = |tls: &[&str], key: &str| {
        let (ok, out, err) = etcdctl("3.5", endpoint, tls, &["put", key, "v"]);
        (ok, format!("{out}{err}"))
    };
    [
        run(&with, "with"),
        run(&ca, "without"),
        run(&wrong, "wrong"),
    ]
}

#[test]
fn client_cert_auth_accepts_the_trusted_ca_only_like_etcd() {
    let p = pki();
    let url = https_url();
    let tls_flags = [
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--trusted-ca-file",
        p.ca.pem(),
        "--client-cert-auth",
    ];
    let mut flags = vec!["--listen-client-urls", &url];
    flags.extend(tls_flags);
    let tmp = tempfile::tempdir().unwrap();
    let s = Strata::try_start_env(
        &tmp.path().join("d"),
        "s1",
        &flags,
        &[("RUST_LOG", "info,store::server::kv=debug")],
    )
    .unwrap_or_else(|e| panic!("strata did not start: {e}"));
    let started = Instant::now();
    let [with, without, wrong] = client_cert_auth_cases(&s.endpoint, &p);
    assert!(with.0, "a cert from the trusted CA must work: {}", with.1);
    assert!(!without.0, "no client cert must be refused: {}", without.1);
    assert!(
        !wrong.0,
        "a cert from another CA must be refused: {}",
        wrong.1
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let (ok, out, err) = etcdctl(
        "3.4",
        &s.endpoint,
        &[
            "--cacert",
            p.ca.pem(),
            "--cert",
            p.alice.cert(),
            "--key",
            p.alice.key(),
        ],
        &["get", "with"],
    );
    assert!(
        ok && out == "with\nv\n",
        "etcdctl 3.4 with a client cert: {out} {err}"
    );
    let log = s.log_text();
    // Both refusals happened at the handshake, on the server side.
    assert!(
        log.matches("rejected connection").count() >= 2,
        "the server logs refused handshakes: {log}"
    );
    // The verified CN reached the gRPC request (the Put handler logs it).
    assert!(
        log.contains(r#""client_cn":"Some(\"alice\")""#),
        "the put handler sees CN alice: {log}"
    );
    assert!(
        !log.contains(r#""client_cn":"None""#),
        "only alice's put succeeded: {log}"
    );

    // A real etcd 3.5 with the same TLS flags decides the same way.
    let outcome = |r: &[(bool, String); 3]| r.iter().map(|x| x.0).collect::<Vec<_>>();
    let etcd = etcd_cases(&tls_flags, &p);
    let ours = [with, without, wrong];
    eprintln!("etcdctl against strata: {ours:#?}\netcdctl against etcd 3.5: {etcd:#?}");
    assert_eq!(outcome(&etcd), vec![true, false, false], "etcd: {etcd:?}");
    assert_eq!(outcome(&etcd), outcome(&ours));
    // What etcdctl finally prints for a refusal is the same. (The TLS alert
    // in its retry log differs: rustls sends "certificate required" and
    // "unknown certificate authority" where etcd 3.5.1's Go 1.16 sends
    // "bad certificate" for both.)
    let last = |o: &(bool, String)| o.1.trim_end().lines().last().unwrap_or("").to_string();
    for i in 1..3 {
        assert_eq!(last(&ours[i]), last(&etcd[i]), "case {i}");
    }
}

/// The client-cert-auth cases against a real etcd 3.5 started with
/// `tls_flags` on an https client URL.
fn etcd_cases(tls_flags: &[&str], p: &Pki) -> [(bool, String); 3] {
    let ep = https_url();
    let bin = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata/etcd-3.5/bin/etcd");
    let bin = std::env::var("ETCD35_BIN")
        .map(PathBuf::from)
        .unwrap_or(bin);
    assert!(bin.exists(), "no etcd 3.5: run scripts/install-peers.sh");
    let _e = Etcd::start_bin(
        &bin,
        &[
            &["--listen-client-urls", &ep, "--advertise-client-urls", &ep][..],
            tls_flags,
        ]
        .concat(),
    );
    // Wait until it serves (the good cert works once it is up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client_cert_auth_cases(&ep, p);
        if r[0].0 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn trusted_ca_file_alone_requires_client_certs_as_in_etcd() {
    let p = pki();
    let url = https_url();
    let tls_flags = [
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--trusted-ca-file",
        p.ca.pem(),
    ];
    let s = start(&[&["--listen-client-urls", url.as_str()][..], &tls_flags[..]].concat());
    let outcome = |r: &[(bool, String); 3]| r.iter().map(|x| x.0).collect::<Vec<_>>();
    let ours = client_cert_auth_cases(&s.endpoint, &p);
    let etcd = etcd_cases(&tls_flags, &p);
    assert_eq!(outcome(&etcd), vec![true, false, false], "etcd: {etcd:?}");
    assert_eq!(outcome(&ours), outcome(&etcd), "strata: {ours:?}");
}

#[test]
fn mixed_http_and_https_client_listeners_both_serve() {
    let p = pki();
    let https = https_url();
    let http = format!("http://127.0.0.1:{}", free_port());
    let s = start(&[
        "--listen-client-urls",
        &format!("{http},{https}"),
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
    ]);
    let ls = s.listeners("serving client traffic", 2);
    assert_eq!(
        ls,
        vec![http.clone(), https.clone()],
        "both listeners start"
    );
    let tls = ["--cacert", p.ca.pem()];
    put_get("3.5", &https, &tls, "via-https", "1");
    put_get("3.5", &http, &[], "via-http", "2");
    // One store behind both.
    let (ok, out, _) = etcdctl("3.5", &http, &[], &["get", "via-https"]);
    assert!(ok && out == "via-https\n1\n", "{out}");
    let (ok, out, _) = etcdctl("3.4", &https, &tls, &["get", "via-http"]);
    assert!(ok && out == "via-http\n2\n", "{out}");
    // The HTTP routes answer on both too.
    assert_eq!(curl(&format!("{http}/livez"), &[]).0, 200);
    assert_eq!(
        curl(&format!("{https}/livez"), &["--cacert", p.ca.pem()]).0,
        200
    );
}

#[test]
fn metrics_urls_serve_monitoring_routes_over_http_and_https() {
    let p = pki();
    let mhttp = format!("http://127.0.0.1:{}", free_port());
    let mhttps = https_url();
    let s = start(&[
        "--listen-metrics-urls",
        &format!("{mhttp},{mhttps}"),
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
    ]);
    assert_eq!(
        s.listeners("serving metrics", 2),
        vec![mhttp.clone(), mhttps.clone()]
    );
    for (base, tls) in [(&mhttp, vec![]), (&mhttps, vec!["--cacert", p.ca.pem()])] {
        let get = |path: &str| curl(&format!("{base}{path}"), &tls);
        let (code, body) = get("/metrics");
        assert_eq!(code, 200, "{base}/metrics");
        assert!(
            body.contains("etcd_server_has_leader 1"),
            "{base}/metrics: {body}"
        );
        assert_eq!(
            get("/health"),
            (200, r#"{"health":"true","reason":""}"#.to_string())
        );
        assert_eq!(get("/livez"), (200, "ok".to_string()));
        assert_eq!(get("/readyz"), (200, "ok".to_string()));
        let (code, body) = get("/version");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["etcdserver"], "3.6.0", "{body}");
        // Only the monitoring routes: no KV service there.
        let (ok, _, _) = etcdctl("3.5", base, &["--cacert", p.ca.pem()], &["get", "x"]);
        assert!(!ok, "{base} must not serve gRPC");
    }
    // The https metrics port does not talk plaintext.
    assert_eq!(
        curl(&format!("{}/livez", mhttps.replace("https", "http")), &[]).0,
        0
    );
}

#[test]
fn auto_tls_generates_a_certificate_in_the_data_dir_and_reuses_it() {
    let url = https_url();
    let mut s = start(&["--listen-client-urls", &url, "--auto-tls"]);
    let cert = s.data_dir.join("fixtures/client/cert.pem");
    let first = std::fs::read(&cert).expect("auto-tls writes fixtures/client/cert.pem");
    assert!(s.data_dir.join("fixtures/client/key.pem").exists());
    // etcdctl trusting exactly that certificate can talk to it.
    put_get(
        "3.5",
        &s.endpoint,
        &["--cacert", cert.to_str().unwrap()],
        "auto",
        "tls",
    );
    s.terminate();
    s.restart();
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "reused across restarts"
    );
    put_get(
        "3.4",
        &s.endpoint,
        &["--cacert", cert.to_str().unwrap()],
        "auto2",
        "tls",
    );
}

#[test]
fn bad_tls_configuration_fails_at_startup_with_a_clear_error() {
    let p = pki();
    let url = https_url();
    let log = start_fails(&["--listen-client-urls", &url]);
    let want = format!(
        "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"
    );
    assert!(log.contains(&want), "{log}");
    let log = start_fails(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        "/nonexistent/key.pem",
    ]);
    assert!(
        log.contains("open /nonexistent/key.pem: no such file or directory"),
        "{log}"
    );
    let log = start_fails(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.ca.pem.parent().unwrap().to_str().unwrap(),
        "--key-file",
        p.server.key(),
    ]);
    assert!(
        log.contains("strata: open "),
        "a directory is not a cert: {log}"
    );
    let garbage = p.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem\n").unwrap();
    let log = start_fails(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        garbage.to_str().unwrap(),
        "--key-file",
        p.server.key(),
    ]);
    assert!(log.contains("no PEM certificate found"), "{log}");
    // A key that does not belong to the certificate.
    let log = start_fails(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.alice.key(),
    ]);
    assert!(log.contains("strata: "), "{log}");
    let peer = https_url();
    let log = start_fails(&[
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    let hp = peer.trim_start_matches("https://");
    assert!(
        log.contains(&format!(
            "cannot listen on TLS for {hp}: KeyFile and CertFile are not presented"
        )),
        "{log}"
    );
    let m = https_url();
    let log = start_fails(&["--listen-metrics-urls", &m]);
    let hp = m.trim_start_matches("https://");
    assert!(
        log.contains(&format!(
            "cannot listen on TLS for {hp}: KeyFile and CertFile are not presented"
        )),
        "{log}"
    );
}

/// Peer TLS flags of a member presenting `pair` and trusting `ca`.
fn peer_tls(ca: &Ca, pair: &Pair) -> Vec<String> {
    [
        "--peer-cert-file",
        pair.cert(),
        "--peer-key-file",
        pair.key(),
        "--peer-trusted-ca-file",
        ca.pem(),
        "--peer-client-cert-auth",
        "--snapshot-count",
        "40",
        "--snapshot-catchup-entries",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_tls_cluster_replicates_and_refuses_a_member_from_another_ca() {
    let p = pki();
    let d = p.dir.path();
    let certs: Vec<Pair> = (0..3)
        .map(|i| p.ca.issue(d, &format!("peer{i}"), &format!("n{i}")))
        .collect();
    let cl = Cluster::start_scheme("https", 3, |i| peer_tls(&p.ca, &certs[i]));
    let leader = cl.leader().await;
    for i in 0..3 {
        assert!(
            cl.nodes[i]
                .as_ref()
                .unwrap()
                .log_text()
                .contains(r#""tls":true"#),
            "member {i} serves peers over TLS"
        );
    }
    // Writes on every member (followers forward to the leader over TLS)
    // reach every member; enough of them to compact the log for the joiner.
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cl.client(i).await);
    }
    for n in 0..150 {
        let i = n % 3;
        clients[i]
            .put(format!("k{n:03}"), format!("v{n}"), None)
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        wait_value(c, "k149", "v149").await;
    }
    // Lease KeepAlive and TimeToLive on a follower are forwarded to the
    // leader over a TLS peer client.
    let f = (leader + 1) % 3;
    let lease = clients[f].lease_grant(30, None).await.unwrap().id();
    let (mut keeper, mut responses) = clients[f].lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = responses
        .message()
        .await
        .unwrap()
        .expect("a keepalive response");
    assert!(r.ttl() > 0, "keepalive forwarded by the follower: {r:?}");
    let ttl = clients[f].lease_time_to_live(lease, None).await.unwrap();
    assert!(
        ttl.ttl() > 0,
        "TimeToLive forwarded by the follower: {ttl:?}"
    );

    // A member with a certificate from the cluster's CA joins as a learner
    // and catches up through a raft snapshot streamed over TLS.
    let mut c = clients[leader].clone();
    let p3 = free_port();
    let url3 = format!("https://127.0.0.1:{p3}");
    c.member_add(
        [url3.clone()],
        Some(etcd_client::MemberAddOptions::new().with_is_learner()),
    )
    .await
    .unwrap();
    let good = p.ca.issue(d, "peer3", "n3");
    let f = joining_flags(&cl, "n3", p3, peer_tls(&p.ca, &good));
    let n3 = start_all(cl.dir(), vec![("n3".to_string(), f)])
        .pop()
        .unwrap()
        .unwrap_or_else(|e| panic!("n3 did not join: {e}"));
    let mut c3 = n3.client().await;
    wait_value(&mut c3, "k149", "v149").await;
    assert!(
        n3.log_text().contains("installed snapshot from the leader"),
        "n3 should have caught up through a snapshot"
    );

    // A member whose peer certificate comes from another CA cannot join,
    // even though it trusts the cluster's CA: with --peer-client-cert-auth
    // the members refuse its certificate at the handshake, so discovery
    // fails and it exits, in bounded time.
    let p4 = free_port();
    let url4 = format!("https://127.0.0.1:{p4}");
    // Added as a voter (one learner at most): with its certificate
    // accepted it would join, so only the certificate stops it.
    c.member_add([url4.clone()], None).await.unwrap();
    assert_n4_refused(&cl, p4, peer_tls(&p.ca, &p.other_server), |l| {
        l.contains("rejected connection") && l.contains("invalid peer certificate: UnknownIssuer")
    });
    // The cluster is unaffected.
    c.put("after", "ok", None).await.unwrap();
    wait_value(&mut c3, "after", "ok").await;
}

#[test]
fn client_crl_file_refuses_a_revoked_client_certificate() {
    let p = pki();
    let d = p.dir.path();
    let mallory = p.ca.issue(d, "mallory", "mallory");
    let crl = p.ca.crl(d, &["mallory"]);
    let url = https_url();
    let s = start(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--trusted-ca-file",
        p.ca.pem(),
        "--client-cert-auth",
        "--client-crl-file",
        crl.to_str().unwrap(),
    ]);
    let ca = ["--cacert", p.ca.pem()];
    put_get(
        "3.5",
        &s.endpoint,
        &[
            ca[0],
            ca[1],
            "--cert",
            p.alice.cert(),
            "--key",
            p.alice.key(),
        ],
        "crl",
        "alice-ok",
    );
    let (ok, out, err) = etcdctl(
        "3.5",
        &s.endpoint,
        &[
            ca[0],
            ca[1],
            "--cert",
            mallory.cert(),
            "--key",
            mallory.key(),
        ],
        &["put", "crl", "mallory"],
    );
    assert!(!ok, "a revoked certificate must be refused: {out} {err}");
    assert!(
        s.log_text().contains("Revoked"),
        "the server names the revocation: {}",
        s.log_text()
    );
}

/// Flags of a new member `name` joining `cl` (`--initial-cluster-state
/// existing`) on peer port `port` over https, plus `tls`.
fn joining_flags(cl: &Cluster, name: &str, port: u16, tls: Vec<String>) -> Vec<String> {
    let url = format!("https://127.0.0.1:{port}");
    let mut f = crate::harness::peer_flags_scheme(
        "https",
        port,
        &format!("{},{name}={url}", cl.initial),
        "it-cluster",
    );
    f.extend([
        "--initial-cluster-state".to_string(),
        "existing".to_string(),
    ]);
    f.extend(tls);
    f
}

/// Starts member n4 (already added) with `tls` and asserts that it is
/// refused in bounded time: it exits unable to fetch the members, and
/// every member logged a line that satisfies `refused_line`.
fn assert_n4_refused(
    cl: &Cluster,
    port: u16,
    tls: Vec<String>,
    refused_line: impl Fn(&str) -> bool,
) {
    let f = joining_flags(cl, "n4", port, tls);
    let started = Instant::now();
    let r = start_all(cl.dir(), vec![("n4".to_string(), f)])
        .pop()
        .unwrap();
    let log = match r {
        Ok(s) => panic!("a refused member joined: {}", s.log_text()),
        Err(log) => log,
    };
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused in bounded time"
    );
    assert!(log.contains("cannot fetch the cluster's members"), "{log}");
    for i in 0..3 {
        let text = cl.nodes[i].as_ref().unwrap().log_text();
        assert!(
            text.lines().any(&refused_line),
            "member {i} did not refuse n4"
        );
    }
}

async fn replicated(cl: &Cluster, key: &str, value: &str) {
    let mut c = cl.client(cl.leader().await).await;
    c.put(key, value, None).await.unwrap();
    for i in 0..cl.nodes.len() {
        wait_value(&mut cl.client(i).await, key, value).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_auto_tls_cluster_elects_and_replicates() {
    let cl = Cluster::start_scheme("https", 3, |_| vec!["--peer-auto-tls".to_string()]);
    replicated(&cl, "auto", "peer-tls").await;
    for i in 0..3 {
        let n = cl.nodes[i].as_ref().unwrap();
        assert!(
            n.data_dir.join("fixtures/peer/cert.pem").exists(),
            "member {i}"
        );
        assert!(
            n.log_text().contains(r#""tls":true"#),
            "member {i} serves peers over TLS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_cert_allowed_cn_refuses_other_common_names() {
    let p = pki();
    let d = p.dir.path();
    let certs: Vec<Pair> = (0..3)
        .map(|i| p.ca.issue(d, &format!("peer{i}"), "etcd-peer"))
        .collect();
    let with_cn = |pair: &Pair| {
        let mut f = peer_tls(&p.ca, pair);
        f.extend([
            "--peer-cert-allowed-cn".to_string(),
            "etcd-peer".to_string(),
        ]);
        f
    };
    let cl = Cluster::start_scheme("https", 3, |i| with_cn(&certs[i]));
    replicated(&cl, "cn", "ok").await;
    // Same CA, another CN: refused by the CN check after the handshake.
    let mut c = cl.client(cl.leader().await).await;
    let p4 = free_port();
    let url4 = format!("https://127.0.0.1:{p4}");
    c.member_add([url4.clone()], None).await.unwrap();
    let intruder = p.ca.issue(d, "intruder", "intruder");
    assert_n4_refused(&cl, p4, with_cn(&intruder), |l| {
        l.contains("rejected connection: client certificate CN")
            && l.contains("is not the allowed one")
            && l.contains("intruder")
    });
}

#[test]
fn tls_min_and_max_version_bound_the_handshake() {
    let p = pki();
    let ca = ["--cacert", p.ca.pem()];
    let url = https_url();
    let s = start(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--tls-min-version",
        "TLS1.3",
    ]);
    let livez = format!("{}/livez", s.endpoint);
    assert_eq!(curl(&livez, &ca).0, 200);
    assert_eq!(
        curl(&livez, &[ca[0], ca[1], "--tls-max", "1.2"]).0,
        0,
        "TLS 1.2 refused"
    );
    drop(s);
    let url = https_url();
    let s = start(&[
        "--listen-client-urls",
        &url,
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--tls-max-version",
        "TLS1.2",
    ]);
    let livez = format!("{}/livez", s.endpoint);
    assert_eq!(curl(&livez, &[ca[0], ca[1], "--tls-max", "1.2"]).0, 200);
    assert_eq!(
        curl(&livez, &[ca[0], ca[1], "--tlsv1.3"]).0,
        0,
        "TLS 1.3 refused"
    );
    put_get("3.5", &s.endpoint, &ca, "tls12", "ok");
}

#[test]
fn client_cert_allowed_hostname_checks_the_client_certificate_san() {
    let p = pki();
    let alice = [
        "--cacert",
        p.ca.pem(),
        "--cert",
        p.alice.cert(),
        "--key",
        p.alice.key(),
    ];
    let server = |host: &str| {
        let url = https_url();
        start(&[
            "--listen-client-urls",
            &url,
            "--cert-file",
            p.server.cert(),
            "--key-file",
            p.server.key(),
            "--trusted-ca-file",
            p.ca.pem(),
            "--client-cert-auth",
            "--client-cert-allowed-hostname",
            host,
        ])
    };
    // alice's certificate is valid for 127.0.0.1 and localhost.
    let s = server("localhost");
    put_get("3.5", &s.endpoint, &alice, "host", "ok");
    drop(s);
    let s = server("other.example.com");
    let (ok, out, err) = etcdctl("3.5", &s.endpoint, &alice, &["put", "host", "no"]);
    assert!(
        !ok,
        "a certificate not valid for the allowed hostname: {out} {err}"
    );
    assert!(
        s.log_text()
            .contains("client certificate is not valid for the allowed hostname other.example.com"),
        "{}",
        s.log_text()
    );
}

/// Under `--client-cert-auth` with auth enabled, a verified client
/// certificate's CN is the user when no token is sent, as in etcd: alice's
/// certificate gets alice's permissions, root's certificate root's. The
/// same etcdctl steps run against etcd 3.5 with the same flags, and every
/// step's outcome must be the same.
#[test]
fn client_cert_cn_is_the_auth_user_like_etcd() {
    let p = pki();
    let root = p.ca.issue(p.dir.path(), "root-client", "root");
    let tls_flags = [
        "--cert-file",
        p.server.cert(),
        "--key-file",
        p.server.key(),
        "--trusted-ca-file",
        p.ca.pem(),
        "--client-cert-auth",
    ];
    let as_cert = |c: &Pair| -> Vec<String> {
        vec![
            "--cacert".into(),
            p.ca.pem().into(),
            "--cert".into(),
            c.cert().into(),
            "--key".into(),
            c.key().into(),
        ]
    };
    let (root_tls, alice_tls) = (as_cert(&root), as_cert(&p.alice));
    // (who, command, must succeed, expected text in the output).
    let steps: Vec<(&Vec<String>, Vec<&str>, bool, &str)> = vec![
        (
            &root_tls,
            vec!["user", "add", "root:rootpw"],
            true,
            "User root created",
        ),
        (
            &root_tls,
            vec!["user", "grant-role", "root", "root"],
            true,
            "Role root is granted",
        ),
        (
            &root_tls,
            vec!["user", "add", "alice:alicepw"],
            true,
            "User alice created",
        ),
        (
            &root_tls,
            vec!["role", "add", "ra"],
            true,
            "Role ra created",
        ),
        (
            &root_tls,
            vec![
                "role",
                "grant-permission",
                "ra",
                "--prefix=true",
                "readwrite",
                "a",
            ],
            true,
            "updated",
        ),
        (
            &root_tls,
            vec!["user", "grant-role", "alice", "ra"],
            true,
            "granted",
        ),
        (
            &root_tls,
            vec!["auth", "enable"],
            true,
            "Authentication Enabled",
        ),
        // alice, by her certificate only: her prefix, nothing else.
        (&alice_tls, vec!["put", "a1", "v"], true, "OK"),
        (&alice_tls, vec!["get", "a1"], true, "a1"),
        (
            &alice_tls,
            vec!["put", "b1", "v"],
            false,
            "permission denied",
        ),
        (&alice_tls, vec!["get", "b1"], false, "permission denied"),
        (&alice_tls, vec!["user", "list"], false, "permission denied"),
        // root by certificate: everything.
        (&root_tls, vec!["put", "b1", "v"], true, "OK"),
        (&root_tls, vec!["user", "list"], true, "alice"),
        // A token wins over the certificate: alice's password, root's cert.
        (
            &root_tls,
            vec!["--user", "alice:alicepw", "user", "list"],
            false,
            "permission denied",
        ),
        (
            &root_tls,
            vec!["auth", "disable"],
            true,
            "Authentication Disabled",
        ),
        (&alice_tls, vec!["put", "b2", "v"], true, "OK"),
    ];
    let run_steps = |endpoint: &str| -> Vec<(bool, String)> {
        steps
            .iter()
            .map(|(tls, args, _, _)| {
                let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
                let (ok, out, err) = etcdctl("3.5", endpoint, &tls, args);
                (ok, format!("{out}{err}"))
            })
            .collect()
    };

    let url = https_url();
    let mut flags = vec!["--listen-client-urls", &url];
    flags.extend(tls_flags);
    let s = start(&flags);
    let ours = run_steps(&s.endpoint);
    for ((_, args, want_ok, want_text), (ok, out)) in steps.iter().zip(&ours) {
        assert_eq!(ok, want_ok, "strata: etcdctl {args:?}: {out}");
        assert!(out.contains(want_text), "strata: etcdctl {args:?}: {out}");
    }

    let ep = https_url();
    let bin = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata/etcd-3.5/bin/etcd");
    let bin = std::env::var("ETCD35_BIN")
        .map(PathBuf::from)
        .unwrap_or(bin);
    let _e = Etcd::start_bin(
        &bin,
        &[
            &["--listen-client-urls", &ep, "--advertise-client-urls", &ep][..],
            &tls_flags,
        ]
        .concat(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let root_strs: Vec<&str> = root_tls.iter().map(String::as_str).collect();
    while !etcdctl("3.5", &ep, &root_strs, &["endpoint", "health"]).0 {
        assert!(Instant::now() < deadline, "etcd 3.5 did not serve over TLS");
        std::thread::sleep(Duration::from_millis(200));
    }
    let theirs = run_steps(&ep);
    for (((_, args, _, _), (ok, out)), (eok, eout)) in steps.iter().zip(&ours).zip(&theirs) {
        assert_eq!(ok, eok, "etcdctl {args:?}\n strata: {out}\n etcd:   {eout}");
    }
}
