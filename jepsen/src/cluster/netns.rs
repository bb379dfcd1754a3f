//! The default network: one namespace per node, each with a veth pair to a
//! bridge in the root namespace. The host side of the bridge holds `.1` of a
//! private /24, so clients in the root namespace reach every node; node `i`
//! is `.(11 + i)` and serves clients on :2379 and peers on :2380 (no port
//! clashes: every node has its own address).
//!
//! Link faults are iptables `DROP` rules in the receiving node's namespace
//! (`INPUT -s <sender>`), so a partition is silent packet loss, as in a real
//! network. Names carry the harness PID and a sequence number
//! (`sj-<pid hex>g<seq>-n1`, bridge `sjb<pid hex>g<seq>`), which lets a later run remove what a killed run left.

use std::collections::BTreeSet;

use anyhow::Context;

use super::{sh, NodeAddr};

pub struct NetnsNet {
    tag: String,
    bridge: String,
    /// First three octets of the subnet, e.g. `10.211.7`.
    prefix: String,
    nodes: usize,
    pub(crate) dropped: BTreeSet<(usize, usize)>,
    pub(crate) client_cut: BTreeSet<usize>,
    torn_down: bool,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges that a harness which is no longer running
/// left behind (after SIGKILL), killing the processes inside them.
pub fn cleanup_stale() {
    let Ok(list) = sh("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = ns.strip_prefix("sj-") else {
            continue;
        };
        let Some((tag, _)) = rest.split_once('-') else {
            continue;
        };
        let pid_hex = tag.split('g').next().unwrap_or("");
        let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        tracing::warn!(ns, "removing a namespace left by a dead harness");
        if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process inside a namespace this harness
                // family created and whose owner is gone.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = sh("ip", &["netns", "del", ns]);
        let _ = sh("ip", &["link", "del", &format!("sjb{tag}")]);
    }
}

impl NetnsNet {
    pub fn create(nodes: usize) -> anyhow::Result<NetnsNet> {
        cleanup_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        let tag = format!("{pid:x}g{seq}");
        let bridge = format!("sjb{tag}");
        // A /24 inside 10.200.0.0/13 picked from the PID, skipping any subnet
        // already on this host (another run, or a real network).
        let used = sh("ip", &["-4", "addr"]).unwrap_or_default();
        let mut prefix = String::new();
        for k in 0..2000u32 {
            let n = (pid.wrapping_mul(2654435761).wrapping_add(seq * 7 + k)) % 2000;
            let p = format!("10.{}.{}", 200 + n / 250, n % 250);
            if !used.contains(&format!("{p}.")) {
                prefix = p;
                break;
            }
        }
        anyhow::ensure!(!prefix.is_empty(), "no free private /24 for the bridge");
        let mut net = NetnsNet {
            tag,
            bridge,
            prefix,
            nodes,
            dropped: BTreeSet::new(),
            client_cut: BTreeSet::new(),
            torn_down: false,
        };
        // On failure, Drop of `net` removes what was made so far.
        net.build().context("building the namespace network")?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let br = self.bridge.clone();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}.1/24", self.prefix), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns_name(i);
            let host = format!("sj{}h{i}", self.tag);
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            sh("ip", &["link", "set", &host, "master", &br, "up"])?;
            let ip = format!("{}/24", self.ip(i));
            sh(
                "ip",
                &[
                    "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", "eth0",
                ],
            )?;
            sh(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"],
            )?;
            sh(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
            )?;
        }
        tracing::info!(bridge = %br, subnet = %format!("{}.0/24", self.prefix), "network ready");
        Ok(())
    }

    pub fn ns_name(&self, i: usize) -> String {
        format!("sj-{}-n{}", self.tag, i + 1)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 11 + i)
    }

    fn host_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn addrs(&self) -> Vec<NodeAddr> {
        (0..self.nodes)
            .map(|i| {
                let ip = self.ip(i);
                NodeAddr {
                    listen_client: format!("http://{ip}:2379"),
                    listen_peer: format!("http://{ip}:2380"),
                    client_url: format!("http://{ip}:2379"),
                    peer_url: format!("http://{ip}:2380"),
                }
            })
            .collect()
    }

    fn iptables(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let ns = self.ns_name(i);
        let mut full = vec!["netns", "exec", &ns, "iptables", "-w"];
        full.extend_from_slice(args);
        sh("ip", &full).map(|_| ())
    }

    pub fn drop_link(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        if from == to || !self.dropped.insert((from, to)) {
            return Ok(());
        }
        let src = self.ip(from);
        self.iptables(to, &["-A", "INPUT", "-s", &src, "-j", "DROP"])
    }

    pub fn cut_client(&mut self, node: usize) -> anyhow::Result<()> {
        if !self.client_cut.insert(node) {
            return Ok(());
        }
        let host = self.host_ip();
        self.iptables(node, &["-A", "INPUT", "-s", &host, "-j", "DROP"])?;
        self.iptables(node, &["-A", "OUTPUT", "-d", &host, "-j", "DROP"])
    }

    pub fn heal(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for i in 0..self.nodes {
            for chain in ["INPUT", "OUTPUT"] {
                if let Err(e) = self.iptables(i, &["-F", chain]) {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.dropped.clear();
        self.client_cut.clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes the namespaces (with their veths and iptables rules) and the
    /// bridge. Processes must be stopped first. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for i in 0..self.nodes {
            let ns = self.ns_name(i);
            // A process we did not start cannot be here; kill stragglers
            // (e.g. a child of a server) so the namespace can go.
            if let Ok(pids) = sh("ip", &["netns", "pids", &ns]) {
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on a process inside our own namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = sh("ip", &["netns", "del", &ns]);
            let _ = sh("ip", &["link", "del", &format!("sj{}h{i}", self.tag)]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
        tracing::info!(bridge = %self.bridge, "network removed");
    }
}

impl Drop for NetnsNet {
    fn drop(&mut self) {
        self.teardown();
    }
}
