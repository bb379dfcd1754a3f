//! The progress bar (indicatif, on stderr). Request loops only bump an
//! atomic counter; a ticker task copies it into the bar ten times a second,
//! so the hot path never touches the terminal. Hidden when stderr is not a
//! terminal or with `--no-progress`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A running progress bar.
pub struct Progress {
    count: Arc<AtomicU64>,
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Cheap handle the workers count with.
#[derive(Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n` done items.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

impl Progress {
    /// A bar of `len` items labelled `what`; drawn only if `enabled` and
    /// stderr is a terminal.
    pub fn start(len: u64, what: &str, enabled: bool) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress {
                count,
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} {per_sec} {elapsed_precise}",
            )
            .expect("invariant: static template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        let (c, b) = (count.clone(), bar.clone());
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position(c.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress {
            count,
            bar,
            ticker: Some(ticker),
        }
    }

    /// A handle to count with.
    pub fn counter(&self) -> Counter {
        Counter(self.count.clone())
    }

    /// Draws the final position and removes the bar.
    pub fn finish(mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.bar.set_position(self.count.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}
