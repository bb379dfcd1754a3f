//! `--rate` pacing: a schedule of evenly spaced start slots shared by all
//! client tasks (burst 1, like etcd's `rate.NewLimiter(rate, 1)`). Each
//! caller takes the next free slot under a short std mutex (never held
//! across an await) and sleeps until it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Hands out start times `interval` apart.
pub struct Limiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Limiter {
    /// `per_sec` starts per second; `None` for 0 (no limit).
    pub fn new(per_sec: u64) -> Option<Limiter> {
        (per_sec > 0).then(|| Limiter {
            interval: Duration::from_secs_f64(1.0 / per_sec as f64),
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let slot = {
            // Short critical section, no await inside.
            let mut next = self
                .next
                .lock()
                .expect("invariant: limiter lock not poisoned");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_evenly() {
        assert!(Limiter::new(0).is_none());
        let l = Limiter::new(100).unwrap();
        let start = Instant::now();
        for _ in 0..11 {
            l.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
