//! From raw runs to the comparison: medians over repetitions, the
//! Strata/etcd ratio, and each workload's verdict against its target from
//! the bench issue. Pure functions over [`RunRecord`]s, so the math is
//! unit-tested without servers.

use serde::Serialize;

use super::floor::Floor;
use super::parse::Measurement;
use super::workload::Target;

/// One load-generator run against one fresh server.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub workload: String,
    pub topology: usize,
    /// The etcd version this Strata run is paired with.
    pub etcd_version: String,
    pub generator: String,
    pub rep: usize,
    /// "strata" or "etcd".
    pub server: String,
    pub server_version: String,
    pub argv: Vec<String>,
    /// Time from spawning the members to every member serving.
    pub startup_ms: f64,
    pub measurement: Option<Measurement>,
    /// CPU µs per request of every member together, during the generator
    /// run (see `compare::cpu`).
    pub server_cpu_us: Option<f64>,
    /// CPU µs per request of the load generator.
    pub generator_cpu_us: Option<f64>,
    pub error: Option<String>,
}

/// One line of the table: a workload × topology × etcd version × generator.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SummaryRow {
    pub workload: String,
    pub topology: usize,
    pub etcd_version: String,
    pub generator: String,
    pub strata_runs: usize,
    pub etcd_runs: usize,
    pub strata_rps: Option<f64>,
    pub etcd_rps: Option<f64>,
    pub ratio: Option<f64>,
    pub strata_p50_ms: Option<f64>,
    pub strata_p99_ms: Option<f64>,
    pub etcd_p50_ms: Option<f64>,
    pub etcd_p99_ms: Option<f64>,
    pub target: String,
    /// Some(true) pass, Some(false) fail, None when it cannot be judged.
    pub pass: Option<bool>,
    pub note: String,
    /// Medians of the runs' CPU µs per request: server (all members) and
    /// load generator, in the Strata runs and in the etcd runs.
    #[serde(default)]
    pub strata_server_cpu_us: Option<f64>,
    #[serde(default)]
    pub strata_generator_cpu_us: Option<f64>,
    #[serde(default)]
    pub etcd_server_cpu_us: Option<f64>,
    #[serde(default)]
    pub etcd_generator_cpu_us: Option<f64>,
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, when both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.3} ms")
}

/// Judges one row against its target. `strata_drops`: dropped watch events
/// over Strata's runs, when the generator reports them.
pub fn verdict(
    target: Target,
    row: &SummaryRow,
    floor: Option<&Floor>,
    strata_drops: Option<u64>,
) -> (String, Option<bool>, String) {
    let r = row.ratio;
    let at_least = |k: f64| r.map(|r| r >= k);
    let both = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    };
    let p99_le = match (row.strata_p99_ms, row.etcd_p99_ms) {
        (Some(s), Some(e)) => Some(s <= e),
        _ => None,
    };
    match target {
        Target::SingleClientPut => {
            let Some(f) = floor else {
                return (
                    "≥ 1× etcd, p50 ≤ 1.5× floor".into(),
                    None,
                    "floor not measured".into(),
                );
            };
            let limit = 1.5 * f.floor_ms;
            let p50_ok = row.strata_p50_ms.map(|p| p <= limit);
            (
                format!("≥ 1× etcd, p50 ≤ {} (1.5× floor)", fmt_ms(limit)),
                both(at_least(1.0), p50_ok),
                String::new(),
            )
        }
        Target::ConcurrentPut => (
            "≥ 2× etcd, p99 ≤ etcd".into(),
            both(at_least(2.0), p99_le),
            String::new(),
        ),
        Target::TwiceThroughput => ("≥ 2× etcd".into(), at_least(2.0), String::new()),
        Target::WatchLatency => {
            let drops = strata_drops.map(|d| d == 0);
            let note = match strata_drops {
                Some(d) => format!("{d} events dropped"),
                None => "drops not reported".into(),
            };
            ("p99 ≤ etcd, no drops".into(), both(p99_le, drops), note)
        }
        Target::NoDrops => {
            let note = match strata_drops {
                Some(d) => format!("{d} events dropped"),
                None => "drops not reported".into(),
            };
            (
                "no dropped events".into(),
                strata_drops.map(|d| d == 0),
                note,
            )
        }
    }
}

/// Dropped watch events of a run: the generator's count when it reports
/// one; etcd's `benchmark` waits for every expected event (a drop makes it
/// hang until the time limit), so a run of it that finished dropped none.
pub fn run_drops(rec: &RunRecord) -> Option<u64> {
    let m = rec.measurement.as_ref()?;
    m.events_dropped()
        .or((rec.generator == "etcd-benchmark").then_some(0))
}

/// Builds the row for one group of runs (same workload, topology, etcd
/// version, generator).
pub fn summarize(
    workload: &str,
    target: Target,
    topology: usize,
    etcd_version: &str,
    generator: &str,
    runs: &[RunRecord],
    floor: Option<&Floor>,
) -> SummaryRow {
    let of = |server: &str| -> Vec<&Measurement> {
        runs.iter()
            .filter(|r| r.server == server)
            .filter_map(|r| r.measurement.as_ref())
            .collect()
    };
    let (s, e) = (of("strata"), of("etcd"));
    let med = |ms: &[&Measurement], f: fn(&Measurement) -> f64| {
        median(&ms.iter().map(|m| f(m)).collect::<Vec<_>>())
    };
    let cpu = |server: &str, f: fn(&RunRecord) -> Option<f64>| {
        median(
            &runs
                .iter()
                .filter(|r| r.server == server && r.measurement.is_some())
                .filter_map(f)
                .collect::<Vec<_>>(),
        )
    };
    let strata_rps = med(&s, |m| m.requests_per_sec);
    let etcd_rps = med(&e, |m| m.requests_per_sec);
    let mut row = SummaryRow {
        workload: workload.to_string(),
        topology,
        etcd_version: etcd_version.to_string(),
        generator: generator.to_string(),
        strata_runs: s.len(),
        etcd_runs: e.len(),
        strata_rps,
        etcd_rps,
        ratio: ratio(strata_rps, etcd_rps),
        strata_p50_ms: med(&s, |m| m.latency_ms.p50),
        strata_p99_ms: med(&s, |m| m.latency_ms.p99),
        etcd_p50_ms: med(&e, |m| m.latency_ms.p50),
        etcd_p99_ms: med(&e, |m| m.latency_ms.p99),
        target: String::new(),
        pass: None,
        note: String::new(),
        strata_server_cpu_us: cpu("strata", |r| r.server_cpu_us),
        strata_generator_cpu_us: cpu("strata", |r| r.generator_cpu_us),
        etcd_server_cpu_us: cpu("etcd", |r| r.server_cpu_us),
        etcd_generator_cpu_us: cpu("etcd", |r| r.generator_cpu_us),
    };
    let strata_runs: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.server == "strata" && r.measurement.is_some())
        .collect();
    let drops = if strata_runs.is_empty() {
        None
    } else {
        strata_runs
            .iter()
            .map(|r| run_drops(r))
            .sum::<Option<u64>>()
    };
    let (t, pass, note) = verdict(target, &row, floor, drops);
    row.target = t;
    row.pass = pass;
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    let errors: u64 = runs
        .iter()
        .filter_map(|r| r.measurement.as_ref())
        .map(|m| m.errors)
        .sum();
    let mut notes: Vec<String> = Vec::new();
    if !note.is_empty() {
        notes.push(note);
    }
    if failed > 0 {
        notes.push(format!("{failed} run(s) failed"));
    }
    if errors > 0 {
        notes.push(format!("{errors} request errors"));
    }
    row.note = notes.join("; ");
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::parse::Latency;

    fn rec(server: &str, rps: f64, p50: f64, p99: f64) -> RunRecord {
        RunRecord {
            workload: "w".into(),
            topology: 1,
            etcd_version: "3.5".into(),
            generator: "etcd-benchmark".into(),
            rep: 0,
            server: server.into(),
            server_version: "x".into(),
            argv: vec![],
            startup_ms: 0.0,
            measurement: Some(Measurement {
                ok: 10,
                requests_per_sec: rps,
                latency_ms: Latency {
                    p50,
                    p99,
                    ..Latency::default()
                },
                extra: serde_json::json!({}),
                ..Measurement::default()
            }),
            server_cpu_us: None,
            generator_cpu_us: None,
            error: None,
        }
    }

    fn floor(ms: f64) -> Floor {
        Floor {
            fdatasync_iterations: 1,
            fdatasync_p50_ms: ms / 2.0,
            fdatasync_p99_ms: ms,
            rtt_iterations: 1,
            rtt_p50_ms: ms / 2.0,
            rtt_p99_ms: ms,
            floor_ms: ms,
        }
    }

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(ratio(Some(30.0), Some(10.0)), Some(3.0));
        assert_eq!(ratio(Some(30.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn summary_uses_medians_per_server() {
        let runs = vec![
            rec("strata", 300.0, 1.0, 5.0),
            rec("etcd", 100.0, 2.0, 9.0),
            rec("strata", 100.0, 3.0, 7.0),
            rec("etcd", 140.0, 4.0, 8.0),
            rec("strata", 200.0, 2.0, 6.0),
            rec("etcd", 120.0, 3.0, 10.0),
        ];
        let row = summarize(
            "put-10-100",
            Target::ConcurrentPut,
            1,
            "3.5",
            "etcd-benchmark",
            &runs,
            None,
        );
        assert_eq!(row.strata_rps, Some(200.0));
        assert_eq!(row.etcd_rps, Some(120.0));
        assert!((row.ratio.unwrap() - 200.0 / 120.0).abs() < 1e-12);
        assert_eq!(row.strata_p50_ms, Some(2.0));
        assert_eq!(row.etcd_p99_ms, Some(9.0));
        assert_eq!(row.strata_runs, 3);
        // 1.67× < 2×: fails although p99 is lower.
        assert_eq!(row.pass, Some(false));
    }

    #[test]
    fn cpu_figures_are_medians_of_the_measured_runs_per_server() {
        let with_cpu = |server: &str, s: f64, g: f64| RunRecord {
            server_cpu_us: Some(s),
            generator_cpu_us: Some(g),
            ..rec(server, 100.0, 1.0, 2.0)
        };
        let mut failed = with_cpu("strata", 1000.0, 1000.0);
        failed.measurement = None;
        let runs = vec![
            with_cpu("strata", 10.0, 20.0),
            with_cpu("strata", 14.0, 22.0),
            with_cpu("strata", 12.0, 30.0),
            failed,
            with_cpu("etcd", 40.0, 25.0),
            rec("etcd", 100.0, 1.0, 2.0),
        ];
        let row = summarize("x", Target::TwiceThroughput, 1, "3.5", "g", &runs, None);
        assert_eq!(row.strata_server_cpu_us, Some(12.0));
        assert_eq!(row.strata_generator_cpu_us, Some(22.0));
        // A run without figures does not count.
        assert_eq!(row.etcd_server_cpu_us, Some(40.0));
        assert_eq!(row.etcd_generator_cpu_us, Some(25.0));
    }

    #[test]
    fn targets() {
        let runs = vec![rec("strata", 250.0, 1.0, 5.0), rec("etcd", 100.0, 2.0, 9.0)];
        let row = summarize("x", Target::ConcurrentPut, 1, "3.5", "g", &runs, None);
        assert_eq!(row.pass, Some(true));
        let slow_tail = vec![rec("strata", 250.0, 1.0, 9.5), rec("etcd", 100.0, 2.0, 9.0)];
        let row = summarize("x", Target::ConcurrentPut, 1, "3.5", "g", &slow_tail, None);
        assert_eq!(row.pass, Some(false));

        // put 1/1: ratio ≥ 1 and p50 ≤ 1.5 × floor.
        let runs = vec![rec("strata", 110.0, 0.5, 5.0), rec("etcd", 100.0, 0.6, 9.0)];
        let row = summarize(
            "p",
            Target::SingleClientPut,
            1,
            "3.5",
            "g",
            &runs,
            Some(&floor(0.4)),
        );
        assert_eq!(row.pass, Some(true), "{row:?}");
        assert!(row.target.contains("0.600 ms"), "{}", row.target);
        let row = summarize(
            "p",
            Target::SingleClientPut,
            1,
            "3.5",
            "g",
            &runs,
            Some(&floor(0.3)),
        );
        assert_eq!(row.pass, Some(false));
        let row = summarize("p", Target::SingleClientPut, 1, "3.5", "g", &runs, None);
        assert_eq!(row.pass, None);

        // Watch latency: etcd's benchmark finishing means no drops.
        let row = summarize(
            "w",
            Target::WatchLatency,
            1,
            "3.5",
            "etcd-benchmark",
            &runs,
            None,
        );
        assert_eq!(row.pass, Some(true));
        let mut dropped = runs.clone();
        for r in &mut dropped {
            r.generator = "strata-bench".into();
            r.measurement.as_mut().unwrap().extra = serde_json::json!({"events_dropped": 2});
        }
        let row = summarize(
            "w",
            Target::WatchLatency,
            1,
            "3.5",
            "strata-bench",
            &dropped,
            None,
        );
        assert_eq!(row.pass, Some(false));
        assert!(row.note.contains("2 events dropped"), "{}", row.note);
        let row = summarize(
            "w",
            Target::NoDrops,
            1,
            "3.5",
            "strata-bench",
            &dropped,
            None,
        );
        assert_eq!(row.pass, Some(false));

        // No etcd figure: cannot judge.
        let lonely = vec![rec("strata", 1.0, 1.0, 1.0)];
        let row = summarize("r", Target::TwiceThroughput, 1, "3.5", "g", &lonely, None);
        assert_eq!((row.ratio, row.pass), (None, None));
    }
}
