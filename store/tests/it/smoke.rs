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
