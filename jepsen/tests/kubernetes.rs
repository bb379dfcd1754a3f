//! Kubernetes on Strata, end to end: a real kube-apiserver (v1.20.2, built
//! by scripts/install-kube.sh) on a 3-member Strata cluster in network
//! namespaces, driven with kubectl: objects, paginated lists, watches,
//! conflicts, event TTLs, compaction, health and metrics
//! ([`jepsen::kube::e2e`]); then Kubernetes traffic while the leader is
//! killed, a member is partitioned and a member restarts, checking that no
//! acknowledged object is lost and that resumed watches neither miss nor
//! repeat events ([`jepsen::kube::faults`]).
//!
//! Needs root (namespaces), `ip`/`iptables`, a Strata binary (`STRATA_BIN`,
//! else the newest target/{release,debug}/strata) and the Kubernetes
//! binaries (`KUBE_APISERVER`/`KUBECTL`, else ~/.cache/strata/kube/).

use jepsen::cluster::{default_bin, ClusterOpts, ServerKind};
use jepsen::kube::{latency_table, run_on, KubeBins};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_apiserver_on_strata_end_to_end_and_under_faults() {
    let bins = KubeBins::find().expect("kube-apiserver and kubectl (scripts/install-kube.sh)");
    let tmp = tempfile::Builder::new()
        .prefix("jepsen-kube-")
        .tempdir()
        .unwrap();
    let opts = ClusterOpts {
        server: ServerKind::Strata,
        bin: default_bin(ServerKind::Strata).expect("a strata binary (cargo build -p store)"),
        nodes: 3,
        netns: true,
        dir: tmp.path().to_path_buf(),
    };
    let summary = match run_on(opts, &bins, 0, true).await {
        Ok(s) => s,
        Err(e) => {
            let kept = tmp.keep();
            panic!("{e:#}\n(run directory kept: {})", kept.display());
        }
    };
    for (step, took) in &summary.e2e.steps {
        eprintln!("{step}: ok in {took:.1?}");
    }
    let f = summary.faults.as_ref().expect("the fault run");
    eprintln!(
        "faults ({}): {} writes ok, {} failed, longest outage {:.1?}, {} events over {} watches, {} lists",
        f.faults.join(", "),
        f.writes_ok,
        f.writes_failed,
        f.longest_outage,
        f.events,
        f.watch_segments,
        f.relists
    );
    eprint!("{}", latency_table(std::slice::from_ref(&summary)));
    assert!(
        f.writes_ok >= 50,
        "too little traffic to judge: {} writes",
        f.writes_ok
    );
    assert!(
        f.events >= f.writes_ok / 2,
        "the watcher saw {} events for {} writes",
        f.events,
        f.writes_ok
    );
}
