//! The one Prometheus exposition reader of the tests: every test that looks at a
//! `/metrics` page reads it here, through prometheus-parse.
//!
//! It reads the two texts tapbus serves: Prometheus text 0.0.4 (the consumers; their
//! prometheus-client counters appear as `# TYPE x counter` followed by `x_total{...}`
//! samples) and OpenMetrics (the broker, ended by `# EOF`). A [`Scrape`] is a flat list of
//! [`Series`], each named as it is written in the text: a histogram's buckets are
//! `x_bucket` series with their `le` label, beside `x_sum` and `x_count`; a summary's
//! quantiles are `x` series with their `quantile` label.
//!
//! Label values are read as prometheus-parse reads them: a value holding `,` or `=` is not
//! understood (tapbus's own label values never do).

use std::collections::BTreeMap;

/// One sample: its name as written, its labels, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// True when this is `name` and carries every pair of `labels` (it may have others).
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }
}

/// A parsed exposition, and the text it came from (for failure messages).
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub series: Vec<Series>,
    pub text: String,
}

impl Scrape {
    /// Parses an exposition text (0.0.4 or OpenMetrics).
    pub fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("reading from a string");
        let mut series = Vec::with_capacity(parsed.samples.len());
        for s in parsed.samples {
            let labels: BTreeMap<String, String> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let with = |k: &str, v: f64| {
                let mut l = labels.clone();
                l.insert(k.to_string(), go_float(v));
                l
            };
            match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => series.push(Series {
                    name: s.metric,
                    labels,
                    value: v,
                }),
                prometheus_parse::Value::Histogram(buckets) => {
                    let name = format!("{}_bucket", s.metric);
                    series.extend(buckets.iter().map(|b| Series {
                        name: name.clone(),
                        labels: with("le", b.less_than),
                        value: b.count,
                    }))
                }
                prometheus_parse::Value::Summary(quantiles) => {
                    series.extend(quantiles.iter().map(|q| Series {
                        name: s.metric.clone(),
                        labels: with("quantile", q.quantile),
                        value: q.count,
                    }))
                }
            }
        }
        Scrape {
            series,
            text: text.to_string(),
        }
    }

    /// The series of `name` that carry every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| s.matches(name, labels))
    }

    /// True when no series was read (no answer, or an empty page).
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// A bound as Prometheus prints it in `le` and `quantile`: `0.5`, `1`, `+Inf`.
fn go_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// `GET /metrics` from `addr` (`host:port`, or a URL `http://host:port[/path]`), parsed.
/// An empty [`Scrape`] when there is no 200 answer (a process not up yet).
pub fn scrape(addr: &str) -> Scrape {
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    Scrape::parse(&crate::http_get(host, path).unwrap_or_default())
}

/// The value of the one series of `name` carrying `labels`; `None` when there is none.
/// Panics when several match: a test asking for one value names its series (use [`sum`]
/// to add several).
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut it = s.matching(name, labels);
    let first = it.next()?;
    let others: Vec<&Series> = it.collect();
    assert!(
        others.is_empty(),
        "{name}{labels:?} matches {} series, not one: {first:?}, {others:?}",
        others.len() + 1
    );
    Some(first.value)
}

/// The sum of every series of `name` carrying `labels` (0 when there is none).
pub fn sum(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.matching(name, labels).map(|x| x.value).sum()
}

/// `sum by (label) (name{labels})`: label value -> sum (series without it under `""`).
pub fn sum_by(s: &Scrape, name: &str, labels: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for x in s.matching(name, labels) {
        let k = x.labels.get(by).cloned().unwrap_or_default();
        *out.entry(k).or_insert(0.0) += x.value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a consumer serves (text 0.0.4, prometheus-client counters with `_total`).
    const TEXT_004: &str = "\
# HELP tapbus_consumer_acked_total Messages acked.
# TYPE tapbus_consumer_acked counter
tapbus_consumer_acked_total{consumer=\"aggregate\"} 42
# HELP tapbus_mimir_retries_total Retries.
# TYPE tapbus_mimir_retries_total counter
tapbus_mimir_retries_total 2
# TYPE dnstap_messages_total counter
dnstap_messages_total{identity=\"a\",operation=\"CLIENT_QUERY\"} 3
dnstap_messages_total{identity=\"a\",operation=\"CLIENT_RESPONSE\"} 5
dnstap_messages_total{identity=\"b\",operation=\"CLIENT_RESPONSE\"} 7
# TYPE lat histogram
lat_bucket{op=\"q\",le=\"0.5\"} 1
lat_bucket{op=\"q\",le=\"+Inf\"} 4
lat_sum{op=\"q\"} 2.5
lat_count{op=\"q\"} 4
";

    /// What the broker serves (OpenMetrics, prometheus-client).
    const OPENMETRICS: &str = "\
# HELP tapbus_published Events published.
# TYPE tapbus_published counter
tapbus_published_total{output=\"nats\"} 10
tapbus_published_total{output=\"bus\"} 1
# HELP tapbus_output_up Up.
# TYPE tapbus_output_up gauge
tapbus_output_up{output=\"nats\"} 1
# EOF
";

    #[test]
    fn reads_text_004_with_prometheus_client_counters() {
        let s = Scrape::parse(TEXT_004);
        assert_eq!(
            value(
                &s,
                "tapbus_consumer_acked_total",
                &[("consumer", "aggregate")]
            ),
            Some(42.0)
        );
        assert_eq!(
            value(&s, "tapbus_consumer_acked_total", &[("consumer", "x")]),
            None
        );
        assert_eq!(value(&s, "tapbus_consumer_acked", &[]), None);
        assert_eq!(value(&s, "tapbus_mimir_retries_total", &[]), Some(2.0));
        assert_eq!(sum(&s, "dnstap_messages_total", &[]), 15.0);
        assert_eq!(
            sum(
                &s,
                "dnstap_messages_total",
                &[("operation", "CLIENT_RESPONSE")]
            ),
            12.0
        );
        assert_eq!(
            sum_by(&s, "dnstap_messages_total", &[], "identity"),
            BTreeMap::from([("a".to_string(), 8.0), ("b".to_string(), 7.0)])
        );
        assert_eq!(
            value(&s, "lat_bucket", &[("op", "q"), ("le", "+Inf")]),
            Some(4.0)
        );
        assert_eq!(value(&s, "lat_bucket", &[("le", "0.5")]), Some(1.0));
        assert_eq!(value(&s, "lat_sum", &[("op", "q")]), Some(2.5));
        assert_eq!(value(&s, "lat_count", &[]), Some(4.0));
        assert_eq!(sum(&s, "lat", &[]), 0.0);
    }

    #[test]
    fn reads_openmetrics_with_eof() {
        let s = Scrape::parse(OPENMETRICS);
        assert_eq!(s.series.len(), 3, "{:?}", s.series);
        assert_eq!(
            value(&s, "tapbus_published_total", &[("output", "nats")]),
            Some(10.0)
        );
        assert_eq!(sum(&s, "tapbus_published_total", &[]), 11.0);
        assert_eq!(value(&s, "tapbus_output_up", &[]), Some(1.0));
        assert!(Scrape::parse("").is_empty());
    }

    #[test]
    #[should_panic(expected = "matches 2 series")]
    fn value_refuses_an_ambiguous_question() {
        value(&Scrape::parse(OPENMETRICS), "tapbus_published_total", &[]);
    }
}
