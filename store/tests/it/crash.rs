//! Crash and corruption tests: SIGKILL under concurrent write load (also in
//! the middle of state-machine snapshots), and startup on damaged snapshot
//! and raft-log files. The invariant everywhere: an acknowledged write is
//! never lost or changed by a crash, revisions never go backwards, and a
//! damaged data dir either recovers a state that really existed or is
//! refused with an error that says what is wrong; it never serves data that
//! was never written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{connect, strata_bin, Strata};

/// Prefix of every key these tests write.
const PREFIX: &str = "crash/";
/// Concurrent writer tasks.
const WRITERS: usize = 8;

/// One attempted put. `rev` is set once the server acknowledged it.
#[derive(Debug, Clone)]
struct Attempt {
    value: String,
    rev: Option<i64>,
}

/// Every put ever attempted, by key. Each key has exactly one writer task,
/// so a key's attempts are in issue order.
#[derive(Default)]
struct History {
    by_key: HashMap<String, Vec<Attempt>>,
}

impl History {
    fn acked(&self) -> impl Iterator<Item = (&String, &String, i64)> {
        self.by_key.iter().flat_map(|(k, a)| {
            a.iter()
                .filter_map(move |a| a.rev.map(|r| (k, &a.value, r)))
        })
    }

    fn max_acked_rev(&self) -> i64 {
        self.acked().map(|(_, _, r)| r).max().unwrap_or(0)
    }
}

fn seed() -> u64 {
    let s = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash test seed: {s} (set CRASH_SEED to reproduce)");
    s
}

/// Put as fast as possible until `stop` or the first error. Mostly fresh
/// keys, every fifth put overwrites one of this task's earlier keys.
async fn writer(
    endpoint: String,
    task: usize,
    cycle: usize,
    hist: Arc<Mutex<History>>,
    mut own: Vec<String>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = connect(&endpoint).await;
    let mut last_rev = 0;
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = if n % 5 == 4 && !own.is_empty() {
            own[rng.gen_range(0..own.len())].clone()
        } else {
            let k = format!("{PREFIX}{task}/{cycle}/{n}");
            own.push(k.clone());
            k
        };
        let value = format!("v{task}.{cycle}.{n}.{}", rng.gen::<u32>());
        let idx = {
            let mut h = hist.lock().unwrap();
            let v = h.by_key.entry(key.clone()).or_default();
            v.push(Attempt {
                value: value.clone(),
                rev: None,
            });
            v.len() - 1
        };
        match tokio::time::timeout(Duration::from_secs(10), c.put(key.clone(), value, None)).await {
            Ok(Ok(resp)) => {
                let rev = resp.header().expect("put has a header").revision();
                assert!(
                    rev > last_rev,
                    "task {task}: revision went from {last_rev} to {rev}"
                );
                last_rev = rev;
                hist.lock().unwrap().by_key.get_mut(&key).unwrap()[idx].rev = Some(rev);
            }
            // The server died (or is dying): the write may or may not be committed.
            _ => break,
        }
    }
    own
}

/// Check the server's state against everything attempted so far. Returns
/// the current revision.
async fn verify(c: &mut Client, hist: &History, label: &str) -> i64 {
    let resp = c
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("{label}: range after restart failed: {e}"));
    let cur = resp.header().unwrap().revision();
    let max_acked = hist.max_acked_rev();
    assert!(
        cur >= max_acked,
        "{label}: revision went backwards: serving {cur}, but {max_acked} was acknowledged"
    );
    let mut served: HashMap<String, (String, i64)> = HashMap::new();
    for kv in resp.kvs() {
        let k = kv.key_str().unwrap().to_string();
        let v = kv.value_str().unwrap().to_string();
        let attempts = hist
            .by_key
            .get(&k)
            .unwrap_or_else(|| panic!("{label}: key {k} was never written"));
        let a = attempts
            .iter()
            .find(|a| a.value == v)
            .unwrap_or_else(|| panic!("{label}: key {k} has value {v} that was never written"));
        if let Some(r) = a.rev {
            assert_eq!(
                kv.mod_revision(),
                r,
                "{label}: {k}={v} was acknowledged at revision {r}"
            );
        }
        assert!(kv.mod_revision() <= cur);
        served.insert(k, (v, kv.mod_revision()));
    }
    // Every key's newest acknowledged write is what is served, unless a
    // later put of the same key (whose ack the crash swallowed) committed.
    let mut unique_revs = HashSet::new();
    for (k, attempts) in &hist.by_key {
        for a in attempts {
            if let Some(r) = a.rev {
                assert!(
                    unique_revs.insert(r),
                    "{label}: revision {r} acknowledged twice"
                );
            }
        }
        let last_acked = attempts.iter().rposition(|a| a.rev.is_some());
        match (last_acked, served.get(k)) {
            (None, _) => {}
            (Some(i), None) => panic!(
                "{label}: acknowledged write {k}={} (revision {}) is lost",
                attempts[i].value,
                attempts[i].rev.unwrap()
            ),
            (Some(i), Some((v, mr))) => {
                let want = &attempts[i];
                let r = want.rev.unwrap();
                assert!(
                    *mr >= r,
                    "{label}: {k} is at revision {mr}, older than its acknowledged write at {r}"
                );
                if *mr == r {
                    assert_eq!(v, &want.value, "{label}: {k} at revision {r}");
                } else {
                    assert!(
                        attempts[i + 1..]
                            .iter()
                            .any(|a| a.rev.is_none() && &a.value == v),
                        "{label}: {k}={v}@{mr} is not a later write of the key"
                    );
                }
            }
        }
    }
    // The full history is still readable: every acknowledged write at its revision.
    let acked: Vec<(String, String, i64)> = hist
        .acked()
        .map(|(k, v, r)| (k.clone(), v.clone(), r))
        .collect();
    let checks = futures::stream::iter(acked.into_iter().map(|(k, v, r)| {
        let mut c = c.clone();
        async move {
            let resp = c
                .get(k.as_str(), Some(GetOptions::new().with_revision(r)))
                .await
                .unwrap_or_else(|e| panic!("get {k}@{r}: {e}"));
            let kv = resp
                .kvs()
                .first()
                .unwrap_or_else(|| panic!("acknowledged {k}={v}@{r} missing from history"));
            assert_eq!(kv.value_str().unwrap(), v, "{k} at revision {r}");
            assert_eq!(kv.mod_revision(), r, "{k} at revision {r}");
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<()>>();
    tokio::time::timeout(Duration::from_secs(20), checks)
        .await
        .unwrap_or_else(|_| panic!("{label}: history check timed out"));
    cur
}

/// Run write load, then SIGKILL when `kill_when` returns (it gets the
/// server). Returns the number of acknowledged writes in this cycle.
async fn load_and_kill<F, Fut>(
    s: &mut Strata,
    cycle: usize,
    hist: &Arc<Mutex<History>>,
    own: &mut [Vec<String>],
    rng: &mut StdRng,
    kill_when: F,
) -> usize
where
    F: FnOnce(PathBuf, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = hist.lock().unwrap().acked().count();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            tokio::spawn(writer(
                s.endpoint.clone(),
                t,
                cycle,
                hist.clone(),
                std::mem::take(&mut own[t]),
                stop.clone(),
                rng.gen(),
            ))
        })
        .collect();
    kill_when(s.log.clone(), s.data_dir.clone()).await;
    s.kill();
    stop.store(true, Ordering::Relaxed);
    for (t, h) in tasks.into_iter().enumerate() {
        own[t] = tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .expect("writer did not stop after the kill")
            .expect("writer panicked");
    }
    hist.lock().unwrap().acked().count() - before
}

/// Restart on the same data dir and verify; returns the served revision.
async fn restart_and_verify(s: &mut Strata, hist: &Arc<Mutex<History>>, label: &str) -> i64 {
    s.restart();
    let mut c = s.client().await;
    let h = std::mem::take(&mut *hist.lock().unwrap());
    let cur = verify(&mut c, &h, label).await;
    *hist.lock().unwrap() = h;
    cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_concurrent_writes_loses_no_acknowledged_write() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut s = Strata::start(&[]);
    let hist = Arc::new(Mutex::new(History::default()));
    let mut own: Vec<Vec<String>> = vec![Vec::new(); WRITERS];
    let mut floor = 0;
    for cycle in 0..4 {
        let delay = Duration::from_millis(rng.gen_range(300..1500));
        let acked = load_and_kill(&mut s, cycle, &hist, &mut own, &mut rng, |_, _| {
            tokio::time::sleep(delay)
        })
        .await;
        assert!(acked > 0, "cycle {cycle}: no write was acknowledged");
        // Every write acknowledged in this cycle got a revision above the
        // revision the server reported right after the previous restart.
        let min_new = {
            let h = hist.lock().unwrap();
            h.by_key
                .values()
                .flatten()
                .filter(|a| a.value.split('.').nth(1) == Some(&cycle.to_string()))
                .filter_map(|a| a.rev)
                .min()
                .unwrap()
        };
        assert!(
            min_new > floor,
            "cycle {cycle}: revision {min_new} reused (floor {floor})"
        );
        floor = restart_and_verify(&mut s, &hist, &format!("cycle {cycle}")).await;
        eprintln!("cycle {cycle}: {acked} writes acknowledged, revision {floor} after restart");
    }
    // Revisions continue after the last restart.
    let mut c = s.client().await;
    let r = c.put(format!("{PREFIX}after"), "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), floor + 1);
    eprintln!("sigkill test took {:?}", t0.elapsed());
}

fn count_in_file(p: &Path, needle: &str) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn tmp_files(snap_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(snap_dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
                .collect()
        })
        .unwrap_or_default()
}

const SAVED: &str = "saved state-machine snapshot";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_snapshots_loses_no_acknowledged_write() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut s = Strata::start(&["--snapshot-count", "50", "--snapshot-catchup-entries", "0"]);
    let snap_dir = s.data_dir.join("member/snap");
    let hist = Arc::new(Mutex::new(History::default()));
    let mut own: Vec<Vec<String>> = vec![Vec::new(); WRITERS];
    let mut planted: Option<PathBuf> = None;
    for cycle in 0..5 {
        let mode = cycle % 3;
        let jitter_us = rng.gen_range(0..1500u64);
        let random_ms = rng.gen_range(0..1200u64);
        let acked = load_and_kill(
            &mut s,
            cycle,
            &hist,
            &mut own,
            &mut rng,
            |log, dir| async move {
                let snap_dir = dir.join("member/snap");
                // Let some load build up first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if mode == 2 {
                    // Some random moment.
                    tokio::time::sleep(Duration::from_millis(random_ms)).await;
                    return;
                }
                let base = count_in_file(&log, SAVED);
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    let hit = if mode == 0 {
                        // Right after a snapshot was saved (while the raft log is compacted).
                        count_in_file(&log, SAVED) > base
                    } else {
                        // While a snapshot file is being written.
                        !tmp_files(&snap_dir).is_empty()
                    };
                    if hit {
                        tokio::time::sleep(Duration::from_micros(jitter_us)).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                eprintln!("mode {mode}: trigger not seen within 3 s; killing anyway");
            },
        )
        .await;
        assert!(acked > 0, "cycle {cycle}: no write was acknowledged");
        let leftover = tmp_files(&snap_dir);
        // A stray temp file (a snapshot cut short, or garbage) must not
        // confuse startup; plant one that would sort as the newest.
        let fake = snap_dir.join("7fffffffffffffff.snap.tmp");
        std::fs::write(&fake, b"STRATA\x00\x01 cut short").unwrap();
        planted = Some(fake);
        let rev = restart_and_verify(&mut s, &hist, &format!("snapshot cycle {cycle}")).await;
        eprintln!(
            "snapshot cycle {cycle} (mode {mode}): {acked} acked, leftover tmp files {leftover:?}, revision {rev}"
        );
    }
    // The next snapshot removes stray temp files.
    let planted = planted.unwrap();
    let mut c = s.client().await;
    let base = count_in_file(&s.log, SAVED);
    for i in 0..120 {
        c.put(format!("{PREFIX}tail/{i}"), "t", None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_in_file(&s.log, SAVED) == base || planted.exists() {
        assert!(
            Instant::now() < deadline,
            "stray {planted:?} not cleaned up by the next snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        std::fs::read_dir(&snap_dir).unwrap().count() >= 2,
        "at least two snapshots are kept"
    );
    eprintln!("snapshot kill test took {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Corrupted and truncated data files.

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else if e.file_name() != "LOCK" {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn flip(path: &Path, positions: &[usize]) {
    let mut b = std::fs::read(path).unwrap();
    for &p in positions {
        b[p] ^= 0x5a;
    }
    std::fs::write(path, b).unwrap();
}

fn snap_files(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    v.sort();
    v.reverse();
    v
}

/// The newest append-queue raft-engine file.
fn newest_raftlog(data: &Path) -> PathBuf {
    std::fs::read_dir(data.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .max()
        .expect("a raftlog file")
}

/// Length of the file without its zero-filled (preallocated) tail.
fn data_end(p: &Path) -> usize {
    let b = std::fs::read(p).unwrap();
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)
}

/// A sequential, fully acknowledged history: (key, value, revision) in
/// revision order.
type Seq = Vec<(String, String, i64)>;

/// The key space at revision `rev` according to `seq`.
fn state_at(seq: &Seq, rev: i64) -> BTreeMap<String, (String, i64)> {
    let mut m = BTreeMap::new();
    for (k, v, r) in seq.iter().filter(|(_, _, r)| *r <= rev) {
        m.insert(k.clone(), (v.clone(), *r));
    }
    m
}

/// Build a data dir with several snapshots and a known history, ending in SIGKILL.
async fn build_base(dir: &Path) -> Seq {
    let mut s = Strata::start_in(
        dir,
        &["--snapshot-count", "100", "--snapshot-catchup-entries", "0"],
    );
    let mut c = s.client().await;
    let mut seq = Vec::new();
    for i in 0..430 {
        let k = format!("{PREFIX}k{:03}", (i * 7) % 150);
        let v = format!("val-{i}");
        let r = c.put(k.clone(), v.clone(), None).await.unwrap();
        seq.push((k, v, r.header().unwrap().revision()));
    }
    // Let the last snapshot finish, then crash.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_in_file(&s.log, SAVED) < 4 || !tmp_files(&dir.join("member/snap")).is_empty() {
        assert!(Instant::now() < deadline, "snapshots were not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.kill();
    seq
}

/// What starting on a damaged data dir led to.
enum Outcome {
    Served(Strata),
    Refused { log: String, code: Option<i32> },
}

/// Start on `dir`; on failure, run the binary once more to get its exit code.
fn start_or_refuse(dir: &Path, flags: &[&str]) -> Outcome {
    match Strata::try_start_in(dir, flags) {
        Ok(s) => Outcome::Served(s),
        Err(log) => {
            assert!(!log.starts_with("timed out"), "startup hung:\n{log}");
            let mut child = Command::new(strata_bin())
                .args(["--name", "s1", "--data-dir"])
                .arg(dir)
                .args(["--listen-client-urls", "http://127.0.0.1:0"])
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let code = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st.code();
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "second start on {} neither served nor exited",
                        dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            Outcome::Refused { log, code }
        }
    }
}

/// Whatever the server serves must be exactly the state at its revision.
async fn assert_consistent_prefix(s: &Strata, seq: &Seq, label: &str) -> i64 {
    let mut c = s.client().await;
    let resp = c
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("{label}: range failed: {e}"));
    let cur = resp.header().unwrap().revision();
    let max = seq.last().unwrap().2;
    assert!(
        cur <= max,
        "{label}: revision {cur} beyond anything written ({max})"
    );
    let got: BTreeMap<String, (String, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();
    assert_eq!(got, state_at(seq, cur), "{label}: state at revision {cur}");
    // Older revisions that are served must match too.
    for (k, v, r) in seq.iter().rev().filter(|(_, _, r)| *r <= cur).take(40) {
        match c
            .get(k.as_str(), Some(GetOptions::new().with_revision(*r)))
            .await
        {
            Ok(resp) => {
                let kv = &resp.kvs()[0];
                assert_eq!(
                    (kv.value_str().unwrap(), kv.mod_revision()),
                    (v.as_str(), *r),
                    "{label}: {k}@{r}"
                );
            }
            Err(e) => assert!(e.to_string().contains("compacted"), "{label}: {k}@{r}: {e}"),
        }
    }
    cur
}

fn assert_informative(log: &str, code: Option<i32>, label: &str, words: &[&str]) {
    assert!(
        code.is_some_and(|c| c != 0),
        "{label}: refusal must exit non-zero, got {code:?}"
    );
    // Everything but routine log lines: error records, panics, the final message.
    let err = log
        .lines()
        .filter(|l| {
            !["\"INFO\"", "\"WARN\"", "\"DEBUG\""]
                .iter()
                .any(|x| l.contains(x))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        words.iter().any(|w| err.to_lowercase().contains(w)),
        "{label}: refusal does not say what is wrong (wanted one of {words:?}):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_and_truncated_files_never_serve_wrong_data() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let seq = build_base(&base).await;
    let max_rev = seq.last().unwrap().2;
    assert!(
        snap_files(&base).len() >= 2,
        "need an older snapshot to fall back to: {:?}",
        snap_files(&base)
    );
    let variant = |name: &str| {
        let d = tmp.path().join(name);
        copy_dir(&base, &d);
        d
    };

    // (0) Sanity: the undamaged copy recovers everything.
    let d = variant("clean");
    match start_or_refuse(&d, &[]) {
        Outcome::Served(s) => {
            assert_eq!(assert_consistent_prefix(&s, &seq, "clean").await, max_rev);
        }
        Outcome::Refused { log, .. } => panic!("clean copy refused:\n{log}"),
    }

    // (1) Newest snapshot corrupt (bytes flipped, or cut short): fall back to
    // the older one plus the log, with every acknowledged write intact.
    for (name, cut) in [("snap-flip", false), ("snap-cut", true)] {
        let d = variant(name);
        let newest = snap_files(&d)[0].clone();
        let len = std::fs::metadata(&newest).unwrap().len() as usize;
        if cut {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)
                .unwrap();
            f.set_len((len / 2) as u64).unwrap();
        } else {
            flip(&newest, &[len / 3, len / 2, len - 3]);
        }
        match start_or_refuse(&d, &[]) {
            Outcome::Served(s) => {
                assert_eq!(
                    assert_consistent_prefix(&s, &seq, name).await,
                    max_rev,
                    "{name}: acknowledged writes lost"
                );
                assert!(
                    s.log_text().contains("skipping corrupt snapshot file"),
                    "{name}: the corrupt snapshot was not reported"
                );
            }
            Outcome::Refused { log, code } => assert_informative(&log, code, name, &["snapshot"]),
        }
    }

    // (2) Every snapshot corrupt: a clear refusal.
    let d = variant("snap-all");
    for f in snap_files(&d) {
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        flip(&f, &[len / 2]);
    }
    match start_or_refuse(&d, &[]) {
        Outcome::Served(s) => panic!("served with every snapshot corrupt:\n{}", s.log_text()),
        Outcome::Refused { log, code } => {
            assert_informative(&log, code, "snap-all", &["snapshot"]);
            assert!(
                log.contains("none of the")
                    && log.contains("snapshot files")
                    && log.contains("verifies"),
                "snap-all: unclear refusal:\n{log}"
            );
        }
    }

    // (3) The raft log's tail cut off (a torn write), by a few bytes up to
    // a large part of the file.
    let end = data_end(&newest_raftlog(&base));
    for cut in [1usize, 9, 300, end / 3] {
        let name = format!("wal-cut-{cut}");
        let d = variant(&name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(newest_raftlog(&d))
            .unwrap();
        f.set_len((end - cut) as u64).unwrap();
        drop(f);
        match start_or_refuse(&d, &[]) {
            Outcome::Served(s) => {
                let rev = assert_consistent_prefix(&s, &seq, &name).await;
                eprintln!(
                    "{name}: served a consistent state at revision {rev} (last acked {max_rev})"
                );
            }
            Outcome::Refused { log, code } => {
                assert_informative(&log, code, &name, &["raft log", "snapshot", "corrupt"]);
                eprintln!("{name}: refused");
            }
        }
    }

    // (4) A byte flipped inside the raft log. A refusal must leave the file
    // as it was (raft-engine must not cut off the records after the damage).
    for pct in [30usize, 60, 90, 99] {
        let name = format!("wal-flip-{pct}");
        let d = variant(&name);
        let pos = end * pct / 100;
        let f = newest_raftlog(&d);
        flip(&f, &[pos]);
        let before = std::fs::read(&f).unwrap();
        match start_or_refuse(&d, &[]) {
            Outcome::Served(s) => {
                let rev = assert_consistent_prefix(&s, &seq, &name).await;
                eprintln!(
                    "{name}: served a consistent state at revision {rev} (last acked {max_rev})"
                );
            }
            Outcome::Refused { log, code } => {
                assert_informative(&log, code, &name, &["raft log", "snapshot", "corrupt"]);
                if log.contains("not a write torn by a crash") {
                    assert!(
                        std::fs::read(&f).unwrap() == before,
                        "{name}: refusal modified the raft log"
                    );
                }
                eprintln!("{name}: refused");
            }
        }
    }

    // (4b) Regression: a damaged record in the middle of the newest log
    // file, after the newest snapshot's index, followed by intact records.
    // raft-engine alone would cut the file there and serve a stale prefix,
    // silently dropping acknowledged writes; it must be refused, untouched.
    {
        let name = "wal-mid-record";
        let d = variant(name);
        let f = newest_raftlog(&d);
        let bytes = std::fs::read(&f).unwrap();
        let hits: Vec<usize> = bytes
            .windows(b"hard_state".len())
            .enumerate()
            .filter(|(_, w)| *w == b"hard_state")
            .map(|(i, _)| i)
            .collect();
        assert!(hits.len() > 10, "expected many HardState records");
        flip(&f, &[hits[hits.len() - 8] + 3]);
        let before = std::fs::read(&f).unwrap();
        match start_or_refuse(&d, &[]) {
            Outcome::Served(s) => panic!("{name}: served after mid-log damage:\n{}", s.log_text()),
            Outcome::Refused { log, code } => {
                assert_informative(&log, code, name, &["raft log"]);
                assert!(
                    log.contains("not a write torn by a crash"),
                    "{name}:\n{log}"
                );
            }
        }
        assert!(
            std::fs::read(&f).unwrap() == before,
            "{name}: refusal modified the raft log"
        );
    }
    // (5) A flipped byte inside an entry that must be replayed (after the
    // newest snapshot). raft-engine checks such entries only when reading them.
    for needle in ["val-415", "val-429"] {
        let name = format!("wal-entry-{needle}");
        let d = variant(&name);
        let f = newest_raftlog(&d);
        let bytes = std::fs::read(&f).unwrap();
        let pos = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle} not found in the raft log"));
        flip(&f, &[pos + 2]);
        match start_or_refuse(&d, &[]) {
            Outcome::Served(s) => {
                let rev = assert_consistent_prefix(&s, &seq, &name).await;
                eprintln!(
                    "{name}: served a consistent state at revision {rev} (last acked {max_rev})"
                );
            }
            Outcome::Refused { log, code } => {
                assert_informative(&log, code, &name, &["raft log", "snapshot", "corrupt"]);
                eprintln!("{name}: refused");
            }
        }
    }
    eprintln!("corruption test took {:?}", t0.elapsed());
}

/// Flip a byte inside the one value segment of `dir` that has been
/// written out (the first value in it, when that is large).
fn damage_the_value_segment(dir: &Path) {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(files.len(), 1, "one segment written out: {files:?}");
    flip(&files[0], &[1000]);
}

/// Value bytes live in `member/values/` (a cache of the snapshot and raft
/// log, rebuilt at start). A damaged value file is detected by its CRC and
/// never served: reads, prev_kv and watch replay fail with Internal, the
/// other keys keep serving, and a restart rebuilds the files intact.
#[tokio::test]
async fn a_damaged_value_file_is_never_served_and_a_restart_rebuilds_it() {
    let mut s = Strata::start(&[]);
    let mut c = s.client().await;
    // 300 KiB fill the in-memory tail past its 256 KiB chunk: written out.
    let big = "v".repeat(300 * 1024);
    let rev = c.put("big", big.as_str(), None).await.unwrap();
    let rev = rev.header().unwrap().revision();
    c.put("small", "ok", None).await.unwrap();
    let dir = s.data_dir.join("member/values");
    damage_the_value_segment(&dir);
    let expect_corrupt = |r: Result<String, etcd_client::Error>, what: &str| match r {
        Err(etcd_client::Error::GRpcStatus(st)) => {
            assert_eq!(st.code(), tonic::Code::Internal, "{what}: {st:?}");
            assert!(st.message().contains("checksum mismatch"), "{what}: {st:?}");
        }
        other => panic!("{what}: a damaged value was served: {other:?}"),
    };
    let old = Some(GetOptions::new().with_revision(rev));
    let got = c.get("big", old.clone()).await;
    expect_corrupt(got.map(|r| r.kvs()[0].value().len().to_string()), "get");
    // The put applies (every member applies the same entries); only its
    // prev_kv cannot be answered.
    let got = c
        .put(
            "big",
            "new",
            Some(etcd_client::PutOptions::new().with_prev_key()),
        )
        .await;
    expect_corrupt(got.map(|_| String::new()), "put with prev_kv");
    let r = c.get("big", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "new");
    // The rest of the key space serves.
    let r = c.get("small", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "ok");
    // A watch replaying the damaged revision is cancelled with the reason.
    let mut stream = c
        .watch(
            "big",
            Some(etcd_client::WatchOptions::new().with_start_revision(rev)),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("watch answered")
            .expect("watch stream");
        let Some(r) = r else {
            panic!("watch ended without a cancel")
        };
        assert!(r.events().is_empty(), "a damaged value was sent: {r:?}");
        if r.canceled() {
            assert!(r.cancel_reason().contains("checksum mismatch"), "{r:?}");
            break;
        }
    }
    // Restart: the files are rebuilt from the snapshot and the raft log.
    s.terminate();
    s.restart();
    let mut c = s.client().await;
    let r = c.get("big", old).await.unwrap();
    assert!(
        r.kvs()[0].value() == big.as_bytes(),
        "the value was rebuilt intact"
    );
    assert_eq!(r.kvs()[0].mod_revision(), rev);
    let r = c.get("big", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "new");
}

/// A value an apply must read (a Txn's value compare, a put with
/// ignore_value) that fails its CRC stops the member instead of letting it
/// apply something else than the other members (it used to take the
/// compare's failure branch, or fail the put, on this member only). A
/// read-only Txn comparing it fails with the reason instead of answering
/// from the wrong branch. After a restart, which rebuilds the value files,
/// the entry is applied as it should have been.
#[tokio::test]
async fn a_damaged_value_an_apply_needs_stops_the_member_and_a_restart_applies_it() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let mut s = Strata::start(&[]);
    let mut c = s.client().await;
    let big = "v".repeat(300 * 1024);
    c.put("big", big.as_str(), None).await.unwrap();
    let dir = s.data_dir.join("member/values");
    damage_the_value_segment(&dir);
    let txn = |then: &str| {
        Txn::new()
            .when(vec![Compare::value("big", CompareOp::Equal, big.as_str())])
            .and_then(if then.is_empty() {
                vec![TxnOp::get("big", None)]
            } else {
                vec![TxnOp::put("result", then, None)]
            })
            .or_else(if then.is_empty() {
                vec![TxnOp::get("small", None)]
            } else {
                vec![TxnOp::put("result", "failure", None)]
            })
    };
    // Read-only: an error naming the cause, not the failure branch.
    match c.txn(txn("")).await {
        Err(etcd_client::Error::GRpcStatus(st)) => {
            assert_eq!(st.code(), tonic::Code::Internal, "{st:?}");
            assert!(st.message().contains("checksum mismatch"), "{st:?}");
        }
        other => panic!("a compare on a damaged value answered: {other:?}"),
    }
    // A write: the member stops before applying it.
    let r = tokio::time::timeout(Duration::from_secs(10), c.txn(txn("success"))).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the txn applied on a damaged value: {r:?}"
    );
    let status = s.wait_exit();
    assert!(!status.success(), "{status:?}");
    assert!(
        s.log_text().contains("corrupt on this member"),
        "{}",
        s.log_text()
    );
    // The restart rebuilds the values and applies the txn's success branch.
    s.restart();
    let mut c = s.client().await;
    let r = c.get("result", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "success");
    let r = c.get("big", None).await.unwrap();
    assert!(r.kvs()[0].value() == big.as_bytes(), "rebuilt intact");
    // The same for a put with ignore_value.
    damage_the_value_segment(&dir);
    let opts = etcd_client::PutOptions::new().with_ignore_value();
    let r = tokio::time::timeout(Duration::from_secs(10), c.put("big", "", Some(opts))).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the put applied on a damaged value: {r:?}"
    );
    assert!(!s.wait_exit().success());
    s.restart();
    let mut c = s.client().await;
    let r = c.get("big", None).await.unwrap();
    assert!(r.kvs()[0].value() == big.as_bytes(), "kept by ignore_value");
    assert_eq!(r.kvs()[0].version(), 2, "the put applied once");
}
