//! The `[reduce]` table: window, lateness, bounds and the reductions, as the binary loads
//! it (figment, TOML + environment), and its validation into a [`ReduceSpec`].
//!
//! ```toml
//! [reduce]
//! window = "10s"            # tumbling window, aligned to multiples of it since the epoch
//! lateness = "5s"           # watermark = latest event time - lateness
//! max_future = "1h"         # events further ahead of the watermark are rejected
//! max_groups = 200000       # groups held across all open windows
//!
//! [[reduce.reductions]]
//! name = "client"
//! filter = "operation=CLIENT_RESPONSE"
//! keys = ["query-ip", "qname", "qtype", "rcode"]
//! ```
//!
//! Without `reductions` the two of today's pipeline are used ([`ReductionConfig::defaults`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_event::Filter;

/// A configuration value that is not allowed; the message names the key
/// (`reduce.window: must be at least 1s`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The full key, e.g. `reduce.reductions[1].filter`.
    pub key: String,
    /// What is wrong and what would be allowed.
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A group key field. The dnstap identity is always part of a group, so listing
/// `identity` changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyField {
    /// `dnstap.identity` (always included; allowed here for clarity).
    Identity,
    /// `network.query-ip`: the client for CLIENT_*.
    QueryIp,
    /// `network.response-ip`: the server for CLIENT_*.
    ResponseIp,
    /// `dns.qname`, ASCII-lowercased.
    Qname,
    /// `dns.qtype`.
    Qtype,
    /// `dns.rcode`.
    Rcode,
    /// `dnstap.operation`.
    Operation,
    /// `network.protocol`.
    Protocol,
}

impl KeyField {
    /// The name in the configuration and in a record's `key` object.
    pub fn name(self) -> &'static str {
        match self {
            KeyField::Identity => "identity",
            KeyField::QueryIp => "query-ip",
            KeyField::ResponseIp => "response-ip",
            KeyField::Qname => "qname",
            KeyField::Qtype => "qtype",
            KeyField::Rcode => "rcode",
            KeyField::Operation => "operation",
            KeyField::Protocol => "protocol",
        }
    }
}

/// One `[[reduce.reductions]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReductionConfig {
    /// The subject token: records go to `tapbus.reduced.<name>`. Letters, digits, `-`, `_`.
    pub name: String,
    /// A `tapbus_event::Filter` expression; empty (the default) takes every event.
    #[serde(default)]
    pub filter: String,
    /// Group key fields besides the identity, in record order.
    pub keys: Vec<KeyField>,
}

impl ReductionConfig {
    /// Today's pipeline: `client` = (query-ip, qname, qtype, rcode) and `qname` = (qname),
    /// both over `operation=CLIENT_RESPONSE`.
    pub fn defaults() -> Vec<ReductionConfig> {
        vec![
            ReductionConfig {
                name: "client".into(),
                filter: "operation=CLIENT_RESPONSE".into(),
                keys: vec![
                    KeyField::QueryIp,
                    KeyField::Qname,
                    KeyField::Qtype,
                    KeyField::Rcode,
                ],
            },
            ReductionConfig {
                name: "qname".into(),
                filter: "operation=CLIENT_RESPONSE".into(),
                keys: vec![KeyField::Qname],
            },
        ]
    }
}

/// The `[reduce]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReduceConfig {
    /// Tumbling window length (default 10s; 1s to 1d).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Allowed lateness: the watermark trails the latest event time by this much
    /// (default 5s; at most 1h).
    #[serde(with = "humantime_serde")]
    pub lateness: Duration,
    /// Events more than this ahead of the watermark are rejected (default 1h; at least
    /// one window, at most 7d).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Most groups held across all open windows (default 200,000); beyond it, new groups
    /// fold into overflow records.
    pub max_groups: usize,
    /// The reductions (default: [`ReductionConfig::defaults`]).
    pub reductions: Vec<ReductionConfig>,
}

impl Default for ReduceConfig {
    fn default() -> Self {
        ReduceConfig {
            window: Duration::from_secs(10),
            lateness: Duration::from_secs(5),
            max_future: Duration::from_secs(3600),
            max_groups: 200_000,
            reductions: ReductionConfig::defaults(),
        }
    }
}

/// A validated reduction.
#[derive(Debug, Clone, PartialEq)]
pub struct ReductionSpec {
    /// The name (subject token).
    pub name: String,
    /// `tapbus.reduced.<name>`.
    pub subject: String,
    /// The parsed filter.
    pub filter: Filter,
    /// Key fields, identity removed, no duplicates, in configured order.
    pub keys: Vec<KeyField>,
}

/// A validated `[reduce]` table, in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceSpec {
    /// Window length.
    pub window_ns: u64,
    /// Allowed lateness.
    pub lateness_ns: u64,
    /// Future bound ahead of the watermark.
    pub max_future_ns: u64,
    /// Group bound.
    pub max_groups: usize,
    /// The reductions, at least one.
    pub reductions: Vec<ReductionSpec>,
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ReduceConfig {
    /// Checks every key; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<ReduceSpec, ConfigError> {
        if self.window < SECOND {
            return Err(invalid("reduce.window", "must be at least 1s"));
        }
        if self.window > DAY {
            return Err(invalid("reduce.window", "must be at most 1d"));
        }
        if self.lateness > HOUR {
            return Err(invalid("reduce.lateness", "must be at most 1h"));
        }
        if self.max_future < self.window {
            return Err(invalid(
                "reduce.max_future",
                "must be at least one window (reduce.window)",
            ));
        }
        if self.max_future > 7 * DAY {
            return Err(invalid("reduce.max_future", "must be at most 7d"));
        }
        if self.max_groups == 0 {
            return Err(invalid("reduce.max_groups", "must be at least 1"));
        }
        if self.max_groups > 100_000_000 {
            return Err(invalid("reduce.max_groups", "must be at most 100000000"));
        }
        if self.reductions.is_empty() {
            return Err(invalid(
                "reduce.reductions",
                "must name at least one reduction",
            ));
        }
        if self.reductions.len() > 64 {
            return Err(invalid("reduce.reductions", "at most 64 reductions"));
        }
        let mut out: Vec<ReductionSpec> = Vec::with_capacity(self.reductions.len());
        for (i, r) in self.reductions.iter().enumerate() {
            let key = |k: &str| format!("reduce.reductions[{i}].{k}");
            let name_ok = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid(
                    key("name"),
                    format!(
                        "`{}` must be 1-64 letters, digits, `-` or `_` (a subject token)",
                        r.name
                    ),
                ));
            }
            if out.iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    key("name"),
                    format!("`{}` is used by another reduction", r.name),
                ));
            }
            let filter =
                Filter::parse(&r.filter).map_err(|e| invalid(key("filter"), e.to_string()))?;
            let mut keys = Vec::with_capacity(r.keys.len());
            for k in &r.keys {
                if keys.contains(k) {
                    return Err(invalid(
                        key("keys"),
                        format!("`{}` is listed twice", k.name()),
                    ));
                }
                if *k != KeyField::Identity {
                    keys.push(*k);
                }
            }
            out.push(ReductionSpec {
                subject: format!("tapbus.reduced.{}", r.name),
                name: r.name.clone(),
                filter,
                keys,
            });
        }
        Ok(ReduceSpec {
            window_ns: ns(self.window),
            lateness_ns: ns(self.lateness),
            max_future_ns: ns(self.max_future),
            max_groups: self.max_groups,
            reductions: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        let c: ReduceConfig = serde_json::from_str(json).expect("deserializes");
        match c.validate() {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_validate() {
        let s = ReduceConfig::default().validate().expect("defaults");
        assert_eq!(s.window_ns, 10_000_000_000);
        assert_eq!(s.lateness_ns, 5_000_000_000);
        assert_eq!(s.max_future_ns, 3_600_000_000_000);
        assert_eq!(s.max_groups, 200_000);
        assert_eq!(s.reductions.len(), 2);
        assert_eq!(s.reductions[0].subject, "tapbus.reduced.client");
        let empty: ReduceConfig = serde_json::from_str("{}").expect("empty table");
        assert_eq!(empty, ReduceConfig::default());
    }

    #[test]
    fn humantime_and_keys() {
        let c: ReduceConfig = serde_json::from_str(
            r#"{"window":"1m","lateness":"0s","reductions":[{"name":"ops","keys":["identity","operation","protocol"]}]}"#,
        )
        .expect("deserializes");
        let s = c.validate().expect("valid");
        assert_eq!(s.window_ns, 60_000_000_000);
        assert_eq!(s.lateness_ns, 0);
        assert_eq!(
            s.reductions[0].keys,
            vec![KeyField::Operation, KeyField::Protocol]
        );
        assert!(s.reductions[0].filter.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err(r#"{"window":"500ms"}"#),
            "reduce.window: must be at least 1s"
        );
        assert!(err(r#"{"window":"2d"}"#).starts_with("reduce.window:"));
        assert!(err(r#"{"lateness":"2h"}"#).starts_with("reduce.lateness:"));
        assert!(err(r#"{"max_future":"5s"}"#).starts_with("reduce.max_future:"));
        assert!(err(r#"{"max_groups":0}"#).starts_with("reduce.max_groups:"));
        assert!(err(r#"{"reductions":[]}"#).starts_with("reduce.reductions:"));
        assert!(
            err(r#"{"reductions":[{"name":"a.b","keys":[]}]}"#)
                .starts_with("reduce.reductions[0].name:")
        );
        assert!(
            err(r#"{"reductions":[{"name":"a","keys":[]},{"name":"a","keys":[]}]}"#)
                .starts_with("reduce.reductions[1].name:")
        );
        assert!(
            err(r#"{"reductions":[{"name":"a","filter":"nope=1","keys":[]}]}"#)
                .starts_with("reduce.reductions[0].filter: bad filter term")
        );
        assert!(
            err(r#"{"reductions":[{"name":"a","keys":["qname","qname"]}]}"#)
                .starts_with("reduce.reductions[0].keys:")
        );
        // Unknown keys and values are refused by serde.
        assert!(serde_json::from_str::<ReduceConfig>(r#"{"windows":"1s"}"#).is_err());
        assert!(
            serde_json::from_str::<ReduceConfig>(
                r#"{"reductions":[{"name":"a","keys":["port"]}]}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<ReduceConfig>(r#"{"window":"soon"}"#).is_err());
    }
}
