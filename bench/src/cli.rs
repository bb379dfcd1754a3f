//! Command-line interface of `strata-bench`: etcd `benchmark`'s subcommands,
//! flag names and defaults (3.4's set, plus 3.5's `txn-mixed` and the newer
//! `range --limit/--count-only` and `watch-latency --streams/...` flags),
//! and our own `--output` and `--no-progress`. Parsing only: no I/O here;
//! `main.rs` parses, [`crate::workload::run`] executes.
//!
//! Go's flag syntax is accepted where clap allows it: `--flag value`,
//! `--flag=value`, booleans as `--flag` or `--flag=true|false`, durations
//! as `5s`, `1m30s`, `500ms` or `0`, and global flags before or after the
//! subcommand.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "An etcd-benchmark-compatible load generator for etcd v3 gRPC servers.";

const LONG_ABOUT: &str = "\
strata-bench is a low-level load generator for etcd v3 servers (Strata or
etcd). It speaks raw gRPC (no client library) and accepts the subcommands,
flags and defaults of etcd's `benchmark` tool, so the same command line can
drive both tools against both servers.

--conns gRPC connections (HTTP/2 channels) are opened round-robin over
--endpoints; --clients concurrent tasks share them round-robin (client i uses
connection i % conns). Each task issues its next request as soon as the
previous one returns (closed loop), optionally paced by --rate.

Reports: requests/s and latency (min/mean/stddev, p50/p90/p99/p99.9/max from
an HDR histogram with 3 significant digits), errors counted by message. The
text report mimics etcd's (Summary, histogram, latency distribution) and
adds a percentile line; `--output json` prints one JSON object on stdout
(nothing else goes to stdout then). The progress bar goes to stderr and is
hidden when stderr is not a terminal or with --no-progress.

`strata-bench compare [flags]` runs the side-by-side comparison with real
etcd (fresh servers, interleaved repetitions, ratio table, chart, resource
figures); `strata-bench compare --help` lists its flags.

Exit status: 0 when the run completed (even with request errors: they are in
the report), 1 on a fatal error (cannot connect, cannot authenticate, a
setup step failed), 2 on bad flags.";

/// `strata-bench [global flags] <command> [flags]`.
#[derive(Debug, Parser)]
#[command(name = "strata-bench", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every subcommand (etcd's persistent flags).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// gRPC endpoints, comma separated; `host:port`, `http://host:port` or
    /// `https://host:port`.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of gRPC clients (concurrent request loops).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Dial timeout for client connections (0: 5s).
    #[arg(long, global = true, default_value = "0", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Connect only to the leader node (found with Maintenance.Status and
    /// Cluster.MemberList through the first reachable endpoint).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub target_leader: bool,
    /// Provide username:password; authenticates on every connection and
    /// sends the token with each request. Without `:password` the password
    /// is read from a line on stdin.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Verify certificates of HTTPS-enabled servers using this CA bundle.
    #[arg(long, global = true)]
    pub cacert: Option<String>,
    /// Identify HTTPS client using this SSL certificate file.
    #[arg(long, global = true)]
    pub cert: Option<String>,
    /// Identify HTTPS client using this SSL key file.
    #[arg(long, global = true)]
    pub key: Option<String>,
    /// Use full floating point precision in the text report.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub precise: bool,
    /// Accepted for compatibility with etcd's benchmark; does nothing here
    /// (no per-second sample series is printed).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub sample: bool,
    /// Report format: `text` (etcd's layout) or `json` (one object on stdout).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Do not draw the progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// The workloads.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Benchmark put.
    ///
    /// Request i puts key i % --key-space-size (--sequential-keys) or a
    /// random key below it; keys are the varint of the index in a
    /// zero-padded --key-size buffer, as etcd's tool makes them. The value
    /// is one random --val-size string.
    Put(PutArgs),
    /// Benchmark range: `range <key> [end]`.
    Range(RangeArgs),
    /// Benchmark txn-put: each txn puts --txn-ops keys.
    ///
    /// Txn i puts keys (i * txn-ops + j) % key-space-size for j < txn-ops.
    TxnPut(TxnPutArgs),
    /// Benchmark a mixed load of txn-put & txn-range: `txn-mixed [key] [end]`.
    ///
    /// A txn is a read with probability rw-ratio / (1 + rw-ratio), else a
    /// put of key i % key-space-size. Without arguments reads cover every
    /// key (up to --limit), as in etcd's tool; with a key, its prefix; with
    /// key and end (or --end-key), [key, end). Reads and writes are
    /// reported separately (JSON: extra.read, extra.write).
    TxnMixed(TxnMixedArgs),
    /// Benchmark watch: --streams x --watch-per-stream watchers on
    /// --watched-key-total keys, then --put-total puts to those keys.
    ///
    /// Watcher j watches key j % watched-key-total; put i writes the same
    /// list's key i % watched-key-total, so every put is expected at every
    /// watcher of its key. All watchers are created (acknowledged) before
    /// the first put. Events are counted per watcher; the run ends when all
    /// arrived or none arrived for 10 s. Report (JSON): total = events
    /// planned, ok = events received, latency = from just before each Put
    /// was sent to its event's arrival (the send time travels in the
    /// value), requests_per_sec = events/s; extra.events_expected (for the
    /// puts that succeeded), events_received, events_dropped (sum over
    /// watchers of expected - received), events_unexpected, watchers,
    /// puts, put_latency_ms, create_latency_ms.
    Watch(WatchArgs),
    /// Benchmark watch latency: the time from a Put to each watcher's event.
    ///
    /// --streams x --watchers-per-stream watchers on one random key, then
    /// --put-total sequential puts at --put-rate from a separate connection.
    /// Latency is from just before each Put was sent to each event's
    /// arrival; events are counted per watcher as for `watch`.
    WatchLatency(WatchLatencyArgs),
    /// Benchmark watch with get: serializable gets while many unsynced
    /// watchers catch up from an old revision.
    ///
    /// Puts --events values to "watchkey", opens --watchers watchers from
    /// the first of those revisions (watcher i on stream i % --streams),
    /// and issues serializable gets of "abc" from a separate connection
    /// until every watcher received its --events events. The report's
    /// requests are the gets; extra has the event counts and catch_up_secs.
    WatchGet(WatchGetArgs),
    /// Benchmark lease keepalive.
    ///
    /// Every client grants a lease (TTL 100 s) and renews it over its own
    /// keepalive stream until --total renewals are done; the leases are
    /// revoked at the end.
    LeaseKeepalive(LeaseKeepaliveArgs),
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::TxnMixed(_) => "txn-mixed",
            Command::Watch(_) => "watch",
            Command::WatchLatency(_) => "watch-latency",
            Command::WatchGet(_) => "watch-get",
            Command::LeaseKeepalive(_) => "lease-keepalive",
        }
    }
}

/// `put`.
#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// Key size of put request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Total number of put requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys (request i writes key i % key-space-size; else random).
    #[arg(long, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub sequential_keys: bool,
    /// Maximum puts per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Interval to compact database (e.g. --compact-interval=5m); 0 disables.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub compact_interval: Duration,
    /// Delta between current revision and compact revision.
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
}

/// `range <key> [end]`.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Key (or range start).
    #[arg(id = "range_key", value_name = "KEY")]
    pub key: String,
    /// Range end (exclusive); omitted: the single key.
    pub end: Option<String>,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Total number of range requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum range requests per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Maximum number of results to return from range request (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Only returns the count of keys.
    #[arg(long, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub count_only: bool,
}

/// `txn-put`.
#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    /// Key size of txn put.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of txn put.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u64,
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// `txn-mixed [key] [end]`.
#[derive(Debug, Clone, Args)]
pub struct TxnMixedArgs {
    /// Read range start; omitted: the whole key space (as etcd's tool).
    #[arg(id = "read_key", value_name = "KEY")]
    pub key: Option<String>,
    /// Read range end; omitted: every key with the prefix `key`.
    pub end: Option<String>,
    /// Read range end key (etcd's flag; same as the second argument).
    #[arg(long)]
    pub end_key: Option<String>,
    /// Read/write ops ratio (reads are rw/(1+rw) of the txns).
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Linearizable(l) or Serializable(s) reads.
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Key size of mixed txn.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of mixed txn.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Read operation range result limit.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
}

/// `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Total number of keys to be watched (watcher i watches key i % this).
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Number of put requests (put i writes watched key i % watched-key-total).
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Key size of watch request.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub sequential_keys: bool,
}

/// `watch-latency`.
#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Total number of put requests (`--total` is etcd 3.4's name).
    #[arg(long, alias = "total", default_value_t = 1000)]
    pub put_total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// PrevKV enabled on watch requests.
    #[arg(long, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub prevkv: bool,
    /// Key size of watch response.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of watch response (at least 8: the put's send time is in
    /// the first 8 bytes).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

/// `watch-get`.
#[derive(Debug, Clone, Args)]
pub struct WatchGetArgs {
    /// Total number of watchers.
    #[arg(long, default_value_t = 10000)]
    pub watchers: usize,
    /// Total number of watcher streams.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Number of events per watcher.
    #[arg(long, alias = "watch-events", default_value_t = 8)]
    pub events: u64,
}

/// `lease-keepalive`.
#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    /// Total number of lease keepalive requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
}

/// Go-style durations: `0`, `500ms`, `5s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().all(|c| c == '0') {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn etcd_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "--endpoints=http://a:1,b:2",
            "--conns=10",
            "--clients",
            "100",
            "put",
            "--key-size=8",
            "--sequential-keys",
            "--val-size",
            "256",
            "--total=40000",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoints, ["http://a:1", "b:2"]);
        assert_eq!((cli.global.conns, cli.global.clients), (10, 100));
        let Command::Put(p) = cli.command else {
            panic!()
        };
        assert!(p.sequential_keys);
        assert_eq!(
            (p.key_size, p.val_size, p.total, p.key_space_size),
            (8, 256, 40000, 1)
        );

        // Global flags after the subcommand, Go booleans with `=`.
        let cli = Cli::try_parse_from([
            "strata-bench",
            "range",
            "foo",
            "--consistency",
            "s",
            "--count-only=true",
            "--precise",
            "--output",
            "json",
        ])
        .unwrap();
        assert!(cli.global.precise);
        assert_eq!(cli.global.output, Output::Json);
        let Command::Range(r) = cli.command else {
            panic!()
        };
        assert_eq!((r.key.as_str(), r.end, r.count_only), ("foo", None, true));

        assert!(
            Cli::try_parse_from(["strata-bench", "range", "foo", "--consistency", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["strata-bench", "put", "--bogus"]).is_err());
        let cli =
            Cli::try_parse_from(["strata-bench", "watch-get", "--watch-events", "3"]).unwrap();
        let Command::WatchGet(w) = cli.command else {
            panic!()
        };
        assert_eq!(w.events, 3);
    }
}
