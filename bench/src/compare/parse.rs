//! Parsers for the two load generators' reports, both turned into one
//! [`Measurement`]: etcd's `benchmark` text report (its `Summary:`,
//! `Response time histogram:`, `Latency distribution:` and
//! `Error distribution:` blocks, possibly several in one output, as in
//! `watch`) and `strata-bench --output json` (the shared JSON contract).
//!
//! Pure functions over strings: no process or file handling here (that is
//! `generator`'s), so they are unit-tested against captured real outputs.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Latency figures of one run, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// etcd's benchmark prints 99.9% only when it has enough samples.
    pub p99_9: Option<f64>,
    pub max: f64,
}

/// What one load-generator run measured, whichever generator ran it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Successful requests (for `watch`: events received).
    pub ok: u64,
    pub errors: u64,
    pub errors_by_message: BTreeMap<String, u64>,
    pub elapsed_secs: f64,
    pub requests_per_sec: f64,
    pub latency_ms: Latency,
    /// Workload-specific figures (watch event counts, other report sections).
    pub extra: serde_json::Value,
}

impl Measurement {
    /// Dropped watch events when the generator reported them.
    pub fn events_dropped(&self) -> Option<u64> {
        self.extra.get("events_dropped").and_then(|v| v.as_u64())
    }
}

/// The `strata-bench --output json` document (see the bench README/schema).
#[derive(Debug, Deserialize)]
struct StrataBenchJson {
    tool: String,
    command: String,
    #[serde(default)]
    total: u64,
    ok: u64,
    errors: u64,
    #[serde(default)]
    errors_by_message: BTreeMap<String, u64>,
    elapsed_secs: f64,
    requests_per_sec: f64,
    latency_ms: JsonLatency,
    #[serde(default)]
    extra: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct JsonLatency {
    min: f64,
    mean: f64,
    #[serde(default)]
    stddev: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    #[serde(default)]
    p99_9: Option<f64>,
    max: f64,
}

/// Parses `strata-bench --output json` stdout (one JSON object).
pub fn parse_strata_bench_json(stdout: &str) -> Result<Measurement> {
    let doc: StrataBenchJson = serde_json::from_str(stdout.trim())
        .context("strata-bench output is not the JSON report")?;
    if doc.tool != "strata-bench" {
        bail!("unexpected \"tool\" {:?} in the JSON report", doc.tool);
    }
    let mut extra = match doc.extra {
        serde_json::Value::Null => serde_json::json!({}),
        v => v,
    };
    if let Some(map) = extra.as_object_mut() {
        map.insert("command".into(), doc.command.into());
        map.insert("total".into(), doc.total.into());
    }
    Ok(Measurement {
        ok: doc.ok,
        errors: doc.errors,
        errors_by_message: doc.errors_by_message,
        elapsed_secs: doc.elapsed_secs,
        requests_per_sec: doc.requests_per_sec,
        latency_ms: Latency {
            min: doc.latency_ms.min,
            mean: doc.latency_ms.mean,
            stddev: doc.latency_ms.stddev,
            p50: doc.latency_ms.p50,
            p90: doc.latency_ms.p90,
            p99: doc.latency_ms.p99,
            p99_9: doc.latency_ms.p99_9,
            max: doc.latency_ms.max,
        },
        extra,
    })
}

/// One `Summary:` block of etcd's benchmark report.
#[derive(Debug, Default, Clone, PartialEq)]
struct Section {
    /// The line naming the block ("Watch events received summary:"), if any.
    title: Option<String>,
    total_secs: Option<f64>,
    slowest: Option<f64>,
    fastest: Option<f64>,
    average: Option<f64>,
    stddev: Option<f64>,
    rps: Option<f64>,
    histogram_count: u64,
    /// (percent, seconds)
    percentiles: Vec<(f64, f64)>,
    errors: BTreeMap<String, u64>,
}

impl Section {
    fn percentile_ms(&self, pct: f64) -> Option<f64> {
        self.percentiles
            .iter()
            .find(|(p, _)| (p - pct).abs() < 1e-9)
            .map(|(_, s)| s * 1000.0)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_sec": self.rps,
            "total_secs": self.total_secs,
            "count": self.histogram_count,
            "p50_ms": self.percentile_ms(50.0),
            "p99_ms": self.percentile_ms(99.0),
            "errors": self.errors.values().sum::<u64>(),
        })
    }
}

/// `"0.0123 secs."` → 0.0123
fn secs_value(rest: &str) -> Result<f64> {
    let tok = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("missing number in {rest:?}"))?;
    tok.parse::<f64>()
        .with_context(|| format!("bad number {tok:?}"))
}

/// Parses etcd `benchmark`'s text report. With several `Summary:` blocks
/// (`watch` prints "Watch creation summary:" then "Watch events received
/// summary:"), the last block is the measurement and the others go to
/// `extra.sections`, keyed by their title.
pub fn parse_etcd_benchmark_text(text: &str) -> Result<Measurement> {
    let mut sections: Vec<Section> = Vec::new();
    let mut pending_title: Option<String> = None;
    for raw in text.split(['\n', '\r']) {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line == "Summary:" {
            sections.push(Section {
                title: pending_title.take(),
                ..Section::default()
            });
            continue;
        }
        if line.to_ascii_lowercase().ends_with("summary:") {
            // A title may follow a progress bar on the same line: keep the
            // text from its first capital letter after the last "% ".
            let tail = line.rsplit_once("% ").map_or(line, |(_, t)| t);
            let title = tail
                .find(|c: char| c.is_ascii_uppercase())
                .map_or(tail, |i| &tail[i..])
                .to_string();
            pending_title = Some(title);
            continue;
        }
        let Some(sec) = sections.last_mut() else {
            continue;
        };
        if let Some((key, rest)) = line.split_once(':') {
            let slot = match key {
                "Total" => Some(&mut sec.total_secs),
                "Slowest" => Some(&mut sec.slowest),
                "Fastest" => Some(&mut sec.fastest),
                "Average" => Some(&mut sec.average),
                "Stddev" => Some(&mut sec.stddev),
                "Requests/sec" => Some(&mut sec.rps),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(secs_value(rest).with_context(|| format!("line {line:?}"))?);
                continue;
            }
        }
        // Percentile: "99.9% in 0.0605 secs."
        if let Some((pct, rest)) = line.split_once("% in ") {
            if let Ok(p) = pct.parse::<f64>() {
                sec.percentiles.push((
                    p,
                    secs_value(rest).with_context(|| format!("line {line:?}"))?,
                ));
                continue;
            }
        }
        // Error distribution: "[3]\tetcdserver: request timed out"
        if let Some(rest) = line.strip_prefix('[') {
            if let Some((n, msg)) = rest.split_once(']') {
                if let Ok(n) = n.parse::<u64>() {
                    *sec.errors.entry(msg.trim().to_string()).or_default() += n;
                    continue;
                }
            }
        }
        // Histogram bucket: "0.0063 [1035]\t|∎∎∎"
        if let Some((mark, rest)) = line.split_once(" [") {
            if mark.parse::<f64>().is_ok() {
                if let Some((n, _)) = rest.split_once(']') {
                    if let Ok(n) = n.parse::<u64>() {
                        sec.histogram_count += n;
                    }
                }
            }
        }
    }
    let last = sections
        .last()
        .ok_or_else(|| anyhow!("no \"Summary:\" block in the benchmark output"))?;
    let rps = last
        .rps
        .ok_or_else(|| anyhow!("no Requests/sec in the benchmark output"))?;
    let ms = |v: Option<f64>| v.map(|s| s * 1000.0).unwrap_or(0.0);
    let errors: u64 = last.errors.values().sum();
    let mut extra = serde_json::Map::new();
    if sections.len() > 1 {
        let mut named = serde_json::Map::new();
        for (i, s) in sections[..sections.len() - 1].iter().enumerate() {
            let key = s.title.clone().unwrap_or_else(|| format!("section {i}"));
            named.insert(key, s.to_json());
        }
        extra.insert("sections".into(), named.into());
    }
    if let Some(t) = &last.title {
        extra.insert("section".into(), t.clone().into());
    }
    Ok(Measurement {
        ok: last.histogram_count,
        errors,
        errors_by_message: last.errors.clone(),
        elapsed_secs: last.total_secs.unwrap_or(0.0),
        requests_per_sec: rps,
        latency_ms: Latency {
            min: ms(last.fastest),
            mean: ms(last.average),
            stddev: ms(last.stddev),
            p50: last.percentile_ms(50.0).unwrap_or(0.0),
            p90: last.percentile_ms(90.0).unwrap_or(0.0),
            p99: last.percentile_ms(99.0).unwrap_or(0.0),
            p99_9: last.percentile_ms(99.9),
            max: ms(last.slowest),
        },
        extra: extra.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `benchmark --precise --conns 1 --clients 1 put ...`
    /// against etcd 3.5.1 (etcd 3.4.23's tools/benchmark).
    const PUT_PRECISE: &str = include_str!("testdata/etcd-put-precise.txt");
    /// `benchmark --conns 10 --clients 100 lease-keepalive --total 2000`.
    const LEASE: &str = include_str!("testdata/etcd-lease-keepalive.txt");
    /// `benchmark watch --streams 100 --watch-per-stream 100 ...` (two blocks).
    const WATCH: &str = include_str!("testdata/etcd-watch.txt");

    #[test]
    fn parses_precise_put_report() {
        let m = parse_etcd_benchmark_text(PUT_PRECISE).unwrap();
        assert!((m.requests_per_sec - 387.2968882468849).abs() < 1e-9);
        assert!((m.elapsed_secs - 0.774599562).abs() < 1e-12);
        assert_eq!(m.ok, 300);
        assert_eq!(m.errors, 0);
        assert!((m.latency_ms.p50 - 0.446004).abs() < 1e-9);
        assert!((m.latency_ms.p90 - 7.968816).abs() < 1e-9);
        assert!((m.latency_ms.p99 - 21.829371).abs() < 1e-9);
        assert_eq!(m.latency_ms.p99_9, None);
        assert!((m.latency_ms.max - 103.888026).abs() < 1e-9);
        assert!((m.latency_ms.min - 0.24846).abs() < 1e-9);
    }

    #[test]
    fn parses_rounded_report_with_99_9() {
        let m = parse_etcd_benchmark_text(LEASE).unwrap();
        assert!((m.requests_per_sec - 6406.4026).abs() < 1e-9);
        assert_eq!(m.ok, 2000);
        assert!((m.latency_ms.p50 - 5.9).abs() < 1e-9);
        assert!((m.latency_ms.p99 - 59.6).abs() < 1e-9);
        assert!((m.latency_ms.p99_9.unwrap() - 60.5).abs() < 1e-9);
    }

    #[test]
    fn watch_report_uses_the_events_block() {
        let m = parse_etcd_benchmark_text(WATCH).unwrap();
        assert!((m.requests_per_sec - 579023.0264).abs() < 1e-6);
        assert_eq!(m.ok, 20_000_000);
        assert_eq!(
            m.extra["section"].as_str(),
            Some("Watch events received summary:")
        );
        let creation = &m.extra["sections"]["Watch creation summary:"];
        assert_eq!(creation["count"].as_u64(), Some(10_000));
        assert!((creation["requests_per_sec"].as_f64().unwrap() - 17014.656).abs() < 1e-6);
    }

    #[test]
    fn counts_error_distribution() {
        let text = "\nSummary:\n  Total:\t1.0000 secs.\n  Slowest:\t0.0100 secs.\n  Fastest:\t0.0010 secs.\n  Average:\t0.0050 secs.\n  Stddev:\t0.0010 secs.\n  Requests/sec:\t97.0000\n\nResponse time histogram:\n  0.0010 [90]\t|∎∎∎∎\n  0.0100 [7]\t|∎\n\nLatency distribution:\n  50% in 0.0050 secs.\n  90% in 0.0080 secs.\n  99% in 0.0100 secs.\n\nError distribution:\n  [2]\tetcdserver: request timed out\n  [1]\trpc error: code = Unavailable desc = transport is closing\n";
        let m = parse_etcd_benchmark_text(text).unwrap();
        assert_eq!(m.ok, 97);
        assert_eq!(m.errors, 3);
        assert_eq!(m.errors_by_message["etcdserver: request timed out"], 2);
    }

    #[test]
    fn rejects_output_without_summary() {
        assert!(parse_etcd_benchmark_text(" 0 / 10 0.00% 0 / 10 0.00%\n").is_err());
        assert!(parse_etcd_benchmark_text("Summary:\n  Total:\t1.0 secs.\n").is_err());
    }

    /// The sample in the shared schema of `strata-bench --output json`.
    const SCHEMA_SAMPLE: &str = r#"{
  "tool": "strata-bench", "command": "put",
  "endpoints": ["127.0.0.1:2379"], "conns": 10, "clients": 100,
  "total": 40000, "ok": 40000, "errors": 0, "errors_by_message": {"etcdserver: ...": 3},
  "elapsed_secs": 2.91, "requests_per_sec": 13745.2,
  "latency_ms": {"min": 0.4, "mean": 7.1, "stddev": 2.2, "p50": 6.6, "p90": 9.8, "p99": 17.1, "p99_9": 25.0, "max": 40.2},
  "extra": {}
}"#;

    #[test]
    fn parses_schema_sample() {
        let m = parse_strata_bench_json(SCHEMA_SAMPLE).unwrap();
        assert_eq!(m.ok, 40000);
        assert_eq!(m.errors, 0);
        assert_eq!(m.errors_by_message["etcdserver: ..."], 3);
        assert!((m.requests_per_sec - 13745.2).abs() < 1e-9);
        assert!((m.elapsed_secs - 2.91).abs() < 1e-9);
        assert_eq!(m.latency_ms.p50, 6.6);
        assert_eq!(m.latency_ms.p99, 17.1);
        assert_eq!(m.latency_ms.p99_9, Some(25.0));
        assert_eq!(m.latency_ms.max, 40.2);
        assert_eq!(m.extra["command"], "put");
        assert_eq!(m.events_dropped(), None);
    }

    #[test]
    fn json_watch_extra_reports_drops() {
        let doc = SCHEMA_SAMPLE.replace(
            "\"extra\": {}",
            "\"extra\": {\"watchers\": 10000, \"events_expected\": 5, \"events_received\": 4, \"events_dropped\": 1}",
        );
        let m = parse_strata_bench_json(&doc).unwrap();
        assert_eq!(m.events_dropped(), Some(1));
        assert_eq!(m.extra["watchers"], 10000);
    }

    #[test]
    fn json_rejects_other_documents() {
        assert!(parse_strata_bench_json("not json").is_err());
        let other = SCHEMA_SAMPLE.replace("\"strata-bench\"", "\"other\"");
        assert!(parse_strata_bench_json(&other).is_err());
        let missing = SCHEMA_SAMPLE.replace("\"requests_per_sec\": 13745.2,", "");
        assert!(parse_strata_bench_json(&missing).is_err());
    }
}
