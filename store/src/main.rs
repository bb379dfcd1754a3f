//! `strata`: parse etcd-style flags, start the member, serve until
//! SIGINT/SIGTERM, then stop gracefully: stop accepting client requests,
//! let in-flight ones finish (bounded), hand leadership over if this member
//! leads, stop, exit 0.

use store::config::{self, Parsed};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf` symbol, under
/// the prefixed name tikv-jemalloc-sys builds it with). A background thread
/// returns freed pages to the OS within about a second, also while the
/// process is idle; by default they linger for 10 s and are only returned
/// when some thread allocates again, so the RSS of an idle server kept the
/// peak of the last burst (request buffers, raft batches, snapshot
/// encoding).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static u8> =
    Some(&b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

fn main() {
    // Failpoints named in the FAILPOINTS env var (test builds only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(feature = "failpoints")]
    store::failpoints::init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        if let Err(e) = store::offline::main(args[2..].to_vec()) {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = match config::parse(args) {
        Ok(Parsed::Run(c)) => *c,
        Ok(Parsed::Version) => {
            println!("strata Version: {}", env!("CARGO_PKG_VERSION"));
            println!("Emulated etcd Version: 3.6.0 (default of --emulated-etcd-version)");
            return;
        }
        Err(e) => e.exit(),
    };
    store::logging::init(&cfg.log_level, &cfg.log_format);
    // A panic on any thread (raft, apply, snapshot, a handler) means an
    // invariant broke: stop the whole process rather than keep serving
    // possibly inconsistent data.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "fatal: a thread panicked; aborting");
        default_hook(info);
        std::process::abort();
    }));
    if let Err(e) = run(cfg) {
        tracing::error!(error = format!("{e:#}"), "strata failed");
        eprintln!("strata: {e:#}");
        std::process::exit(1);
    }
}

/// How long a graceful stop waits for in-flight client requests.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn run(cfg: config::Config) -> anyhow::Result<()> {
    for f in &cfg.ignored {
        tracing::warn!(flag = %f, "flag accepted for etcd compatibility but has no effect in this version");
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), name = %cfg.name, data_dir = %cfg.data_dir.display(),
        emulated_etcd_version = %cfg.emulated_etcd_version, "starting strata");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let node = store::node::Node::start(cfg).await?;
        node.spawn_background();
        let mut peer_handles = store::server::serve_peers(node.clone()).await?;
        // Metrics and health answer before a leader is known (readyz says
        // so), as kubeadm's probes expect.
        peer_handles.extend(store::server::serve_metrics(node.clone()).await?);
        // etcd checks before serving peers too; Strata's raft already runs
        // here, and serving HashKv first lets members restarted together
        // check one another.
        if node.cfg.initial_corrupt_check {
            if let Err(e) = store::corrupt::initial_check(&node).await {
                node.stop();
                return Err(e);
            }
        }
        tokio::spawn(store::corrupt::monitor(node.clone()));
        // Like etcd (whose client listeners wait on ReadyNotify), serve
        // clients only once this member is ready: a leader is known and
        // everything committed so far is applied. Otherwise the first
        // requests would see "no leader" / "not leader" and a leaderless Status.
        while let Err(e) = node.linearizable().await {
            if node.removed.is_cancelled() {
                anyhow::bail!("{}", store::raft::transport::REMOVED_MSG);
            }
            tracing::info!(error = %e, "waiting for a leader before serving clients");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // The listeners are bound here (their ports are what gets
        // published) but accept connections only once the member's name
        // and client URLs are applied, as etcd's do.
        let handles = store::server::serve(node.clone()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let removed = tokio::select! {
            _ = tokio::signal::ctrl_c() => false,
            _ = term.recv() => false,
            _ = node.removed.cancelled() => true,
        };
        tracing::info!("shutting down");
        let drain = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        if !removed {
            // Graceful stop: the client listeners stop accepting, in-flight
            // requests finish (bounded) while raft still runs, then a leader
            // hands over so the others need not wait an election timeout.
            node.stop_serving.cancel();
            for h in handles {
                if tokio::time::timeout_at(drain, h).await.is_err() {
                    tracing::warn!("in-flight client requests did not finish in time");
                    break;
                }
            }
            node.transfer_leadership_on_stop().await;
        }
        node.stop();
        // Peers keep their raft streams open; the raft thread has stopped,
        // so give the peer listeners only a moment.
        let stop = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        for h in peer_handles {
            let _ = tokio::time::timeout_at(stop, h).await;
        }
        tracing::info!("stopped");
        if removed {
            // etcd exits the same way once it learns it was removed.
            anyhow::bail!("{}", store::raft::transport::REMOVED_MSG);
        }
        Ok(())
    })
}
