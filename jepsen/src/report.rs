//! The HTML report of a run: one self-contained `report.html` (inline CSS and
//! SVG, no scripts or external assets) in the run directory, holding
//! - the verdict table (one row per [`CheckResult`]);
//! - a timeline of operations: x is time, one row per node (ops without a
//!   node in a row of their own), each op a bar from invoke to completion,
//!   colored by how it ended (ok / fail / info / never completed), with
//!   faults from `faults.jsonl` as shaded, labeled bands;
//! - a latency scatter (log scale) over the same time axis and bands;
//! - for every `Invalid` result, its anomalies and its witness operations
//!   (with their invoke/completion partners) as a table.
//!
//! Histories above [`MAX_PLOTTED`] operations are downsampled for the plots
//! (half the budget for `ok` ops, half for the rest, so failures stay
//! visible; witness ops are always drawn), so the page stays small.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checker::{CheckResult, Validity};
use crate::history::{pair_ops, read_jsonl, Fault, Op, OpType};

/// Most operations drawn in each plot.
pub const MAX_PLOTTED: usize = 20_000;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// Writes `<dir>/report.html` from the run's files and `results`; returns its
/// path. Missing `history.jsonl` / `faults.jsonl` give empty plots.
pub fn write_html(dir: &Path, results: &[CheckResult]) -> anyhow::Result<PathBuf> {
    let history = dir.join("history.jsonl");
    let ops: Vec<Op> = if history.exists() {
        read_jsonl(&history)?
    } else {
        Vec::new()
    };
    let faults_path = dir.join("faults.jsonl");
    let faults: Vec<Fault> = if faults_path.exists() {
        read_jsonl(&faults_path)?
    } else {
        Vec::new()
    };
    let html = render(&dir.display().to_string(), &ops, &faults, results);
    let out = dir.join("report.html");
    std::fs::write(&out, html)?;
    Ok(out)
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn color(kind: Option<OpType>) -> &'static str {
    match kind {
        Some(OpType::Ok) => "#2e9e44",
        Some(OpType::Fail) => "#d9534f",
        Some(OpType::Info) => "#e6a700",
        Some(OpType::Invoke) | None => "#888888",
    }
}

fn verdict_class(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    }
}

/// One plotted operation: invoke time, completion time (None: never
/// completed), how it ended, its row.
struct Span {
    start: u64,
    end: Option<u64>,
    kind: Option<OpType>,
    row: usize,
    lane: u64,
    label: String,
}

/// Renders the report page.
pub fn render(title: &str, ops: &[Op], faults: &[Fault], results: &[CheckResult]) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>strata-jepsen: {t}</title>\n<style>\
body{{font-family:sans-serif;margin:20px;color:#222}}table{{border-collapse:collapse;margin:8px 0}}\
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}}\
th{{background:#f0f0f0}}.valid{{background:#d8f5dd}}.invalid{{background:#f8d7d7}}.unknown{{background:#fff3cd}}\
pre{{background:#f7f7f7;padding:6px;font-size:12px;overflow-x:auto}}svg{{border:1px solid #ddd;background:#fff}}\
.legend span{{display:inline-block;margin-right:14px;font-size:13px}}\
</style></head><body>\n<h1>strata-jepsen report</h1>\n<p>{t}</p>\n",
        t = esc(title)
    );

    // Verdicts.
    let overall = if results.iter().any(|r| r.valid == Validity::Invalid) {
        Validity::Invalid
    } else if results.iter().any(|r| r.valid == Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let _ = write!(
        html,
        "<h2>Verdict: <span class=\"{c}\">{c}</span></h2>\n<table><tr><th>checker</th><th>verdict</th><th>summary</th><th>anomalies</th></tr>\n",
        c = verdict_class(overall)
    );
    for r in results {
        let _ = writeln!(
            html,
            "<tr class=\"{c}\"><td>{n}</td><td>{c}</td><td>{s}</td><td>{a}</td></tr>",
            c = verdict_class(r.valid),
            n = esc(&r.checker),
            s = esc(&r.summary),
            a = r.anomalies.len()
        );
    }
    html.push_str("</table>\n");

    // Summary counts.
    let mut counts: HashMap<OpType, usize> = HashMap::new();
    for op in ops {
        *counts.entry(op.kind).or_default() += 1;
    }
    let _ = writeln!(
        html,
        "<p>{} operations invoked: {} ok, {} fail, {} info; {} faults.</p>",
        counts.get(&OpType::Invoke).unwrap_or(&0),
        counts.get(&OpType::Ok).unwrap_or(&0),
        counts.get(&OpType::Fail).unwrap_or(&0),
        counts.get(&OpType::Info).unwrap_or(&0),
        faults.len()
    );
    // Per operation name: how they ended, and the median ok latency.
    let mut by_f: std::collections::BTreeMap<&str, [usize; 4]> = Default::default();
    let mut invoked_at: HashMap<u64, u64> = HashMap::new();
    let mut ok_lat: HashMap<&str, Vec<u64>> = HashMap::new();
    for op in ops {
        let slot = by_f.entry(op.f.as_str()).or_default();
        match op.kind {
            OpType::Invoke => {
                slot[0] += 1;
                invoked_at.insert(op.process, op.time);
            }
            OpType::Ok => {
                slot[1] += 1;
                if let Some(t) = invoked_at.get(&op.process) {
                    ok_lat
                        .entry(op.f.as_str())
                        .or_default()
                        .push(op.time.saturating_sub(*t));
                }
            }
            OpType::Fail => slot[2] += 1,
            OpType::Info => slot[3] += 1,
        }
    }
    if !by_f.is_empty() {
        html.push_str("<table><tr><th>f</th><th>invoked</th><th>ok</th><th>fail</th><th>info</th><th>median ok latency</th></tr>\n");
        for (f, [inv, ok, fail, info]) in &by_f {
            let median = ok_lat.get_mut(f).map(|l| {
                l.sort_unstable();
                format!("{:.1} ms", l[l.len() / 2] as f64 / 1e6)
            });
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{inv}</td><td>{ok}</td><td>{fail}</td><td>{info}</td><td>{}</td></tr>",
                esc(f),
                median.unwrap_or_else(|| "-".into())
            );
        }
        html.push_str("</table>\n");
    }

    let witnesses: BTreeSet<usize> = results
        .iter()
        .filter(|r| r.valid == Validity::Invalid)
        .flat_map(|r| r.witness.iter().copied())
        .collect();
    let pairs = pair_ops(ops).unwrap_or_else(|_| {
        // A malformed history: plot each invoke alone.
        ops.iter()
            .filter(|o| o.is_invoke())
            .map(|o| (o.index, None))
            .collect()
    });
    let by_index: HashMap<usize, usize> =
        ops.iter().enumerate().map(|(i, o)| (o.index, i)).collect();
    let spans = spans(ops, &pairs, &witnesses);
    let t_max = ops
        .iter()
        .map(|o| o.time)
        .chain(faults.iter().map(|f| f.end.unwrap_or(f.start)))
        .max()
        .unwrap_or(0)
        .max(1);

    html.push_str(
        "<h2>Timeline</h2>\n<div class=\"legend\"><span style=\"color:#2e9e44\">&#9632; ok</span>\
<span style=\"color:#d9534f\">&#9632; fail</span><span style=\"color:#e6a700\">&#9632; info</span>\
<span style=\"color:#888\">&#9632; never completed</span><span style=\"color:#7b5ea7\">&#9632; fault</span></div>\n",
    );
    if pairs.len() > spans.len() {
        let _ = writeln!(
            html,
            "<p>Showing {} of {} operations (downsampled; every witness op kept).</p>",
            spans.len(),
            pairs.len()
        );
    }
    timeline_svg(&mut html, &spans, faults, t_max);
    html.push_str("<h2>Latency</h2>\n");
    latency_svg(&mut html, &spans, faults, t_max);

    // Faults.
    if !faults.is_empty() {
        html.push_str("<h2>Faults</h2>\n<table><tr><th>start (s)</th><th>end (s)</th><th>kind</th><th>nodes</th><th>detail</th></tr>\n");
        for f in faults {
            let _ = writeln!(
                html,
                "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                secs(f.start),
                f.end.map_or("-".to_string(), |e| format!("{:.3}", secs(e))),
                esc(&f.kind),
                f.nodes,
                esc(&f.detail.to_string())
            );
        }
        html.push_str("</table>\n");
    }

    // Failing checks.
    for r in results.iter().filter(|r| r.valid == Validity::Invalid) {
        let _ = writeln!(
            html,
            "<h2 class=\"invalid\">{}: {}</h2>",
            esc(&r.checker),
            esc(&r.summary)
        );
        if !r.anomalies.is_empty() {
            html.push_str("<pre>");
            for a in r.anomalies.iter().take(20) {
                html.push_str(&esc(&a.to_string()));
                html.push('\n');
            }
            if r.anomalies.len() > 20 {
                let _ = writeln!(html, "... and {} more", r.anomalies.len() - 20);
            }
            html.push_str("</pre>\n");
        }
        witness_table(&mut html, ops, &pairs, &by_index, &r.witness);
    }
    html.push_str("</body></html>\n");
    html
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn spans(ops: &[Op], pairs: &[(usize, Option<usize>)], witnesses: &BTreeSet<usize>) -> Vec<Span> {
    let is_witness = |inv: usize, done: Option<usize>| {
        witnesses.contains(&ops[inv].index)
            || done.is_some_and(|d| witnesses.contains(&ops[d].index))
    };
    let not_ok = |done: Option<usize>| done.is_none_or(|d| ops[d].kind != OpType::Ok);
    // Half the budget for ok ops, half for the others (fail, info, open);
    // witnesses always.
    let others = pairs.iter().filter(|&&(_, d)| not_ok(d)).count();
    let ok_stride = (pairs.len() - others).div_ceil(MAX_PLOTTED / 2).max(1);
    let other_stride = others.div_ceil(MAX_PLOTTED / 2).max(1);
    let (mut ok_n, mut other_n) = (0usize, 0usize);
    let mut out = Vec::new();
    for &(inv, done) in pairs {
        let keep = if is_witness(inv, done) {
            true
        } else if not_ok(done) {
            other_n += 1;
            (other_n - 1) % other_stride == 0
        } else {
            ok_n += 1;
            (ok_n - 1) % ok_stride == 0
        };
        if !keep {
            continue;
        }
        let i = &ops[inv];
        let d = done.map(|d| &ops[d]);
        let kind = d.map(|d| d.kind);
        let node = d.and_then(|d| d.node).or(i.node);
        out.push(Span {
            start: i.time,
            end: d.map(|d| d.time),
            kind,
            row: node.map_or(0, |n| n + 1),
            lane: i.process,
            label: format!(
                "#{} p{} {} {} {}",
                i.index,
                i.process,
                i.f,
                i.key.as_deref().unwrap_or(""),
                d.map_or("(no completion)".to_string(), |d| format!(
                    "{:?} {:.1} ms",
                    d.kind,
                    (d.time.saturating_sub(i.time)) as f64 / 1e6
                ))
            ),
        });
    }
    out
}

fn x_of(t: u64, t_max: u64) -> f64 {
    LEFT + (WIDTH - LEFT - RIGHT) * (t as f64 / t_max as f64)
}

/// Shades each fault's interval over `[top, top + height)`; when `rows`
/// maps node indexes to row bands `(y, height)`, a fault that names nodes is
/// shaded only over those nodes' rows (with its label on the first).
fn fault_bands(
    html: &mut String,
    faults: &[Fault],
    t_max: u64,
    top: f64,
    height: f64,
    rows: Option<&dyn Fn(usize) -> Option<(f64, f64)>>,
) {
    for (n, f) in faults.iter().enumerate() {
        let x0 = x_of(f.start, t_max);
        let x1 = x_of(f.end.unwrap_or(f.start), t_max).max(x0 + 2.0);
        let mut bands: Vec<(f64, f64)> = match rows {
            Some(row_of) => f.nodes.iter().filter_map(|&node| row_of(node)).collect(),
            None => Vec::new(),
        };
        if bands.is_empty() {
            bands.push((top, height));
        }
        let title = esc(&format!("{} nodes {:?} {}", f.kind, f.nodes, f.detail));
        for &(y, h) in &bands {
            let _ = writeln!(
                html,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#7b5ea7\" fill-opacity=\"0.15\"><title>{title}</title></rect>",
                w = x1 - x0,
            );
        }
        let _ = writeln!(
            html,
            "<text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"10\" fill=\"#5a3d85\">{k}</text>",
            tx = x0 + 2.0,
            ty = bands[0].0 + 10.0 + (n % 3) as f64 * 11.0,
            k = esc(&f.kind)
        );
    }
}

fn time_axis(html: &mut String, t_max: u64, y: f64) {
    let total = secs(t_max);
    let step = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
    .find(|s| total / s <= 12.0)
    .unwrap_or(1200.0);
    let mut t = 0.0;
    while t <= total + 1e-9 {
        let x = x_of((t * 1e9) as u64, t_max);
        let _ = writeln!(
            html,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{y2:.1}\" stroke=\"#999\"/><text x=\"{x:.1}\" y=\"{ty:.1}\" font-size=\"10\" text-anchor=\"middle\">{t}s</text>",
            y2 = y + 4.0,
            ty = y + 15.0
        );
        t += step;
    }
}

fn timeline_svg(html: &mut String, spans: &[Span], faults: &[Fault], t_max: u64) {
    const LANES: u64 = 8;
    const LANE_H: f64 = 4.0;
    // Only rows that hold ops (at least one, so an empty run still draws).
    let mut used: Vec<usize> = spans
        .iter()
        .map(|s| s.row)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if used.is_empty() {
        used.push(1);
    }
    let pos: HashMap<usize, usize> = used.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let rows = used.len();
    let row_h = LANES as f64 * LANE_H + 8.0;
    let top = 10.0;
    let height = top + rows as f64 * row_h + 25.0;
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\">"
    );
    let row_of = |node: usize| {
        pos.get(&(node + 1))
            .map(|&i| (top + i as f64 * row_h, row_h))
    };
    fault_bands(html, faults, t_max, top, rows as f64 * row_h, Some(&row_of));
    for (i, &r) in used.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let label = if r == 0 {
            "no node".to_string()
        } else {
            format!("node {}", r - 1)
        };
        let _ = writeln!(
            html,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{label}</text><line x1=\"{LEFT}\" y1=\"{y2:.1}\" x2=\"{x2}\" y2=\"{y2:.1}\" stroke=\"#eee\"/>",
            y + row_h / 2.0 + 4.0,
            y2 = y + row_h,
            x2 = WIDTH - RIGHT
        );
    }
    for s in spans {
        let x0 = x_of(s.start, t_max);
        let x1 = x_of(s.end.unwrap_or(t_max), t_max).max(x0 + 1.0);
        let y = top + pos[&s.row] as f64 * row_h + 4.0 + (s.lane % LANES) as f64 * LANE_H;
        let _ = writeln!(
            html,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}</title></rect>",
            x1 - x0,
            LANE_H - 1.0,
            color(s.kind),
            esc(&s.label)
        );
    }
    time_axis(html, t_max, top + rows as f64 * row_h);
    html.push_str("</svg>\n");
}

fn latency_svg(html: &mut String, spans: &[Span], faults: &[Fault], t_max: u64) {
    let top = 10.0;
    let plot_h = 240.0;
    let height = top + plot_h + 25.0;
    // Log scale from 0.1 ms to the largest latency (at least 1 s).
    let lat_ms: Vec<Option<f64>> = spans
        .iter()
        .map(|s| {
            s.end
                .map(|e| (e.saturating_sub(s.start) as f64 / 1e6).max(0.1))
        })
        .collect();
    let max_ms = lat_ms.iter().flatten().fold(1000.0f64, |a, &b| a.max(b));
    let lo = 0.1f64.log10();
    let hi = max_ms.log10();
    let y_of = |ms: f64| top + plot_h - plot_h * (ms.log10() - lo) / (hi - lo);
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\">"
    );
    fault_bands(html, faults, t_max, top, plot_h, None);
    let mut tick = 0.1f64;
    while tick <= max_ms * 1.0001 {
        let y = y_of(tick);
        let _ = writeln!(
            html,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"4\" y=\"{ty:.1}\" font-size=\"10\">{tick} ms</text>",
            x2 = WIDTH - RIGHT,
            ty = y + 3.0
        );
        tick *= 10.0;
    }
    for (s, ms) in spans.iter().zip(&lat_ms) {
        let Some(ms) = ms else { continue };
        let _ = writeln!(
            html,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"{}\" fill-opacity=\"0.7\"><title>{}</title></circle>",
            x_of(s.start, t_max),
            y_of(*ms),
            color(s.kind),
            esc(&s.label)
        );
    }
    time_axis(html, t_max, top + plot_h);
    html.push_str("</svg>\n");
}

fn witness_table(
    html: &mut String,
    ops: &[Op],
    pairs: &[(usize, Option<usize>)],
    by_index: &HashMap<usize, usize>,
    witness: &[usize],
) {
    if witness.is_empty() {
        return;
    }
    // Show each witness op with its invoke/completion partner.
    let mut partner: HashMap<usize, usize> = HashMap::new();
    for &(i, d) in pairs {
        if let Some(d) = d {
            partner.insert(i, d);
            partner.insert(d, i);
        }
    }
    let mut rows: BTreeSet<usize> = BTreeSet::new();
    for idx in witness {
        if let Some(&pos) = by_index.get(idx) {
            rows.insert(pos);
            if let Some(&p) = partner.get(&pos) {
                rows.insert(p);
            }
        }
    }
    let _ = writeln!(
        html,
        "<p>Smallest failing sub-history ({} witness ops):</p>\n<table><tr><th>index</th><th>time (s)</th><th>process</th><th>node</th><th>type</th><th>f</th><th>key</th><th>value</th><th>revision</th><th>error</th></tr>",
        witness.len()
    );
    for &pos in rows.iter().take(1000) {
        let o = &ops[pos];
        let class = match o.kind {
            OpType::Ok => "valid",
            OpType::Fail => "invalid",
            OpType::Info => "unknown",
            OpType::Invoke => "",
        };
        let _ = writeln!(
            html,
            "<tr class=\"{class}\"><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            o.index,
            secs(o.time),
            o.process,
            o.node.map_or("-".into(), |n| n.to_string()),
            o.kind,
            esc(&o.f),
            esc(o.key.as_deref().unwrap_or("")),
            esc(&o.value.to_string()),
            o.revision.map_or("-".into(), |r| r.to_string()),
            esc(o.error.as_deref().unwrap_or(""))
        );
    }
    if rows.len() > 1000 {
        let _ = writeln!(
            html,
            "<tr><td colspan=\"10\">... {} more</td></tr>",
            rows.len() - 1000
        );
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(index: usize, process: u64, time: u64, kind: OpType, f: &str) -> Op {
        Op {
            index,
            process,
            time,
            kind,
            f: f.into(),
            key: Some("/jepsen/register/1".into()),
            value: json!(1),
            revision: None,
            version: None,
            mod_revision: None,
            node: Some((process % 3) as usize),
            error: None,
        }
    }

    #[test]
    fn report_shows_verdicts_timeline_faults_and_witnesses() {
        let ops = vec![
            op(0, 0, 1_000_000, OpType::Invoke, "write"),
            op(1, 1, 2_000_000, OpType::Invoke, "read"),
            op(2, 0, 5_000_000, OpType::Ok, "write"),
            op(3, 1, 9_000_000, OpType::Info, "read"),
            op(4, 2, 9_500_000, OpType::Invoke, "<cas>"),
        ];
        let faults = vec![Fault {
            start: 3_000_000,
            end: Some(8_000_000),
            kind: "partition-leader".into(),
            nodes: vec![1],
            detail: json!({}),
        }];
        let bad = CheckResult {
            checker: "linearizable".into(),
            valid: Validity::Invalid,
            summary: "stale read".into(),
            anomalies: vec![json!({"type": "stale-read"})],
            witness: vec![3],
        };
        let html = render(
            "run",
            &ops,
            &faults,
            &[CheckResult::valid("well-formed", "fine"), bad],
        );
        assert!(html.contains("<svg"));
        assert!(html.contains("partition-leader"));
        assert!(html.contains("<span class=\"invalid\">invalid</span>"));
        assert!(html.contains("stale-read"));
        // Witness op 3 is shown with its invoke (index 1).
        assert!(html.contains("<td>1</td><td>0.002000</td>"), "{html}");
        assert!(html.contains("&lt;cas&gt;"));
        // The per-f table: write invoked once, ok once with 4 ms latency.
        assert!(
            html.contains(
                "<tr><td>write</td><td>1</td><td>1</td><td>0</td><td>0</td><td>4.0 ms</td></tr>"
            ),
            "{html}"
        );
        assert!(!html.contains("<cas>"));
    }

    #[test]
    fn large_histories_are_downsampled_but_keep_failures() {
        let mut ops = Vec::new();
        for i in 0..30_000u64 {
            let p = i % 10;
            ops.push(op(ops.len(), p, i * 10, OpType::Invoke, "write"));
            let kind = match i {
                12_345 => OpType::Fail,
                i if i % 2 == 0 && i > 20_000 => OpType::Info,
                _ => OpType::Ok,
            };
            ops.push(op(ops.len(), p, i * 10 + 5, kind, "write"));
        }
        let pairs = pair_ops(&ops).unwrap();
        let s = spans(&ops, &pairs, &BTreeSet::new());
        assert!(s.len() <= MAX_PLOTTED + 1, "{}", s.len());
        assert!(s.iter().any(|s| s.kind == Some(OpType::Fail)));
        assert!(s.iter().any(|s| s.kind == Some(OpType::Info)));
        assert!(s.iter().filter(|s| s.kind == Some(OpType::Ok)).count() > MAX_PLOTTED / 3);
    }
}
