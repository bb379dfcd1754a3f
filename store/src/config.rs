//! config: etcd-compatible command-line flags and `ETCD_*` environment
//! variables, turned into a validated [`Config`].
//!
//! Every flag of etcd 3.5 (plus the 3.6 spellings of the former
//! `--experimental-*` ones) is accepted, so scripts and manifests written for
//! etcd start Strata unchanged. Flags Strata does not act on yet are accepted
//! and logged as ignored at startup; unknown flags fail with a clear message.
//! Like Go's `flag` package, a single leading dash (`-name`) works too.
//! Precedence: command line, then `ETCD_<FLAG_IN_UPPER_SNAKE>`, then default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, Command};

/// How a flag is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Implemented.
    Used,
    /// Accepted for compatibility, has no effect yet.
    Ignored,
}

/// Whether a flag takes a value or is a Go-style boolean.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Value,
    Bool,
}

use Kind::*;
use Ty::*;

/// (name, default, type, kind, help). Defaults are etcd's unless noted.
const FLAGS: &[(&str, &str, Ty, Kind, &str)] = &[
    // member
    ("name", "default", Value, Used, "Human-readable name for this member."),
    ("data-dir", "", Value, Used, "Path to the data directory (default: ${name}.strata)."),
    ("wal-dir", "", Value, Used, "Path to the dedicated raft log directory (default: <data-dir>/member/wal)."),
    ("snapshot-count", "100000", Value, Used, "Number of committed entries between state-machine snapshots."),
    ("snapshot-catchup-entries", "5000", Value, Used, "Entries kept for slow followers after a snapshot."),
    ("experimental-snapshot-catchup-entries", "5000", Value, Used, "Old spelling of --snapshot-catchup-entries."),
    ("heartbeat-interval", "100", Value, Used, "Time (in milliseconds) of a heartbeat interval."),
    ("election-timeout", "1000", Value, Used, "Time (in milliseconds) for an election to timeout."),
    ("initial-election-tick-advance", "true", Bool, Ignored, "Whether to fast-forward initial election ticks on boot."),
    ("listen-peer-urls", "http://localhost:2380", Value, Used, "List of URLs to listen on for peer traffic."),
    ("listen-client-urls", "http://127.0.0.1:2379", Value, Used, "List of URLs to listen on for client traffic."),
    ("listen-client-http-urls", "", Value, Ignored, "List of URLs to listen on for HTTP-only client traffic."),
    ("max-snapshots", "5", Value, Used, "Maximum number of snapshot files to retain (0 is unlimited; otherwise the 2 newest are kept, the only ones the raft log can replay from)."),
    ("max-wals", "5", Value, Ignored, "Maximum number of wal files to retain (0 is unlimited)."),
    ("quota-backend-bytes", "0", Value, Used, "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota)."),
    ("backend-bbolt-freelist-type", "map", Value, Ignored, "BackendFreelistType specifies the type of freelist that boltdb backend uses."),
    ("backend-batch-interval", "", Value, Ignored, "BackendBatchInterval is the maximum time before commit the backend transaction."),
    ("backend-batch-limit", "0", Value, Ignored, "BackendBatchLimit is the maximum operations before commit the backend transaction."),
    ("max-txn-ops", "128", Value, Used, "Maximum number of operations permitted in a transaction."),
    ("max-request-bytes", "1572864", Value, Used, "Maximum client request size in bytes the server will accept."),
    ("max-concurrent-streams", "4294967295", Value, Ignored, "Maximum concurrent streams that each client can open at a time."),
    ("grpc-keepalive-min-time", "5s", Value, Ignored, "Minimum duration interval that a client should wait before pinging server."),
    ("grpc-keepalive-interval", "2h", Value, Used, "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable)."),
    ("grpc-keepalive-timeout", "20s", Value, Used, "Additional duration of wait before closing a non-responsive connection (0 to disable)."),
    ("socket-reuse-port", "false", Bool, Ignored, "Enable to set socket option SO_REUSEPORT on listeners."),
    ("socket-reuse-address", "false", Bool, Ignored, "Enable to set socket option SO_REUSEADDR on listeners."),
    ("close-on-idle", "false", Bool, Ignored, "Unused; accepted for compatibility."),
    // clustering
    ("initial-advertise-peer-urls", "http://localhost:2380", Value, Used, "List of this member's peer URLs to advertise to the rest of the cluster."),
    ("initial-cluster", "", Value, Used, "Initial cluster configuration for bootstrapping (default: ${name}=<initial-advertise-peer-urls>)."),
    ("initial-cluster-state", "new", Value, Used, "Initial cluster state ('new' or 'existing')."),
    ("initial-cluster-token", "etcd-cluster", Value, Used, "Initial cluster token for the etcd cluster during bootstrap."),
    ("advertise-client-urls", "", Value, Used, "List of this member's client URLs to advertise to the public (default: the listen client URLs)."),
    ("discovery", "", Value, Ignored, "Discovery URL used to bootstrap the cluster."),
    ("discovery-fallback", "proxy", Value, Ignored, "Expected behavior ('exit' or 'proxy') when discovery services fails."),
    ("discovery-proxy", "", Value, Ignored, "HTTP proxy to use for traffic to discovery service."),
    ("discovery-srv", "", Value, Ignored, "DNS srv domain used to bootstrap the cluster."),
    ("discovery-srv-name", "", Value, Ignored, "Suffix to the dns srv name queried when bootstrapping."),
    ("strict-reconfig-check", "true", Bool, Used, "Reject reconfiguration requests that would cause quorum loss."),
    ("pre-vote", "true", Bool, Used, "Enable the raft Pre-Vote algorithm to prevent disruption when a node rejoins."),
    ("auto-compaction-retention", "0", Value, Used, "Auto compaction retention for mvcc key value store. 0 means disable auto compaction."),
    ("auto-compaction-mode", "periodic", Value, Used, "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention."),
    ("enable-v2", "false", Bool, Ignored, "Accept etcd V2 client requests (not supported; must stay false)."),
    ("v2-deprecation", "not-yet", Value, Ignored, "Phase of v2store deprecation."),
    ("force-new-cluster", "false", Bool, Ignored, "Force to create a new one member cluster."),
    // security
    ("cert-file", "", Value, Used, "Path to the client server TLS cert file (PEM; needed by https:// client or metrics URLs unless --auto-tls)."),
    ("key-file", "", Value, Used, "Path to the client server TLS key file (PEM)."),
    ("client-cert-auth", "false", Bool, Used, "Enable client cert authentication: https clients must present a certificate signed by --trusted-ca-file."),
    ("client-crl-file", "", Value, Used, "Path to the client certificate revocation list file (PEM; with --client-cert-auth)."),
    ("client-cert-allowed-hostname", "", Value, Used, "Allowed TLS hostname for client cert authentication: client certificates must be valid for it (SAN)."),
    ("trusted-ca-file", "", Value, Used, "Path to the client server TLS trusted CA cert file (PEM)."),
    ("auto-tls", "false", Bool, Used, "Client TLS using generated certificates (self-signed, kept in <data-dir>/fixtures/client) if --cert-file and --key-file are not provided."),
    ("peer-cert-file", "", Value, Used, "Path to the peer server TLS cert file (PEM); also the client cert this member presents to its peers."),
    ("peer-key-file", "", Value, Used, "Path to the peer server TLS key file (PEM)."),
    ("peer-client-cert-auth", "false", Bool, Used, "Enable peer client cert authentication: peers must present a certificate signed by --peer-trusted-ca-file."),
    ("peer-crl-file", "", Value, Used, "Path to the peer certificate revocation list file (PEM; with --peer-client-cert-auth)."),
    ("peer-trusted-ca-file", "", Value, Used, "Path to the peer server TLS trusted CA file (PEM): verifies peers' server and client certificates."),
    ("peer-cert-allowed-cn", "", Value, Used, "Required CN for client certs connecting to the peer endpoint."),
    ("peer-cert-allowed-hostname", "", Value, Used, "Allowed TLS hostname for inter peer authentication: peers' client certificates must be valid for it (SAN)."),
    ("peer-auto-tls", "false", Bool, Used, "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided (encrypted, not authenticated: peers' certificates are not verified)."),
    ("self-signed-cert-validity", "1", Value, Used, "The validity period of the client and peer certificates that are automatically generated by etcd, in years."),
    ("cipher-suites", "", Value, Ignored, "Comma-separated list of supported TLS cipher suites between client/server and peers."),
    ("cors", "*", Value, Ignored, "Comma-separated whitelist of origins for CORS, or cross-origin resource sharing."),
    ("host-whitelist", "*", Value, Ignored, "Acceptable hostnames from HTTP client requests, if server is not secure."),
    ("tls-min-version", "TLS1.2", Value, Used, "Minimum TLS version of client and peer connections: TLS1.2 or TLS1.3."),
    ("tls-max-version", "", Value, Used, "Maximum TLS version of client and peer connections: TLS1.2 or TLS1.3 (default: the highest, TLS1.3)."),
    // auth
    ("auth-token", "simple", Value, Used, "Specify a v3 authentication token type and its options ('simple' or 'jwt')."),
    ("bcrypt-cost", "10", Value, Used, "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords."),
    ("auth-token-ttl", "300", Value, Used, "Time (in seconds) of the auth-token-ttl."),
    // profiling and monitoring
    ("enable-pprof", "false", Bool, Ignored, "Enable runtime profiling data via HTTP server."),
    ("metrics", "basic", Value, Ignored, "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics."),
    ("listen-metrics-urls", "", Value, Used, "List of URLs to listen on for the metrics and health endpoints (/metrics, /health, /livez, /readyz, /version); https:// ones use the client TLS flags."),
    // logging
    ("logger", "zap", Value, Ignored, "Currently only supports 'zap' for structured logging."),
    ("log-outputs", "default", Value, Ignored, "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd."),
    ("log-level", "info", Value, Used, "Configures log level. Only supports debug, info, warn, error, panic, or fatal."),
    ("log-format", "json", Value, Used, "Configures log format. Only supports json, console."),
    ("enable-log-rotation", "false", Bool, Ignored, "Enable log rotation of a single log-outputs file target."),
    ("log-rotation-config-json", "", Value, Ignored, "Configures log rotation if enabled with a JSON logger config."),
    // experimental and 3.6 spellings
    ("experimental-initial-corrupt-check", "false", Bool, Used, "Enable to check data corruption before serving any client/peer traffic."),
    ("experimental-corrupt-check-time", "0s", Value, Used, "Duration of time between cluster corruption check passes."),
    ("corrupt-check-time", "0s", Value, Used, "Duration of time between cluster corruption check passes."),
    ("experimental-compact-hash-check-enabled", "false", Bool, Ignored, "Enable leader to periodically check followers compaction hashes."),
    ("experimental-compact-hash-check-time", "1m", Value, Ignored, "Duration of time between leader checks followers compaction hashes."),
    ("compact-hash-check-time", "1m", Value, Ignored, "Duration of time between leader checks followers compaction hashes."),
    ("experimental-enable-v2v3", "", Value, Ignored, "Serve v2 requests through the v3 backend under a given prefix."),
    ("experimental-enable-lease-checkpoint", "false", Bool, Used, "Enable leader to send regular checkpoints to other members to prevent reset of remaining TTL on leader change."),
    ("experimental-enable-lease-checkpoint-persist", "false", Bool, Used, "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases. Strata always persists checkpointed remaining TTLs (etcd 3.6 behaviour), so this only matters together with --experimental-enable-lease-checkpoint, as in etcd."),
    ("experimental-compaction-batch-limit", "1000", Value, Ignored, "Sets the maximum revisions deleted in each compaction batch."),
    ("compaction-batch-limit", "1000", Value, Ignored, "Sets the maximum revisions deleted in each compaction batch."),
    ("experimental-compaction-sleep-interval", "10ms", Value, Ignored, "Sets the sleep interval between each compaction batch."),
    ("compaction-sleep-interval", "10ms", Value, Ignored, "Sets the sleep interval between each compaction batch."),
    ("experimental-peer-skip-client-san-verification", "false", Bool, Ignored, "Skip verification of SAN field in client certificate for peer connections."),
    ("peer-skip-client-san-verification", "false", Bool, Ignored, "Skip verification of SAN field in client certificate for peer connections."),
    ("experimental-watch-progress-notify-interval", "", Value, Used, "Old spelling of --watch-progress-notify-interval."),
    ("watch-progress-notify-interval", "10m", Value, Used, "Duration of periodic watch progress notifications."),
    ("experimental-warning-apply-duration", "100ms", Value, Ignored, "Time duration after which a warning is generated if request takes more time."),
    ("warning-apply-duration", "100ms", Value, Ignored, "Time duration after which a warning is generated if watch progress takes more time."),
    ("experimental-warning-unary-request-duration", "300ms", Value, Ignored, "Time duration after which a warning is generated if a unary request takes more time."),
    ("warning-unary-request-duration", "300ms", Value, Ignored, "Time duration after which a warning is generated if a unary request takes more time."),
    ("experimental-txn-mode-write-with-shared-buffer", "true", Bool, Ignored, "Enable the write transaction to use a shared buffer in its readonly check operations."),
    ("experimental-bootstrap-defrag-threshold-megabytes", "0", Value, Ignored, "Enable the defrag during etcd server bootstrap on condition that it will free at least the provided threshold of disk space."),
    ("bootstrap-defrag-threshold-megabytes", "0", Value, Ignored, "Enable the defrag during etcd server bootstrap on condition that it will free at least the provided threshold of disk space."),
    ("experimental-enable-distributed-tracing", "false", Bool, Ignored, "Enable experimental distributed tracing using OpenTelemetry Tracing."),
    ("experimental-distributed-tracing-address", "localhost:4317", Value, Ignored, "Address for distributed tracing used for OpenTelemetry Tracing."),
    ("experimental-distributed-tracing-service-name", "etcd", Value, Ignored, "Configures service name for distributed tracing."),
    ("experimental-distributed-tracing-instance-id", "", Value, Ignored, "Configures service instance ID for distributed tracing."),
    ("experimental-distributed-tracing-sampling-rate", "0", Value, Ignored, "Number of samples to collect per million spans."),
    ("experimental-max-learners", "1", Value, Used, "Sets the maximum number of learners that can be available in the cluster membership."),
    ("max-learners", "1", Value, Used, "Sets the maximum number of learners that can be available in the cluster membership."),
    ("experimental-stop-grpc-service-on-defrag", "false", Bool, Ignored, "Enable etcd gRPC service to stop serving client requests on defragmentation."),
    ("experimental-memory-mlock", "false", Bool, Ignored, "Enable to enforce etcd pages to stay in RAM."),
    ("memory-mlock", "false", Bool, Ignored, "Enable to enforce etcd pages to stay in RAM."),
    ("experimental-downgrade-check-time", "5s", Value, Ignored, "Duration of time between two downgrade status checks."),
    ("downgrade-check-time", "5s", Value, Ignored, "Duration of time between two downgrade status checks."),
    ("experimental-local-address", "", Value, Ignored, "LocalAddr to use when communicating with other etcd members."),
    ("feature-gates", "", Value, Used, "A set of key=value pairs that describe server level feature gates, e.g. InitialCorruptCheck=true. Strata acts on LeaseCheckpoint and LeaseCheckpointPersist (the 3.6 spellings of --experimental-enable-lease-checkpoint[-persist]) and InitialCorruptCheck (--experimental-initial-corrupt-check); other gates are accepted and ignored."),
    ("unsafe-no-fsync", "false", Bool, Used, "Disables fsync, unsafe, will cause data loss."),
    ("config-file", "", Value, Ignored, "Path to the server configuration file (not supported yet: pass flags instead)."),
    // strata
    ("emulated-etcd-version", "3.6.0", Value, Used, "The etcd server version Strata reports in Maintenance.Status (must be a semver; Kubernetes needs >= 3.5.13)."),
    ("experimental-lease-checkpoint-interval", "5m", Value, Used, "Interval between lease checkpoints (etcd's LeaseCheckpointInterval, which etcd sets only through its embedding API)."),
    // Strata-only and hidden from --help (every `strata-*` flag is): for tests.
    ("strata-auto-compaction-revision-interval", "5m", Value, Used, "Strata-only, for tests: how often revision-mode auto-compaction checks the revision (etcd: a fixed 5m)."),
];

/// One side's TLS flags (client or peer), as given; files are read by
/// [`crate::server::tls`] at startup.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// PEM certificate chain (`--cert-file` / `--peer-cert-file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (`--key-file` / `--peer-key-file`).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle (`--trusted-ca-file` / `--peer-trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by the trusted CA.
    pub client_cert_auth: bool,
    /// PEM certificate revocation lists.
    pub crl_file: Option<PathBuf>,
    /// Generate a self-signed certificate when no cert/key is given.
    pub auto_tls: bool,
    /// Only client certificates with this CN are accepted (peers only).
    pub allowed_cn: Option<String>,
    /// Only client certificates valid for this host name are accepted.
    pub allowed_hostname: Option<String>,
    /// `--tls-min-version` (both sides).
    pub min_version: TlsVersion,
    /// `--tls-max-version` (both sides).
    pub max_version: TlsVersion,
}

/// A TLS protocol version rustls offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    Tls12,
    /// TLS 1.3.
    Tls13,
}

fn parse_tls_version(v: &str, flag: &str, empty: TlsVersion) -> Result<TlsVersion, String> {
    match v {
        "" => Ok(empty),
        "TLS1.2" => Ok(TlsVersion::Tls12),
        "TLS1.3" => Ok(TlsVersion::Tls13),
        "TLS1.0" | "TLS1.1" => Err(format!(
            "--{flag}: {v} is not supported: only TLS1.2 and TLS1.3 are"
        )),
        _ => Err(format!("--{flag}: unknown TLS version {v:?}")),
    }
}

impl TlsInfo {
    /// Whether a cert/key pair was given.
    pub fn has_cert(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Client TLS: `--cert-file`, `--key-file`, `--trusted-ca-file`,
    /// `--client-cert-auth`, `--client-crl-file`, `--auto-tls`.
    pub client_tls: TlsInfo,
    /// Peer TLS: the `--peer-*` counterparts, plus `--peer-cert-allowed-cn`.
    pub peer_tls: TlsInfo,
    /// `--listen-metrics-urls`: extra listeners serving only the HTTP
    /// monitoring routes.
    pub listen_metrics_urls: Vec<url::Url>,
    /// `--self-signed-cert-validity`, in years, of auto-TLS certificates.
    pub self_signed_cert_validity: u32,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Raft log directory.
    pub wal_dir: PathBuf,
    /// Entries between state-machine snapshots.
    pub snapshot_count: u64,
    /// `--max-snapshots`: 0 keeps every snapshot file, any other value the
    /// 2 newest (see `SnapDir::open`).
    pub max_snapshots: usize,
    /// Raft heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Raft election timeout.
    pub election_timeout: Duration,
    /// Client listen URLs.
    pub listen_client_urls: Vec<url::Url>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen URLs.
    pub listen_peer_urls: Vec<url::Url>,
    /// Advertised peer URLs of this member.
    pub initial_advertise_peer_urls: Vec<String>,
    /// name → peer URLs.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    /// `new` or `existing`.
    pub initial_cluster_state: String,
    /// Cluster token.
    pub initial_cluster_token: String,
    /// Raft pre-vote.
    pub pre_vote: bool,
    /// Max ops per txn.
    pub max_txn_ops: usize,
    /// Max request bytes.
    pub max_request_bytes: usize,
    /// Server-to-client gRPC keepalive ping interval (None = off).
    pub grpc_keepalive_interval: Option<Duration>,
    /// gRPC keepalive timeout.
    pub grpc_keepalive_timeout: Option<Duration>,
    /// Watch progress-notify interval.
    pub watch_progress_notify_interval: Duration,
    /// Log level for tracing.
    pub log_level: String,
    /// `json` or `console`.
    pub log_format: String,
    /// Skip fsync (unsafe).
    pub unsafe_no_fsync: bool,
    /// Version reported as the etcd server version.
    pub emulated_etcd_version: String,
    /// Raft log entries kept behind a snapshot for slow followers.
    pub snapshot_catchup_entries: u64,
    /// Refuse membership changes that could cost the quorum.
    pub strict_reconfig_check: bool,
    /// Most learners the cluster may have.
    pub max_learners: usize,
    /// Lease checkpoints (`--experimental-enable-lease-checkpoint`, or the
    /// `LeaseCheckpoint` feature gate).
    pub lease_checkpoint: bool,
    /// `--experimental-enable-lease-checkpoint-persist` (or the
    /// `LeaseCheckpointPersist` gate); checkpoints are always persisted.
    pub lease_checkpoint_persist: bool,
    /// Interval between lease checkpoints.
    pub lease_checkpoint_interval: Duration,
    /// `--quota-backend-bytes` as given (0 = etcd's default, negative = no quota).
    pub quota_backend_bytes: i64,
    /// Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`).
    pub auto_compaction: AutoCompaction,
    /// How often revision-mode auto-compaction runs (etcd: 5 minutes; the
    /// hidden Strata-only `--strata-auto-compaction-revision-interval`).
    pub auto_compaction_revision_interval: Duration,
    /// Compare HashKV with the peers before serving clients
    /// (`--experimental-initial-corrupt-check`, or the `InitialCorruptCheck` gate).
    pub initial_corrupt_check: bool,
    /// Period of the leader's corruption check (`--corrupt-check-time`,
    /// `--experimental-corrupt-check-time`); zero is off.
    pub corrupt_check_time: Duration,
    /// Accepted flags that have no effect, for the startup warning.
    pub ignored: Vec<String>,
    /// `--auth-token`: simple or jwt (with its options).
    pub auth_token: crate::auth::token::TokenSpec,
    /// `--bcrypt-cost` for password hashes (4..=31).
    pub bcrypt_cost: u32,
    /// `--auth-token-ttl`: idle lifetime of a simple token.
    pub auth_token_ttl: Duration,
}

/// etcd's default backend quota when `--quota-backend-bytes` is 0 (2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Above this quota etcd warns that the quota exceeds the recommended maximum (8 GiB).
pub const MAX_QUOTA_BYTES: i64 = 8 * 1024 * 1024 * 1024;

impl Config {
    /// The effective backend quota in bytes (None: quotas disabled, as etcd
    /// does for a negative `--quota-backend-bytes`).
    pub fn quota_bytes(&self) -> Option<i64> {
        match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES),
            q => Some(q),
        }
    }
}

/// Auto-compaction policy, as etcd 3.5's `v3compactor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0: no auto-compaction.
    Off,
    /// `periodic`: keep `retention` worth of history.
    Periodic(Duration),
    /// `revision`: keep the last `n` revisions.
    Revision(i64),
}

/// Parse `--auto-compaction-mode`/`--auto-compaction-retention` the way
/// etcd 3.5 does: a bare non-negative integer is hours (periodic) or a
/// revision count (revision); anything else must be a Go duration (in
/// revision mode its nanoseconds are the count, as in etcd).
pub fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let retention = if retention.is_empty() { "0" } else { retention };
    let periodic = match mode {
        "periodic" => true,
        "revision" => false,
        other => return Err(format!("unknown auto-compaction-mode {other:?}")),
    };
    let r = match retention.parse::<i64>() {
        Ok(h) if h >= 0 => {
            if periodic {
                AutoCompaction::Periodic(Duration::from_secs(h as u64 * 3600))
            } else {
                AutoCompaction::Revision(h)
            }
        }
        _ => {
            let d = humantime::parse_duration(retention)
                .map_err(|e| format!("error parsing AutoCompactionRetention: {e}"))?;
            if periodic {
                AutoCompaction::Periodic(d)
            } else {
                AutoCompaction::Revision(d.as_nanos().min(i64::MAX as u128) as i64)
            }
        }
    };
    Ok(match r {
        AutoCompaction::Periodic(d) if d.is_zero() => AutoCompaction::Off,
        AutoCompaction::Revision(0) => AutoCompaction::Off,
        r => r,
    })
}

fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

/// The clap command (also used for `--help`).
pub fn command() -> Command {
    let mut cmd = Command::new("strata")
        .about(
            "Strata: a Raft-replicated MVCC key-value store that speaks etcd's v3 gRPC API.\n\n\
             It accepts etcd's flags (with one or two leading dashes) and ETCD_* environment \
             variables. With no flags it serves http://127.0.0.1:2379 with data in ./default.strata.\n\n\
             Offline tools: `strata snapshot status FILE`, `strata snapshot restore FILE --data-dir DIR ...`.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        // As with Go's flag package, a repeated flag takes its last value.
        .args_override_self(true)
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print the version and exit."),
        );
    for (name, default, ty, kind, help) in FLAGS {
        let mut help = help.to_string();
        if *kind == Ignored {
            help.push_str(" [accepted; no effect in this version]");
        }
        let mut a = Arg::new(*name)
            .long(*name)
            .env(env_name(name))
            .help(help)
            .value_name(if *ty == Bool { "BOOL" } else { "VALUE" })
            .hide(name.starts_with("strata-"))
            // Go's flag package takes `-quota-backend-bytes -1`.
            .allow_negative_numbers(*ty == Value)
            .action(ArgAction::Set);
        if !default.is_empty() {
            a = a.default_value(*default);
        }
        if *ty == Bool {
            a = a
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_parser(clap::builder::BoolishValueParser::new());
        }
        cmd = cmd.arg(a);
    }
    cmd
}

/// Rewrite Go-style `-flag` to `--flag` for known flags.
fn normalize_args(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
                let name = a[1..].split('=').next().unwrap_or("");
                if name == "version" || FLAGS.iter().any(|f| f.0 == name) {
                    return format!("-{a}");
                }
            }
            a
        })
        .collect()
}

fn parse_urls(s: &str, flag: &str) -> Result<Vec<url::Url>, String> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            let u = url::Url::parse(x.trim())
                .map_err(|e| format!("--{flag}: invalid URL {x:?}: {e}"))?;
            match u.scheme() {
                "http" | "https" | "unix" | "unixs" => Ok(u),
                other => Err(format!(
                    "--{flag}: URL scheme must be http, https, unix, or unixs: {other}"
                )),
            }
        })
        .collect()
}

/// Parse a Go duration ("100ms", "10m", "2h") or plain seconds.
fn parse_duration(s: &str, flag: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("--{flag}: invalid duration {s:?}: {e}"))
}

fn parse_num<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("--{flag}: invalid value {s:?}: expected a number"))
}

/// Outcome of parsing the command line.
pub enum Parsed {
    /// Run the server.
    Run(Box<Config>),
    /// Print the version and exit.
    Version,
}

/// Parse args (including argv\[0\]) and the environment.
pub fn parse(args: Vec<String>) -> Result<Parsed, clap::Error> {
    let m = command().try_get_matches_from(normalize_args(args))?;
    if m.get_flag("version") {
        return Ok(Parsed::Version);
    }
    from_matches(&m)
        .map(|c| Parsed::Run(Box::new(c)))
        .map_err(|e| command().error(clap::error::ErrorKind::InvalidValue, e))
}

fn from_matches(m: &clap::ArgMatches) -> Result<Config, String> {
    let s = |n: &str| -> String { m.get_one::<String>(n).cloned().unwrap_or_default() };
    let b = |n: &str| -> bool { m.get_one::<bool>(n).copied().unwrap_or(false) };
    let explicit = |n: &str| {
        matches!(
            m.value_source(n),
            Some(clap::parser::ValueSource::CommandLine)
                | Some(clap::parser::ValueSource::EnvVariable)
        )
    };
    let mut ignored = Vec::new();
    for (name, _, _, kind, _) in FLAGS {
        if *kind == Ignored && explicit(name) {
            ignored.push(name.to_string());
        }
    }
    let name = s("name");
    let data_dir = match s("data-dir") {
        d if d.is_empty() => PathBuf::from(format!("{name}.strata")),
        d => PathBuf::from(d),
    };
    let wal_dir = match s("wal-dir") {
        d if d.is_empty() => data_dir.join("member").join("wal"),
        d => PathBuf::from(d),
    };
    let listen_client_urls = parse_urls(&s("listen-client-urls"), "listen-client-urls")?;
    if listen_client_urls.is_empty() {
        return Err("--listen-client-urls must not be empty".into());
    }
    let advertise_client_urls: Vec<String> = if explicit("advertise-client-urls") {
        parse_urls(&s("advertise-client-urls"), "advertise-client-urls")?
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect()
    } else {
        listen_client_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect()
    };
    if explicit("listen-client-urls") && !explicit("advertise-client-urls") {
        // etcd requires --advertise-client-urls when --listen-client-urls is
        // set; Strata is lenient and advertises what it listens on.
    }
    let listen_peer_urls = parse_urls(&s("listen-peer-urls"), "listen-peer-urls")?;
    let initial_advertise_peer_urls: Vec<String> = parse_urls(
        &s("initial-advertise-peer-urls"),
        "initial-advertise-peer-urls",
    )?
    .iter()
    .map(|u| u.as_str().trim_end_matches('/').to_string())
    .collect();
    let initial_cluster_raw = match s("initial-cluster") {
        c if c.is_empty() => format!(
            "{name}={}",
            initial_advertise_peer_urls.join(&format!(",{name}="))
        ),
        c => c,
    };
    let initial_cluster = parse_initial_cluster(&initial_cluster_raw)?;
    if !initial_cluster.contains_key(&name) {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    }
    let state = s("initial-cluster-state");
    if state != "new" && state != "existing" {
        return Err(format!(
            "--initial-cluster-state: invalid value {state:?}: must be 'new' or 'existing'"
        ));
    }
    let heartbeat: u64 = parse_num(&s("heartbeat-interval"), "heartbeat-interval")?;
    let election: u64 = parse_num(&s("election-timeout"), "election-timeout")?;
    if heartbeat == 0 || election < 5 * heartbeat {
        return Err(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]"
        ));
    }
    let wpni = if explicit("watch-progress-notify-interval")
        || !explicit("experimental-watch-progress-notify-interval")
    {
        s("watch-progress-notify-interval")
    } else {
        s("experimental-watch-progress-notify-interval")
    };
    let watch_progress_notify_interval = parse_duration(&wpni, "watch-progress-notify-interval")?;
    let level = s("log-level");
    if !["debug", "info", "warn", "error", "panic", "fatal"].contains(&level.as_str()) {
        return Err(format!(
            "--log-level: invalid value {level:?}: only supports debug, info, warn, error, panic, or fatal"
        ));
    }
    let ver = s("emulated-etcd-version");
    if !is_semver(&ver) {
        return Err(format!(
            "--emulated-etcd-version: {ver:?} is not a semantic version like 3.6.0"
        ));
    }
    if b("enable-v2") {
        return Err("--enable-v2: the v2 API is not supported".into());
    }
    let mut lease_checkpoint = b("experimental-enable-lease-checkpoint");
    let mut lease_checkpoint_persist = b("experimental-enable-lease-checkpoint-persist");
    let mut initial_corrupt_check = b("experimental-initial-corrupt-check");
    for gate in s("feature-gates")
        .split(',')
        .filter(|g| !g.trim().is_empty())
    {
        let (k, v) = gate
            .split_once('=')
            .ok_or_else(|| format!("--feature-gates: {gate:?} is not in Name=true|false form"))?;
        let on = match v.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(format!("--feature-gates: invalid value {v:?} for {k}")),
        };
        match k.trim() {
            "LeaseCheckpoint" => lease_checkpoint = on,
            "LeaseCheckpointPersist" => lease_checkpoint_persist = on,
            "InitialCorruptCheck" => initial_corrupt_check = on,
            other => ignored.push(format!("feature-gates {other}")),
        }
    }
    let lease_checkpoint_interval = match parse_duration(
        &s("experimental-lease-checkpoint-interval"),
        "experimental-lease-checkpoint-interval",
    )? {
        // etcd: zero means the default.
        d if d.is_zero() => Duration::from_secs(300),
        d => d,
    };
    // The 3.6 name wins over the experimental one when both are given.
    let corrupt_check_time =
        if explicit("corrupt-check-time") || !explicit("experimental-corrupt-check-time") {
            parse_duration(&s("corrupt-check-time"), "corrupt-check-time")?
        } else {
            parse_duration(
                &s("experimental-corrupt-check-time"),
                "experimental-corrupt-check-time",
            )?
        };
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let auth_token = crate::auth::token::parse_spec(&s("auth-token"))
        .map_err(|e| format!("--auth-token: {e}"))?;
    let bcrypt_cost: u32 = parse_num(&s("bcrypt-cost"), "bcrypt-cost")?;
    if !(4..=31).contains(&bcrypt_cost) {
        // etcd: "invalid bcrypt-cost: must be between 4 and 31"
        return Err(format!(
            "invalid bcrypt-cost: {bcrypt_cost} (must be between 4 and 31)"
        ));
    }
    let auth_token_ttl: u64 = parse_num(&s("auth-token-ttl"), "auth-token-ttl")?;
    let min_version =
        parse_tls_version(&s("tls-min-version"), "tls-min-version", TlsVersion::Tls12)?;
    let max_version =
        parse_tls_version(&s("tls-max-version"), "tls-max-version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(format!(
            "min version ({}) is greater than max version ({})",
            s("tls-min-version"),
            s("tls-max-version")
        ));
    }
    let path =
        |n: &str| -> Option<PathBuf> { Some(s(n)).filter(|v| !v.is_empty()).map(PathBuf::from) };
    let client_tls = TlsInfo {
        cert_file: path("cert-file"),
        key_file: path("key-file"),
        trusted_ca_file: path("trusted-ca-file"),
        client_cert_auth: b("client-cert-auth"),
        crl_file: path("client-crl-file"),
        auto_tls: b("auto-tls"),
        allowed_cn: None,
        allowed_hostname: Some(s("client-cert-allowed-hostname")).filter(|v| !v.is_empty()),
        min_version,
        max_version,
    };
    let peer_tls = TlsInfo {
        cert_file: path("peer-cert-file"),
        key_file: path("peer-key-file"),
        trusted_ca_file: path("peer-trusted-ca-file"),
        client_cert_auth: b("peer-client-cert-auth"),
        crl_file: path("peer-crl-file"),
        auto_tls: b("peer-auto-tls"),
        allowed_cn: Some(s("peer-cert-allowed-cn")).filter(|v| !v.is_empty()),
        allowed_hostname: Some(s("peer-cert-allowed-hostname")).filter(|v| !v.is_empty()),
        min_version,
        max_version,
    };
    let listen_metrics_urls = parse_urls(&s("listen-metrics-urls"), "listen-metrics-urls")?;
    Ok(Config {
        client_tls,
        peer_tls,
        listen_metrics_urls,
        self_signed_cert_validity: parse_num(
            &s("self-signed-cert-validity"),
            "self-signed-cert-validity",
        )?,
        auth_token,
        bcrypt_cost,
        auth_token_ttl: Duration::from_secs(auth_token_ttl.max(1)),
        data_dir,
        wal_dir,
        snapshot_count: parse_num(&s("snapshot-count"), "snapshot-count")?,
        max_snapshots: parse_num::<usize>(&s("max-snapshots"), "max-snapshots")?,
        heartbeat_interval: Duration::from_millis(heartbeat),
        election_timeout: Duration::from_millis(election),
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state: state,
        initial_cluster_token: s("initial-cluster-token"),
        pre_vote: b("pre-vote"),
        max_txn_ops: parse_num(&s("max-txn-ops"), "max-txn-ops")?,
        max_request_bytes: parse_num(&s("max-request-bytes"), "max-request-bytes")?,
        grpc_keepalive_interval: nonzero(parse_duration(
            &s("grpc-keepalive-interval"),
            "grpc-keepalive-interval",
        )?),
        grpc_keepalive_timeout: nonzero(parse_duration(
            &s("grpc-keepalive-timeout"),
            "grpc-keepalive-timeout",
        )?),
        watch_progress_notify_interval,
        log_level: level,
        log_format: s("log-format"),
        unsafe_no_fsync: b("unsafe-no-fsync"),
        emulated_etcd_version: ver,
        strict_reconfig_check: b("strict-reconfig-check"),
        snapshot_catchup_entries: parse_num(
            &if explicit("snapshot-catchup-entries")
                || !explicit("experimental-snapshot-catchup-entries")
            {
                s("snapshot-catchup-entries")
            } else {
                s("experimental-snapshot-catchup-entries")
            },
            "snapshot-catchup-entries",
        )?,
        max_learners: parse_num(
            &if explicit("max-learners") || !explicit("experimental-max-learners") {
                s("max-learners")
            } else {
                s("experimental-max-learners")
            },
            "max-learners",
        )?,
        lease_checkpoint,
        lease_checkpoint_persist,
        lease_checkpoint_interval,
        quota_backend_bytes: parse_num(&s("quota-backend-bytes"), "quota-backend-bytes")?,
        auto_compaction: parse_auto_compaction(
            &s("auto-compaction-mode"),
            &s("auto-compaction-retention"),
        )?,
        auto_compaction_revision_interval: match parse_duration(
            &s("strata-auto-compaction-revision-interval"),
            "strata-auto-compaction-revision-interval",
        )? {
            d if d.is_zero() => Duration::from_secs(300),
            d => d,
        },
        initial_corrupt_check,
        corrupt_check_time,
        ignored,
        name,
    })
}

fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.parse::<u64>().is_ok())
}

/// Parse `name1=url1,name1=url2,name2=url3` into name → URLs.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (n, u) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not in name=url form"))?;
        let u = parse_urls(u, "initial-cluster")?;
        out.entry(n.trim().to_string())
            .or_default()
            .push(u[0].as_str().trim_end_matches('/').to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["strata".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        match parse(v) {
            Ok(Parsed::Run(c)) => Ok(*c),
            Ok(Parsed::Version) => Err("version".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_serve_localhost_with_default_strata_dir() {
        let c = run(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.strata"));
        assert_eq!(c.listen_client_urls[0].as_str(), "http://127.0.0.1:2379/");
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(600));
        assert_eq!(c.initial_cluster["default"], vec!["http://localhost:2380"]);
    }

    #[test]
    fn go_style_flags_bools_and_unknown() {
        let c = run(&[
            "-name",
            "n1",
            "--client-cert-auth",
            "--pre-vote=false",
            "--max-wals=3",
            "-snapshot-count=5",
        ])
        .unwrap();
        assert_eq!(c.name, "n1");
        assert!(!c.pre_vote);
        assert_eq!(c.snapshot_count, 5);
        assert!(c.client_tls.client_cert_auth);
        assert_eq!(c.ignored, vec!["max-wals".to_string()]);
        let c = run(&["--name", "a", "--name", "b"]).unwrap();
        assert_eq!(c.name, "b", "the last of repeated flags wins, as in etcd");
        let e = run(&["--no-such-flag", "1"]).unwrap_err();
        assert!(e.contains("no-such-flag"), "{e}");
        let e = run(&["--election-timeout", "100"]).unwrap_err();
        assert!(e.contains("5 times"), "{e}");
    }

    #[test]
    fn corrupt_check_flags_and_gate() {
        let c = run(&[]).unwrap();
        assert!(!c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::ZERO);
        let c = run(&[
            "--experimental-initial-corrupt-check",
            "--experimental-corrupt-check-time",
            "2s",
        ])
        .unwrap();
        assert!(c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::from_secs(2));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = run(&[
            "--feature-gates=InitialCorruptCheck=true",
            "--corrupt-check-time=3m",
            "--experimental-corrupt-check-time=2s",
        ])
        .unwrap();
        assert!(c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::from_secs(180));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        assert!(run(&["--corrupt-check-time", "soon"]).is_err());
    }

    #[test]
    fn auth_flags_are_used_and_validated() {
        let c = run(&[]).unwrap();
        assert_eq!(c.auth_token, crate::auth::token::TokenSpec::Simple);
        assert_eq!(c.bcrypt_cost, 10);
        assert_eq!(c.auth_token_ttl, Duration::from_secs(300));
        assert!(c.ignored.is_empty());
        let c = run(&[
            "--bcrypt-cost",
            "4",
            "--auth-token-ttl",
            "7",
            "--auth-token",
            "jwt,pub-key=p.pem,priv-key=k.pem,sign-method=ES256,ttl=1m",
        ])
        .unwrap();
        assert_eq!(c.bcrypt_cost, 4);
        assert_eq!(c.auth_token_ttl, Duration::from_secs(7));
        assert!(matches!(
            c.auth_token,
            crate::auth::token::TokenSpec::Jwt { ref sign_method, ttl, .. }
                if sign_method == "ES256" && ttl == Duration::from_secs(60)
        ));
        let e = run(&["--bcrypt-cost", "3"]).unwrap_err();
        assert!(e.contains("invalid bcrypt-cost"), "{e}");
        let e = run(&["--bcrypt-cost", "32"]).unwrap_err();
        assert!(e.contains("invalid bcrypt-cost"), "{e}");
        let e = run(&["--auth-token", "magic"]).unwrap_err();
        assert!(e.contains("unknown token type"), "{e}");
        let e = run(&["--auth-token", "jwt,pub-key=p.pem"]).unwrap_err();
        assert!(e.contains("sign-method"), "{e}");
    }

    #[test]
    fn lease_checkpoint_flags_and_feature_gates() {
        let c = run(&[]).unwrap();
        assert!(!c.lease_checkpoint && !c.lease_checkpoint_persist);
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(300));
        let c = run(&[
            "--experimental-enable-lease-checkpoint",
            "--experimental-lease-checkpoint-interval",
            "1s",
        ])
        .unwrap();
        assert!(c.lease_checkpoint);
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(1));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = run(&["--feature-gates=LeaseCheckpoint=true,LeaseCheckpointPersist=true,StopGRPCServiceOnDefrag=false"]).unwrap();
        assert!(c.lease_checkpoint && c.lease_checkpoint_persist);
        assert_eq!(
            c.ignored,
            vec!["feature-gates StopGRPCServiceOnDefrag".to_string()]
        );
        assert!(run(&["--feature-gates=LeaseCheckpoint"]).is_err());
        assert!(
            run(&["--experimental-enable-lease-checkpoint-interval", "1s"]).is_err(),
            "not an etcd flag"
        );
    }

    #[test]
    fn quota_and_auto_compaction_flags() {
        let c = run(&[]).unwrap();
        assert_eq!(c.quota_bytes(), Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
        assert_eq!(
            c.auto_compaction_revision_interval,
            Duration::from_secs(300)
        );
        let c = run(&["--quota-backend-bytes", "-1"]).unwrap();
        assert_eq!(c.quota_bytes(), None);
        let c = run(&["--quota-backend-bytes=65536"]).unwrap();
        assert_eq!(c.quota_bytes(), Some(65536));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let p = |m: &str, r: &str| parse_auto_compaction(m, r);
        assert_eq!(
            p("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "5s"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5)))
        );
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert!(p("periodic", "soon").is_err());
        assert!(p("hourly", "1").is_err());
        let c = run(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
            "--strata-auto-compaction-revision-interval",
            "200ms",
        ])
        .unwrap();
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(10));
        assert_eq!(
            c.auto_compaction_revision_interval,
            Duration::from_millis(200)
        );
        assert!(run(&["--auto-compaction-mode", "x"]).is_err());
        let help = command().render_help().to_string();
        assert!(
            !help.contains("strata-auto-compaction"),
            "hidden flag in --help"
        );
    }

    #[test]
    fn tls_flags() {
        let c = run(&[]).unwrap();
        assert_eq!(
            (c.client_tls.min_version, c.client_tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert!(!c.client_tls.has_cert() && !c.peer_tls.client_cert_auth);
        let c = run(&[
            "--cert-file=c.pem",
            "--key-file=k.pem",
            "--peer-client-cert-auth",
            "--peer-cert-allowed-cn=etcd",
            "--tls-min-version=TLS1.3",
            "--listen-metrics-urls=http://127.0.0.1:1,https://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("c.pem")));
        assert!(c.peer_tls.client_cert_auth);
        assert_eq!(c.peer_tls.allowed_cn.as_deref(), Some("etcd"));
        assert_eq!(c.peer_tls.min_version, TlsVersion::Tls13);
        assert_eq!(c.listen_metrics_urls.len(), 2);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let e = run(&["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"]).unwrap_err();
        assert!(
            e.contains("min version (TLS1.3) is greater than max version (TLS1.2)"),
            "{e}"
        );
        assert!(run(&["--tls-min-version=TLS1.1"]).is_err());
    }

    #[test]
    fn initial_cluster_parsing() {
        let m =
            parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3")
                .unwrap();
        assert_eq!(m["a"].len(), 2);
        assert!(parse_initial_cluster("garbage").is_err());
    }
}
