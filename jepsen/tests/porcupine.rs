//! The linearizability checker against the Porcupine reference histories in
//! `shared/testdata/porcupine/` (beside the checkout): every file must get
//! its known verdict, and the large kv histories must be checked in seconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jepsen::checker::{linear, porcupine, Validity};

/// The reference data: `<checkout>/../shared/testdata/porcupine`, else
/// `/work/shared/testdata/porcupine`. Missing data fails the test.
fn data_dir() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/porcupine");
    let fallback = PathBuf::from("/work/shared/testdata/porcupine");
    for dir in [beside.clone(), fallback.clone()] {
        if dir.join("jepsen/VERDICTS.txt").is_file() {
            return dir;
        }
    }
    panic!(
        "Porcupine reference histories not found at {} or {}: they ship in shared/testdata/porcupine beside the checkout",
        beside.display(),
        fallback.display()
    );
}

#[test]
fn etcd_logs_get_their_known_verdicts() {
    let dir = data_dir().join("jepsen");
    let verdicts = std::fs::read_to_string(dir.join("VERDICTS.txt")).unwrap();
    let mut checked = 0;
    let mut wrong = Vec::new();
    let start = Instant::now();
    for line in verdicts.lines().filter(|l| !l.trim().is_empty()) {
        let (file, verdict) = line.split_once(' ').expect("`file verdict` lines");
        let want = match verdict.trim() {
            "true" => Validity::Valid,
            "false" => Validity::Invalid,
            v => panic!("{file}: verdict {v:?}"),
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let ops = porcupine::parse_etcd_log(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let t = Instant::now();
        let result = linear::check_etcd_register(&ops, Duration::from_secs(30));
        eprintln!(
            "{file}: {:?} in {:?} ({} lines)",
            result.valid,
            t.elapsed(),
            ops.len()
        );
        if result.valid != want {
            wrong.push(format!(
                "{file}: want {want:?}, got {:?}: {}",
                result.valid, result.summary
            ));
        }
        if result.valid == Validity::Invalid {
            assert!(!result.witness.is_empty(), "{file}: no witness");
        }
        checked += 1;
    }
    eprintln!("{checked} etcd logs in {:?}", start.elapsed());
    assert_eq!(checked, 52, "VERDICTS.txt lists every even-numbered log");
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[test]
fn kv_histories_get_their_known_verdicts_in_seconds() {
    let dir = data_dir().join("kv");
    // The largest files take about 3 s in a debug build and well under 1 s
    // in release on a loaded 2-core machine.
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    };
    for clients in ["01", "10", "50"] {
        for (kind, want) in [("ok", Validity::Valid), ("bad", Validity::Invalid)] {
            let file = format!("c{clients}-{kind}.txt");
            let text = std::fs::read_to_string(dir.join(&file)).unwrap();
            let ops = porcupine::parse_kv(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let t = Instant::now();
            let result = linear::check_kv(&ops, Duration::from_secs(60));
            let took = t.elapsed();
            eprintln!(
                "{file}: {:?} in {took:?} ({} lines): {}",
                result.valid,
                ops.len(),
                result.summary
            );
            assert_eq!(result.valid, want, "{file}: {}", result.summary);
            assert!(took < limit, "{file} took {took:?} (limit {limit:?})");
            if want == Validity::Invalid {
                assert!(!result.witness.is_empty(), "{file}: no witness");
            }
        }
    }
}
