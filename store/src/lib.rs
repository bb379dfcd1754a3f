//! Strata's store: a Raft-replicated MVCC key-value store that speaks
//! etcd's v3 gRPC API.
//!
//! Module map (requests flow top to bottom):
//! - [`config`]: etcd-compatible flags and `ETCD_*` environment variables.
//! - [`server`]: one file per etcd gRPC service, plus `/health`, `/metrics`
//!   and the `/v3/*` JSON gateway (`server::gateway`); [`server::tls`] holds
//!   TLS for the client, metrics and peer listeners and for dialing peers.
//! - [`node`]: a running member; `propose`, `linearizable` (ReadIndex), recovery.
//! - [`raft`]: the raft thread (raft-rs `RawNode` on raft-engine) and the apply thread.
//! - [`request`]: the replicated operation carried in every raft entry.
//! - [`apply`]: the state machine and etcd's KV/Txn/lease/alarm semantics.
//! - [`mvcc`]: the in-memory multi-version key space and its event log.
//! - [`lessor`]: the leader's lease-expiry clock.
//! - [`quota`]: the backend quota and the NOSPACE alarm.
//! - [`compactor`]: auto-compaction (`--auto-compaction-mode`).
//! - [`snapshot`]: CRC-checked state-machine snapshot files.
//! - [`membership`]: etcd-compatible member and cluster IDs.
//! - [`reconfig`]: MemberAdd/Remove/Update/Promote (validation, conf changes).
//! - [`offline`]: `strata snapshot status|restore` (etcdutl-style tools).
//! - [`corrupt`]: the initial and periodic corruption checks across members.
//! - [`metrics`], [`logging`], [`error`].
//! - `failpoints` (cargo feature `failpoints`, test builds only): runtime
//!   fault injection over HTTP on the client port: `/debug/failpoints`
//!   (the `fail` crate's failpoints at raft persist, apply, snapshot and
//!   watch send), `/debug/clock` (skew the lease clock) and
//!   `/debug/powerfail` (drop every unsynced write and abort).

pub mod apply;
pub mod auth;
pub mod compactor;
pub mod config;
pub mod corrupt;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod lessor;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod offline;
pub mod quota;
pub mod raft;
pub mod reconfig;
pub mod request;
pub mod server;
pub mod snapshot;

pub use error::{Error, Result};
