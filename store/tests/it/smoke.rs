use crate::harness::Strata;

#[tokio::test]
async fn put_get_roundtrip() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    let p = c.put("k", "v", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 2);
    let r = c.get("k", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v");
    assert_eq!(r.kvs()[0].create_revision(), 2);
    assert_eq!(r.kvs()[0].version(), 1);
}

/// The server runs jemalloc with a background thread that returns freed
/// pages to the OS (the `malloc_conf` in `main.rs`; a misspelt symbol name
/// would be silently ignored).
#[tokio::test]
async fn jemalloc_background_purging_is_on() {
    let s = Strata::start(&[]);
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", s.child.id()));
    let names: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("jemalloc_bg")),
        "no jemalloc background thread among {names:?}"
    );
}

/// One client port serves gRPC (with and without a client deadline, which
/// arrives as a `grpc-timeout` header) and plain HTTP over HTTP/1 and
/// HTTP/2; a path that is neither is gRPC's "unimplemented", as tonic's
/// router answered.
#[tokio::test]
async fn one_port_serves_grpc_and_http() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
    let opts = etcd_client::ConnectOptions::new().with_timeout(std::time::Duration::from_secs(5));
    let mut timed = etcd_client::Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .unwrap();
    let r = timed.get("k", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v");

    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let livez = format!("{}/livez", s.endpoint);
    let h1 = curl(&[&livez]);
    assert!(h1.starts_with("HTTP/1.1 200") && h1.ends_with("ok"), "{h1}");
    let h2 = curl(&["--http2-prior-knowledge", &livez]);
    assert!(h2.starts_with("HTTP/2 200") && h2.ends_with("ok"), "{h2}");
    let health = curl(&[&format!("{}/health", s.endpoint)]);
    assert!(
        health.contains(r#"{"health":"true","reason":""}"#),
        "{health}"
    );
    let nope = curl(&[&format!("{}/nope", s.endpoint)]);
    assert!(nope.to_lowercase().contains("grpc-status: 12"), "{nope}");
}
