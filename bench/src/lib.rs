//! `bench`: Strata's benchmark tooling.
//!
//! The main product is `strata-bench` (`src/main.rs`), a load generator that
//! accepts the subcommands, flags and defaults of etcd's own `benchmark`
//! tool and drives any etcd v3 gRPC server (Strata or etcd) through raw
//! tonic clients of the workspace `proto` crate. Module map:
//!
//! - [`cli`]: the flags (clap), etcd's names and defaults plus our
//!   `--output` and `--no-progress`.
//! - [`compare`]: the Strata-vs-etcd comparison runner (`strata-bench
//!   compare`, also the `strata-compare` binary): fresh servers, interleaved
//!   repetitions, ratio tables, the chart and resource figures.
//! - [`coalesce`]: write coalescing on the client's TCP connections.
//! - [`conn`]: endpoints, TLS, `--user` tokens, `--target-leader`, and the
//!   `--conns` gRPC channels shared round-robin by the `--clients` tasks.
//! - [`keys`]: etcd's key encoding (a zig-zag varint in a zero-padded
//!   `--key-size` buffer) and value generation.
//! - [`limiter`]: the `--rate` pacing shared by all clients.
//! - [`progress`]: the stderr progress bar.
//! - [`report`]: HDR latency histograms, error counts, and the text (etcd
//!   look-alike) and JSON (`--output json`) reports.
//! - [`workload`]: one module per subcommand plus the closed-loop driver and
//!   the watch stream machinery they share.
//!
//! `src/bin/putload.rs` is an older single-purpose Put loader kept for
//! `bench/scripts/catchup.sh` compatibility.

pub mod cli;
pub mod coalesce;
pub mod compare;
pub mod conn;
pub mod keys;
pub mod limiter;
pub mod progress;
pub mod report;
pub mod workload;
