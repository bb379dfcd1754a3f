//! Starting and stopping the servers under comparison: Strata and real etcd,
//! one member or a cluster of N on 127.0.0.1 with free ports (found by
//! binding port 0), a fresh data dir each, and the same flags for both
//! (fsync on, `--snapshot-count`, heartbeat and election timing); waiting
//! until every member answers a linearizable read; reading a member's RSS
//! and data dir size.
//!
//! It only ever signals the processes it spawned, by PID, and kills what
//! is left when a [`Cluster`] is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::client;

/// Which server a binary is.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSpec {
    /// "strata" or "etcd".
    pub server: String,
    /// "3.5", "3.4" for etcd; the build for Strata.
    pub version: String,
    pub bin: PathBuf,
}

/// The flags both servers get, so they run with equivalent settings.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub snapshot_count: u64,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// One running (or stopped) member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// "127.0.0.1:port"
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A server of one or more members, owned by the runner.
#[derive(Debug)]
pub struct Cluster {
    pub spec: ServerSpec,
    pub members: Vec<Member>,
    bin: PathBuf,
}

/// `n` distinct free ports on 127.0.0.1, from below the kernel's ephemeral
/// range so that no outgoing connection takes one before its server binds
/// it (see `jepsen::cluster::ports`).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    (0..n)
        .map(|_| jepsen::cluster::ports::free_port())
        .collect()
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// Last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a PID this process spawned and has not reaped yet
    // (the Child is still held), so the PID cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Cluster {
    /// Starts `size` members of `spec` with data dirs under `root` (which
    /// must not exist yet or be empty) and returns without waiting.
    pub fn start(spec: &ServerSpec, size: usize, root: &Path, timing: &Timing) -> Result<Cluster> {
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        let ports = free_ports(2 * size)?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..size).map(|i| format!("m{i}={}", peer(i))).collect();
        let token = format!(
            "cmp-{}",
            root.file_name().and_then(|s| s.to_str()).unwrap_or("x")
        );
        let mut members = Vec::new();
        for i in 0..size {
            let name = format!("m{i}");
            let data_dir = root.join(&name);
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer(i),
                "--initial-advertise-peer-urls",
                &peer(i),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--snapshot-count",
                &timing.snapshot_count.to_string(),
                "--heartbeat-interval",
                &timing.heartbeat_ms.to_string(),
                "--election-timeout",
                &timing.election_ms.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = root.join(format!("{name}.log"));
            let child = spawn(&spec.bin, &args, &log)?;
            members.push(Member {
                name,
                data_dir,
                client_port: ports[2 * i],
                log,
                args,
                child: Some(child),
            });
        }
        Ok(Cluster {
            spec: spec.clone(),
            members,
            bin: spec.bin.clone(),
        })
    }

    /// Client endpoints of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Waits until every member answers a linearizable Range; returns how
    /// long that took. Fails early when a member exits.
    pub fn wait_ready(
        &mut self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        for i in 0..self.members.len() {
            self.wait_member_ready(rt, i, started + timeout)?;
        }
        Ok(started.elapsed())
    }

    fn wait_member_ready(
        &mut self,
        rt: &tokio::runtime::Runtime,
        i: usize,
        deadline: Instant,
    ) -> Result<()> {
        let ep = self.members[i].endpoint();
        loop {
            let m = &mut self.members[i];
            let child = m
                .child
                .as_mut()
                .ok_or_else(|| anyhow!("{} is not running", m.name))?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} {} member {} exited ({status}) before serving; log tail:\n{}",
                    self.spec.server,
                    self.spec.version,
                    m.name,
                    log_tail(&m.log, 20)
                );
            }
            match rt.block_on(client::linearizable_get(
                &ep,
                "compare-ready",
                Duration::from_millis(1000),
            )) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} {} member {} not serving in time: {e:#}; log tail:\n{}",
                        self.spec.server,
                        self.spec.version,
                        m.name,
                        log_tail(&m.log, 20)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// SIGTERM member `i` and wait for it to exit (SIGKILL after `grace`).
    pub fn stop_member(&mut self, i: usize, grace: Duration) {
        if let Some(mut c) = self.members[i].child.take() {
            terminate(&mut c, grace);
        }
    }

    /// Starts member `i` again on its data dir, with the same flags.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        if m.child.is_some() {
            bail!("{} is still running", m.name);
        }
        m.child = Some(spawn(&self.bin, &m.args, &m.log)?);
        Ok(())
    }

    /// Waits until member `i` answers a linearizable Range of `key`.
    pub fn wait_member(
        &mut self,
        rt: &tokio::runtime::Runtime,
        i: usize,
        key: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let ep = self.members[i].endpoint();
        loop {
            match rt.block_on(client::linearizable_get(
                &ep,
                key,
                Duration::from_millis(1000),
            )) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Stops every member (SIGTERM, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i, Duration::from_secs(5));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// VmRSS of a process, in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_vmrss(&status).ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Disk usage of a directory tree in bytes (allocated blocks, like `du`).
pub fn dir_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            total += dir_bytes(&entry?.path())?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_read_in_bytes() {
        let status = "Name:\tetcd\nVmPeak:\t  100 kB\nVmRSS:\t   52340 kB\nThreads:\t9\n";
        assert_eq!(parse_vmrss(status), Some(52340 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn dir_bytes_counts_allocated_blocks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![1u8; 64 * 1024]).unwrap();
        let n = dir_bytes(d.path()).unwrap();
        assert!(n >= 128 * 1024, "{n}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut p = free_ports(6).unwrap();
        p.sort();
        p.dedup();
        assert_eq!(p.len(), 6);
    }
}
