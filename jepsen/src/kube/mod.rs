//! A real, unmodified kube-apiserver on the cluster under test, and kubectl
//! to drive it: the Kubernetes end-to-end proof of the drop-in claim.
//!
//! - [`KubeBins`]: where kube-apiserver and kubectl are
//!   (`scripts/install-kube.sh` builds and caches them).
//! - [`ApiServer`]: one kube-apiserver process, started through
//!   `scripts/kube-apiserver.sh` (which makes its CA, serving cert,
//!   service-account keys, token file and kubeconfig), killed on drop.
//! - [`Kubectl`]: kubectl bound to that kubeconfig.
//! - [`e2e`]: the object, list, watch, conflict, event-TTL, compaction,
//!   health and metrics checks; [`faults`]: Kubernetes traffic while the
//!   store's leader is killed, a member is partitioned and one restarts;
//!   [`metrics`]: kube-apiserver's request-latency histograms, for the
//!   Strata-vs-etcd comparison.

pub mod e2e;
pub mod faults;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The kube-apiserver and kubectl binaries.
#[derive(Clone, Debug)]
pub struct KubeBins {
    pub apiserver: PathBuf,
    pub kubectl: PathBuf,
    /// `scripts/kube-apiserver.sh`.
    pub launcher: PathBuf,
}

impl KubeBins {
    /// `KUBE_APISERVER` and `KUBECTL` if set, else the binaries
    /// `scripts/install-kube.sh` caches under `~/.cache/strata/kube/`.
    pub fn find() -> anyhow::Result<KubeBins> {
        let cache = std::env::var("STRATA_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
                Path::new(&home).join(".cache/strata")
            });
        let pick = |var: &str, name: &str| -> anyhow::Result<PathBuf> {
            let p = std::env::var(var)
                .map(PathBuf::from)
                .unwrap_or_else(|_| cache.join("kube").join(name));
            if !p.exists() {
                bail!(
                    "no {name} at {} (run scripts/install-kube.sh, or set {var})",
                    p.display()
                );
            }
            Ok(p)
        };
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh");
        Ok(KubeBins {
            apiserver: pick("KUBE_APISERVER", "kube-apiserver")?,
            kubectl: pick("KUBECTL", "kubectl")?,
            launcher,
        })
    }
}

/// A running kube-apiserver; killed (by PID) on drop.
pub struct ApiServer {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    pub kubectl: Kubectl,
    bins: KubeBins,
    etcd_servers: Vec<String>,
    extra: Vec<String>,
}

impl ApiServer {
    /// Starts kube-apiserver with its state (certs, keys, kubeconfig) and
    /// log in `dir`, on every URL of `etcd_servers`, with `extra` flags, and
    /// waits until `/readyz` answers ok.
    pub fn start(
        bins: &KubeBins,
        dir: &Path,
        etcd_servers: &[String],
        extra: &[String],
    ) -> anyhow::Result<ApiServer> {
        std::fs::create_dir_all(dir)?;
        let port = crate::cluster::ports::free_port()?;
        let mut api = ApiServer {
            child: None,
            dir: dir.to_path_buf(),
            port,
            log: dir.join("kube-apiserver.log"),
            kubectl: Kubectl {
                bin: bins.kubectl.clone(),
                kubeconfig: dir.join("kubeconfig"),
            },
            bins: bins.clone(),
            etcd_servers: etcd_servers.to_vec(),
            extra: extra.to_vec(),
        };
        api.spawn()?;
        api.wait_ready(Duration::from_secs(120))?;
        Ok(api)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bins.launcher)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--etcd-servers")
            .arg(self.etcd_servers.join(","))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--")
            .args(&self.extra)
            .env("KUBE_APISERVER", &self.bins.apiserver)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bins.launcher.display()))?;
        tracing::info!(pid = child.id(), port = self.port, "kube-apiserver started");
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `GET /readyz` says ok (or the process exits).
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "kube-apiserver exited ({st}) before it was ready; log tail:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if self.kubeconfig_ready() {
                if let Ok(out) = self.kubectl.run(&["get", "--raw", "/readyz"]) {
                    if out.trim() == "ok" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {limit:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn kubeconfig_ready(&self) -> bool {
        self.kubectl.kubeconfig.exists()
    }

    /// The PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it (SIGKILL, by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// kubectl with the apiserver's kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// A kubectl command with `--kubeconfig` set and a 30 s request timeout.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s");
        c
    }

    /// Runs kubectl; its stdout on success, an error carrying stderr if it
    /// exits non-zero.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let (out, err, ok) = self.output(args, input)?;
        if !ok {
            bail!("kubectl {}: {}", args.join(" "), err.trim());
        }
        Ok(out)
    }

    /// Runs kubectl and returns (stdout, stderr, success).
    pub fn output(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<(String, String, bool)> {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        ))
    }
}

/// What one [`run_on`] did: the scenario's steps, the fault run's report
/// (if asked for) and kube-apiserver's request latencies over the run.
#[derive(Debug)]
pub struct RunSummary {
    pub server: crate::cluster::ServerKind,
    pub e2e: e2e::Report,
    pub faults: Option<faults::Report>,
    /// kube-apiserver's request latencies per verb over the run.
    pub latencies: std::collections::BTreeMap<String, metrics::Histogram>,
    /// kube-apiserver's storage-call latencies per operation over the run.
    pub storage: std::collections::BTreeMap<String, metrics::Histogram>,
}

/// Starts a cluster of `opts`, kube-apiserver on all of its members, runs
/// the [`e2e`] scenario, then [`e2e::load`] with `load` objects (if not 0)
/// and, with `with_faults`, the [`faults`] run; returns kube-apiserver's
/// request and storage latencies over all of it (from `/metrics`).
pub async fn run_on(
    opts: crate::cluster::ClusterOpts,
    bins: &KubeBins,
    load: usize,
    with_faults: bool,
) -> anyhow::Result<RunSummary> {
    let server = opts.server;
    let dir = opts.dir.clone();
    let mut cluster = crate::cluster::Cluster::start(opts).await?;
    let endpoints = cluster.client_urls();
    let mut api = ApiServer::start(bins, &dir.join("kube"), &endpoints, &e2e::apiserver_flags())?;
    let with_log =
        |e: anyhow::Error| anyhow::anyhow!("{e:#}\nkube-apiserver log tail:\n{}", api.log_tail(30));
    let scrape = api.kubectl.run(&["get", "--raw", "/metrics"])?;
    let before = metrics::request_durations(&scrape);
    let storage_before = metrics::storage_durations(&scrape);
    let e2e = e2e::run(&api, &endpoints).await.map_err(with_log)?;
    if load > 0 {
        e2e::load(&api, load).map_err(with_log)?;
    }
    let faults = if with_faults {
        Some(faults::run(&api, &mut cluster).await.map_err(with_log)?)
    } else {
        None
    };
    let scrape = api.kubectl.run(&["get", "--raw", "/metrics"])?;
    let latencies = metrics::since(&metrics::request_durations(&scrape), &before);
    let storage = metrics::since(&metrics::storage_durations(&scrape), &storage_before);
    api.stop();
    cluster.stop_all();
    Ok(RunSummary {
        server,
        e2e,
        faults,
        latencies,
        storage,
    })
}

/// The verbs the request-latency table shows.
pub const TABLE_VERBS: [&str; 5] = ["GET", "LIST", "POST", "PUT", "DELETE"];
/// The operations the storage-latency table shows.
pub const TABLE_OPERATIONS: [&str; 6] =
    ["get", "list", "listWithCount", "create", "update", "delete"];

/// Markdown tables of kube-apiserver's request latencies per verb and of
/// its storage-call latencies per operation (ms), one column group per run,
/// with Strata/etcd ratios of the means when two servers ran. Means come
/// from the histograms' sums; the quantiles are interpolated within
/// kube-apiserver's buckets (whose first bound is 50 ms for requests and
/// 5 ms for storage calls in v1.20), so they are coarse.
pub fn latency_table(runs: &[RunSummary]) -> String {
    let mut out =
        String::from("kube-apiserver requests (apiserver_request_duration_seconds), ms:\n\n");
    out += &table(runs, |r| &r.latencies, &TABLE_VERBS, "verb");
    out += "\nkube-apiserver storage calls (etcd_request_duration_seconds), ms:\n\n";
    out += &table(runs, |r| &r.storage, &TABLE_OPERATIONS, "operation");
    out
}

fn table(
    runs: &[RunSummary],
    pick: fn(&RunSummary) -> &std::collections::BTreeMap<String, metrics::Histogram>,
    keys: &[&str],
    what: &str,
) -> String {
    let mut out = format!("| {what} |");
    for r in runs {
        out += &format!(" {0} n | {0} mean | {0} p50 | {0} p99 |", r.server);
    }
    // Strata over etcd, whichever ran first.
    let pair = (runs.len() == 2 && runs[0].server != runs[1].server).then(|| {
        if runs[0].server == crate::cluster::ServerKind::Strata {
            (&runs[0], &runs[1])
        } else {
            (&runs[1], &runs[0])
        }
    });
    if let Some((a, b)) = pair {
        out += &format!(" mean {}/{} |", a.server, b.server);
    }
    out += "\n|---|";
    for _ in runs {
        out += "---|---|---|---|";
    }
    if pair.is_some() {
        out += "---|";
    }
    out += "\n";
    let empty = metrics::Histogram::default();
    for key in keys {
        if runs
            .iter()
            .all(|r| pick(r).get(*key).is_none_or(|h| h.count == 0.0))
        {
            continue;
        }
        out += &format!("| {key} |");
        for r in runs {
            let h = pick(r).get(*key).unwrap_or(&empty);
            out += &format!(
                " {} | {:.2} | {:.1} | {:.1} |",
                h.count,
                h.mean() * 1e3,
                h.quantile(0.5) * 1e3,
                h.quantile(0.99) * 1e3
            );
        }
        if let Some((a, b)) = pair {
            let (ha, hb) = (
                pick(a).get(*key).unwrap_or(&empty),
                pick(b).get(*key).unwrap_or(&empty),
            );
            if hb.mean() > 0.0 {
                out += &format!(" {:.2} |", ha.mean() / hb.mean());
            } else {
                out += " - |";
            }
        }
        out += "\n";
    }
    out
}
