//! Metric batches become remote-write requests here: JSON batch bytes -> the
//! `prometheus.WriteRequest` protobuf, snappy block format (PRW 1.0: labels sorted by
//! name, `__name__` included, empty label values left out, one sample per series at the
//! batch's timestamp).

use std::collections::BTreeMap;

use prost::Message as _;
use serde::Deserialize;

/// A batch as tapbus-aggregate publishes it (`consumers/aggregate/batch.schema.json`);
/// other producers may send the same shape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Batch {
    pub instance: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Series {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Why a batch cannot become a request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WriteError {
    #[error("not a metric batch: {0}")]
    Json(String),
    #[error("series {0}: invalid metric name {1:?}")]
    MetricName(usize, String),
    #[error("series {0}: invalid label name {1:?}")]
    LabelName(usize, String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

fn metric_name_ok(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn label_name_ok(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.starts_with("__")
}

/// Parses a batch.
pub fn parse(json: &[u8]) -> Result<Batch, WriteError> {
    serde_json::from_slice(json).map_err(|e| WriteError::Json(e.to_string()))
}

/// The snappy-compressed `WriteRequest` for a batch, and its sample count.
pub fn encode(batch: &Batch) -> Result<(Vec<u8>, usize), WriteError> {
    let mut req = WriteRequest {
        timeseries: Vec::with_capacity(batch.series.len()),
    };
    for (i, s) in batch.series.iter().enumerate() {
        if !metric_name_ok(&s.name) {
            return Err(WriteError::MetricName(i, s.name.clone()));
        }
        let mut labels = Vec::with_capacity(s.labels.len() + 1);
        labels.push(Label {
            name: "__name__".into(),
            value: s.name.clone(),
        });
        for (k, v) in &s.labels {
            if !label_name_ok(k) {
                return Err(WriteError::LabelName(i, k.clone()));
            }
            if !v.is_empty() {
                labels.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        // Byte order: `_` sorts after the capitals, so `__name__` is not always first.
        labels.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        req.timeseries.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: s.value,
                timestamp: batch.timestamp_ms,
            }],
        });
    }
    let n = req.timeseries.len();
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| WriteError::Json(e.to_string()))?;
    Ok((body, n))
}

/// What to do after the receiver answered with `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: written; ack the batch.
    Written,
    /// 429 and 5xx: send it again after a backoff.
    Retry,
    /// Any other status: the receiver refused it for good; drop, count, ack.
    Refused,
}

pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Written,
        429 | 500..=599 => Outcome::Retry,
        _ => Outcome::Refused,
    }
}

/// A short reason for a refusal, for `tapbus_mimir_dropped_total{reason}`: Mimir's
/// `err-mimir-*` id when the body names one, else `http_<status>`.
pub fn refusal_reason(status: u16, body: &str) -> String {
    body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| w.starts_with("err-mimir-") && w.len() < 80)
        .map(str::to_string)
        .unwrap_or_else(|| format!("http_{status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        parse(br#"{"instance":"a","seq":7,"timestamp_ms":1000,"series":[
            {"name":"dnstap_messages_total","labels":{"instance":"a","Zone":"x","rcode":""},"value":3},
            {"name":"up","value":1}]}"#)
        .expect("batch")
    }

    #[test]
    fn labels_sorted_empty_values_left_out_and_snappy_block() {
        let (body, n) = encode(&batch()).expect("encode");
        assert_eq!(n, 2);
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy block");
        let req = WriteRequest::decode(&raw[..]).expect("protobuf");
        let names: Vec<&str> = req.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        // 'Z' < '_' in byte order.
        assert_eq!(names, ["Zone", "__name__", "instance"]);
        assert_eq!(
            req.timeseries[0].samples,
            vec![Sample {
                value: 3.0,
                timestamp: 1000
            }]
        );
        assert_eq!(req.timeseries[1].labels.len(), 1);
    }

    #[test]
    fn bad_names_and_json_are_errors() {
        let mut b = batch();
        b.series[0].name = "1bad".into();
        assert!(matches!(encode(&b), Err(WriteError::MetricName(0, _))));
        let mut b = batch();
        b.series[1].labels.insert("__x".into(), "v".into());
        assert!(matches!(encode(&b), Err(WriteError::LabelName(1, _))));
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn outcomes_and_reasons() {
        assert_eq!(outcome(204), Outcome::Written);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(503), Outcome::Retry);
        assert_eq!(outcome(400), Outcome::Refused);
        assert_eq!(
            refusal_reason(
                400,
                "the sample has been rejected because another sample with a more recent timestamp has already been ingested and out-of-order samples are not allowed (err-mimir-sample-out-of-order). series: ..."
            ),
            "err-mimir-sample-out-of-order"
        );
        assert_eq!(refusal_reason(400, "out of order sample"), "http_400");
    }
}
