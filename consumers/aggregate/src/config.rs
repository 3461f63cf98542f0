//! The `[aggregate]` table: instance label, bounds, CoreDNS profile, batch interval.
//!
//! ```toml
//! [aggregate]
//! instance = "agg-1"        # required: the `instance` label and the batch subject suffix
//! max_identities = 1000     # distinct `identity` values, beyond: identity="other"
//! max_zones = 1000          # distinct CoreDNS `zone` values, beyond: zone="other"
//! max_series = 100000       # label sets per metric family, beyond: dropped and counted
//! coredns = false           # also export the coredns_dns_* families
//! interval = "10s"          # how often the binary publishes a batch
//! top_n = 10                # ranks exported per identity for qnames and clients, 0: off
//! top_capacity = 100        # keys the space-saving summary monitors per identity
//! geo_top_n = 100           # countries / ASNs with a series per identity, 0: off
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_config::{ConsumerInputConfig, OutputConfig};

/// The largest `max_identities` / `max_zones`: indices are packed in 20 bits.
pub const MAX_INTERNED: usize = (1 << 20) - 2;
/// The largest `max_series` accepted.
pub const MAX_SERIES: usize = 10_000_000;

/// A key of the `[aggregate]` table is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct ConfigError {
    /// The full key, e.g. `aggregate.max_series`.
    pub key: String,
    /// What is wrong with it.
    pub msg: String,
}

/// The `[aggregate]` table as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// The `instance` label on every series and the `<instance>` of
    /// `tapbus.metrics.<instance>`: letters, digits, `-` and `_` (no `.`, so it is one
    /// subject token). Two copies must use different instances, or they write the same
    /// series downstream.
    pub instance: String,
    /// Distinct identities kept (default 1000); more are folded into `identity="other"`.
    pub max_identities: usize,
    /// Distinct CoreDNS zones kept (default 1000); more are folded into `zone="other"`.
    pub max_zones: usize,
    /// Label sets per metric family (default 100,000); events that would make more are
    /// counted in `tapbus_aggregate_series_dropped_total{metric}` and left out of it.
    pub max_series: usize,
    /// Also export the CoreDNS-named families (`coredns_dns_requests_total`, ...).
    pub coredns: bool,
    /// How often the binary makes and publishes a batch (default 10s, at least 1s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Ranks exported per identity in the top qnames / clients families (default 10,
    /// at most 100; 0 turns them off).
    pub top_n: usize,
    /// Keys monitored per identity and family by the space-saving summary (default 100,
    /// at least `top_n`, at most 10,000): more is more accurate for a long tail.
    pub top_capacity: usize,
    /// Countries and ASNs with their own series per identity in
    /// `dnstap_client_country_total` / `dnstap_client_asn_total` (default 100, at most
    /// 10,000; 0 turns both families off). The first `geo_top_n` distinct keys of an
    /// identity keep a series for good; later new keys are counted as `other`.
    pub geo_top_n: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            instance: String::new(),
            max_identities: 1000,
            max_zones: 1000,
            max_series: 100_000,
            coredns: false,
            interval: Duration::from_secs(10),
            top_n: 10,
            top_capacity: 100,
            geo_top_n: 100,
        }
    }
}

/// A validated `[aggregate]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    pub instance: String,
    pub max_identities: usize,
    pub max_zones: usize,
    pub max_series: usize,
    pub coredns: bool,
    pub interval: Duration,
    pub top_n: usize,
    pub top_capacity: usize,
    pub geo_top_n: usize,
}

impl AggregateSpec {
    /// A spec with the defaults and `instance` (tests, benches); panics when `instance`
    /// is not a valid instance.
    pub fn with_instance(instance: &str) -> Self {
        AggregateConfig {
            instance: instance.to_owned(),
            ..Default::default()
        }
        .validate("aggregate")
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl AggregateConfig {
    /// Checks every key; `key` names the table (`aggregate`) in the errors.
    pub fn validate(&self, key: &str) -> Result<AggregateSpec, ConfigError> {
        let err = |k: &str, msg: String| ConfigError {
            key: format!("{key}.{k}"),
            msg,
        };
        let inst = self.instance.trim();
        if inst.is_empty() {
            return Err(err(
                "instance",
                "missing (the instance label of every series)".into(),
            ));
        }
        if let Some(c) = inst
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(err(
                "instance",
                format!("{inst:?}: {c:?} is not allowed (letters, digits, '-', '_')"),
            ));
        }
        for (k, v, max) in [
            ("max_identities", self.max_identities, MAX_INTERNED),
            ("max_zones", self.max_zones, MAX_INTERNED),
            ("max_series", self.max_series, MAX_SERIES),
        ] {
            if v == 0 || v > max {
                return Err(err(k, format!("{v}: must be between 1 and {max}")));
            }
        }
        if self.interval < Duration::from_secs(1) {
            return Err(err(
                "interval",
                format!(
                    "{}: must be at least 1s",
                    humantime_serde::re::humantime::format_duration(self.interval)
                ),
            ));
        }
        if self.top_n > 100 {
            return Err(err("top_n", format!("{}: at most 100", self.top_n)));
        }
        if self.top_n > 0 && (self.top_capacity < self.top_n || self.top_capacity > 10_000) {
            return Err(err(
                "top_capacity",
                format!(
                    "{}: must be between top_n ({}) and 10000",
                    self.top_capacity, self.top_n
                ),
            ));
        }
        if self.geo_top_n > 10_000 {
            return Err(err(
                "geo_top_n",
                format!("{}: at most 10000", self.geo_top_n),
            ));
        }
        Ok(AggregateSpec {
            instance: inst.to_owned(),
            max_identities: self.max_identities,
            max_zones: self.max_zones,
            max_series: self.max_series,
            coredns: self.coredns,
            interval: self.interval,
            top_n: self.top_n,
            top_capacity: self.top_capacity,
            geo_top_n: self.geo_top_n,
        })
    }
}

/// tapbus-aggregate's configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub input: ConsumerInputConfig,
    /// Where batches go; absent: no batches, the scrape only.
    pub output: Option<OutputConfig>,
    pub aggregate: AggregateConfig,
    /// `/metrics` and `/health`; "" disables.
    pub metrics_listen: String,
    /// Events counted and not yet acknowledged, at most; reading pauses at the bound
    /// while the output cannot confirm a batch. A batch is also made when it is reached.
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::default(),
            output: None,
            aggregate: AggregateConfig {
                instance: String::new(),
                ..AggregateConfig::default()
            },
            metrics_listen: "127.0.0.1:9635".into(),
            max_pending: 20_000,
        }
    }
}

/// The host name as an `instance` (letters, digits, `-`, `_`).
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "tapbus-aggregate".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AggregateConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_and_durations() {
        let c =
            parse("instance = \"agg-1\"\ninterval = \"1m 30s\"\ncoredns = true").expect("parses");
        let s = c.validate("aggregate").expect("valid");
        assert_eq!(s.instance, "agg-1");
        assert_eq!(s.interval, Duration::from_secs(90));
        assert_eq!(
            (s.max_identities, s.max_zones, s.max_series),
            (1000, 1000, 100_000)
        );
        assert!(s.coredns);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("instance = \"a\"\nmax_serie = 3").expect_err("unknown key");
        assert!(e.to_string().contains("max_serie"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |toml: &str| {
            parse(toml)
                .expect("parses")
                .validate("aggregate")
                .expect_err("invalid")
                .to_string()
        };
        assert!(bad("").starts_with("aggregate.instance: missing"));
        assert!(bad("instance = \"a.b\"").starts_with("aggregate.instance: "));
        assert!(bad("instance = \"a\"\nmax_series = 0").starts_with("aggregate.max_series: 0"));
        assert!(
            bad("instance = \"a\"\nmax_identities = 2000000")
                .starts_with("aggregate.max_identities: ")
        );
        assert!(bad("instance = \"a\"\nmax_zones = 0").starts_with("aggregate.max_zones: "));
        assert!(bad("instance = \"a\"\ntop_n = 101").starts_with("aggregate.top_n: 101"));
        assert!(
            bad("instance = \"a\"\ntop_n = 20\ntop_capacity = 10")
                .starts_with("aggregate.top_capacity: 10")
        );
        assert!(
            bad("instance = \"a\"\ninterval = \"10ms\"").starts_with("aggregate.interval: 10ms")
        );
    }
}
