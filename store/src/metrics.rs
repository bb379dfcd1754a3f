//! metrics: Prometheus metrics, named as etcd names them wherever the
//! meaning is the same, so existing etcd dashboards and alerts work.
//! Strata-only metrics are prefixed `strata_`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The process-wide metrics.
pub struct Metrics {
    /// The registry behind `/metrics`.
    pub registry: Registry,
    /// etcd_server_has_leader.
    pub has_leader: IntGauge,
    /// etcd_server_leader_changes_seen_total.
    pub leader_changes: IntCounter,
    /// etcd_server_proposals_committed_total.
    pub proposals_committed: IntCounter,
    /// etcd_server_proposals_applied_total.
    pub proposals_applied: IntCounter,
    /// etcd_server_proposals_pending.
    pub proposals_pending: IntGauge,
    /// etcd_server_proposals_failed_total.
    pub proposals_failed: IntCounter,
    /// etcd_server_slow_read_indexes_total (ReadIndex rounds that went
    /// unanswered and were issued again).
    pub slow_read_indexes: IntCounter,
    /// etcd_disk_wal_fsync_duration_seconds.
    pub wal_fsync: Histogram,
    /// etcd_debugging_snap_save_total_duration_seconds.
    pub snapshot_save: Histogram,
    /// etcd_mvcc_db_total_size_in_bytes.
    pub db_size: IntGauge,
    /// etcd_mvcc_db_total_size_in_use_in_bytes
    pub db_size_in_use: IntGauge,
    /// etcd_server_quota_backend_bytes
    pub quota_backend_bytes: IntGauge,
    /// etcd_debugging_mvcc_keys_total.
    pub keys_total: IntGauge,
    /// etcd_debugging_mvcc_watcher_total.
    pub watchers: IntGauge,
    /// etcd_server_is_learner.
    pub is_learner: IntGauge,
    /// etcd_network_snapshot_send_success{To}.
    pub snapshot_send_success: IntCounterVec,
    /// etcd_network_snapshot_send_failures{To}.
    pub snapshot_send_failures: IntCounterVec,
    /// etcd_network_snapshot_send_total_duration_seconds{To}.
    pub snapshot_send_duration: HistogramVec,
    /// etcd_network_snapshot_receive_success{From}.
    pub snapshot_receive_success: IntCounterVec,
    /// etcd_network_snapshot_receive_failures{From}.
    pub snapshot_receive_failures: IntCounterVec,
    /// etcd_mvcc_hash_duration_seconds (Hash).
    pub hash_duration: Histogram,
    /// etcd_mvcc_hash_rev_duration_seconds (HashKV, client and peer).
    pub hash_rev_duration: Histogram,
    /// strata_corruption_checks_total{result}: corruption check passes
    /// (initial and periodic) by outcome: `ok`, `mismatch`.
    pub corruption_checks: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("invariant: valid metric");
    r.register(Box::new(c.clone()))
        .expect("invariant: unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("invariant: valid metric");
    r.register(Box::new(c.clone()))
        .expect("invariant: unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("invariant: valid metric");
    r.register(Box::new(g.clone()))
        .expect("invariant: unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("invariant: valid metric");
    r.register(Box::new(h.clone()))
        .expect("invariant: unique metric");
    h
}

/// The metrics singleton.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let disk = prometheus::exponential_buckets(0.001, 2.0, 14).expect("invariant: buckets");
    Metrics {
        has_leader: gauge(
            &r,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
        ),
        leader_changes: counter(
            &r,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
        ),
        proposals_committed: counter(
            &r,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
        ),
        proposals_applied: counter(
            &r,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
        ),
        proposals_pending: gauge(
            &r,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
        ),
        proposals_failed: counter(
            &r,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
        ),
        slow_read_indexes: counter(
            &r,
            "etcd_server_slow_read_indexes_total",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
        ),
        wal_fsync: histogram(
            &r,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            disk.clone(),
        ),
        snapshot_save: histogram(
            &r,
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot.",
            disk,
        ),
        db_size: gauge(
            &r,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
        ),
        db_size_in_use: gauge(
            &r,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
        ),
        quota_backend_bytes: gauge(
            &r,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
        ),
        keys_total: gauge(
            &r,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
        ),
        watchers: gauge(
            &r,
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
        ),
        is_learner: gauge(
            &r,
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        ),
        snapshot_send_success: counter_vec(
            &r,
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            "To",
        ),
        snapshot_send_failures: counter_vec(
            &r,
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            "To",
        ),
        snapshot_send_duration: {
            let h = HistogramVec::new(
                HistogramOpts::new(
                    "etcd_network_snapshot_send_total_duration_seconds",
                    "Total latency distributions of v3 snapshot sends",
                )
                .buckets(
                    prometheus::exponential_buckets(0.1, 2.0, 10).expect("invariant: buckets"),
                ),
                &["To"],
            )
            .expect("invariant: valid metric");
            r.register(Box::new(h.clone()))
                .expect("invariant: unique metric");
            h
        },
        snapshot_receive_success: counter_vec(
            &r,
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            "From",
        ),
        snapshot_receive_failures: counter_vec(
            &r,
            "etcd_network_snapshot_receive_failures",
            "Total number of snapshot receive failures",
            "From",
        ),
        hash_duration: histogram(
            &r,
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation.",
            prometheus::exponential_buckets(0.01, 2.0, 15).expect("invariant: buckets"),
        ),
        hash_rev_duration: histogram(
            &r,
            "etcd_mvcc_hash_rev_duration_seconds",
            "The latency distribution of storage hash by revision operation.",
            prometheus::exponential_buckets(0.01, 2.0, 15).expect("invariant: buckets"),
        ),
        corruption_checks: counter_vec(
            &r,
            "strata_corruption_checks_total",
            "Corruption check passes against the peers' HashKV, by result (ok or mismatch).",
            "result",
        ),
        registry: r,
    }
});

/// Render all metrics in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
