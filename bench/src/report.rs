//! Measurements and reports. [`Stats`] is what one client task records
//! (an HDR histogram of latencies in nanoseconds, the ok count and errors
//! by message); tasks record privately and are merged at the end, so the
//! hot path shares nothing. [`Report`] is a finished run: rendered as text
//! in etcd's benchmark layout (Summary, response time histogram, latency
//! distribution) plus a percentile line, or as the JSON object of the
//! shared `--output json` schema.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest latency the histograms track: one hour, in nanoseconds.
const MAX_NANOS: u64 = 3_600_000_000_000;

/// Latencies, successes and errors of some requests.
#[derive(Clone)]
pub struct Stats {
    /// Latency of each successful request, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Errors by message.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_NANOS, 3)
                .expect("invariant: valid histogram bounds"),
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Records one success.
    pub fn ok(&mut self, latency: Duration) {
        self.hist
            .saturating_record((latency.as_nanos() as u64).clamp(1, MAX_NANOS));
    }

    /// Records one failure.
    pub fn err(&mut self, message: impl Into<String>) {
        *self.errors.entry(message.into()).or_default() += 1;
    }

    /// Records the outcome of a request.
    pub fn record(&mut self, latency: Duration, r: Result<(), tonic::Status>) {
        match r {
            Ok(()) => self.ok(latency),
            Err(s) => self.err(status_message(&s)),
        }
    }

    /// Adds another task's records.
    pub fn merge(&mut self, other: &Stats) {
        self.hist
            .add(&other.hist)
            .expect("invariant: same histogram bounds");
        for (m, n) in &other.errors {
            *self.errors.entry(m.clone()).or_default() += n;
        }
    }

    /// Successful requests.
    pub fn ok_count(&self) -> u64 {
        self.hist.len()
    }

    /// Failed requests.
    pub fn err_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency figures in milliseconds (zeros when nothing succeeded).
    pub fn latency(&self) -> Latency {
        let h = &self.hist;
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |ns: f64| ns / 1e6;
        let q = |q: f64| ms(h.value_at_quantile(q) as f64);
        Latency {
            min: ms(h.min() as f64),
            mean: ms(h.mean()),
            stddev: ms(h.stdev()),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            max: ms(h.max() as f64),
        }
    }
}

/// The error text a report counts: the gRPC message (etcd's
/// `etcdserver: ...` strings), or the code when the message is empty.
pub fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("rpc error: code = {:?}", s.code())
    } else {
        s.message().to_string()
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// One titled summary block of the text report.
pub struct Block {
    /// Printed before the block (e.g. "Watch creation summary:").
    pub title: String,
    pub stats: Stats,
    /// Wall time the block's requests took.
    pub elapsed: Duration,
}

/// A finished run.
pub struct Report {
    pub command: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// What the run meant to do (requests, or events for watch workloads).
    pub total: u64,
    /// The figures of the JSON object.
    pub main: Stats,
    pub elapsed: Duration,
    /// Workload-specific figures (`extra` in JSON).
    pub extra: Map<String, Value>,
    /// Text report blocks, in order; empty: one block of `main`.
    pub blocks: Vec<Block>,
    /// Text lines printed before the blocks (e.g. etcd's "bench with
    /// linearizable range").
    pub preface: Vec<String>,
    /// Text lines printed after the blocks.
    pub notes: Vec<String>,
}

/// The `--output json` object.
#[derive(Serialize)]
struct Json<'a> {
    tool: &'static str,
    command: &'a str,
    endpoints: &'a [String],
    conns: usize,
    clients: usize,
    total: u64,
    ok: u64,
    errors: u64,
    errors_by_message: &'a BTreeMap<String, u64>,
    elapsed_secs: f64,
    requests_per_sec: f64,
    latency_ms: Latency,
    extra: &'a Map<String, Value>,
}

impl Report {
    /// Successful requests per second of `main`.
    pub fn requests_per_sec(&self) -> f64 {
        per_sec(self.main.ok_count(), self.elapsed)
    }

    /// The JSON object (one line).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Json {
            tool: "strata-bench",
            command: &self.command,
            endpoints: &self.endpoints,
            conns: self.conns,
            clients: self.clients,
            total: self.total,
            ok: self.main.ok_count(),
            errors: self.main.err_count(),
            errors_by_message: &self.main.errors,
            elapsed_secs: self.elapsed.as_secs_f64(),
            requests_per_sec: self.requests_per_sec(),
            latency_ms: self.main.latency(),
            extra: &self.extra,
        })
        .expect("invariant: report serialises")
    }

    /// The text report: etcd's layout per block, then our percentile line.
    pub fn to_text(&self, precise: bool) -> String {
        let mut s = String::new();
        for p in &self.preface {
            s += p;
            s.push('\n');
        }
        if self.blocks.is_empty() {
            s += &block_text(&self.main, self.elapsed, precise);
        }
        for b in &self.blocks {
            if !b.title.is_empty() {
                s += &b.title;
                s.push('\n');
            }
            s += &block_text(&b.stats, b.elapsed, precise);
        }
        for n in &self.notes {
            s += n;
            s.push('\n');
        }
        s
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// One etcd-style summary (`Summary:`, histogram, distribution, errors)
/// plus `Percentiles (ms): ...`.
pub fn block_text(st: &Stats, elapsed: Duration, precise: bool) -> String {
    let f = |x: f64| {
        if precise {
            format!("{x}")
        } else {
            format!("{x:.4}")
        }
    };
    let secs = |ns: f64| format!("{} secs", f(ns / 1e9));
    let h = &st.hist;
    let mut s = String::new();
    if !h.is_empty() {
        let _ = writeln!(s, "\nSummary:");
        let _ = writeln!(s, "  Total:\t{}.", secs(elapsed.as_nanos() as f64));
        let _ = writeln!(s, "  Slowest:\t{}.", secs(h.max() as f64));
        let _ = writeln!(s, "  Fastest:\t{}.", secs(h.min() as f64));
        let _ = writeln!(s, "  Average:\t{}.", secs(h.mean()));
        let _ = writeln!(s, "  Stddev:\t{}.", secs(h.stdev()));
        let _ = writeln!(s, "  Requests/sec:\t{}", f(per_sec(st.ok_count(), elapsed)));

        // Ten equal-width buckets from fastest to slowest, as etcd draws them.
        let (lo, hi) = (h.min() as f64, h.max() as f64);
        let bounds: Vec<f64> = (0..=10)
            .map(|i| {
                if i == 10 {
                    hi
                } else {
                    lo + (hi - lo) / 10.0 * i as f64
                }
            })
            .collect();
        let mut counts = [0u64; 11];
        for v in h.iter_recorded() {
            let x = h
                .lowest_equivalent(v.value_iterated_to())
                .clamp(h.min(), h.max()) as f64;
            let b = bounds.iter().position(|&b| x <= b).unwrap_or(10);
            counts[b] += v.count_at_value();
        }
        let most = counts.iter().copied().max().unwrap_or(0).max(1);
        let _ = writeln!(s, "\nResponse time histogram:");
        for (b, c) in bounds.iter().zip(counts) {
            let bar = "∎".repeat((c * 40 / most) as usize);
            let _ = writeln!(s, "  {} [{c}]\t|{bar}", f(b / 1e9));
        }
        let _ = writeln!(s, "\nLatency distribution:");
        for p in [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9] {
            let _ = writeln!(
                s,
                "  {p}% in {}.",
                secs(h.value_at_quantile(p / 100.0) as f64)
            );
        }
        let l = st.latency();
        let _ = writeln!(
            s,
            "\nPercentiles (ms): p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} (min {:.3}, mean {:.3}, stddev {:.3}); ok {}",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.min, l.mean, l.stddev, st.ok_count()
        );
    }
    if !st.errors.is_empty() {
        let _ = writeln!(s, "\nError distribution:");
        for (m, n) in &st.errors {
            let _ = writeln!(s, "  [{n}]\t{m}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_merge_and_percentiles_are_ordered() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=1000u64 {
            a.ok(Duration::from_micros(i * 10));
        }
        b.ok(Duration::from_millis(500));
        b.err("etcdserver: request timed out");
        b.err("etcdserver: request timed out");
        a.merge(&b);
        assert_eq!((a.ok_count(), a.err_count()), (1001, 2));
        let l = a.latency();
        assert!(
            l.min <= l.p50
                && l.p50 <= l.p90
                && l.p90 <= l.p99
                && l.p99 <= l.p99_9
                && l.p99_9 <= l.max
        );
        assert!((l.p50 - 5.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 500.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn json_follows_the_schema() {
        let mut main = Stats::default();
        main.ok(Duration::from_millis(2));
        main.err("boom");
        let r = Report {
            command: "put".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 2,
            total: 2,
            main,
            elapsed: Duration::from_millis(500),
            extra: Map::new(),
            blocks: vec![],
            preface: vec![],
            notes: vec![],
        };
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["tool"], "strata-bench");
        assert_eq!((v["ok"].as_u64(), v["errors"].as_u64()), (Some(1), Some(1)));
        assert_eq!(v["errors_by_message"]["boom"], 1);
        assert_eq!(v["requests_per_sec"].as_f64(), Some(2.0));
        for k in ["min", "mean", "stddev", "p50", "p90", "p99", "p99_9", "max"] {
            assert!(v["latency_ms"][k].is_number(), "{k}");
        }
        let text = r.to_text(false);
        assert!(
            text.contains("Summary:") && text.contains("Requests/sec:\t2.0000"),
            "{text}"
        );
        assert!(text.contains("Error distribution:\n  [1]\tboom"), "{text}");
    }
}
