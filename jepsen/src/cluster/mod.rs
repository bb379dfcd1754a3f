//! A real cluster of 3 or 5 server processes (Strata or etcd) for a test run.
//!
//! [`Cluster`] owns the processes (started with etcd-style flags, logs to
//! `<run dir>/logs/<node>.log`), their data dirs, and the network between
//! them: by default one network namespace per node on a harness-made bridge
//! ([`netns`]); with `--no-netns`, 127.0.0.1 ports behind a userspace proxy
//! per node ([`proxy`]). Both networks implement the same link-level faults
//! ([`Net`]): drop traffic from one node to another, or cut a node off from
//! the clients. Dropping the [`Cluster`] kills every process it started (by
//! PID) and tears the network down, also on error and panic.

pub mod netns;
pub mod ports;
pub mod proxy;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
    RangeRequest, StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Which server the cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Strata,
    Etcd,
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerKind::Strata => "strata",
            ServerKind::Etcd => "etcd",
        })
    }
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub server: ServerKind,
    /// The server binary.
    pub bin: PathBuf,
    /// 3 or 5.
    pub nodes: usize,
    /// Network namespaces (default) or the 127.0.0.1 + proxy fallback.
    pub netns: bool,
    /// The run directory: `data/<node>` and `logs/<node>.log` go under it.
    pub dir: PathBuf,
}

/// The default server binary for `server`: for Strata, the newest of
/// `<workspace>/target/{release,debug}/strata`; for etcd, 3.5 from the
/// peers cache, else `/usr/bin/etcd` (3.4).
pub fn default_bin(server: ServerKind) -> anyhow::Result<PathBuf> {
    match server {
        ServerKind::Strata => {
            if let Ok(p) = std::env::var("STRATA_BIN") {
                return Ok(PathBuf::from(p));
            }
            let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
            let newest = ["release", "debug"]
                .iter()
                .map(|p| target.join(p).join("strata"))
                .filter_map(|p| {
                    let m = std::fs::metadata(&p).ok()?.modified().ok()?;
                    Some((m, p))
                })
                .max_by_key(|(m, _)| *m)
                .map(|(_, p)| p);
            newest.context("no strata binary: build it (cargo build -p store) or pass --strata-bin")
        }
        ServerKind::Etcd => {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            let p35 = Path::new(&home).join(".cache/strata/etcd-3.5/bin/etcd");
            for p in [p35, PathBuf::from("/usr/bin/etcd")] {
                if p.exists() {
                    return Ok(p);
                }
            }
            bail!("no etcd binary: run scripts/install-peers.sh or pass --etcd-bin")
        }
    }
}

/// The network between nodes and clients, and its faults.
pub enum Net {
    Netns(netns::NetnsNet),
    Proxy(proxy::ProxyNet),
}

impl Net {
    /// Drops every packet (netns) or connection (proxy) from node `from` to
    /// node `to` (one direction).
    pub fn drop_link(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        match self {
            Net::Netns(n) => n.drop_link(from, to),
            Net::Proxy(p) => p.drop_link(from, to),
        }
    }

    /// Cuts the clients off from node `node` (both directions).
    pub fn cut_client(&mut self, node: usize) -> anyhow::Result<()> {
        match self {
            Net::Netns(n) => n.cut_client(node),
            Net::Proxy(p) => p.cut_client(node),
        }
    }

    /// Removes every link fault.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        match self {
            Net::Netns(n) => n.heal(),
            Net::Proxy(p) => p.heal(),
        }
    }

    /// The links currently dropped, `(from, to)`, and the nodes cut off from
    /// clients.
    pub fn faults(&self) -> (BTreeSet<(usize, usize)>, BTreeSet<usize>) {
        match self {
            Net::Netns(n) => (n.dropped.clone(), n.client_cut.clone()),
            Net::Proxy(p) => p.faults(),
        }
    }
}

/// Addresses of one node.
#[derive(Clone, Debug)]
pub struct NodeAddr {
    /// What the node listens on for clients and for peers.
    pub listen_client: String,
    pub listen_peer: String,
    /// What it advertises (and what clients and peers dial).
    pub client_url: String,
    pub peer_url: String,
}

/// One server process slot.
pub struct Node {
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub addr: NodeAddr,
    child: Option<Child>,
    paused: bool,
    /// Whether its data dir must be joined with `--initial-cluster-state
    /// existing` (it was wiped and re-added as a new member).
    rejoin: bool,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A running cluster; see the module docs.
pub struct Cluster {
    pub opts: ClusterOpts,
    pub nodes: Vec<Node>,
    pub net: Net,
    token: String,
}

impl Cluster {
    /// Makes the network, then starts every node (`--initial-cluster-state
    /// new`) and waits until the cluster has a leader everyone agrees on.
    pub async fn start(opts: ClusterOpts) -> anyhow::Result<Cluster> {
        if !(1..=9).contains(&opts.nodes) {
            bail!("--nodes must be between 1 and 9");
        }
        std::fs::create_dir_all(opts.dir.join("logs"))?;
        std::fs::create_dir_all(opts.dir.join("data"))?;
        let (net, addrs) = if opts.netns {
            let n = netns::NetnsNet::create(opts.nodes)?;
            let addrs = n.addrs();
            (Net::Netns(n), addrs)
        } else {
            let p = proxy::ProxyNet::create(opts.nodes).await?;
            let addrs = p.addrs();
            (Net::Proxy(p), addrs)
        };
        let token = format!("strata-jepsen-{}", std::process::id());
        let nodes = addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let name = format!("n{}", i + 1);
                Node {
                    data_dir: opts.dir.join("data").join(&name),
                    log: opts.dir.join("logs").join(format!("{name}.log")),
                    name,
                    addr,
                    child: None,
                    paused: false,
                    rejoin: false,
                }
            })
            .collect();
        let mut cluster = Cluster {
            opts,
            nodes,
            net,
            token,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
        }
        cluster
            .wait_healthy(Duration::from_secs(60))
            .await
            .context("cluster did not become healthy after start")?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client URL per node (index = node), for workloads.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.addr.client_url.clone())
            .collect()
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.addr.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (if it is not running). A wiped, re-added node joins
    /// with `--initial-cluster-state existing`.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.reap();
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        let initial_cluster = self.initial_cluster();
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.data_dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let state = if node.rejoin { "existing" } else { "new" };
        let args: Vec<String> = vec![
            format!("--name={}", node.name),
            format!("--data-dir={}", node.data_dir.display()),
            format!("--listen-client-urls={}", node.addr.listen_client),
            format!("--advertise-client-urls={}", node.addr.client_url),
            format!("--listen-peer-urls={}", node.addr.listen_peer),
            format!("--initial-advertise-peer-urls={}", node.addr.peer_url),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", self.token),
        ];
        let mut cmd = match &self.net {
            Net::Netns(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &n.ns_name(i)]);
                c.arg(&self.opts.bin);
                c
            }
            Net::Proxy(_) => Command::new(&self.opts.bin),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.opts.bin.display()))?;
        tracing::info!(node = %node.name, pid = child.id(), state, "started");
        if let Net::Proxy(p) = &mut self.net {
            p.set_pid(i, Some(child.id()));
        }
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Forgets children that exited on their own (and logs how).
    pub fn reap(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    tracing::warn!(node = %n.name, %status, "exited");
                    exited.push((i, status.to_string()));
                    n.child = None;
                    n.paused = false;
                }
            }
        }
        exited
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.reap();
        self.nodes[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .pid()
            .with_context(|| format!("{} is not running", self.nodes[i].name))?;
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILLs node `i` and waits for it to exit.
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
            tracing::info!(node = %self.nodes[i].name, "killed");
        }
        self.nodes[i].paused = false;
        if let Net::Proxy(p) = &mut self.net {
            p.set_pid(i, None);
        }
        Ok(())
    }

    /// Stops node `i` gracefully (SIGTERM), waiting up to `limit` for it to
    /// exit before SIGKILL. Returns how long it took.
    pub async fn terminate_node(&mut self, i: usize, limit: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if self.nodes[i].paused {
            self.resume_node(i)?;
        }
        if self.nodes[i].child.is_some() {
            self.signal(i, libc::SIGTERM)?;
            while t.elapsed() < limit {
                let exited = self.nodes[i]
                    .child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if exited {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill_node(i)?;
        tracing::info!(node = %self.nodes[i].name, took = ?t.elapsed(), "terminated");
        Ok(t.elapsed())
    }

    /// SIGSTOPs node `i`.
    pub fn pause_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.nodes[i].paused = true;
        Ok(())
    }

    /// SIGCONTs node `i`.
    pub fn resume_node(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].paused {
            self.signal(i, libc::SIGCONT)?;
            self.nodes[i].paused = false;
        }
        Ok(())
    }

    /// Deletes node `i`'s data dir (it must be stopped) and marks it to
    /// rejoin as an existing cluster's new member.
    pub fn wipe_node(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_some() {
            bail!("wipe of a running node");
        }
        let d = &self.nodes[i].data_dir;
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        self.nodes[i].rejoin = true;
        Ok(())
    }

    /// A gRPC channel to node `i`'s client URL.
    pub async fn channel(&self, i: usize) -> anyhow::Result<Channel> {
        let ch = Endpoint::from_shared(self.nodes[i].addr.client_url.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.nodes[i].name))?;
        Ok(ch)
    }

    pub async fn maintenance(&self, i: usize) -> anyhow::Result<MaintenanceClient<Channel>> {
        Ok(MaintenanceClient::new(self.channel(i).await?))
    }

    pub async fn cluster_client(&self, i: usize) -> anyhow::Result<ClusterClient<Channel>> {
        Ok(ClusterClient::new(self.channel(i).await?))
    }

    /// `(member_id, leader_id, raft_term, revision)` from Maintenance.Status
    /// on node `i`.
    pub async fn status(&self, i: usize) -> anyhow::Result<(u64, u64, u64, i64)> {
        let s = self
            .maintenance(i)
            .await?
            .status(StatusRequest {})
            .await?
            .into_inner();
        let h = s.header.unwrap_or_default();
        Ok((h.member_id, s.leader, s.raft_term, h.revision))
    }

    /// The node index of the current leader, as running, unpaused nodes
    /// report it (None when none knows one).
    pub async fn leader(&mut self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.len() {
            if !self.is_running(i) || self.is_paused(i) {
                ids.push(None);
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(2), self.status(i)).await {
                Ok(Ok((me, l, _, _))) => {
                    ids.push(Some(me));
                    if l != 0 {
                        leader = Some(l);
                    }
                }
                _ => ids.push(None),
            }
        }
        let l = leader?;
        ids.iter().position(|id| *id == Some(l))
    }

    /// Waits until every running node answers Status with the same non-zero
    /// leader, and a linearizable read through each of them succeeds.
    pub async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let err = match self.healthy_once().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                bail!("not healthy after {limit:?}: {err:#}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn healthy_once(&mut self) -> anyhow::Result<()> {
        let mut leaders = BTreeSet::new();
        for i in 0..self.len() {
            if !self.is_running(i) {
                bail!("{} is not running", self.nodes[i].name);
            }
            let (_, leader, _, _) =
                tokio::time::timeout(Duration::from_secs(3), self.status(i)).await??;
            if leader == 0 {
                bail!("{} has no leader", self.nodes[i].name);
            }
            leaders.insert(leader);
            let mut kv = KvClient::new(self.channel(i).await?);
            tokio::time::timeout(
                Duration::from_secs(3),
                kv.range(RangeRequest {
                    key: b"strata-jepsen-health".to_vec(),
                    ..Default::default()
                }),
            )
            .await??;
        }
        if leaders.len() != 1 {
            bail!("members disagree on the leader: {leaders:?}");
        }
        Ok(())
    }

    /// Kills every node (by PID). Used by Drop; idempotent.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                let _ = self.signal(i, libc::SIGCONT);
            }
            let _ = self.kill_node(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        if let Net::Netns(n) = &mut self.net {
            n.teardown();
        }
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub(crate) fn sh(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
