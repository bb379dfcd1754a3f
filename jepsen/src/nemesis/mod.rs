//! Nemeses: the faults a run injects into its [`Cluster`], on a schedule
//! drawn from the run's seed.
//!
//! [`Schedule::generate`] turns `(seed, enabled kinds, nodes, time limit)`
//! into a list of [`Step`]s (same inputs, same list); [`run`] plays it, one
//! fault at a time: apply, hold, undo. Every fault becomes one [`Fault`]
//! line in `faults.jsonl` (times in nanoseconds since the run start, the
//! clock the history uses). [`heal_all`] undoes everything at the end:
//! network healed, paused nodes resumed, failpoints and clock offsets
//! cleared, dead nodes restarted (a node that will not come back is
//! replaced by a wiped member), and waits for a healthy cluster.
//!
//! Kinds: `partition` (isolate a node, isolate the leader, random
//! majority/minority halves, majorities ring, one-way drop, client link
//! cut), `kill` (SIGKILL + restart), `pause` (SIGSTOP/SIGCONT), `member`
//! (remove a member, wipe it, add it back), `compact` (compaction at a
//! recent revision, defragment), `disk` (bit flip or truncated tail in a
//! killed minority node's data file, then restart), `clock` and `failpoint`
//! (HTTP debug endpoints of a Strata built with `--features failpoints`;
//! skipped with a logged note when the server lacks them).

pub mod disk;
pub mod http;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::etcdserverpb::{
    kv_client::KvClient, CompactionRequest, DefragmentRequest, MemberAddRequest, MemberListRequest,
    MemberRemoveRequest,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::history::Fault;

/// A family of faults, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisKind {
    Partition,
    Kill,
    Pause,
    Member,
    Compact,
    Disk,
    Clock,
    Failpoint,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 8] = [
        NemesisKind::Partition,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Member,
        NemesisKind::Compact,
        NemesisKind::Disk,
        NemesisKind::Clock,
        NemesisKind::Failpoint,
    ];

    /// Parses `partition,kill`, `all` or `none`.
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<NemesisKind>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(NemesisKind::ALL),
                "none" => {}
                p => out.push(p.parse()?),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl FromStr for NemesisKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "partition" => NemesisKind::Partition,
            "kill" => NemesisKind::Kill,
            "pause" => NemesisKind::Pause,
            "member" => NemesisKind::Member,
            "compact" => NemesisKind::Compact,
            "disk" => NemesisKind::Disk,
            "clock" => NemesisKind::Clock,
            "failpoint" => NemesisKind::Failpoint,
            _ => bail!("unknown nemesis {s:?} (partition, kill, pause, member, compact, disk, clock, failpoint, all, none)"),
        })
    }
}

/// Which node a process fault hits: a fixed one, or whoever leads when the
/// fault starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Node(usize),
    /// The leader (falls back to `fallback` when no leader is known).
    Leader {
        fallback: usize,
    },
}

/// How to damage a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Corruption {
    BitFlip,
    Truncate,
    /// `POST /debug/powerfail`: the node loses every write it did not
    /// fsync and aborts (Strata built with `--features failpoints`).
    PowerFail,
}

/// One fault, fully determined by the schedule (except `Target::Leader`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Action {
    /// Cut `nodes` off from the rest, both directions.
    Isolate {
        nodes: Vec<usize>,
    },
    IsolateLeader {
        fallback: usize,
    },
    /// Random halves: `minority` against the rest.
    Halves {
        minority: Vec<usize>,
    },
    /// Every node sees a majority, no two the same (3 nodes: a bridge).
    MajoritiesRing {
        order: Vec<usize>,
    },
    /// Packets from `from` to everyone else are dropped; the other way works.
    OneWay {
        from: usize,
    },
    /// The clients cannot reach `node`.
    ClientCut {
        node: usize,
    },
    Kill {
        target: Target,
    },
    Pause {
        target: Target,
    },
    /// MemberRemove, wipe, MemberAdd, start with `--initial-cluster-state existing`.
    MemberReplace {
        node: usize,
    },
    /// Compact at `behind` revisions before the current one.
    Compact {
        behind: i64,
    },
    Defrag {
        node: usize,
    },
    Disk {
        node: usize,
        how: Corruption,
        pick: u64,
    },
    /// Offset `node`'s clock by `offset_ms`.
    Clock {
        node: usize,
        offset_ms: i64,
    },
    /// Enable failpoint `name` with `action` on `node`.
    Failpoint {
        node: usize,
        name: String,
        action: String,
    },
}

impl Action {
    /// The nemesis name written to `faults.jsonl`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Isolate { .. } => "partition-isolate",
            Action::IsolateLeader { .. } => "partition-leader",
            Action::Halves { .. } => "partition-halves",
            Action::MajoritiesRing { .. } => "partition-ring",
            Action::OneWay { .. } => "partition-one-way",
            Action::ClientCut { .. } => "partition-client",
            Action::Kill { .. } => "kill",
            Action::Pause { .. } => "pause",
            Action::MemberReplace { .. } => "member-replace",
            Action::Compact { .. } => "compact",
            Action::Defrag { .. } => "defrag",
            Action::Disk {
                how: Corruption::BitFlip,
                ..
            } => "bitflip",
            Action::Disk {
                how: Corruption::Truncate,
                ..
            } => "truncate",
            Action::Disk {
                how: Corruption::PowerFail,
                ..
            } => "powerfail",
            Action::Clock { .. } => "clock",
            Action::Failpoint { .. } => "failpoint",
        }
    }
}

/// One scheduled fault: apply at `at_ms` after the run start, undo
/// `hold_ms` later.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub hold_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// Failpoints the `failpoint` nemesis picks from, with the action it sets
/// (the `fail` crate's syntax). Each is a fault a correct server survives:
/// a slow disk, lost raft messages, applies answered as timeouts (the
/// write still takes effect: an indefinite failure), abandoned or failed
/// snapshots, watch streams that break. Strata's planted bugs
/// (`before_persist` `return`: skip fsync; `put_value`) are not here.
pub const FAILPOINTS: &[(&str, &str)] = &[
    ("strata::raft::before_persist", "sleep(100)"),
    ("strata::raft::after_persist", "20%return"),
    ("strata::apply::before_apply", "10%return"),
    ("strata::apply::before_apply", "sleep(50)"),
    ("strata::snapshot::save", "return"),
    ("strata::snapshot::before_send", "return"),
    ("strata::watch::before_send", "5%return"),
];

#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The schedule for `seed`: faults of the `kinds` spread over
    /// `time_limit`, one at a time, each held 2–6 s with 1–3 s gaps.
    pub fn generate(
        seed: u64,
        kinds: &[NemesisKind],
        nodes: usize,
        time_limit: Duration,
    ) -> Schedule {
        // Which kind comes next, and each step's parameters, are drawn from
        // separate streams.
        let mut krng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
        let mut rng = StdRng::seed_from_u64(seed.rotate_left(32) ^ 0x0073_7465_7073);
        let limit = time_limit.as_millis() as u64;
        let mut steps = Vec::new();
        let mut t = 1000 + rng.gen_range(0..1000);
        let minority = (nodes - 1) / 2;
        while !kinds.is_empty() && t + 1000 < limit {
            let kind = kinds[krng.gen_range(0..kinds.len())];
            let node = rng.gen_range(0..nodes);
            let mut hold = rng.gen_range(2000..6000);
            let action = match kind {
                NemesisKind::Partition => match rng.gen_range(0..6) {
                    0 => Action::Isolate { nodes: vec![node] },
                    1 => Action::IsolateLeader { fallback: node },
                    2 => {
                        let mut all: Vec<usize> = (0..nodes).collect();
                        all.shuffle(&mut rng);
                        let mut m = all[..minority.max(1)].to_vec();
                        m.sort();
                        Action::Halves { minority: m }
                    }
                    3 => {
                        let mut order: Vec<usize> = (0..nodes).collect();
                        order.shuffle(&mut rng);
                        Action::MajoritiesRing { order }
                    }
                    4 => Action::OneWay { from: node },
                    _ => Action::ClientCut { node },
                },
                NemesisKind::Kill => Action::Kill {
                    target: if rng.gen_bool(0.4) {
                        Target::Leader { fallback: node }
                    } else {
                        Target::Node(node)
                    },
                },
                NemesisKind::Pause => Action::Pause {
                    target: if rng.gen_bool(0.4) {
                        Target::Leader { fallback: node }
                    } else {
                        Target::Node(node)
                    },
                },
                NemesisKind::Member => {
                    hold = 1000;
                    Action::MemberReplace { node }
                }
                NemesisKind::Compact => {
                    hold = 500;
                    if rng.gen_bool(0.6) {
                        Action::Compact {
                            behind: rng.gen_range(1..50),
                        }
                    } else {
                        Action::Defrag { node }
                    }
                }
                NemesisKind::Disk => Action::Disk {
                    node,
                    how: match rng.gen_range(0..3) {
                        0 => Corruption::BitFlip,
                        1 => Corruption::Truncate,
                        _ => Corruption::PowerFail,
                    },
                    pick: rng.gen(),
                },
                NemesisKind::Clock => Action::Clock {
                    node,
                    offset_ms: rng.gen_range(-20_000..20_000),
                },
                NemesisKind::Failpoint => {
                    let (name, action) = FAILPOINTS[rng.gen_range(0..FAILPOINTS.len())];
                    Action::Failpoint {
                        node,
                        name: name.into(),
                        action: action.into(),
                    }
                }
            };
            steps.push(Step {
                at_ms: t,
                hold_ms: hold,
                action,
            });
            t += hold + rng.gen_range(1000..3000);
        }
        Schedule { seed, steps }
    }

    /// One line per step, for the console and the log.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "nemesis schedule (seed {}): {} faults\n",
            self.seed,
            self.steps.len()
        );
        for st in &self.steps {
            let mut v = serde_json::to_value(&st.action).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("fault");
            }
            s.push_str(&format!(
                "  {:>7.1}s  {:<18} {:>5.1}s  {}\n",
                st.at_ms as f64 / 1000.0,
                st.action.name(),
                st.hold_ms as f64 / 1000.0,
                v
            ));
        }
        s
    }
}

/// `faults.jsonl`, timed against the run start.
pub struct FaultLog {
    out: Mutex<BufWriter<File>>,
    start: Instant,
}

impl FaultLog {
    pub fn create(dir: &Path, start: Instant) -> anyhow::Result<FaultLog> {
        Ok(FaultLog {
            out: Mutex::new(BufWriter::new(File::create(dir.join("faults.jsonl"))?)),
            start,
        })
    }

    /// Nanoseconds since the run start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn write(&self, f: &Fault) -> anyhow::Result<()> {
        let mut out = self.out.lock().unwrap();
        serde_json::to_writer(&mut *out, f)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    }
}

/// What undoing an applied fault takes.
enum Undo {
    Nothing,
    Net,
    Restart(usize),
    Resume(usize),
    Clock(usize),
    Failpoint(usize, String),
}

/// Settings the server-side nemeses probe once.
#[derive(Default)]
struct Support {
    failpoints: Option<bool>,
    clock: Option<bool>,
    powerfail: Option<bool>,
}

/// Plays `schedule` against `cluster` until it ends or `stop` fires, then
/// undoes the fault in progress. Does not heal everything: call
/// [`heal_all`] afterwards.
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    log: &FaultLog,
    stop: CancellationToken,
    on_fault: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<()> {
    let mut support = Support::default();
    for step in &schedule.steps {
        let at = log.start + Duration::from_millis(step.at_ms);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = stop.cancelled() => break,
        }
        let start = log.now();
        on_fault(step.action.name());
        let mut detail = serde_json::to_value(&step.action)?;
        let (nodes, undo) = match apply(cluster, &step.action, &mut support, &mut detail).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(fault = step.action.name(), "failed: {e:#}");
                detail["error"] = json!(format!("{e:#}"));
                (Vec::new(), Undo::Nothing)
            }
        };
        if !matches!(undo, Undo::Nothing) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step.hold_ms)) => {}
                _ = stop.cancelled() => {}
            }
        }
        if let Err(e) = undo_fault(cluster, undo).await {
            tracing::warn!(fault = step.action.name(), "undo failed: {e:#}");
            detail["undo_error"] = json!(format!("{e:#}"));
        }
        log.write(&Fault {
            start,
            end: Some(log.now()),
            kind: step.action.name().into(),
            nodes,
            detail,
        })?;
        on_fault("");
        if stop.is_cancelled() {
            break;
        }
    }
    Ok(())
}

async fn resolve(cluster: &mut Cluster, t: Target, detail: &mut serde_json::Value) -> usize {
    match t {
        Target::Node(n) => n,
        Target::Leader { fallback } => {
            let l = cluster.leader().await;
            detail["leader"] = json!(l);
            l.unwrap_or(fallback)
        }
    }
}

fn isolate(cluster: &mut Cluster, group: &[usize]) -> anyhow::Result<()> {
    for a in 0..cluster.len() {
        for b in 0..cluster.len() {
            if group.contains(&a) != group.contains(&b) {
                cluster.net.drop_link(a, b)?;
            }
        }
    }
    Ok(())
}

async fn apply(
    cluster: &mut Cluster,
    action: &Action,
    support: &mut Support,
    detail: &mut serde_json::Value,
) -> anyhow::Result<(Vec<usize>, Undo)> {
    let n = cluster.len();
    Ok(match action {
        Action::Isolate { nodes } => {
            isolate(cluster, nodes)?;
            (nodes.clone(), Undo::Net)
        }
        Action::IsolateLeader { fallback } => {
            let l = resolve(
                cluster,
                Target::Leader {
                    fallback: *fallback,
                },
                detail,
            )
            .await;
            isolate(cluster, &[l])?;
            (vec![l], Undo::Net)
        }
        Action::Halves { minority } => {
            isolate(cluster, minority)?;
            (minority.clone(), Undo::Net)
        }
        Action::MajoritiesRing { order } => {
            if n < 4 {
                // Three nodes: a bridge. The first two cannot talk; both
                // still see the third, so each sees a majority.
                cluster.net.drop_link(order[0], order[1])?;
                cluster.net.drop_link(order[1], order[0])?;
            } else {
                for (pa, &a) in order.iter().enumerate() {
                    for (pb, &b) in order.iter().enumerate() {
                        let d = (pa + n - pb) % n;
                        if a != b && d != 1 && d != n - 1 {
                            cluster.net.drop_link(a, b)?;
                        }
                    }
                }
            }
            let (dropped, _) = cluster.net.faults();
            detail["dropped"] = json!(dropped.into_iter().collect::<Vec<_>>());
            ((0..n).collect(), Undo::Net)
        }
        Action::OneWay { from } => {
            for b in (0..n).filter(|b| b != from) {
                cluster.net.drop_link(*from, b)?;
            }
            (vec![*from], Undo::Net)
        }
        Action::ClientCut { node } => {
            cluster.net.cut_client(*node)?;
            (vec![*node], Undo::Net)
        }
        Action::Kill { target } => {
            let t = resolve(cluster, *target, detail).await;
            if !cluster.is_running(t) {
                bail!("{} is not running", cluster.nodes[t].name);
            }
            cluster.kill_node(t)?;
            (vec![t], Undo::Restart(t))
        }
        Action::Pause { target } => {
            let t = resolve(cluster, *target, detail).await;
            if !cluster.is_running(t) {
                bail!("{} is not running", cluster.nodes[t].name);
            }
            cluster.pause_node(t)?;
            (vec![t], Undo::Resume(t))
        }
        Action::MemberReplace { node } => {
            member_replace(cluster, *node, detail).await?;
            (vec![*node], Undo::Nothing)
        }
        Action::Compact { behind } => {
            let i = some_live(cluster)?;
            let (_, _, _, rev) = cluster.status(i).await?;
            let at = (rev - behind).max(1);
            detail["revision"] = json!(at);
            detail["node"] = json!(i);
            let mut kv = KvClient::new(cluster.channel(i).await?);
            let r = kv
                .compact(CompactionRequest {
                    revision: at,
                    physical: false,
                })
                .await;
            if let Err(e) = r {
                // An older compaction already covers it: not a failure.
                detail["result"] = json!(e.message());
            }
            (vec![i], Undo::Nothing)
        }
        Action::Defrag { node } => {
            if !cluster.is_running(*node) {
                bail!("{} is not running", cluster.nodes[*node].name);
            }
            cluster
                .maintenance(*node)
                .await?
                .defragment(DefragmentRequest {})
                .await?;
            (vec![*node], Undo::Nothing)
        }
        Action::Disk { node, how, pick } => {
            // Power loss rides on the failpoints build's debug routes.
            if *how == Corruption::PowerFail
                && !probe(
                    cluster,
                    *node,
                    &mut support.powerfail,
                    "/debug/failpoints",
                    detail,
                )
                .await?
            {
                return Ok((vec![], Undo::Nothing));
            }
            disk::fault(cluster, *node, *how, *pick, detail).await?;
            (vec![*node], Undo::Nothing)
        }
        Action::Clock { node, offset_ms } => {
            if !probe(cluster, *node, &mut support.clock, "/debug/clock", detail).await? {
                return Ok((vec![], Undo::Nothing));
            }
            set_clock(cluster, *node, *offset_ms).await?;
            (vec![*node], Undo::Clock(*node))
        }
        Action::Failpoint { node, name, action } => {
            if !probe(
                cluster,
                *node,
                &mut support.failpoints,
                "/debug/failpoints",
                detail,
            )
            .await?
            {
                return Ok((vec![], Undo::Nothing));
            }
            let url = cluster.nodes[*node].addr.client_url.clone();
            let (code, body) =
                http::request(&url, "PUT", &format!("/debug/failpoints/{name}"), action).await?;
            if !(200..300).contains(&code) {
                bail!("PUT /debug/failpoints/{name}: HTTP {code}: {body}");
            }
            (vec![*node], Undo::Failpoint(*node, name.clone()))
        }
    })
}

/// Whether the server serves the debug endpoint `path`; when not, notes it
/// in `detail` and the log (once) and the fault is skipped.
async fn probe(
    cluster: &Cluster,
    node: usize,
    known: &mut Option<bool>,
    path: &str,
    detail: &mut serde_json::Value,
) -> anyhow::Result<bool> {
    if known.is_none() {
        let url = cluster.nodes[node].addr.client_url.clone();
        let ok = matches!(http::request(&url, "GET", path, "").await, Ok((c, _)) if (200..300).contains(&c));
        if !ok {
            tracing::warn!(
                "{path} is not served by {} (build Strata with --features failpoints): skipping these faults",
                cluster.opts.server
            );
        }
        *known = Some(ok);
    }
    if *known == Some(false) {
        detail["skipped"] = json!(format!("server does not serve {path}"));
        return Ok(false);
    }
    Ok(true)
}

async fn set_clock(cluster: &Cluster, node: usize, offset_ms: i64) -> anyhow::Result<()> {
    let url = cluster.nodes[node].addr.client_url.clone();
    let body = json!({ "offset_ms": offset_ms }).to_string();
    let (code, body) = http::request(&url, "PUT", "/debug/clock", &body).await?;
    if !(200..300).contains(&code) {
        bail!("PUT /debug/clock: HTTP {code}: {body}");
    }
    Ok(())
}

async fn undo_fault(cluster: &mut Cluster, undo: Undo) -> anyhow::Result<()> {
    match undo {
        Undo::Nothing => Ok(()),
        Undo::Net => cluster.net.heal(),
        Undo::Restart(i) => cluster.start_node(i),
        Undo::Resume(i) => cluster.resume_node(i),
        Undo::Clock(i) => set_clock(cluster, i, 0).await,
        Undo::Failpoint(i, name) => {
            let url = cluster.nodes[i].addr.client_url.clone();
            http::request(&url, "DELETE", &format!("/debug/failpoints/{name}"), "")
                .await
                .map(|_| ())
        }
    }
}

/// A running, unpaused node.
fn some_live(cluster: &mut Cluster) -> anyhow::Result<usize> {
    (0..cluster.len())
        .find(|&i| cluster.is_running(i) && !cluster.is_paused(i))
        .context("no live node")
}

/// Removes node `i` from the membership, wipes it, adds it back as a new
/// member and starts it with `--initial-cluster-state existing`.
pub async fn member_replace(
    cluster: &mut Cluster,
    i: usize,
    detail: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let peer_url = cluster.nodes[i].addr.peer_url.clone();
    let via = (0..cluster.len())
        .find(|&j| j != i && cluster.is_running(j) && !cluster.is_paused(j))
        .context("no other live node to change membership through")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let id = loop {
        if Instant::now() > deadline {
            bail!("member list: {last}");
        }
        match cluster.cluster_client(via).await {
            Ok(mut c) => match c
                .member_list(MemberListRequest { linearizable: true })
                .await
            {
                Ok(r) => {
                    let m = r.into_inner().members;
                    break m
                        .iter()
                        .find(|m| m.peer_ur_ls.contains(&peer_url))
                        .map(|m| m.id);
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if let Some(id) = id {
        detail["removed_id"] = json!(format!("{id:x}"));
        retry(deadline, || async {
            cluster
                .cluster_client(via)
                .await?
                .member_remove(MemberRemoveRequest { id })
                .await?;
            Ok(())
        })
        .await
        .context("member remove")?;
    }
    cluster.kill_node(i)?;
    cluster.wipe_node(i)?;
    let added = retry(deadline, || async {
        let r = cluster
            .cluster_client(via)
            .await?
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.clone()],
                is_learner: false,
            })
            .await?;
        Ok(r.into_inner().member.map(|m| m.id).unwrap_or(0))
    })
    .await
    .context("member add")?;
    detail["added_id"] = json!(format!("{added:x}"));
    cluster.start_node(i)
}

async fn retry<T, F, Fut>(deadline: Instant, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Heals everything: network, paused nodes, clock offsets and failpoints,
/// dead nodes (restarted; one that will not stay up is replaced by a wiped
/// member), then waits for a healthy cluster. Logs a `heal` fault line.
pub async fn heal_all(cluster: &mut Cluster, log: &FaultLog) -> anyhow::Result<()> {
    let start = log.now();
    let mut detail = json!({});
    cluster.net.heal()?;
    for i in 0..cluster.len() {
        if cluster.is_paused(i) {
            cluster.resume_node(i)?;
        }
    }
    let exited = cluster.reap();
    if !exited.is_empty() {
        detail["exited"] = json!(exited);
    }
    let mut restarted = Vec::new();
    for i in 0..cluster.len() {
        if !cluster.is_running(i) {
            cluster.start_node(i)?;
            restarted.push(i);
        }
    }
    detail["restarted"] = json!(restarted);
    // Best effort: a server without the debug endpoints answers 404.
    for i in 0..cluster.len() {
        let url = cluster.nodes[i].addr.client_url.clone();
        for name in FAILPOINTS.iter().map(|(n, _)| n) {
            let _ = http::request(&url, "DELETE", &format!("/debug/failpoints/{name}"), "").await;
        }
        let _ = http::request(&url, "PUT", "/debug/clock", r#"{"offset_ms":0}"#).await;
    }
    let mut result = cluster.wait_healthy(Duration::from_secs(45)).await;
    if result.is_err() {
        let down: Vec<usize> = (0..cluster.len())
            .filter(|&i| !cluster.is_running(i))
            .collect();
        for &i in &down {
            tracing::warn!(node = %cluster.nodes[i].name, "does not stay up after healing: replacing it with a wiped member");
            let mut d = json!({});
            let r = member_replace(cluster, i, &mut d).await;
            detail[format!("replaced-{}", cluster.nodes[i].name)] = match r {
                Ok(()) => d,
                Err(e) => json!(format!("{e:#}")),
            };
        }
        if !down.is_empty() {
            result = cluster.wait_healthy(Duration::from_secs(45)).await;
        }
    }
    if let Err(e) = &result {
        detail["error"] = json!(format!("{e:#}"));
    }
    log.write(&Fault {
        start,
        end: Some(log.now()),
        kind: "heal".into(),
        nodes: (0..cluster.len()).collect(),
        detail,
    })?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_kinds_respected() {
        let kinds = NemesisKind::parse_list("partition,kill").unwrap();
        let a = Schedule::generate(7, &kinds, 3, Duration::from_secs(60));
        let b = Schedule::generate(7, &kinds, 3, Duration::from_secs(60));
        let c = Schedule::generate(8, &kinds, 3, Duration::from_secs(60));
        assert_eq!(a.steps, b.steps);
        assert_ne!(a.steps, c.steps);
        assert!(a.steps.len() >= 5, "{}", a.describe());
        for s in &a.steps {
            assert!(s.at_ms + 1000 < 60_000);
            let name = s.action.name();
            assert!(name.starts_with("partition") || name == "kill", "{name}");
        }
        // Steps never overlap.
        for w in a.steps.windows(2) {
            assert!(w[0].at_ms + w[0].hold_ms < w[1].at_ms);
        }
    }

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(NemesisKind::parse_list("all").unwrap().len(), 8);
        assert!(NemesisKind::parse_list("none").unwrap().is_empty());
        assert!(NemesisKind::parse_list("kill,bogus").is_err());
        assert!(Schedule::generate(1, &[], 3, Duration::from_secs(60))
            .steps
            .is_empty());
    }
}
