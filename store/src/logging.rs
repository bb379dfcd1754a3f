//! logging: structured logs through `tracing`, with raft-rs's slog output
//! bridged into the same subscriber.

use tracing_subscriber::EnvFilter;

/// A slog drain that forwards raft-rs log records to `tracing`.
pub struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &slog::Record<'_>, kv: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = KvFmt(String::new());
        let _ = slog::KV::serialize(kv, r, &mut fields);
        let _ = slog::KV::serialize(&r.kv(), r, &mut fields);
        let msg = r.msg().to_string();
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", fields = %fields.0, "{msg}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", fields = %fields.0, "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", fields = %fields.0, "{msg}"),
            _ => tracing::debug!(target: "raft", fields = %fields.0, "{msg}"),
        }
        Ok(())
    }
}

struct KvFmt(String);

impl slog::Serializer for KvFmt {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(&format!("{key}={val}"));
        Ok(())
    }
}

/// Install the global subscriber. `level` is an etcd log level; `RUST_LOG`
/// overrides it. `format` is `json` (etcd's default) or `console`.
pub fn init(level: &str, format: &str) {
    let level = match level {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "panic" | "fatal" => "error",
        _ => "info",
    };
    // raft-rs logs every election step at info; keep it at warn unless debugging.
    let default = if level == "debug" {
        "debug".to_string()
    } else {
        format!("{level},raft=warn")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "console" {
        b.try_init()
    } else {
        b.json().flatten_event(true).try_init()
    };
}
