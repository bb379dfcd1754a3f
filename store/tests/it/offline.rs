//! `strata snapshot status|restore` against a snapshot streamed by a live
//! server (the same path `etcdctl snapshot save` uses).

use std::process::Command;

use proto::etcdserverpb::{maintenance_client::MaintenanceClient, SnapshotRequest};

use crate::harness::{current_rev, strata_bin, Strata};

async fn save_snapshot(s: &Strata, path: &std::path::Path) {
    let mut m = MaintenanceClient::connect(s.endpoint.clone())
        .await
        .unwrap();
    let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&msg.blob);
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn snapshot_restore_roundtrip_and_corruption_rejected() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k07", None).await.unwrap();
    c.compact(10, None).await.unwrap();
    let rev = current_rev(&mut c).await;
    let hash = c.hash_kv(0).await.unwrap().hash();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("snap.db");
    save_snapshot(&s, &file).await;

    let out = Command::new(strata_bin())
        .args(["snapshot", "status", file.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(js["revision"], rev);
    assert_eq!(js["totalKey"], 49);
    assert_eq!(js["hash"], hash);

    let data = tmp.path().join("restored");
    let out = Command::new(strata_bin())
        .args([
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "s1",
            "--initial-cluster",
            "s1=http://127.0.0.1:2390",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2390",
            "--initial-cluster-token",
            "restored",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restoring over an existing dir is refused.
    let again = Command::new(strata_bin())
        .args([
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let r = Strata::start_in(
        &data,
        &[
            "--initial-cluster",
            "s1=http://127.0.0.1:2390",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2390",
            "--initial-cluster-token",
            "restored",
        ],
    );
    let mut rc = r.client().await;
    let all = rc
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 49);
    assert_eq!(all.header().unwrap().revision(), rev);
    assert_eq!(rc.hash_kv(0).await.unwrap().hash(), hash);
    // History is kept down to the compact revision.
    let old = rc
        .get(
            "k07",
            Some(etcd_client::GetOptions::new().with_revision(20)),
        )
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v7");
    // New writes continue the revision sequence.
    let p = rc.put("new", "x", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), rev + 1);

    // A flipped byte is caught by the checksum.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 0x40;
    let bad = tmp.path().join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    let out = Command::new(strata_bin())
        .args(["snapshot", "status", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));
}
