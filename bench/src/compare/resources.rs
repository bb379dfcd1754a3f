//! Resource figures of one single-node server after a bulk load: load N keys
//! of 256 B with the load generator's sequential put, then read the
//! server's RSS (/proc/PID/status VmRSS), time `etcdctl snapshot save`,
//! measure the data dir (`du`-style), and time a restart (SIGTERM, start on
//! the same data dir, until a linearizable get of a loaded key succeeds).
//!
//! Called by `compare::run` for Strata and for etcd 3.5 in turn; a failing
//! step is recorded in `errors` and the others still run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::generator::{self, Generator};
use super::parse::Measurement;
use super::server::{self, Cluster, ServerSpec, Timing};

/// What was measured for one server.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ResourceFigures {
    pub server: String,
    pub version: String,
    pub keys: u64,
    pub load: Option<Measurement>,
    pub rss_after_load_bytes: Option<u64>,
    pub data_dir_bytes: Option<u64>,
    pub snapshot_ms: Option<f64>,
    pub snapshot_bytes: Option<u64>,
    pub restart_ms: Option<f64>,
    pub rss_after_restart_bytes: Option<u64>,
    pub errors: Vec<String>,
}

/// Inputs of a resource measurement.
pub struct ResourceRun<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub generator: Generator,
    pub generator_bin: &'a Path,
    pub etcdctl: &'a Path,
    pub timing: &'a Timing,
    pub keys: u64,
    pub workdir: PathBuf,
    pub timeout: Duration,
}

/// The generator argv that loads `keys` distinct keys (sequential, 256 B).
pub fn load_command(keys: u64) -> Vec<String> {
    let k = keys.to_string();
    [
        "put",
        "--key-size",
        "8",
        "--val-size",
        "256",
        "--sequential-keys",
        "--key-space-size",
        &k,
        "--total",
        &k,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The first key the sequential put writes (varint 0 in an 8-byte key),
/// the key read after the restart.
const FIRST_KEY: &str = "\0\0\0\0\0\0\0\0";

impl ResourceRun<'_> {
    /// Measures `spec` (a fresh single node under `workdir/<server>`).
    pub fn measure(&self, spec: &ServerSpec) -> ResourceFigures {
        let mut fig = ResourceFigures {
            server: spec.server.clone(),
            version: spec.version.clone(),
            keys: self.keys,
            ..Default::default()
        };
        let root = self
            .workdir
            .join(format!("{}-{}", spec.server, spec.version));
        if let Err(e) = self.measure_into(spec, &root, &mut fig) {
            fig.errors.push(format!("{e:#}"));
        }
        let _ = std::fs::remove_dir_all(&root);
        fig
    }

    fn measure_into(
        &self,
        spec: &ServerSpec,
        root: &Path,
        fig: &mut ResourceFigures,
    ) -> Result<()> {
        let mut cluster = Cluster::start(spec, 1, root, self.timing)?;
        cluster.wait_ready(self.rt, Duration::from_secs(60))?;
        let ep = cluster.endpoints();
        let argv = generator::argv(self.generator, &ep, 10, 100, &load_command(self.keys));
        let m = generator::run(
            self.generator,
            self.generator_bin,
            &argv,
            root,
            "load",
            self.timeout,
        )
        .context("bulk load")?;
        if m.ok < self.keys {
            fig.errors.push(format!(
                "load: only {} of {} puts succeeded",
                m.ok, self.keys
            ));
        }
        fig.load = Some(m);
        // Let the last batch settle before reading RSS.
        std::thread::sleep(Duration::from_secs(1));
        let pid = cluster.members[0].pid().context("server not running")?;
        fig.rss_after_load_bytes = Some(server::rss_bytes(pid)?);

        let snap = root.join("snapshot.db");
        let t = Instant::now();
        let out = Command::new(self.etcdctl)
            .args([
                "--endpoints",
                &ep[0],
                "--command-timeout",
                "300s",
                "snapshot",
                "save",
            ])
            .arg(&snap)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.etcdctl.display()))?;
        let took = t.elapsed();
        if out.status.success() {
            fig.snapshot_ms = Some(ms(took));
            fig.snapshot_bytes = std::fs::metadata(&snap).ok().map(|m| m.len());
        } else {
            fig.errors.push(format!(
                "etcdctl snapshot save failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = std::fs::remove_file(&snap);
        fig.data_dir_bytes = Some(server::dir_bytes(&cluster.members[0].data_dir)?);

        cluster.stop_member(0, Duration::from_secs(60));
        let t = Instant::now();
        cluster.restart_member(0)?;
        cluster
            .wait_member(self.rt, 0, FIRST_KEY, Duration::from_secs(300))
            .context("restart: no linearizable get within 300 s")?;
        fig.restart_ms = Some(ms(t.elapsed()));
        let pid = cluster.members[0].pid().context("server not running")?;
        fig.rss_after_restart_bytes = Some(server::rss_bytes(pid)?);
        cluster.stop();
        if fig.load.as_ref().is_some_and(|m| m.ok == 0) {
            bail!("the bulk load wrote nothing");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_command_writes_n_distinct_keys() {
        let a = load_command(1000);
        assert_eq!(a[0], "put");
        let at = |f: &str| a[a.iter().position(|s| s == f).unwrap() + 1].clone();
        assert_eq!(at("--key-space-size"), "1000");
        assert_eq!(at("--total"), "1000");
        assert_eq!(at("--val-size"), "256");
        assert!(a.contains(&"--sequential-keys".to_string()));
    }
}
