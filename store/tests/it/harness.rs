//! harness: start real `strata` (and real etcd) processes on 127.0.0.1 for
//! integration tests, and connect `etcd-client` to them: single members
//! ([`Strata`], [`Etcd`]) and multi-member clusters bootstrapped with
//! `--initial-cluster` ([`Cluster`] for Strata, [`EtcdCluster`] for etcd,
//! started with the same [`peer_flags`]).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running strata process. Killed (SIGKILL) on drop.
pub struct Strata {
    pub child: Child,
    pub data_dir: PathBuf,
    pub endpoint: String,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    /// Extra environment variables (kept across restarts).
    env: Vec<(String, String)>,
}

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// A free TCP port on 127.0.0.1 for a server a test is about to start:
/// below the kernel's ephemeral range and handed out once per test process
/// (`jepsen::cluster::ports`). A port bound to 0 and released (the obvious
/// way) is in the ephemeral range, so an outgoing connection of a
/// concurrently running test could take it before the server binds it
/// (etcd once failed to start with "bind: address already in use" that way).
pub fn free_port() -> u16 {
    jepsen::cluster::ports::free_port().expect("a free port")
}

impl Strata {
    /// Start on a fresh temp data dir with extra flags.
    pub fn start(extra: &[&str]) -> Strata {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Strata::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Start on `data_dir` (kept after the process ends) with extra flags.
    /// The client port is chosen by the OS and read back from the log.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Strata {
        Strata::try_start_in(data_dir, extra)
            .unwrap_or_else(|e| panic!("strata did not start: {e}"))
    }

    /// Like `start_in`, but returns the log text instead of panicking when
    /// the process exits before serving.
    pub fn try_start_in(data_dir: &Path, extra: &[&str]) -> Result<Strata, String> {
        Strata::try_start_named(data_dir, "s1", extra)
    }

    /// Like `try_start_in` with a member name other than `s1`.
    pub fn try_start_named(data_dir: &Path, name: &str, extra: &[&str]) -> Result<Strata, String> {
        Strata::try_start_env(data_dir, name, extra, &[])
    }

    /// Like `try_start_named` with extra environment variables (e.g.
    /// `FAILPOINTS`, or a `RUST_LOG` other than `info`), which restarts
    /// keep. The endpoint is `https://` when the first client listener is.
    pub fn try_start_env(
        data_dir: &Path,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Strata, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut args: Vec<String> = vec![
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into(),
            "--listen-client-urls".into(),
            "http://127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = data_dir.with_extension(format!("log.{}", std::process::id()));
        let mut child = Command::new(strata_bin())
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log2)
                .unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(f, "{line}");
                if line.contains("serving client traffic") {
                    if let Some((scheme, addr)) = listener_of(&line) {
                        let _ = tx.send(format!("{scheme}://{addr}"));
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(endpoint) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Strata {
                    child,
                    data_dir: data_dir.to_path_buf(),
                    endpoint,
                    log,
                    _tmp: None,
                    args,
                    env,
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "timed out; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        connect(&self.endpoint).await
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded).
    pub fn terminate(&mut self) {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Wait (up to 30 s) for the process to exit on its own; its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "the member did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restart on the same data dir with the same flags (after kill/terminate).
    pub fn restart(&mut self) {
        let extra: Vec<String> = self.args[6..].to_vec();
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let tmp = self._tmp.take();
        let name = self.args[1].clone();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut s = Strata::try_start_env(&self.data_dir.clone(), &name, &extra, &env)
            .unwrap_or_else(|e| panic!("strata did not restart: {e}"));
        s._tmp = tmp;
        *self = s;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The flags after the name, data dir and client URL (for restarting
    /// with changes).
    pub fn extra_args(&self) -> Vec<String> {
        self.args[6..].to_vec()
    }

    /// `scheme://addr` of every listener whose start line has `message`
    /// ("serving client traffic", "serving metrics"), in log order; waits
    /// (up to 10 s) until there are at least `n`.
    pub fn listeners(&self, message: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self
                .log_text()
                .lines()
                .filter(|l| l.contains(&format!("\"message\":\"{message}\"")))
                .filter_map(listener_of)
                .map(|(scheme, addr)| format!("{scheme}://{addr}"))
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// (scheme, bound address) of a listener's start log line.
fn listener_of(line: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        line.split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string)
    };
    let url = field("url")?;
    let addr = field("addr")?;
    Some((url.split("://").next()?.to_string(), addr))
}

impl Drop for Strata {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub async fn connect(endpoint: &str) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match etcd_client::Client::connect([endpoint], None).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connect {endpoint}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A running real etcd (from ../shared/PEERS.md; installed by scripts/install-peers.sh).
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    _tmp: tempfile::TempDir,
}

/// Path of the etcd binary for differential tests: `$ETCD_BIN`, else the
/// cached etcd 3.5 from scripts/install-peers.sh, else /usr/bin/etcd (3.4).
pub fn etcd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("STRATA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata"));
    let p35 = cache.join("etcd-3.5/bin/etcd");
    if p35.exists() {
        return p35;
    }
    let p34 = PathBuf::from("/usr/bin/etcd");
    assert!(
        p34.exists(),
        "no etcd binary: run scripts/install-peers.sh (or set ETCD_BIN) before the differential tests"
    );
    p34
}

impl Etcd {
    /// Start the default etcd ([`etcd_bin`]).
    pub fn start(extra: &[&str]) -> Etcd {
        Etcd::start_bin(&etcd_bin(), extra)
    }

    /// Start a specific etcd binary.
    pub fn start_bin(bin: &Path, extra: &[&str]) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let (cp, pp) = (free_port(), free_port());
        let c = format!("http://127.0.0.1:{cp}");
        let p = format!("http://127.0.0.1:{pp}");
        let child = Command::new(bin)
            .args([
                "--name",
                "s1",
                "--data-dir",
                &tmp.path().join("d").to_string_lossy(),
                "--listen-client-urls",
                &c,
                "--advertise-client-urls",
                &c,
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
                "--initial-cluster",
                &format!("s1={p}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        Etcd {
            child,
            endpoint: c,
            _tmp: tmp,
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        let c = connect(&self.endpoint).await;
        // Wait until it serves requests (leader elected).
        let mut c2 = c.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c2.get("health-probe", None).await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert that an etcd-client call failed with exactly this gRPC code and message.
pub fn assert_err<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: tonic::Code,
    msg: &str,
) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!((s.code(), s.message()), (code, msg), "status: {s:?}")
        }
        other => panic!("expected {code:?} {msg:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- clusters

/// Raft timing for test clusters (ms): fast elections, as in etcd's own
/// integration tests.
pub const HEARTBEAT_MS: &str = "50";
pub const ELECTION_MS: &str = "500";

/// The peer and bootstrap flags of one member of a static cluster; identical
/// for Strata and etcd.
pub fn peer_flags(port: u16, initial: &str, token: &str) -> Vec<String> {
    peer_flags_scheme("http", port, initial, token)
}

/// [`peer_flags`] with `https` (or `http`) peer URLs.
pub fn peer_flags_scheme(scheme: &str, port: u16, initial: &str, token: &str) -> Vec<String> {
    let url = format!("{scheme}://127.0.0.1:{port}");
    vec![
        "--listen-peer-urls".into(),
        url.clone(),
        "--initial-advertise-peer-urls".into(),
        url,
        "--initial-cluster".into(),
        initial.into(),
        "--initial-cluster-token".into(),
        token.into(),
        "--heartbeat-interval".into(),
        HEARTBEAT_MS.into(),
        "--election-timeout".into(),
        ELECTION_MS.into(),
    ]
}

/// `n` fresh peer ports on 127.0.0.1 and the matching `--initial-cluster`
/// value (members `n0`, `n1`, ...).
pub fn initial_cluster(n: usize) -> (Vec<u16>, String) {
    initial_cluster_scheme("http", n)
}

/// [`initial_cluster`] with `https` (or `http`) peer URLs.
pub fn initial_cluster_scheme(scheme: &str, n: usize) -> (Vec<u16>, String) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let initial = (0..n)
        .map(|i| format!("n{i}={scheme}://127.0.0.1:{}", ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    (ports, initial)
}

/// Start Strata members concurrently (each waits for a leader before serving).
pub fn start_all(dir: &Path, specs: Vec<(String, Vec<String>)>) -> Vec<Result<Strata, String>> {
    let handles: Vec<_> = specs
        .into_iter()
        .map(|(name, flags)| {
            let d = dir.join(&name);
            std::thread::spawn(move || {
                let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
                Strata::try_start_named(&d, &name, &f)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A running multi-member Strata cluster; `nodes[i]` is `None` once a test
/// has taken member `i` away. Members are killed on drop.
pub struct Cluster {
    pub nodes: Vec<Option<Strata>>,
    /// Peer ports of the initial members.
    pub ports: Vec<u16>,
    /// The `--initial-cluster` value they started with.
    pub initial: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Start `n` members (token `it-cluster`).
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Start `n` members with extra flags for every member.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_scheme("http", n, |_| extra.clone())
    }

    /// Start `n` members on `scheme` (`http` or `https`) peer URLs, member
    /// `i` with the extra flags `extra(i)` (e.g. its own peer certificate).
    pub fn start_scheme(scheme: &str, n: usize, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let (ports, initial) = initial_cluster_scheme(scheme, n);
        let specs = (0..n)
            .map(|i| {
                let mut flags = peer_flags_scheme(scheme, ports[i], &initial, "it-cluster");
                flags.extend(extra(i));
                (format!("n{i}"), flags)
            })
            .collect();
        let nodes = start_all(tmp.path(), specs)
            .into_iter()
            .map(|r| Some(r.unwrap_or_else(|e| panic!("member did not start: {e}"))))
            .collect();
        Cluster {
            nodes,
            ports,
            initial,
            _tmp: tmp,
        }
    }

    /// The directory holding the members' data dirs.
    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }

    /// Member `i` (panics if a test took it away).
    pub fn node(&mut self, i: usize) -> &mut Strata {
        self.nodes[i].as_mut().unwrap()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].as_ref().unwrap().endpoint.clone()
    }

    pub async fn client(&self, i: usize) -> etcd_client::Client {
        self.nodes[i].as_ref().unwrap().client().await
    }

    /// Index of the member that reports itself leader (waits for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(n) = n else { continue };
                let mut c = n.client().await;
                if let Ok(s) = c.status().await {
                    if s.leader() != 0 && s.leader() == s.header().unwrap().member_id() {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running multi-member real etcd cluster, bootstrapped exactly like
/// [`Cluster`] (same member names, [`peer_flags`] and token). Members are
/// killed on drop. Readiness is the caller's business (the first successful
/// linearizable read, as for [`Etcd`]).
pub struct EtcdCluster {
    pub children: Vec<Child>,
    pub endpoints: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl EtcdCluster {
    /// Start `n` members of the default etcd ([`etcd_bin`]).
    pub fn start(n: usize, extra: &[&str]) -> EtcdCluster {
        EtcdCluster::start_bin(&etcd_bin(), n, extra)
    }

    /// Start `n` members of a specific etcd binary, with extra flags for
    /// every member. Each member's log is `<tmp>/n<i>.log`.
    pub fn start_bin(bin: &Path, n: usize, extra: &[&str]) -> EtcdCluster {
        let tmp = tempfile::tempdir().unwrap();
        let (ports, initial) = initial_cluster(n);
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let c = format!("http://127.0.0.1:{}", free_port());
            let log = std::fs::File::create(tmp.path().join(format!("n{i}.log"))).unwrap();
            let child = Command::new(bin)
                .args(["--name", &format!("n{i}"), "--data-dir"])
                .arg(tmp.path().join(format!("n{i}")))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args(peer_flags(*port, &initial, "it-cluster"))
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            children.push(child);
            endpoints.push(c);
        }
        EtcdCluster {
            children,
            endpoints,
            _tmp: tmp,
        }
    }

    /// The log of member `i`.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self._tmp.path().join(format!("n{i}.log"))).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Puts `key` = `value` and returns the revision of that write.
pub async fn put_rev(
    c: &mut etcd_client::Client,
    key: impl Into<Vec<u8>>,
    value: impl Into<Vec<u8>>,
) -> i64 {
    let r = c.put(key, value, None).await.unwrap();
    r.header().unwrap().revision()
}

/// The store's current revision, read from a range's response header.
pub async fn current_rev(c: &mut etcd_client::Client) -> i64 {
    let r = c.get("\0", None).await.unwrap();
    r.header().unwrap().revision()
}

/// Waits (serializable reads, up to 30 s) until `key` holds `want` on the
/// member behind `c`.
pub async fn wait_value(c: &mut etcd_client::Client, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c
            .get(
                key,
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await
        {
            if r.kvs().first().map(|kv| kv.value()) == Some(want.as_bytes()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{key} never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
