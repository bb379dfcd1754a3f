//! Rendering the comparison: the markdown table (one row per workload ×
//! topology × etcd version × generator, with medians, ratio, target and
//! verdict), the resource table, and the `ratios.svg` bar chart (one bar
//! per row, reference lines at 1× and 2×), written by hand as plain SVG.
//!
//! Pure string building; `compare::run` writes the files.

use std::fmt::Write as _;

use super::floor::Floor;
use super::resources::ResourceFigures;
use super::stats::SummaryRow;

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".to_string(), |v| format!("{v:.digits$}"))
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

/// The put 1/1 floor, one line.
pub fn floor_line(f: &Floor) -> String {
    format!(
        "Floor for put 1/1: fdatasync p50 {:.3} ms (p99 {:.3} ms, {} × 4 KiB) + loopback RTT p50 {:.3} ms (p99 {:.3} ms) = {:.3} ms; target p50 ≤ {:.3} ms",
        f.fdatasync_p50_ms,
        f.fdatasync_p99_ms,
        f.fdatasync_iterations,
        f.rtt_p50_ms,
        f.rtt_p99_ms,
        f.floor_ms,
        1.5 * f.floor_ms
    )
}

/// The markdown table of summary rows.
pub fn markdown_table(rows: &[SummaryRow]) -> String {
    let mut s = String::new();
    s.push_str("| workload | nodes | etcd | generator | Strata req/s | etcd req/s | ratio | Strata p50 / p99 ms | etcd p50 / p99 ms | target | result | note |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            r.workload,
            r.topology,
            r.etcd_version,
            r.generator,
            num(r.strata_rps, 0),
            num(r.etcd_rps, 0),
            r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
            num(r.strata_p50_ms, 2),
            num(r.strata_p99_ms, 2),
            num(r.etcd_p50_ms, 2),
            num(r.etcd_p99_ms, 2),
            r.target,
            verdict(r.pass),
            r.note
        );
    }
    s
}

/// The markdown table of CPU per request (server and load generator) and
/// what it bounds; empty when no row has CPU figures.
pub fn cpu_table(rows: &[SummaryRow]) -> String {
    let mut s = String::new();
    let mut any = false;
    for r in rows {
        let (Some(ss), Some(sg), Some(es), Some(eg)) = (
            r.strata_server_cpu_us,
            r.strata_generator_cpu_us,
            r.etcd_server_cpu_us,
            r.etcd_generator_cpu_us,
        ) else {
            continue;
        };
        if !any {
            s.push_str(
                "CPU per request (µs, medians; server = every member together), and the \
                 throughput ratio it implies when both runs are CPU-bound on the same cores \
                 (CPU-bound ratio) and the most a server using no CPU could reach against this \
                 etcd run with this generator (zero-cost ceiling):\n\n\
                 | workload | nodes | etcd | generator | Strata server | etcd server | server CPU Strata/etcd | generator (Strata run / etcd run) | CPU-bound ratio | measured ratio | zero-cost ceiling |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|\n",
            );
            any = true;
        }
        let b = super::cpu::bounds((ss, sg), (es, eg));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ss:.1} | {es:.1} | {} | {sg:.1} / {eg:.1} | {} | {} | {} |",
            r.workload,
            r.topology,
            r.etcd_version,
            r.generator,
            b.map_or("—".into(), |b| format!("{:.2}×", b.server_ratio)),
            b.map_or("—".into(), |b| format!("{:.2}×", b.cpu_bound_ratio)),
            r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
            b.map_or("—".into(), |b| format!("{:.2}×", b.zero_cost_ceiling)),
        );
    }
    s
}

fn mib(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / (1024.0 * 1024.0))
}

/// The markdown table of resource figures (Strata vs etcd, with ratios).
pub fn resources_table(strata: &ResourceFigures, etcd: &ResourceFigures) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Resources after loading {} keys of 256 B (single node; Strata vs etcd {}):\n",
        strata.keys, etcd.version
    );
    s.push_str("| figure | Strata | etcd | ratio | target | result |\n|---|---|---|---|---|---|\n");
    let mut line =
        |name: &str, a: Option<f64>, b: Option<f64>, digits: usize, target: Option<f64>| {
            let r = super::stats::ratio(a, b);
            let (t, pass) = match target {
                Some(k) => (format!("≤ {k}× etcd"), r.map(|r| r <= k)),
                None => (String::new(), None),
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {t} | {} |",
                num(a, digits),
                num(b, digits),
                r.map_or("—".into(), |x| format!("{x:.2}×")),
                if target.is_some() { verdict(pass) } else { "" }
            );
        };
    line(
        "load rate (req/s)",
        strata.load.as_ref().map(|m| m.requests_per_sec),
        etcd.load.as_ref().map(|m| m.requests_per_sec),
        0,
        None,
    );
    line(
        "RSS after load (MiB)",
        mib(strata.rss_after_load_bytes),
        mib(etcd.rss_after_load_bytes),
        1,
        Some(0.5),
    );
    line(
        "data dir (MiB, du)",
        mib(strata.data_dir_bytes),
        mib(etcd.data_dir_bytes),
        1,
        None,
    );
    line(
        "snapshot save (ms)",
        strata.snapshot_ms,
        etcd.snapshot_ms,
        0,
        None,
    );
    line(
        "snapshot file (MiB)",
        mib(strata.snapshot_bytes),
        mib(etcd.snapshot_bytes),
        1,
        None,
    );
    line(
        "restart to serving (ms)",
        strata.restart_ms,
        etcd.restart_ms,
        0,
        Some(1.0),
    );
    line(
        "RSS after restart (MiB)",
        mib(strata.rss_after_restart_bytes),
        mib(etcd.rss_after_restart_bytes),
        1,
        None,
    );
    for (who, f) in [("Strata", strata), ("etcd", etcd)] {
        for e in &f.errors {
            let _ = writeln!(s, "\n{who}: {e}");
        }
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bar chart of the Strata/etcd throughput ratio per row, with dashed
/// reference lines at 1× and 2×. Rows without a ratio get no bar but keep
/// their label (marked "n/a").
pub fn ratios_svg(rows: &[SummaryRow], title: &str) -> String {
    let bar_w = 28.0;
    let gap = 14.0;
    let left = 60.0;
    let top = 50.0;
    let plot_h = 300.0;
    let label_h = 190.0;
    let n = rows.len().max(1) as f64;
    let plot_right = left + n * (bar_w + gap) + 10.0;
    let width = plot_right + 90.0;
    let width = width.max(480.0);
    let plot_right = plot_right.max(width - 90.0);
    let height = top + plot_h + label_h;
    let max_ratio = rows.iter().filter_map(|r| r.ratio).fold(2.5_f64, f64::max) * 1.1;
    let y = |v: f64| top + plot_h - (v / max_ratio) * plot_h;
    let colour = |r: &SummaryRow| match (r.topology, r.generator.as_str()) {
        (1, "strata-bench") => "#4c78a8",
        (1, _) => "#72b7b2",
        (_, "strata-bench") => "#f58518",
        _ => "#e45756",
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="40" fill="#555">Strata req/s ÷ etcd req/s (medians). 1 node: blue (strata-bench), teal (etcd benchmark); 3 nodes: orange (strata-bench), red (etcd benchmark).</text>"##
    );
    // Axis and ticks.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="black"/>"#,
        top + plot_h
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{:.1}" x2="{plot_right:.1}" y2="{:.1}" stroke="black"/>"#,
        top + plot_h,
        top + plot_h
    );
    let mut tick = 0.0;
    while tick <= max_ratio {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{tick:.1}×</text>"#,
            left - 6.0,
            y(tick) + 4.0
        );
        tick += if max_ratio > 6.0 { 1.0 } else { 0.5 };
    }
    for (k, label) in [(1.0, "1× (parity)"), (2.0, "2× (target)")] {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{plot_right:.1}" y2="{yy:.1}" stroke="#333" stroke-dasharray="6,4"/>"##,
            yy = y(k),
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">{label}</text>"##,
            plot_right + 4.0,
            y(k) + 4.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let x = left + gap / 2.0 + i as f64 * (bar_w + gap);
        if let Some(v) = r.ratio {
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                y(v),
                (top + plot_h - y(v)).max(0.0),
                colour(r),
                xml_escape(&format!(
                    "{} ({} node(s), etcd {}, {}): {:.2}×",
                    r.workload, r.topology, r.etcd_version, r.generator, v
                ))
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{v:.2}</text>"#,
                x + bar_w / 2.0,
                y(v) - 3.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">n/a</text>"#,
                x + bar_w / 2.0,
                top + plot_h - 3.0
            );
        }
        let lx = x + bar_w / 2.0;
        let ly = top + plot_h + 10.0;
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(60 {lx:.1} {ly:.1})">{}</text>"#,
            xml_escape(&format!(
                "{} · {}n · {}",
                r.workload, r.topology, r.etcd_version
            ))
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: &str, topo: usize, ratio: Option<f64>) -> SummaryRow {
        SummaryRow {
            workload: w.into(),
            topology: topo,
            etcd_version: "3.5".into(),
            generator: "etcd-benchmark".into(),
            strata_runs: 1,
            etcd_runs: 1,
            strata_rps: ratio.map(|r| r * 100.0),
            etcd_rps: Some(100.0),
            ratio,
            strata_p50_ms: Some(1.0),
            strata_p99_ms: Some(2.0),
            etcd_p50_ms: Some(1.5),
            etcd_p99_ms: Some(3.0),
            target: "≥ 2× etcd".into(),
            pass: ratio.map(|r| r >= 2.0),
            note: String::new(),
            strata_server_cpu_us: None,
            strata_generator_cpu_us: None,
            etcd_server_cpu_us: None,
            etcd_generator_cpu_us: None,
        }
    }

    #[test]
    fn cpu_table_lists_rows_with_cpu_figures_and_their_bounds() {
        let mut with = row("range-s-10-100", 1, Some(1.7));
        with.strata_server_cpu_us = Some(10.0);
        with.strata_generator_cpu_us = Some(25.0);
        with.etcd_server_cpu_us = Some(40.0);
        with.etcd_generator_cpu_us = Some(30.0);
        let t = cpu_table(&[row("put-1-1", 1, Some(1.0)), with]);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert_eq!(
            lines[1],
            "| range-s-10-100 | 1 | 3.5 | etcd-benchmark | 10.0 | 40.0 | 0.25× | 25.0 / 30.0 | 2.00× | 1.70× | 2.80× |"
        );
        assert_eq!(cpu_table(&[row("put-1-1", 1, Some(1.0))]), "");
    }

    #[test]
    fn svg_is_valid_xml_with_every_workload() {
        let rows = vec![
            row("put-1-1", 1, Some(0.9)),
            row("range-l-10-100", 3, Some(2.4)),
            row("txn-mixed <&>", 1, None),
        ];
        let svg = ratios_svg(&rows, "Strata vs etcd & co");
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_string))
            .collect();
        for w in [
            "put-1-1 · 1n · 3.5",
            "range-l-10-100 · 3n · 3.5",
            "txn-mixed <&> · 1n · 3.5",
        ] {
            assert!(texts.iter().any(|t| t == w), "{w} missing in {texts:?}");
        }
        let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert_eq!(bars, 1 + 2, "background + one bar per known ratio");
        let refs: Vec<_> = texts
            .iter()
            .filter(|t| t.contains("(parity)") || t.contains("(target)"))
            .collect();
        assert_eq!(refs.len(), 2);
    }

    #[test]
    fn svg_bar_heights_scale_with_ratio() {
        let svg = ratios_svg(&[row("a", 1, Some(1.0)), row("b", 1, Some(3.0))], "t");
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let h: Vec<f64> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("height") != Some("100%"))
            .map(|n| n.attribute("height").unwrap().parse().unwrap())
            .collect();
        assert_eq!(h.len(), 2);
        assert!((h[1] / h[0] - 3.0).abs() < 0.01, "{h:?}");
    }

    #[test]
    fn table_has_one_line_per_row() {
        let t = markdown_table(&[
            row("put-1-1", 1, Some(0.9)),
            row("lease-keepalive", 3, None),
        ]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("| put-1-1 | 1 | 3.5 | etcd-benchmark | 90 | 100 | 0.90× |"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("FAIL"));
        assert!(lines[3].contains("| — |") && lines[3].contains("n/a"));
    }
}
