//! The Kubernetes end-to-end scenario: what a user does with kubectl
//! against a kube-apiserver whose storage is the cluster under test, and the
//! storage-side effects kube-apiserver must have on it.
//!
//! [`run`] performs, in order (each step fails the run with what it saw):
//! 1. `objects`: namespaces, configmaps, secrets, services and deployments
//!    created with kubectl and read back;
//! 2. `pagination`: thousands of configmaps listed with `--chunk-size`
//!    (checking that kubectl really paged, with `continue` tokens) and
//!    compared with one unpaged list;
//! 3. `watch`: `kubectl get -w` sees every create, update and delete made
//!    after it started, in order;
//! 4. `conflicts`: an update with a stale resourceVersion is refused with
//!    409 Conflict and changes nothing; deletes remove objects;
//! 5. `events`: Events written with `--event-ttl` get etcd leases and are
//!    gone after the TTL;
//! 6. `compaction`: kube-apiserver's compactor (`compact_rev_key` CAS, then
//!    Compact) has run: old revisions are compacted in the store;
//! 7. `health`: `/readyz` and `/livez` report their etcd checks healthy, and
//!    `/metrics` has the storage metrics.
//!
//! kube-apiserver must be started with [`apiserver_flags`] (short event TTL
//! and compaction interval) for steps 5 and 6 to finish quickly.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseLeasesRequest, RangeRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::ApiServer;

/// Event TTL the scenario starts kube-apiserver with.
pub const EVENT_TTL: Duration = Duration::from_secs(10);
/// Compaction interval the scenario starts kube-apiserver with.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(10);
/// Configmaps created for the pagination step.
pub const PAGED_OBJECTS: usize = 2000;

/// The kube-apiserver flags the scenario needs besides the defaults.
pub fn apiserver_flags() -> Vec<String> {
    vec![
        format!("--event-ttl={}s", EVENT_TTL.as_secs()),
        format!(
            "--etcd-compaction-interval={}s",
            COMPACTION_INTERVAL.as_secs()
        ),
    ]
}

/// How long each step took.
#[derive(Debug, Default)]
pub struct Report {
    pub steps: Vec<(&'static str, Duration)>,
}

/// Runs the scenario against `api`, whose store answers on `endpoints`
/// (client URLs, used for the storage-side checks).
pub async fn run(api: &ApiServer, endpoints: &[String]) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut step = |name: &'static str, t: Instant| {
        let took = t.elapsed();
        tracing::info!(step = name, ?took, "kubernetes e2e step passed");
        report.steps.push((name, took));
    };
    let kv = connect(endpoints).await?;

    let t = Instant::now();
    objects(api).context("step objects")?;
    step("objects", t);
    let t = Instant::now();
    pagination(api).context("step pagination")?;
    step("pagination", t);
    let t = Instant::now();
    watch(api).context("step watch")?;
    step("watch", t);
    let t = Instant::now();
    conflicts(api).context("step conflicts")?;
    step("conflicts", t);
    let t = Instant::now();
    events(api, &kv).await.context("step events")?;
    step("events", t);
    let t = Instant::now();
    compaction(&kv).await.context("step compaction")?;
    step("compaction", t);
    let t = Instant::now();
    health(api).context("step health")?;
    step("health", t);
    Ok(report)
}

/// A channel to the first endpoint that answers.
pub async fn connect(endpoints: &[String]) -> anyhow::Result<Channel> {
    let mut last = None;
    for e in endpoints {
        match Endpoint::from_shared(e.clone())?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(c) => return Ok(c),
            Err(err) => last = Some(err),
        }
    }
    bail!("no store endpoint answers: {last:?}")
}

fn configmap(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n---\n"
    )
}

fn objects(api: &ApiServer) -> anyhow::Result<()> {
    let k = &api.kubectl;
    for ns in ["e2e-objects", "e2e-page", "e2e-watch", "e2e-events"] {
        k.run(&["create", "namespace", ns])?;
    }
    let mut docs = String::new();
    for i in 0..5 {
        docs += &configmap("e2e-objects", &format!("cm-{i}"), &format!("v{i}"));
        docs += &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: secret-{i}\n  namespace: e2e-objects\ntype: Opaque\nstringData:\n  password: \"p{i}\"\n---\n"
        );
        docs += &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: e2e-objects\nspec:\n  selector:\n    app: app-{i}\n  ports:\n  - port: {}\n    targetPort: 8080\n---\n",
            8000 + i
        );
        docs += &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: deploy-{i}\n  namespace: e2e-objects\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: app-{i}\n  template:\n    metadata:\n      labels:\n        app: app-{i}\n    spec:\n      containers:\n      - name: c\n        image: busybox:1.36\n        command: [\"sleep\", \"3600\"]\n---\n"
        );
    }
    k.run_stdin(&["create", "-f", "-"], Some(&docs))?;
    let ns = k.run(&["get", "namespaces", "-o", "name"])?;
    for n in [
        "e2e-objects",
        "e2e-page",
        "e2e-watch",
        "e2e-events",
        "default",
        "kube-system",
    ] {
        ensure!(
            ns.contains(&format!("namespace/{n}")),
            "namespace {n} missing from {ns}"
        );
    }
    for (kind, n) in [
        ("configmaps", 5),
        ("secrets", 5),
        ("services", 5),
        ("deployments", 5),
    ] {
        let out = k.run(&["get", kind, "-n", "e2e-objects", "-o", "name"])?;
        // Secrets may include a service-account token (none without the
        // controller manager); count ours only.
        let ours = out.lines().filter(|l| l.contains('-')).count();
        ensure!(ours >= n, "{kind}: {ours} of {n} objects listed: {out}");
    }
    let v = k.run(&[
        "get",
        "configmap",
        "cm-3",
        "-n",
        "e2e-objects",
        "-o",
        "jsonpath={.data.value}",
    ])?;
    ensure!(v == "v3", "configmap cm-3 reads {v:?}, wrote \"v3\"");
    let pw = k.run(&[
        "get",
        "secret",
        "secret-2",
        "-n",
        "e2e-objects",
        "-o",
        "jsonpath={.data.password}",
    ])?;
    ensure!(
        pw == "cDI=",
        "secret-2 password (base64) reads {pw:?}, wrote \"p2\" (cDI=)"
    );
    let ip = k.run(&[
        "get",
        "service",
        "svc-1",
        "-n",
        "e2e-objects",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(
        ip.starts_with("10.0.0."),
        "svc-1 got cluster IP {ip:?}, not from 10.0.0.0/24"
    );
    let r = k.run(&[
        "get",
        "deployment",
        "deploy-4",
        "-n",
        "e2e-objects",
        "-o",
        "jsonpath={.spec.replicas}",
    ])?;
    ensure!(r == "2", "deploy-4 replicas {r:?}");
    Ok(())
}

fn pagination(api: &ApiServer) -> anyhow::Result<()> {
    let k = &api.kubectl;
    // One kubectl process creates them all (one POST each).
    let mut docs = String::new();
    for i in 0..PAGED_OBJECTS {
        docs += &configmap("e2e-page", &format!("page-{i:05}"), &i.to_string());
    }
    k.run_stdin(&["create", "-f", "-"], Some(&docs))?;
    let (paged, log, ok) = k.output(
        &[
            "get",
            "configmaps",
            "-n",
            "e2e-page",
            "--chunk-size=100",
            "-o",
            "name",
            "-v=6",
        ],
        None,
    )?;
    ensure!(ok, "paged list failed: {log}");
    let pages = log.lines().filter(|l| l.contains("limit=100")).count();
    let continued = log.lines().filter(|l| l.contains("continue=")).count();
    ensure!(
        pages >= PAGED_OBJECTS / 100 && continued >= PAGED_OBJECTS / 100 - 1,
        "kubectl made {pages} limited requests, {continued} with a continue token, for {PAGED_OBJECTS} objects at 100 a page"
    );
    let whole = k.run(&[
        "get",
        "configmaps",
        "-n",
        "e2e-page",
        "--chunk-size=0",
        "-o",
        "name",
    ])?;
    let ours = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("configmap/page-"))
            .map(str::to_string)
            .collect()
    };
    let (p, w) = (ours(&paged), ours(&whole));
    ensure!(
        p.len() == PAGED_OBJECTS,
        "paged list has {} of {PAGED_OBJECTS} configmaps",
        p.len()
    );
    ensure!(p == w, "paged and unpaged lists differ");
    let distinct: BTreeSet<&String> = p.iter().collect();
    ensure!(distinct.len() == p.len(), "paged list repeats objects");
    Ok(())
}

fn watch(api: &ApiServer) -> anyhow::Result<()> {
    let k = &api.kubectl;
    k.run_stdin(
        &["create", "-f", "-"],
        Some(&configmap("e2e-watch", "w-0", "0")),
    )?;
    let mut child = k
        .cmd()
        .args([
            "get",
            "configmaps",
            "-n",
            "e2e-watch",
            "--watch-only",
            "--output-watch-events",
            "-o",
            "custom-columns=EVENT:.type,NAME:.object.metadata.name,VALUE:.object.data.value",
            "--no-headers",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is established once a probe object's event arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        k.run(&[
            "annotate",
            "configmap",
            "w-0",
            "-n",
            "e2e-watch",
            "--overwrite",
            &format!("probe={n}"),
        ])?;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => bail!("kubectl get -w printed nothing: {e}"),
        }
    }
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let mut expected = Vec::new();
    for (verb, event, value) in [("create", "ADDED", "a"), ("replace", "MODIFIED", "b")] {
        for i in 1..=5 {
            let doc = configmap("e2e-watch", &format!("w-{i}"), value);
            k.run_stdin(&[verb, "-f", "-"], Some(&doc))?;
            expected.push(format!("{event} w-{i} {value}"));
        }
    }
    for i in 1..=5 {
        k.run(&["delete", "configmap", &format!("w-{i}"), "-n", "e2e-watch"])?;
        expected.push(format!("DELETED w-{i} b"));
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    // Anything extra (a duplicate) shows up shortly after.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    ensure!(
        seen == expected,
        "kubectl get -w printed\n{seen:#?}\nexpected\n{expected:#?}"
    );
    Ok(())
}

fn conflicts(api: &ApiServer) -> anyhow::Result<()> {
    let k = &api.kubectl;
    let get_rv = |name: &str| -> anyhow::Result<String> {
        k.run(&[
            "get",
            "configmap",
            name,
            "-n",
            "e2e-objects",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let rv0 = get_rv("cm-0")?;
    let with_rv = |value: &str, rv: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-0\n  namespace: e2e-objects\n  resourceVersion: \"{rv}\"\ndata:\n  value: \"{value}\"\n"
        )
    };
    k.run_stdin(&["replace", "-f", "-"], Some(&with_rv("first", &rv0)))?;
    let rv1 = get_rv("cm-0")?;
    ensure!(rv1 != rv0, "resourceVersion unchanged by an update");
    let (_, err, ok) = k.output(&["replace", "-f", "-"], Some(&with_rv("stale", &rv0)))?;
    ensure!(
        !ok,
        "an update with the stale resourceVersion {rv0} succeeded"
    );
    ensure!(
        err.contains("the object has been modified") && err.contains("Conflict"),
        "stale update refused with an unexpected error: {err}"
    );
    let v = k.run(&[
        "get",
        "configmap",
        "cm-0",
        "-n",
        "e2e-objects",
        "-o",
        "jsonpath={.data.value}",
    ])?;
    ensure!(v == "first", "after the refused update cm-0 reads {v:?}");
    ensure!(
        get_rv("cm-0")? == rv1,
        "a refused update changed the resourceVersion"
    );
    k.run(&["delete", "configmap", "cm-0", "-n", "e2e-objects"])?;
    let (_, err, ok) = k.output(&["get", "configmap", "cm-0", "-n", "e2e-objects"], None)?;
    ensure!(
        !ok && err.contains("NotFound"),
        "deleted cm-0 still readable: {err}"
    );
    k.run(&["delete", "deployment", "deploy-0", "-n", "e2e-objects"])?;
    k.run(&["delete", "service", "svc-0", "-n", "e2e-objects"])?;
    Ok(())
}

async fn events(api: &ApiServer, ch: &Channel) -> anyhow::Result<()> {
    let k = &api.kubectl;
    let mut docs = String::new();
    for i in 0..20 {
        docs += &format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: ev-{i}\n  namespace: e2e-events\ninvolvedObject:\n  kind: ConfigMap\n  name: cm-{i}\n  namespace: e2e-events\nreason: E2E\nmessage: event {i}\ntype: Normal\n---\n"
        );
    }
    let created = Instant::now();
    k.run_stdin(&["create", "-f", "-"], Some(&docs))?;
    let n = k
        .run(&["get", "events", "-n", "e2e-events", "-o", "name"])?
        .lines()
        .count();
    ensure!(n == 20, "{n} of 20 events listed right after creating them");
    // The events are stored with a lease (kube-apiserver's lease manager
    // shares one lease among them).
    let mut kv = KvClient::new(ch.clone());
    let got = kv
        .range(RangeRequest {
            key: b"/registry/events/e2e-events/".to_vec(),
            range_end: b"/registry/events/e2e-events0".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        got.kvs.len() == 20,
        "{} event keys in the store",
        got.kvs.len()
    );
    let leases: BTreeSet<i64> = got.kvs.iter().map(|kv| kv.lease).collect();
    ensure!(
        !leases.contains(&0),
        "an event key has no lease: {leases:?}"
    );
    let mut lc = LeaseClient::new(ch.clone());
    let live = lc.lease_leases(LeaseLeasesRequest {}).await?.into_inner();
    let live: BTreeSet<i64> = live.leases.iter().map(|l| l.id).collect();
    ensure!(
        leases.is_subset(&live),
        "event leases {leases:?} not among live leases {live:?}"
    );
    // Expiry: gone from the store and from kubectl within TTL + slack.
    let deadline = created + EVENT_TTL + Duration::from_secs(20);
    loop {
        let left = kv
            .range(RangeRequest {
                key: b"/registry/events/e2e-events/".to_vec(),
                range_end: b"/registry/events/e2e-events0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .count;
        let listed = k
            .run(&["get", "events", "-n", "e2e-events", "-o", "name"])?
            .lines()
            .count();
        if left == 0 && listed == 0 {
            ensure!(
                created.elapsed() + Duration::from_secs(1) >= EVENT_TTL,
                "events vanished after {:?}, before their TTL {EVENT_TTL:?}",
                created.elapsed()
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{left} event keys / {listed} listed events still there {:?} after creation (TTL {EVENT_TTL:?})",
            created.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn compaction(ch: &Channel) -> anyhow::Result<()> {
    let mut kv = KvClient::new(ch.clone());
    // The compactor runs every COMPACTION_INTERVAL: its first round only
    // records the revision (CAS on compact_rev_key), the next compacts to
    // the revision the previous round recorded.
    let deadline = Instant::now() + COMPACTION_INTERVAL * 4;
    loop {
        let key = kv
            .range(RangeRequest {
                key: b"compact_rev_key".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let version = key.kvs.first().map_or(0, |kv| kv.version);
        let old = kv
            .range(RangeRequest {
                key: b"/registry/namespaces/e2e-objects".to_vec(),
                revision: 2,
                ..Default::default()
            })
            .await;
        match old {
            Err(st)
                if st
                    .message()
                    .contains("required revision has been compacted") =>
            {
                ensure!(
                    version >= 2,
                    "compacted, but compact_rev_key has version {version}"
                );
                return Ok(());
            }
            Err(st) => bail!("reading revision 2: {st}"),
            Ok(_) => {}
        }
        ensure!(
            Instant::now() < deadline,
            "no compaction within {:?} (compact_rev_key version {version})",
            COMPACTION_INTERVAL * 4
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn health(api: &ApiServer) -> anyhow::Result<()> {
    let k = &api.kubectl;
    for path in ["/readyz?verbose", "/livez?verbose"] {
        let out = k.run(&["get", "--raw", path])?;
        ensure!(
            out.contains("[+]etcd ok"),
            "{path} has no healthy etcd check:\n{out}"
        );
        ensure!(out.contains("check passed"), "{path} did not pass:\n{out}");
    }
    let metrics = k.run(&["get", "--raw", "/metrics"])?;
    for name in [
        "etcd_request_duration_seconds_bucket",
        "apiserver_request_duration_seconds_bucket",
    ] {
        ensure!(metrics.contains(name), "/metrics lacks {name}");
    }
    ensure!(
        metrics.contains("etcd_object_counts") || metrics.contains("apiserver_storage_objects"),
        "/metrics has no storage object counts"
    );
    ensure!(
        metrics.contains("etcd_request_duration_seconds_count{operation=\"listWithCount\"")
            || metrics.contains("operation=\"list\""),
        "/metrics shows no storage list requests"
    );
    Ok(())
}

/// Load for the latency comparison (not part of [`run`]): in namespace
/// `e2e-load`, `n` creates (POST), up to 250 reads by name (GET), `n`
/// replaces (PUT), five paged lists at 50 a page (LIST), the reads again
/// and `n` deletes (DELETE); each batch but the reads is one kubectl
/// process, and each batch's result is checked.
pub fn load(api: &ApiServer, n: usize) -> anyhow::Result<()> {
    let k = &api.kubectl;
    let ns = "e2e-load";
    k.run(&["create", "namespace", ns])?;
    let names: Vec<String> = (0..n).map(|i| format!("load-{i:05}")).collect();
    let docs = |v: &str| -> String { names.iter().map(|name| configmap(ns, name, v)).collect() };
    k.run_stdin(&["create", "-f", "-"], Some(&docs("a")))?;
    // kubectl throttles reads by name to 5 per second per process: 250 of
    // them, from 5 processes at once.
    let sample: Vec<&str> = names
        .iter()
        .step_by(n.div_ceil(250).max(1))
        .map(String::as_str)
        .collect();
    let read_by_name = |want: &str| -> anyhow::Result<()> {
        std::thread::scope(|s| {
            let readers: Vec<_> = sample
                .chunks(50)
                .map(|batch| {
                    s.spawn(move || -> anyhow::Result<()> {
                        let mut get = vec!["get", "configmaps", "-n", ns, "-o"];
                        get.push("jsonpath={range .items[*]}{.data.value}{end}");
                        get.extend(batch);
                        let values = k.run(&get)?;
                        ensure!(
                            values == want.repeat(batch.len()),
                            "{} reads by name returned {values:.60}",
                            batch.len()
                        );
                        Ok(())
                    })
                })
                .collect();
            readers
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?)
        })
    };
    read_by_name("a")?;
    k.run_stdin(&["replace", "-f", "-"], Some(&docs("b")))?;
    for _ in 0..5 {
        let listed = k.run(&[
            "get",
            "configmaps",
            "-n",
            ns,
            "--chunk-size=50",
            "-o",
            "name",
        ])?;
        let ours = listed
            .lines()
            .filter(|l| l.starts_with("configmap/load-"))
            .count();
        ensure!(ours == n, "paged list of {ours} of {n} objects");
    }
    read_by_name("b")?;
    // Deletes by name are throttled like reads: 5 processes at once.
    std::thread::scope(|s| {
        let deleters: Vec<_> = names
            .chunks(n.div_ceil(5).max(1))
            .map(|batch| {
                s.spawn(move || {
                    let mut del = vec!["delete", "configmaps", "-n", ns, "--wait=false"];
                    del.extend(batch.iter().map(String::as_str));
                    k.run(&del).map(|_| ())
                })
            })
            .collect();
        deleters.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a deleter panicked"))?
        })
    })?;
    let left = k.run(&["get", "configmaps", "-n", ns, "-o", "name"])?;
    ensure!(
        !left.contains("configmap/load-"),
        "objects left after the deletes"
    );
    Ok(())
}
