//! The physical floor of a single-client put: the disk's fdatasync latency
//! (a 4 KiB write plus `fdatasync` in a loop, in the data root, over a file
//! laid out beforehand as a write-ahead log's preallocated segment is) plus
//! one loopback TCP round trip (a small ping-pong over 127.0.0.1 with
//! TCP_NODELAY). A put 1/1 cannot beat one of each.
//!
//! Self-contained measurements; the runner calls [`measure`] once per run.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Both floors, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub fdatasync_iterations: usize,
    pub fdatasync_p50_ms: f64,
    pub fdatasync_p99_ms: f64,
    pub rtt_iterations: usize,
    pub rtt_p50_ms: f64,
    pub rtt_p99_ms: f64,
    /// fdatasync p50 + RTT p50.
    pub floor_ms: f64,
}

/// The `q`-quantile (0..=1, nearest rank) of unsorted samples.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times `iterations` × (4 KiB write + fdatasync) in a scratch file in `dir`.
pub fn fdatasync_samples(dir: &Path, iterations: usize) -> Result<Vec<Duration>> {
    let tmp = tempfile::Builder::new()
        .prefix("fdatasync-probe")
        .tempfile_in(dir)
        .with_context(|| format!("create a scratch file in {}", dir.display()))?;
    let mut f: &File = tmp.as_file();
    let block = [0x5au8; 4096];
    // Lay the file out first so each timed sync is data only (no size change).
    for _ in 0..iterations {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    f.seek(SeekFrom::Start(0))?;
    let mut out = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Times `iterations` round trips of a 64-byte message over 127.0.0.1.
pub fn loopback_rtt_samples(iterations: usize) -> Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut out = Vec::with_capacity(iterations);
    for i in 0..iterations + 50 {
        let t = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut buf)?;
        if i >= 50 {
            // The first round trips warm up the connection and the thread.
            out.push(t.elapsed());
        }
    }
    drop(c);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(out)
}

/// Measures both floors: fdatasync in `dir`, the RTT over loopback.
pub fn measure(dir: &Path, iterations: usize) -> Result<Floor> {
    let fsync = fdatasync_samples(dir, iterations)?;
    let rtt = loopback_rtt_samples(iterations)?;
    let f50 = ms(quantile(&fsync, 0.5));
    let r50 = ms(quantile(&rtt, 0.5));
    Ok(Floor {
        fdatasync_iterations: fsync.len(),
        fdatasync_p50_ms: f50,
        fdatasync_p99_ms: ms(quantile(&fsync, 0.99)),
        rtt_iterations: rtt.len(),
        rtt_p50_ms: r50,
        rtt_p99_ms: ms(quantile(&rtt, 0.99)),
        floor_ms: f50 + r50,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn measures_positive_floors() {
        let d = tempfile::tempdir().unwrap();
        let f = measure(d.path(), 50).unwrap();
        assert_eq!(f.fdatasync_iterations, 50);
        assert_eq!(f.rtt_iterations, 50);
        assert!(f.fdatasync_p50_ms > 0.0 && f.rtt_p50_ms > 0.0);
        assert!(f.fdatasync_p99_ms >= f.fdatasync_p50_ms);
        assert!((f.floor_ms - f.fdatasync_p50_ms - f.rtt_p50_ms).abs() < 1e-12);
        // The scratch file is gone.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
