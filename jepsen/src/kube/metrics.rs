//! kube-apiserver's request-latency histograms, read from its `/metrics`
//! (`apiserver_request_duration_seconds`), summed per verb over every
//! resource and scope, with quantiles interpolated inside the buckets as
//! Prometheus' `histogram_quantile` does.

use std::collections::BTreeMap;

/// One verb's merged histogram.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Cumulative counts per upper bound (`le`, seconds; `+Inf` last).
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// Mean latency in seconds.
    pub fn mean(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.sum / self.count
        }
    }

    /// The `q` quantile (0..1) in seconds, linearly interpolated within the
    /// bucket that holds it (the lower bound of the first bucket is 0).
    pub fn quantile(&self, q: f64) -> f64 {
        let Some(&(_, total)) = self.buckets.last() else {
            return 0.0;
        };
        if total == 0.0 {
            return 0.0;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return prev.0;
                }
                let in_bucket = c - prev.1;
                if in_bucket == 0.0 {
                    return le;
                }
                return prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket;
            }
            prev = (le, c);
        }
        prev.0
    }

    /// `self - earlier`: the requests between two scrapes.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, c - before)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }
}

/// `after - before` per key: what happened between two scrapes.
pub fn since(
    after: &BTreeMap<String, Histogram>,
    before: &BTreeMap<String, Histogram>,
) -> BTreeMap<String, Histogram> {
    after
        .iter()
        .map(|(k, h)| {
            (
                k.clone(),
                before.get(k).map_or_else(|| h.clone(), |b| h.since(b)),
            )
        })
        .collect()
}

/// The value of label `name` in a `{a="x",b="y"}` label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}=\"");
    let start = labels.find(&pat)? + pat.len();
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// `apiserver_request_duration_seconds` per verb (LIST, GET, POST, PUT,
/// DELETE, PATCH, WATCH...), merged over every other label.
pub fn request_durations(text: &str) -> BTreeMap<String, Histogram> {
    histograms_by(text, "apiserver_request_duration_seconds", "verb")
}

/// `etcd_request_duration_seconds` (kube-apiserver's storage calls) per
/// operation (create, get, list, update, delete...), merged over types.
pub fn storage_durations(text: &str) -> BTreeMap<String, Histogram> {
    histograms_by(text, "etcd_request_duration_seconds", "operation")
}

/// The histogram `name`, one per value of the label `by`, merged over every
/// other label.
pub fn histograms_by(text: &str, name: &str, by: &str) -> BTreeMap<String, Histogram> {
    // verb -> (le bits -> (le, cumulative count), sum, count)
    type Merged = (BTreeMap<u64, (f64, f64)>, f64, f64);
    let mut per_verb: BTreeMap<String, Merged> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (kind, rest) = if let Some(r) = rest.strip_prefix("_bucket") {
            ("bucket", r)
        } else if let Some(r) = rest.strip_prefix("_sum") {
            ("sum", r)
        } else if let Some(r) = rest.strip_prefix("_count") {
            ("count", r)
        } else {
            continue;
        };
        let Some(open) = rest.strip_prefix('{') else {
            continue;
        };
        let Some(close) = open.rfind('}') else {
            continue;
        };
        let labels = &open[..close];
        let Ok(value) = open[close + 1..].trim().parse::<f64>() else {
            continue;
        };
        let Some(verb) = label(labels, by) else {
            continue;
        };
        let entry = per_verb.entry(verb.to_string()).or_default();
        match kind {
            "bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                let slot = entry.0.entry(le.to_bits()).or_insert((le, 0.0));
                slot.1 += value;
            }
            "sum" => entry.1 += value,
            _ => entry.2 += value,
        }
    }
    per_verb
        .into_iter()
        .map(|(verb, (buckets, sum, count))| {
            let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            (
                verb,
                Histogram {
                    buckets: b,
                    count,
                    sum,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_duration_seconds [STABLE] Response latency
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{component="apiserver",resource="configmaps",verb="POST",le="0.05"} 6
apiserver_request_duration_seconds_bucket{component="apiserver",resource="configmaps",verb="POST",le="0.1"} 8
apiserver_request_duration_seconds_bucket{component="apiserver",resource="configmaps",verb="POST",le="+Inf"} 10
apiserver_request_duration_seconds_sum{component="apiserver",resource="configmaps",verb="POST"} 0.9
apiserver_request_duration_seconds_count{component="apiserver",resource="configmaps",verb="POST"} 10
apiserver_request_duration_seconds_bucket{component="apiserver",resource="secrets",verb="POST",le="0.05"} 4
apiserver_request_duration_seconds_bucket{component="apiserver",resource="secrets",verb="POST",le="0.1"} 10
apiserver_request_duration_seconds_bucket{component="apiserver",resource="secrets",verb="POST",le="+Inf"} 10
apiserver_request_duration_seconds_sum{component="apiserver",resource="secrets",verb="POST"} 0.5
apiserver_request_duration_seconds_count{component="apiserver",resource="secrets",verb="POST"} 10
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="LIST",le="0.05"} 0
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="LIST",le="0.1"} 2
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="LIST",le="+Inf"} 2
apiserver_request_duration_seconds_sum{component="apiserver",resource="pods",verb="LIST"} 0.15
apiserver_request_duration_seconds_count{component="apiserver",resource="pods",verb="LIST"} 2
apiserver_request_total{verb="POST"} 20
"#;

    #[test]
    fn merges_resources_per_verb_and_interpolates_quantiles() {
        let h = request_durations(SAMPLE);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["LIST", "POST"]);
        let post = &h["POST"];
        assert_eq!(post.count, 20.0);
        assert!((post.mean() - 0.07).abs() < 1e-9);
        assert_eq!(
            post.buckets,
            vec![(0.05, 10.0), (0.1, 18.0), (f64::INFINITY, 20.0)]
        );
        // p50: rank 10 falls exactly at the end of the first bucket.
        assert!((post.quantile(0.5) - 0.05).abs() < 1e-9);
        // p75: rank 15, 5 of the 8 requests in (0.05, 0.1].
        assert!((post.quantile(0.75) - (0.05 + 0.05 * 5.0 / 8.0)).abs() < 1e-9);
        // p99: in +Inf, reported as the highest finite bound.
        assert!((post.quantile(0.99) - 0.1).abs() < 1e-9);
        let list = &h["LIST"];
        assert!((list.quantile(0.5) - 0.075).abs() < 1e-9);
        let d = post.since(&Histogram {
            buckets: vec![(0.05, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)],
            count: 10.0,
            sum: 0.2,
        });
        assert_eq!(d.count, 10.0);
        assert_eq!(
            d.buckets,
            vec![(0.05, 0.0), (0.1, 8.0), (f64::INFINITY, 10.0)]
        );
    }
}
