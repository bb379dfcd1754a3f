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
