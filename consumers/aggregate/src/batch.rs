//! The push arrow: aggregate --metrics--> `tapbus.metrics.<instance>` batches -->
//! tapbus-mimir --> remote write. One [`Batch`] is the whole state at one instant: every
//! counter, and every histogram bucket (cumulative, `le` label as in the text format,
//! `+Inf` last), `_sum` and `_count`, each as one [`Series`] with its full label set.
//!
//! All samples of a batch share `timestamp_ms`, fixed by the caller when the batch is
//! made (the core never reads the clock), and a batch has a deterministic
//! [`message_id`](Batch::message_id) (instance + seq). So a batch sent twice, after a
//! reconnect or a redelivery, carries the same samples at the same timestamp and the same
//! id: downstream de-duplicates it (JetStream by `Nats-Msg-Id`, remote write by
//! series + timestamp). Values are cumulative, so a lost batch loses resolution, not counts.
//!
//! Layout: `batch.schema.json` (JSON Schema draft 2020-12), [`SCHEMA`] here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::exposition::write_float;
use crate::metrics::{Aggregator, Kind, Le, Sink, Value};

/// `batch.schema.json`.
pub const SCHEMA: &str = include_str!("../batch.schema.json");

/// The bus subject of an instance's batches: `tapbus.metrics.<instance>`.
pub fn subject(instance: &str) -> String {
    format!("tapbus.metrics.{instance}")
}

/// One metric batch (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The aggregate instance (also the `instance` label of every series).
    pub instance: String,
    /// The caller's batch number, increasing per instance.
    pub seq: u64,
    /// The sample timestamp of every series, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Every sample.
    pub series: Vec<Series>,
}

/// One sample: metric name (with `_bucket` / `_sum` / `_count` for histograms), its labels
/// (including `instance`, and `le` for buckets) and its value (always finite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Batch {
    /// `tapbus-metrics:<instance>:<seq>`: the same for a re-sent batch, different for
    /// every other (the instance has no `:`).
    pub fn message_id(&self) -> String {
        message_id(&self.instance, self.seq)
    }

    /// The JSON form (what is published).
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and finite floats always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The message id of batch `seq` of `instance` (see [`Batch::message_id`]).
pub fn message_id(instance: &str, seq: u64) -> String {
    format!("tapbus-metrics:{instance}:{seq}")
}

impl Aggregator {
    /// The whole state as one batch with timestamp `now_ms` and number `seq`.
    pub fn batch(&self, now_ms: i64, seq: u64) -> Batch {
        let mut sink = Collect { series: Vec::new() };
        self.visit(&mut sink);
        Batch {
            instance: self.spec().instance.clone(),
            seq,
            timestamp_ms: now_ms,
            series: sink.series,
        }
    }
}

struct Collect {
    series: Vec<Series>,
}

impl Sink for Collect {
    fn family(&mut self, _: &'static str, _: &'static str, _: Kind) {}

    fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], le: Le, value: Value) {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match le {
            Le::No => {}
            Le::Inf => {
                l.insert("le".into(), "+Inf".into());
            }
            Le::Bound(b) => {
                let mut s = String::new();
                write_float(&mut s, b);
                l.insert("le".into(), s);
            }
        }
        self.series.push(Series {
            name: name.to_owned(),
            labels: l,
            value: value.as_f64(),
        });
    }
}
