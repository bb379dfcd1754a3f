//! `strata`: parse etcd-style flags, start the member, serve until SIGINT/SIGTERM.

use store::config::{self, Parsed};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
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
        let handles = store::server::serve(node.clone()).await?;
        tokio::spawn(node.clone().publish());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let removed = tokio::select! {
            _ = tokio::signal::ctrl_c() => false,
            _ = term.recv() => false,
            _ = node.removed.cancelled() => true,
        };
        tracing::info!("shutting down");
        node.stop();
        for h in handles.into_iter().chain(peer_handles) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), h).await;
        }
        if removed {
            // etcd exits the same way once it learns it was removed.
            anyhow::bail!("{}", store::raft::transport::REMOVED_MSG);
        }
        Ok(())
    })
}
