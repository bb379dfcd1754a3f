//! The `--no-netns` fallback network: every node listens on 127.0.0.1 ports
//! that nobody dials directly; it advertises the ports of two userspace TCP
//! proxies in front of them, one for peers and one for clients.
//!
//! A peer proxy knows which node opened a connection by finding the
//! connecting socket in `/proc/net/tcp` and then in the file descriptors of
//! the node processes. A dropped link `from -> to` makes the proxy of `to`
//! refuse new connections from `from` and close the open ones; a client cut
//! does the same for every connection to the client proxy. This is coarser
//! than packet loss (a connection that `to` opened towards `from` keeps
//! carrying both directions), so one-way faults are only approximate here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::NodeAddr;

#[derive(Default)]
struct State {
    dropped: BTreeSet<(usize, usize)>,
    client_cut: BTreeSet<usize>,
    pids: Vec<Option<u32>>,
}

pub struct ProxyNet {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    addrs: Vec<NodeAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// The inode of the TCP socket whose local end is 127.0.0.1:`port`.
fn socket_inode(port: u16) -> Option<String> {
    let want = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want.as_str())).then(|| f.get(9).map(|s| s.to_string()))?
    })
}

/// Which node process owns the socket at the other end of `peer`.
fn owner(peer: SocketAddr, pids: &[Option<u32>]) -> Option<usize> {
    let inode = socket_inode(peer.port())?;
    let target = format!("socket:[{inode}]");
    pids.iter().enumerate().find_map(|(i, pid)| {
        let pid = (*pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .map(|l| l.to_string_lossy() == target)
                    .unwrap_or(false)
            })
            .then_some(i)
    })
}

impl ProxyNet {
    pub async fn create(nodes: usize) -> anyhow::Result<ProxyNet> {
        let state = Arc::new(Mutex::new(State {
            pids: vec![None; nodes],
            ..Default::default()
        }));
        let (changed, _) = watch::channel(0u64);
        let mut net = ProxyNet {
            state,
            changed,
            addrs: Vec::new(),
            tasks: Vec::new(),
        };
        for to in 0..nodes {
            let real_client = super::ports::free_port()?;
            let real_peer = super::ports::free_port()?;
            let client_l = TcpListener::bind("127.0.0.1:0").await?;
            let peer_l = TcpListener::bind("127.0.0.1:0").await?;
            net.addrs.push(NodeAddr {
                listen_client: format!("http://127.0.0.1:{real_client}"),
                listen_peer: format!("http://127.0.0.1:{real_peer}"),
                client_url: format!("http://127.0.0.1:{}", client_l.local_addr()?.port()),
                peer_url: format!("http://127.0.0.1:{}", peer_l.local_addr()?.port()),
            });
            net.tasks
                .push(net.serve(client_l, real_client, to, LinkKind::Client));
            net.tasks
                .push(net.serve(peer_l, real_peer, to, LinkKind::Peer));
        }
        Ok(net)
    }

    fn serve(&self, l: TcpListener, real: u16, to: usize, kind: LinkKind) -> JoinHandle<()> {
        let state = self.state.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = l.accept().await else {
                    continue;
                };
                let from = match kind {
                    LinkKind::Client => None,
                    LinkKind::Peer => {
                        let pids = state.lock().unwrap().pids.clone();
                        tokio::task::spawn_blocking(move || owner(peer, &pids))
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let blocked = {
                    let s = state.clone();
                    move || {
                        let s = s.lock().unwrap();
                        match kind {
                            LinkKind::Client => s.client_cut.contains(&to),
                            LinkKind::Peer => from.is_some_and(|f| s.dropped.contains(&(f, to))),
                        }
                    }
                };
                if blocked() {
                    drop(conn);
                    continue;
                }
                let mut rx = changed.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", real)).await else {
                        return;
                    };
                    let mut conn = conn;
                    let copy = tokio::io::copy_bidirectional(&mut conn, &mut upstream);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            r = rx.changed() => {
                                if r.is_err() || blocked() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
    }

    pub fn addrs(&self) -> Vec<NodeAddr> {
        self.addrs.clone()
    }

    pub fn set_pid(&mut self, node: usize, pid: Option<u32>) {
        self.state.lock().unwrap().pids[node] = pid;
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn drop_link(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        self.state.lock().unwrap().dropped.insert((from, to));
        self.bump();
        Ok(())
    }

    pub fn cut_client(&mut self, node: usize) -> anyhow::Result<()> {
        self.state.lock().unwrap().client_cut.insert(node);
        self.bump();
        Ok(())
    }

    pub fn heal(&mut self) -> anyhow::Result<()> {
        {
            let mut s = self.state.lock().unwrap();
            s.dropped.clear();
            s.client_cut.clear();
        }
        self.bump();
        Ok(())
    }

    pub fn faults(&self) -> (BTreeSet<(usize, usize)>, BTreeSet<usize>) {
        let s = self.state.lock().unwrap();
        (s.dropped.clone(), s.client_cut.clone())
    }
}

#[derive(Clone, Copy)]
enum LinkKind {
    Client,
    Peer,
}

impl Drop for ProxyNet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
