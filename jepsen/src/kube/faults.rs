//! Kubernetes traffic while the store fails: a kubectl writer creating and
//! updating configmaps, and a resuming watcher that behaves like a client-go
//! reflector (list, watch from the list's resourceVersion, resume from the
//! last event's resourceVersion when the stream ends, relist on 410 Gone),
//! while the store's leader is killed and restarted, a member is cut off
//! from its peers, and a member restarts gracefully (SIGTERM).
//!
//! [`run`] then checks what kube-apiserver promises on top of the store:
//! - no acknowledged write is lost (every object ends at its last
//!   acknowledged value or a later attempted one);
//! - the watcher's events are strictly ordered by resourceVersion across
//!   every resume (no duplicates), and a resumed watch misses no
//!   acknowledged write it should deliver (a write is covered by the watch
//!   segment that spans its resourceVersion, else by a later relist);
//! - kube-apiserver keeps serving: the longest stretch without a successful
//!   write stays under [`MAX_OUTAGE`];
//! - no storage watch of kube-apiserver ends with a clean end of stream
//!   when a member stops gracefully (its etcd client would give the watch
//!   up instead of moving it to another member).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{ApiServer, Kubectl};
use crate::cluster::Cluster;

/// The namespace the traffic runs in.
pub const NS: &str = "e2e-faults";
/// The longest tolerated stretch without a successful write.
pub const MAX_OUTAGE: Duration = Duration::from_secs(30);
/// Objects the writer cycles through.
const OBJECTS: usize = 30;

/// One write attempt by the writer.
#[derive(Clone, Debug)]
pub struct Write {
    pub name: String,
    pub value: u64,
    /// The resourceVersion kube-apiserver answered, if it succeeded.
    pub rv: Option<u64>,
    pub end: Instant,
}

/// Objects by name: (resourceVersion, value).
pub type Objects = BTreeMap<String, (u64, u64)>;

/// What the watcher saw, in order.
#[derive(Clone, Debug)]
pub enum Segment {
    /// A list at resourceVersion `rv`: name -> (resourceVersion, value).
    List { rv: u64, objects: Objects },
    /// A watch from `from`: its events (type, name, resourceVersion, value).
    Watch {
        from: u64,
        events: Vec<(String, String, u64, u64)>,
        gone: bool,
    },
}

/// What a fault run did and saw.
#[derive(Debug, Default)]
pub struct Report {
    pub writes_ok: usize,
    pub writes_failed: usize,
    pub longest_outage: Duration,
    pub watch_segments: usize,
    pub relists: usize,
    pub events: usize,
    pub faults: Vec<String>,
}

fn cm(name: &str, value: u64) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NS}\ndata:\n  value: \"{value}\"\n"
    )
}

fn writer(k: Kubectl, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Write>>>) {
    let mut created = [false; OBJECTS];
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        value += 1;
        let i = (value as usize) % OBJECTS;
        let name = format!("f-{i:02}");
        let verb = if created[i] { "replace" } else { "create" };
        let out = k.output(
            &[
                verb,
                "-f",
                "-",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            Some(&cm(&name, value)),
        );
        let rv = match &out {
            Ok((stdout, _, true)) => stdout.trim().parse::<u64>().ok(),
            Ok((_, stderr, false)) => {
                // A create that failed as AlreadyExists was applied by an
                // earlier, indefinite attempt: switch to updates.
                if stderr.contains("AlreadyExists") {
                    created[i] = true;
                }
                None
            }
            Err(_) => None,
        };
        if rv.is_some() {
            created[i] = true;
        }
        log.lock().unwrap().push(Write {
            name,
            value,
            rv,
            end: Instant::now(),
        });
    }
}

fn parse_object(o: &Value) -> Option<(String, u64, u64)> {
    let name = o["metadata"]["name"].as_str()?.to_string();
    let rv = o["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
    let value = o["data"]["value"].as_str()?.parse().ok()?;
    Some((name, rv, value))
}

/// One quorum list of the namespace: (list resourceVersion, objects).
pub fn list(k: &Kubectl) -> anyhow::Result<(u64, Objects)> {
    // Raw: kubectl's own `get -o json` rewraps items in a List without the
    // list's resourceVersion.
    let out = k.run(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/configmaps"),
    ])?;
    let v: Value = serde_json::from_str(&out)?;
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("list without a resourceVersion")?;
    let objects = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(parse_object)
                .map(|(n, rv, val)| (n, (rv, val)))
                .collect()
        })
        .unwrap_or_default();
    Ok((rv, objects))
}

fn watcher(
    k: Kubectl,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Segment>>>,
    last_rv: Arc<Mutex<u64>>,
) {
    let mut from: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let rv = match from {
            Some(rv) => rv,
            None => match list(&k) {
                Ok((rv, objects)) => {
                    seen.lock().unwrap().push(Segment::List { rv, objects });
                    *last_rv.lock().unwrap() = rv;
                    rv
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        from = Some(rv);
        let path = format!(
            "/api/v1/namespaces/{NS}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=15"
        );
        let child = k
            .cmd()
            .args(["get", "--raw", &path])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let stdout = child.stdout.take().expect("piped");
        let mut events = Vec::new();
        let mut gone = false;
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
        for ev in de.by_ref() {
            let Ok(ev) = ev else { break };
            let ty = ev["type"].as_str().unwrap_or_default().to_string();
            if ty == "ERROR" {
                if ev["object"]["code"].as_i64() == Some(410) {
                    gone = true;
                }
                break;
            }
            if let Some((name, rv, value)) = parse_object(&ev["object"]) {
                from = Some(rv);
                *last_rv.lock().unwrap() = rv;
                events.push((ty, name, rv, value));
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if gone {
            from = None;
        }
        seen.lock().unwrap().push(Segment::Watch {
            from: rv,
            events,
            gone,
        });
        if !gone {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs traffic for the whole fault sequence on `cluster` (3 members),
/// then checks it; see the module docs.
pub async fn run(api: &ApiServer, cluster: &mut Cluster) -> anyhow::Result<Report> {
    let k = api.kubectl.clone();
    k.run(&["create", "namespace", NS])?;
    let stop_w = Arc::new(AtomicBool::new(false));
    let stop_r = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let segments = Arc::new(Mutex::new(Vec::new()));
    let last_rv = Arc::new(Mutex::new(0u64));
    let w = {
        let (k, s, l) = (k.clone(), stop_w.clone(), writes.clone());
        std::thread::spawn(move || writer(k, s, l))
    };
    let r = {
        let (k, s, seg, l) = (k.clone(), stop_r.clone(), segments.clone(), last_rv.clone());
        std::thread::spawn(move || watcher(k, s, seg, l))
    };
    let mut report = Report::default();
    let result = faults(cluster, &mut report).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_w.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || w.join()).await;
    // Let the watcher catch up with the final state, then stop it.
    let (final_rv, final_objects) = list(&k)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while *last_rv.lock().unwrap() < final_rv && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_r.store(true, Ordering::Relaxed);
    // The watch stream ends at its timeout at the latest.
    let _ = tokio::task::spawn_blocking(move || r.join()).await;
    result?;

    let writes = writes.lock().unwrap().clone();
    let segments = segments.lock().unwrap().clone();
    check(&writes, &segments, final_rv, &final_objects, &mut report)?;
    // A store member that stops must end its streams so that the etcd
    // client moves them to another member (as with etcd), not close them
    // cleanly: kube-apiserver logs each watch the client gave up on.
    let eof = api
        .log_text()
        .lines()
        .filter(|l| l.contains("watch chan error: EOF"))
        .count();
    ensure!(
        eof == 0,
        "kube-apiserver lost {eof} storage watches with a clean end of stream (\"watch chan error: EOF\")"
    );
    Ok(report)
}

async fn faults(cluster: &mut Cluster, report: &mut Report) -> anyhow::Result<()> {
    let pause = |s| tokio::time::sleep(Duration::from_secs(s));
    pause(8).await;
    let leader = cluster
        .leader()
        .await
        .context("no leader before the faults")?;
    report.faults.push(format!("kill leader n{}", leader + 1));
    cluster.kill_node(leader)?;
    pause(10).await;
    cluster.start_node(leader)?;
    report.faults.push(format!("restart n{}", leader + 1));
    pause(10).await;
    let victim = (cluster.leader().await.unwrap_or(0) + 1) % cluster.len();
    report
        .faults
        .push(format!("partition n{} from its peers", victim + 1));
    for j in 0..cluster.len() {
        if j != victim {
            cluster.net.drop_link(victim, j)?;
            cluster.net.drop_link(j, victim)?;
        }
    }
    pause(12).await;
    cluster.net.heal()?;
    report.faults.push("heal".into());
    pause(10).await;
    let other = (victim + 1) % cluster.len();
    report
        .faults
        .push(format!("graceful restart (SIGTERM) of n{}", other + 1));
    cluster
        .terminate_node(other, Duration::from_secs(10))
        .await?;
    pause(2).await;
    cluster.start_node(other)?;
    pause(10).await;
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .context("cluster unhealthy after the faults")?;
    Ok(())
}

/// The checks of the module docs, on a finished run.
pub fn check(
    writes: &[Write],
    segments: &[Segment],
    final_rv: u64,
    final_objects: &Objects,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.writes_ok = writes.iter().filter(|w| w.rv.is_some()).count();
    report.writes_failed = writes.len() - report.writes_ok;
    ensure!(report.writes_ok > 0, "no write succeeded");

    // Availability: the longest gap between successful writes.
    let mut prev: Option<Instant> = None;
    for w in writes.iter().filter(|w| w.rv.is_some()) {
        if let Some(p) = prev {
            report.longest_outage = report.longest_outage.max(w.end - p);
        }
        prev = Some(w.end);
    }
    ensure!(
        report.longest_outage <= MAX_OUTAGE,
        "kube-apiserver accepted no write for {:?}",
        report.longest_outage
    );

    // No lost write: each object ends at its last acknowledged value or at
    // a later attempted one.
    let mut last_acked: BTreeMap<&str, u64> = BTreeMap::new();
    let mut attempted: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for w in writes {
        attempted.entry(&w.name).or_default().push(w.value);
        if w.rv.is_some() {
            last_acked.insert(&w.name, w.value);
        }
    }
    for (name, acked) in &last_acked {
        let Some(&(_, value)) = final_objects.get(*name) else {
            anyhow::bail!("object {name} is gone (last acknowledged value {acked})");
        };
        ensure!(
            value >= *acked && attempted[name].contains(&value),
            "object {name} ends at value {value}, but {acked} was acknowledged later"
        );
    }

    // Watch: strictly increasing resourceVersions across every segment.
    let mut last = 0u64;
    for s in segments {
        match s {
            Segment::List { rv, .. } => {
                report.relists += 1;
                ensure!(
                    *rv >= last,
                    "a relist at {rv} went back before event {last}"
                );
                last = *rv;
            }
            Segment::Watch { events, .. } => {
                report.watch_segments += 1;
                for (ty, name, rv, _) in events {
                    report.events += 1;
                    ensure!(
                        *rv > last,
                        "watch event {ty} {name} at resourceVersion {rv} after {last}: duplicated or out of order"
                    );
                    last = *rv;
                }
            }
        }
    }
    ensure!(
        last >= final_rv,
        "the watcher stopped at {last}, before the final list at {final_rv}"
    );

    // Watch: no gap. An acknowledged write at v inside a watch segment's
    // span (from, last event] must be one of its events; otherwise a later
    // relist must cover it.
    for w in writes {
        let Some(v) = w.rv else { continue };
        let mut covered = false;
        for s in segments {
            match s {
                Segment::Watch { from, events, .. } => {
                    let end = events.last().map_or(*from, |e| e.2);
                    if *from < v && v <= end {
                        ensure!(
                            events.iter().any(|e| e.2 == v && e.1 == w.name),
                            "the watch from {from} delivered events up to {end} but not {} = {} at {v}",
                            w.name,
                            w.value
                        );
                        covered = true;
                    }
                }
                Segment::List { rv, objects } => {
                    if v <= *rv && objects.get(&w.name).is_some_and(|(orv, _)| *orv >= v) {
                        covered = true;
                    }
                }
            }
        }
        ensure!(
            covered,
            "write {} = {} at {v} was never observed",
            w.name,
            w.value
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, value: u64, rv: Option<u64>) -> Write {
        Write {
            name: name.into(),
            value,
            rv,
            end: Instant::now(),
        }
    }

    fn ev(name: &str, rv: u64, value: u64) -> (String, String, u64, u64) {
        ("MODIFIED".into(), name.into(), rv, value)
    }

    fn fin(entries: &[(&str, u64, u64)]) -> Objects {
        entries
            .iter()
            .map(|(n, rv, v)| (n.to_string(), (*rv, *v)))
            .collect()
    }

    #[test]
    fn a_clean_run_passes_and_each_anomaly_is_caught() {
        let writes = vec![
            write("a", 1, Some(10)),
            write("b", 2, Some(11)),
            write("a", 3, None),
            write("a", 4, Some(13)),
        ];
        let good = vec![
            Segment::List {
                rv: 9,
                objects: BTreeMap::new(),
            },
            Segment::Watch {
                from: 9,
                events: vec![ev("a", 10, 1), ev("b", 11, 2)],
                gone: false,
            },
            Segment::Watch {
                from: 11,
                events: vec![ev("a", 12, 3), ev("a", 13, 4)],
                gone: false,
            },
        ];
        let finals = fin(&[("a", 13, 4), ("b", 11, 2)]);
        check(&writes, &good, 13, &finals, &mut Report::default()).unwrap();

        // A resumed watch that skips an acknowledged write.
        let gap = vec![
            Segment::Watch {
                from: 9,
                events: vec![ev("a", 10, 1)],
                gone: false,
            },
            Segment::Watch {
                from: 10,
                events: vec![ev("a", 12, 3), ev("a", 13, 4)],
                gone: false,
            },
        ];
        let e = check(&writes, &gap, 13, &finals, &mut Report::default()).unwrap_err();
        assert!(e.to_string().contains("but not b = 2 at 11"), "{e}");

        // A resume that replays an event.
        let dup = vec![
            Segment::Watch {
                from: 9,
                events: vec![ev("a", 10, 1), ev("b", 11, 2)],
                gone: false,
            },
            Segment::Watch {
                from: 10,
                events: vec![ev("b", 11, 2), ev("a", 13, 4)],
                gone: false,
            },
        ];
        let e = check(&writes, &dup, 13, &finals, &mut Report::default()).unwrap_err();
        assert!(e.to_string().contains("duplicated or out of order"), "{e}");

        // A relist covers what the expired watch could not deliver.
        let relist = vec![
            Segment::Watch {
                from: 9,
                events: vec![ev("a", 10, 1)],
                gone: true,
            },
            Segment::List {
                rv: 12,
                objects: fin(&[("a", 12, 3), ("b", 11, 2)]),
            },
            Segment::Watch {
                from: 12,
                events: vec![ev("a", 13, 4)],
                gone: false,
            },
        ];
        check(&writes, &relist, 13, &finals, &mut Report::default()).unwrap();

        // A lost acknowledged write.
        let lost = fin(&[("a", 12, 3), ("b", 11, 2)]);
        let e = check(&writes, &good, 13, &lost, &mut Report::default()).unwrap_err();
        assert!(e.to_string().contains("object a ends at value 3"), "{e}");
        let e = check(
            &writes,
            &good,
            13,
            &fin(&[("a", 13, 4)]),
            &mut Report::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("object b is gone"), "{e}");
    }
}
