//! Snapshots end to end with the real tools: `etcdctl snapshot save` (3.4
//! and 3.5) against a 3-member Strata cluster, `strata snapshot status`
//! (etcdutl's outputs), `strata snapshot restore` into three new data dirs,
//! a new 3-member cluster started from them with the same HashKV at the
//! snapshot revision; and corrupted or truncated files rejected by status
//! and restore with nothing written. Needs etcdctl 3.4 and 3.5
//! (`scripts/install-peers.sh`; `$ETCDCTL34_BIN`, `$ETCDCTL35_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcd_client::{GetOptions, PutOptions};

use crate::harness::{
    initial_cluster, peer_flags, put_rev, start_all, strata_bin, Cluster, Strata,
};

/// etcdctl `3.4` or `3.5`, from the env var `scripts/peers.env` sets or
/// the place `scripts/install-peers.sh` puts it.
fn etcdctl(v: &str) -> PathBuf {
    let p = match v {
        "3.4" => std::env::var("ETCDCTL34_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/usr/bin/etcdctl")),
        _ => std::env::var("ETCDCTL35_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let cache = std::env::var("STRATA_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| {
                        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata")
                    });
                cache.join("etcd-3.5/bin/etcdctl")
            }),
    };
    assert!(
        p.exists(),
        "etcdctl {v} not found at {}: run scripts/install-peers.sh",
        p.display()
    );
    p
}

fn etcdctl_save(v: &str, endpoint: &str, file: &Path) {
    let out = Command::new(etcdctl(v))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "snapshot", "save"])
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "etcdctl {v} snapshot save: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Snapshot saved at"), "{stdout}");
}

fn strata(args: &[&str]) -> Output {
    Command::new(strata_bin())
        .arg("snapshot")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(file: &Path) -> serde_json::Value {
    let out = strata(&["status", file.to_str().unwrap(), "-w", "json"]);
    serde_json::from_str(&ok(&out)).unwrap()
}

/// `strata snapshot restore` of `file` for member `name` of `initial`.
fn restore(
    file: &Path,
    dir: &Path,
    name: &str,
    initial: &str,
    port: u16,
    extra: &[&str],
) -> Output {
    let url = format!("http://127.0.0.1:{port}");
    let mut args = vec![
        "restore",
        file.to_str().unwrap(),
        "--name",
        name,
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        "restored",
        "--initial-advertise-peer-urls",
        &url,
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    strata(&args)
}

#[tokio::test]
async fn etcdctl_save_status_restore_into_a_new_three_member_cluster() {
    let cl = Cluster::start(3);
    let mut c = cl.client(0).await;
    for i in 0..200 {
        c.put(
            format!("key/{i:03}"),
            format!("value-{i}-{}", "x".repeat(100)),
            None,
        )
        .await
        .unwrap();
    }
    for i in 0..20 {
        c.delete(format!("key/{:03}", i * 3), None).await.unwrap();
    }
    for i in 100..130 {
        c.put(format!("key/{i:03}"), "rewritten", None)
            .await
            .unwrap();
    }
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased", "l", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.compact(150, None).await.unwrap();
    let rev = put_rev(&mut c, "last", "z").await;
    let live = 200 - 20 + 2;
    let orig = c.hash_kv(rev).await.unwrap();
    let orig_cluster = c.status().await.unwrap().header().unwrap().cluster_id();

    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for v in ["3.4", "3.5"] {
        let file = tmp.path().join(format!("snap-{v}.db"));
        // Saved from a follower or the leader alike: every member serves it.
        etcdctl_save(v, &cl.endpoint(1), &file);
        let js = status_json(&file);
        assert_eq!(js["revision"], rev, "etcdctl {v}");
        assert_eq!(js["hash"], orig.hash(), "etcdctl {v}");
        assert_eq!(js["totalKey"], live, "etcdctl {v}");
        assert_eq!(js["totalSize"], std::fs::metadata(&file).unwrap().len());
        files.push(file);
    }
    // etcdutl's table and simple outputs.
    let table = ok(&strata(&[
        "status",
        files[1].to_str().unwrap(),
        "-w",
        "table",
    ]));
    assert!(
        table.contains("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"),
        "{table}"
    );
    assert!(
        table.contains(&format!("| {:08x} | {rev:>8} | {live:>10} |", orig.hash())),
        "{table}"
    );
    assert!(table.contains(" kB |"), "{table}");
    let simple = ok(&strata(&["status", files[1].to_str().unwrap()]));
    assert!(
        simple.starts_with(&format!("{:x}, {rev}, {live}, ", orig.hash())),
        "{simple}"
    );
    assert!(simple.trim_end().ends_with(" kB"), "{simple}");
    let fields = ok(&strata(&[
        "status",
        files[1].to_str().unwrap(),
        "-w",
        "fields",
    ]));
    assert_eq!(
        fields,
        format!(
            "\"Hash\" : {}\n\"Revision\" : {rev}\n\"Keys\" : {live}\n\"Size\" : {}\n",
            orig.hash(),
            std::fs::metadata(&files[1]).unwrap().len()
        )
    );
    let bad = strata(&["status", files[1].to_str().unwrap(), "-w", "yaml"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unsupported output format"));

    // Three new members from the 3.5 file.
    let (ports, initial) = initial_cluster(3);
    let dirs = tempfile::tempdir().unwrap();
    for (i, port) in ports.iter().enumerate() {
        let out = restore(
            &files[1],
            &dirs.path().join(format!("n{i}")),
            &format!("n{i}"),
            &initial,
            *port,
            &[],
        );
        ok(&out);
    }
    let specs = (0..3)
        .map(|i| (format!("n{i}"), peer_flags(ports[i], &initial, "restored")))
        .collect();
    let nodes: Vec<Strata> = start_all(dirs.path(), specs)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("restored member did not start: {e}")))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let mut m = n.client().await;
        let h = m.hash_kv(rev).await.unwrap();
        assert_eq!(h.hash(), orig.hash(), "member {i}");
        assert_eq!(h.compact_version(), orig.compact_version(), "member {i}");
        let all = m
            .get(
                "",
                Some(GetOptions::new().with_from_key().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(all.kvs().len(), live as usize, "member {i}");
        assert_eq!(all.header().unwrap().revision(), rev, "member {i}");
        let members = m.member_list().await.unwrap();
        let mut urls: Vec<String> = members
            .members()
            .iter()
            .map(|m| m.peer_urls()[0].clone())
            .collect();
        urls.sort();
        let mut want: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        want.sort();
        assert_eq!(urls, want, "member {i}: the new cluster's members");
        assert_ne!(all.header().unwrap().cluster_id(), orig_cluster);
    }
    let mut m = nodes[2].client().await;
    let v = m.get("key/100", None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"rewritten");
    let l = m.get("leased", None).await.unwrap();
    assert_eq!(l.kvs()[0].lease(), lease);
    // History down to the compact revision survives.
    let old = m
        .get("key/100", Some(GetOptions::new().with_revision(150)))
        .await
        .unwrap();
    assert!(old.kvs()[0].value().starts_with(b"value-100-"));
    // New writes continue the revision sequence and replicate.
    let p = m.put("new", "write", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), rev + 1);
    let mut m0 = nodes[0].client().await;
    assert_eq!(
        m0.get("new", None).await.unwrap().kvs()[0].value(),
        b"write"
    );
    assert_eq!(
        m0.hash_kv(rev).await.unwrap().hash(),
        orig.hash(),
        "the snapshot revision's hash is unchanged by later writes"
    );
}

#[tokio::test]
async fn corrupted_or_truncated_snapshot_files_are_rejected_and_nothing_is_written() {
    let s = Strata::start(&["--snapshot-count", "50"]);
    let mut c = s.client().await;
    for i in 0..100 {
        c.put(format!("k{i:03}"), "v".repeat(200), None)
            .await
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.db");
    etcdctl_save("3.5", &s.endpoint, &good);
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    assert_eq!(n % 512, 32, "a saved file ends with a SHA-256 trailer");
    // The control: the intact file passes both.
    status_json(&good);
    let port = crate::harness::free_port();
    let initial = format!("r=http://127.0.0.1:{port}");
    ok(&restore(
        &good,
        &tmp.path().join("ok"),
        "r",
        &initial,
        port,
        &[],
    ));

    // (what, file bytes, whether `restore --skip-hash-check` accepts it:
    // only when nothing but the SHA-256 trailer was hit).
    // A raw state-machine snapshot copied from a data dir has no trailer:
    // status reads it on its record CRCs, restore wants --skip-hash-check
    // (etcdutl's rule for a db copied from a data directory).
    let raw = std::fs::read_dir(s.data_dir.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a snapshot file after 100 writes with --snapshot-count 50");
    let js = status_json(&raw);
    let raw_rev = js["revision"].as_i64().unwrap();
    assert!(raw_rev > 1, "{js}");
    assert_eq!(js["totalKey"].as_i64().unwrap(), raw_rev - 1, "{js}");
    let target = tmp.path().join("raw");
    let r = restore(&raw, &target, "r", &initial, port, &[]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr)
        .contains("snapshot missing hash but --skip-hash-check=false"));
    assert!(!target.exists());
    ok(&restore(
        &raw,
        &target,
        "r",
        &initial,
        port,
        &["--skip-hash-check"],
    ));

    let mut cases: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for pos in [0, 9, 100, n / 4, n / 2, n - 33, n - 32, n - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 0x01;
        cases.push((format!("byte {pos} flipped"), b, pos >= n - 32));
    }
    // Without its trailer and with no padding before it, a saved file is
    // a valid raw snapshot: that truncation is no corruption.
    let padded = bytes[n - 33] == 0;
    for len in [0, 7, 100, n / 2, n - 512, n - 33, n - 32, n - 1] {
        if len == n - 32 && !padded {
            continue;
        }
        cases.push((format!("truncated to {len}"), bytes[..len].to_vec(), false));
    }
    for (i, (what, b, skip_ok)) in cases.iter().enumerate() {
        let bad = tmp.path().join(format!("bad{i}.db"));
        std::fs::write(&bad, b).unwrap();
        let st = strata(&["status", bad.to_str().unwrap(), "-w", "json"]);
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success(), "status accepted a file with {what}");
        assert!(
            [
                "sha256 mismatch",
                "crc mismatch",
                "truncated",
                "too short",
                "trailing data",
                "bad magic"
            ]
            .iter()
            .any(|m| err.contains(m)),
            "{what}: unclear status error: {err}"
        );
        let target = tmp.path().join(format!("restored{i}"));
        let r = restore(&bad, &target, "r", &initial, port, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "restore accepted a file with {what}");
        assert!(
            ["sha256 mismatch", "missing hash"]
                .iter()
                .any(|m| err.contains(m)),
            "{what}: unclear restore error: {err}"
        );
        assert!(
            !target.exists(),
            "{what}: restore wrote {}",
            target.display()
        );
        // Skipping the hash check still verifies every record.
        let r = restore(&bad, &target, "r", &initial, port, &["--skip-hash-check"]);
        if *skip_ok {
            ok(&r);
            assert!(target.join("member").exists());
        } else {
            assert!(
                !r.status.success(),
                "restore --skip-hash-check accepted a file with {what}"
            );
            assert!(
                !target.exists(),
                "{what}: restore wrote {}",
                target.display()
            );
        }
    }
}

/// `--bump-revision N --mark-compacted` (etcdutl): the restored store
/// starts N revisions later, compacted there, with the same keys.
#[tokio::test]
async fn restore_bumps_the_revision_and_marks_it_compacted() {
    let s = Strata::start(&[]);
    let mut c = s.client().await;
    for i in 0..10 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    let rev = put_rev(&mut c, "k0", "new").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("s.db");
    etcdctl_save("3.5", &s.endpoint, &file);
    let port = crate::harness::free_port();
    let initial = format!("r=http://127.0.0.1:{port}");
    let dir = tmp.path().join("r");
    for (flags, msg) in [
        (
            &["--bump-revision", "1000"][..],
            "--mark-compacted required",
        ),
        (
            &["--mark-compacted"][..],
            "only allowed with --bump-revision",
        ),
    ] {
        let out = restore(&file, &dir, "r", &initial, port, flags);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(msg));
        assert!(!dir.exists());
    }
    ok(&restore(
        &file,
        &dir,
        "r",
        &initial,
        port,
        &["--bump-revision", "1000", "--mark-compacted"],
    ));
    let url = format!("http://127.0.0.1:{port}");
    let r = Strata::try_start_named(
        &dir,
        "r",
        &[
            "--initial-cluster",
            &initial,
            "--initial-advertise-peer-urls",
            &url,
            "--listen-peer-urls",
            &url,
            "--initial-cluster-token",
            "restored",
        ],
    )
    .unwrap_or_else(|e| panic!("restored member did not start: {e}"));
    let mut rc = r.client().await;
    let g = rc.get("k0", None).await.unwrap();
    assert_eq!(g.kvs()[0].value(), b"new");
    assert_eq!(g.header().unwrap().revision(), rev + 1000);
    crate::harness::assert_err(
        rc.get("k0", Some(GetOptions::new().with_revision(rev)))
            .await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let all = rc
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 10);
    let p = rc.put("after", "x", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), rev + 1001);
}
