//! harness: start real `strata` (and real etcd) processes on 127.0.0.1 for
//! integration tests, and connect `etcd-client` to them.

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
}

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
                    if let Some(addr) = line
                        .split("\"addr\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                    {
                        let _ = tx.send(addr.to_string());
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Strata {
                    child,
                    data_dir: data_dir.to_path_buf(),
                    endpoint: format!("http://{addr}"),
                    log,
                    _tmp: None,
                    args,
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

    /// Restart on the same data dir with the same flags (after kill/terminate).
    pub fn restart(&mut self) {
        let extra: Vec<String> = self.args[6..].to_vec();
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let tmp = self._tmp.take();
        let name = self.args[1].clone();
        let mut s = Strata::try_start_named(&self.data_dir.clone(), &name, &extra)
            .unwrap_or_else(|e| panic!("strata did not restart: {e}"));
        s._tmp = tmp;
        *self = s;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
