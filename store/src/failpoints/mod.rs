//! failpoints: fault injection for test builds (cargo feature `failpoints`;
//! a default build has none of this module and no failpoint code at all).
//! It owns the runtime control of the `fail` crate's failpoints, the skewable
//! lease clock ([`clock`]), the simulated power loss ([`powerfail`]) and the
//! `/debug/*` HTTP routes that drive all three ([`http`]), served on every
//! client URL (and `--listen-metrics-urls`) next to `/health` and `/metrics`.
//!
//! Failpoints are set at startup with the `FAILPOINTS` environment variable
//! (`name=actions;name=actions`) or at runtime with
//! `PUT /debug/failpoints/<name>` (body: the actions). Actions are the `fail`
//! crate's `[p%][cnt*]task[(arg)]`, chained with `->`: `off`, `return`,
//! `return(arg)`, `sleep(ms)`, `panic`, `panic(msg)`, `print`, `pause`
//! (block until the failpoint is changed or deleted), `yield`, `delay(ms)`;
//! e.g. `25%3*return` or `sleep(200)`. `panic` anywhere crashes the whole
//! process (the panic hook aborts), with the message
//! `failpoint <name> panic` in the log. `sleep` and `pause` block the thread
//! that reached the failpoint (the raft, apply or snapshot thread; for the
//! async ones, a blocking-pool thread, so the runtime keeps running).
//!
//! | failpoint | where | `return` means | `sleep`/`pause` means |
//! |---|---|---|---|
//! | `strata::raft::before_persist` | raft thread, before the raft-engine write of a Ready (entries, HardState) | **unsafe, a planted bug**: write this Ready *without* fsync (a disk that lies about fsync); with `POST /debug/powerfail` it loses acknowledged writes, which the harness must catch | a slow disk: the whole raft loop (ticks, heartbeats, appends) stalls |
//! | `strata::raft::after_persist` | raft thread, after that write, before the Ready's persisted messages (votes, append responses) go out | drop those messages (a lossy network at that point; raft retries) | a stall after the data is durable but before peers and clients learn of it |
//! | `strata::apply::before_apply` | apply thread, before a batch of committed entries is applied | apply the batch, but answer its proposers with `etcdserver: request timed out` (an indefinite failure: the write took effect; the client must not assume it did not) | applying (so acknowledgements, watch events, reads waiting for the applied index) lags behind commit |
//! | `strata::apply::put_value` | apply, each Put | store `<arg><value>` instead of the value (a silently diverged member; for the corruption checks) | — |
//! | `strata::snapshot::save` | snapshot thread, after a snapshot's data is written to its temp file, before fsync and rename | abandon this snapshot (temp file removed, error logged, the raft log is not compacted) | a slow snapshot; `panic` leaves a partial, never-synced temp file |
//! | `strata::snapshot::before_send` | leader, before streaming a snapshot to a follower | the send fails (raft is told, and retries later) | the follower waits longer for its snapshot |
//! | `strata::watch::before_send` | a watch stream, before each response (created, events, progress, cancel) is sent | that response is not sent and the stream ends with `Unavailable` (a client resumes from its last revision + 1 and must see no gap) | a slow watch stream |
//!
//! raft-engine's own failpoints (e.g. `log_file::write::err`) are compiled
//! in too and answer to the same routes.
//!
//! Endpoints (plain text unless noted; all unauthenticated, test builds only):
//! - `GET /debug/failpoints`: one `name=actions` line per set failpoint.
//! - `GET /debug/failpoints/<name>`: its actions, or `404`.
//! - `PUT /debug/failpoints/<name>` with the actions as body: `204`, or `400`
//!   with the parse error.
//! - `DELETE /debug/failpoints/<name>`: `204` (also when it was not set);
//!   threads paused on it resume.
//! - `GET /debug/clock`, `PUT /debug/clock` (JSON): the lease clock, see [`clock`].
//! - `POST /debug/powerfail`: never answers; see [`powerfail`].

pub mod clock;
pub mod http;
pub mod powerfail;

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::RwLock;

/// Before the raft-engine write of a Ready.
pub const RAFT_BEFORE_PERSIST: &str = "strata::raft::before_persist";
/// After the raft-engine write of a Ready.
pub const RAFT_AFTER_PERSIST: &str = "strata::raft::after_persist";
/// Before a batch of committed entries is applied.
pub const APPLY_BEFORE_APPLY: &str = "strata::apply::before_apply";
/// Each applied Put (value corruption, for the corruption checks).
pub const APPLY_PUT_VALUE: &str = "strata::apply::put_value";
/// While writing a snapshot file.
pub const SNAPSHOT_SAVE: &str = "strata::snapshot::save";
/// Before a snapshot is streamed to a follower.
pub const SNAPSHOT_BEFORE_SEND: &str = "strata::snapshot::before_send";
/// Before a watch response is sent.
pub const WATCH_BEFORE_SEND: &str = "strata::watch::before_send";

/// Strata's own failpoints (raft-engine has more).
pub const ALL: &[&str] = &[
    RAFT_BEFORE_PERSIST,
    RAFT_AFTER_PERSIST,
    APPLY_BEFORE_APPLY,
    APPLY_PUT_VALUE,
    SNAPSHOT_SAVE,
    SNAPSHOT_BEFORE_SEND,
    WATCH_BEFORE_SEND,
];

/// Names with actions set, so that async call sites skip the blocking pool
/// for failpoints that are off (the `fail` registry cannot say so cheaply).
static SET: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(Default::default);

/// Record the failpoints set by `FAILPOINTS` (call after
/// `fail::FailScenario::setup`).
pub fn init() {
    let mut set = SET.write();
    set.extend(fail::list().into_iter().map(|(name, _)| name));
}

/// Set `name`'s actions (the `fail` crate's syntax).
pub fn set(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)?;
    SET.write().insert(name.to_string());
    tracing::warn!(failpoint = name, actions, "failpoint set");
    Ok(())
}

/// Remove `name` (threads paused on it resume).
pub fn remove(name: &str) {
    fail::remove(name);
    SET.write().remove(name);
    tracing::warn!(failpoint = name, "failpoint removed");
}

/// Whether `name` has actions set.
pub fn is_set(name: &str) -> bool {
    SET.read().contains(name)
}

/// Every failpoint with actions, as (name, actions), sorted by name.
pub fn list() -> Vec<(String, String)> {
    let mut v = fail::list();
    v.sort();
    v
}

/// Evaluate `name` on a blocking thread (so `sleep` and `pause` do not hold
/// a runtime worker): `Some(arg)` when its action is `return(arg)`. A
/// failpoint that is not set costs one read lock here.
pub async fn eval_async(name: &'static str) -> Option<Option<String>> {
    if !SET.read().contains(name) {
        return None;
    }
    tokio::task::spawn_blocking(move || fail::eval(name, |arg| arg))
        .await
        .ok()
        .flatten()
}

/// Evaluate `name` on this thread: `Some(arg)` when its action is
/// `return(arg)`; `sleep`/`pause` block here, `panic` panics.
pub fn eval(name: &str) -> Option<Option<String>> {
    fail::eval(name, |arg| arg)
}
