//! What a consumer subscribes to: the input side of every consumer binary (tapbus-tail,
//! reduce, aggregate, loki, mimir), beside the connection keys of [`crate::connect`].
//!
//! Users write either a URL shorthand (`--input URL`, see [`InputConfig::from_url`]) or an
//! `[input]` table with `url` + connection keys and an `[input.subscribe]` table tagged by
//! `mode`; [`InputConfig::validate`] turns both into an [`InputSpec`].
//!
//! ```toml
//! [input]
//! url = "nats://127.0.0.1:4222"
//! [input.subscribe]
//! mode = "jetstream"
//! stream = "DNSTAP"
//! durable = "loki"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BusConnect, ConfigError, ConnectConfig, invalid, scheme_of};

/// JetStream messages asked for per pull request when `batch` is not set (capped at
/// `max_ack_pending`). `consumers/loki/benches/e2e.rs` measured 256, 1024 and 4096.
pub const DEFAULT_PULL_BATCH: i64 = 1024;

/// The largest pull batch: the NATS client's subscription buffer (async-nats'
/// `subscription_capacity`, 65,536 messages), which a batch must fit.
pub const MAX_PULL_BATCH: i64 = 65_536;

/// A consumer's `[input]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Where and how to connect (`url` may be a subscriber shorthand such as
    /// `jetstream://host:4222/DNSTAP?durable=NAME`; its path and query then fill
    /// `subscribe`).
    #[serde(flatten)]
    pub connect: ConnectConfig,
    /// What to subscribe to; default: taken from the URL (scheme, path, query), else the
    /// bus's default for raw events.
    pub subscribe: Option<SubscribeConfig>,
}

/// Where JetStream starts a new durable consumer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliverFrom {
    /// Everything the stream holds.
    #[default]
    All,
    /// Only messages stored after the consumer was created.
    New,
}

/// What to subscribe to, one variant per subscribe mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubscribeConfig {
    /// NATS core subscription (at most once), optionally in a queue group (scale-out).
    Nats {
        /// Default "dnstap.>".
        subject: Option<String>,
        queue_group: Option<String>,
    },
    /// JetStream durable pull consumer (at least once, explicit acks).
    Jetstream {
        /// Default "DNSTAP".
        stream: Option<String>,
        /// Durable consumer name: bound if it exists, else created. Processes on the same
        /// durable share the work. Default: a consumer named `<program>-<pid>` that the
        /// server deletes once it has been inactive for `inactive_threshold` (default 1m).
        durable: Option<String>,
        /// The server deletes the consumer after this long with no client pulling
        /// (JetStream's `inactive_threshold`). Default: never for a named durable, 1m for
        /// the per-process consumer made when `durable` is not set.
        #[serde(default, with = "humantime_serde")]
        inactive_threshold: Option<Duration>,
        /// Default: the whole stream.
        filter_subject: Option<String>,
        /// Most messages delivered and not yet acknowledged (default 4096).
        max_ack_pending: Option<i64>,
        /// Redelivery after this long without an ack or progress (default 30s).
        #[serde(default, with = "humantime_serde")]
        ack_wait: Option<Duration>,
        deliver: Option<DeliverFrom>,
        /// Messages asked for per pull request (default 1024, at most `max_ack_pending`):
        /// more in flight per round trip to the server.
        batch: Option<i64>,
    },
    /// MQTT QoS 1 subscription with manual acks (at least once), optionally shared
    /// (`$share/GROUP/TOPIC`, MQTT 5) for scale-out.
    Mqtt {
        /// Topic filter, default "dnstap/#".
        topic: Option<String>,
        /// Shared-subscription group.
        share: Option<String>,
        /// 0 or 1 (default 1).
        qos: Option<u8>,
        /// Keep the session (and unacknowledged messages) across reconnects; default false.
        /// Set a fixed `client_id` with it, or a restart starts a new session.
        persistent: Option<bool>,
    },
    /// Redis `PSUBSCRIBE` (at most once).
    RedisPubsub {
        /// Default "dnstap.*".
        pattern: Option<String>,
    },
    /// Redis stream read by a consumer group (`XREADGROUP`, `XACK`, `XAUTOCLAIM`).
    RedisStream {
        /// Default "dnstap".
        key: Option<String>,
        /// Default "tapbus".
        group: Option<String>,
        /// Default "<program>-<host>-<pid>".
        consumer: Option<String>,
        /// Entries pending this long at a dead consumer are claimed (default 60s).
        #[serde(default, with = "humantime_serde")]
        claim_idle: Option<Duration>,
    },
}

/// A validated input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub connect: BusConnect,
    pub mode: SubscribeMode,
}

impl InputSpec {
    /// A consumer that holds each message up to `hold` before it can ack it (a reduce
    /// window, an aggregate interval) needs a JetStream `ack_wait` of at least twice that
    /// (the rest covers its publish and confirmation), or the server redelivers messages
    /// that are only waiting, and they are counted twice. Other buses have no such timer.
    pub fn check_hold(&self, key: &str, hold: Duration, why: &str) -> Result<(), ConfigError> {
        if let SubscribeMode::JetStream { ack_wait, .. } = self.mode {
            let need = hold.saturating_mul(2);
            if ack_wait < need {
                return Err(invalid(
                    format!("{key}.subscribe.ack_wait"),
                    format!(
                        "{}s is shorter than twice {why} ({}s): the server would redeliver \
                         messages that are only waiting for it; set ack_wait to at least {}s",
                        ack_wait.as_secs_f64(),
                        hold.as_secs_f64(),
                        need.as_secs_f64()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A validated subscribe mode.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeMode {
    Nats {
        subject: String,
        queue_group: Option<String>,
    },
    JetStream {
        stream: String,
        durable: Option<String>,
        /// `None` with a named durable: it stays until deleted.
        inactive_threshold: Option<Duration>,
        filter_subject: Option<String>,
        max_ack_pending: i64,
        ack_wait: Duration,
        deliver: DeliverFrom,
        /// Messages per pull request (1 ..= `max_ack_pending`).
        batch: usize,
    },
    Mqtt {
        /// The topic filter (subscribed as `$share/GROUP/TOPIC` when `share` is set).
        topic: String,
        share: Option<String>,
        qos: u8,
        persistent: bool,
    },
    RedisPubsub {
        pattern: String,
    },
    RedisStream {
        key: String,
        group: String,
        consumer: String,
        claim_idle: Duration,
    },
}

/// The mode in a few words, for `--check` summaries and logs: `jetstream stream=DNSTAP
/// durable=reduce`, `nats subject=tapbus.metrics.>`.
impl std::fmt::Display for SubscribeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |k: &str, v: &Option<String>| {
            v.as_ref().map(|v| format!(" {k}={v}")).unwrap_or_default()
        };
        match self {
            SubscribeMode::Nats {
                subject,
                queue_group,
            } => write!(f, "nats subject={subject}{}", opt("queue", queue_group)),
            SubscribeMode::JetStream {
                stream,
                durable,
                filter_subject,
                ..
            } => write!(
                f,
                "jetstream stream={stream}{}{}",
                opt("durable", durable),
                opt("filter", filter_subject)
            ),
            SubscribeMode::Mqtt {
                topic, share, qos, ..
            } => write!(f, "mqtt topic={topic} qos={qos}{}", opt("share", share)),
            SubscribeMode::RedisPubsub { pattern } => write!(f, "redis pattern={pattern}"),
            SubscribeMode::RedisStream { key, group, .. } => {
                write!(f, "redis stream={key} group={group}")
            }
        }
    }
}

impl SubscribeMode {
    /// The at-least-once modes, where an ack means something.
    pub fn acknowledged(&self) -> bool {
        match self {
            SubscribeMode::Nats { .. } | SubscribeMode::RedisPubsub { .. } => false,
            SubscribeMode::Mqtt { qos, .. } => *qos == 1,
            SubscribeMode::JetStream { .. } | SubscribeMode::RedisStream { .. } => true,
        }
    }
}

impl InputConfig {
    /// The input of a `--input URL` flag.
    pub fn from_url(url: &str) -> InputConfig {
        InputConfig {
            connect: ConnectConfig {
                url: url.to_string(),
                ..Default::default()
            },
            subscribe: None,
        }
    }

    /// Applies a `--input URL` flag on top of the file and environment: the URL replaces
    /// `url` and the subscribe table (its scheme, path and query say what to subscribe);
    /// the connection keys (credentials, TLS, `client_id`) stay.
    pub fn set_url(&mut self, url: &str) {
        self.connect.url = url.to_string();
        self.subscribe = None;
    }

    /// Checks everything. `key` names the table (`input`); `program` is the binary's name,
    /// used for default client ids and consumer names.
    pub fn validate(&self, key: &str, program: &str) -> Result<InputSpec, ConfigError> {
        self.validate_reading(key, program, "dnstap.>")
    }

    /// As [`validate`](Self::validate) for a consumer whose natural input is another
    /// subject than raw events (tapbus-mimir: `tapbus.metrics.>`): what a URL without a
    /// subject, topic, pattern or key subscribes to. `natural` is a NATS subject; MQTT
    /// reads it with `/` and `#`, Redis pub/sub with `*`, a Redis stream key without the
    /// wildcard token.
    pub fn validate_reading(
        &self,
        key: &str,
        program: &str,
        natural: &str,
    ) -> Result<InputSpec, ConfigError> {
        let raw = self.connect.url.trim();
        if raw.is_empty() {
            return Err(invalid(format!("{key}.url"), "missing"));
        }
        let scheme = scheme_of(raw);
        let (conn_url, from_url) = split_url(key, raw)?;
        let default_id = format!("{program}-{}", std::process::id());
        let connect = self.connect.validate_url(key, &conn_url, &default_id)?;
        let sub = match (&self.subscribe, from_url) {
            (Some(s), q) if !q.is_empty() => {
                let k = q.keys().next().cloned().unwrap_or_default();
                return Err(invalid(
                    format!("{key}.url"),
                    format!(
                        "the URL sets {k:?} and [{key}.subscribe] is given too: use one of them, not both ({s:?})"
                    ),
                ));
            }
            (Some(s), _) => s.clone(),
            (None, q) => from_query(key, scheme, &connect, q)?,
        };
        let mode = validate_mode(key, &connect, sub, program, natural)?;
        Ok(InputSpec { connect, mode })
    }
}

/// Splits a subscriber URL into the connection URL and what its path and query say about
/// the subscription (`stream`, `subject`, `topic`, `durable`, ...).
pub(crate) fn split_url(
    key: &str,
    raw: &str,
) -> Result<(String, BTreeMap<String, String>), ConfigError> {
    let scheme = scheme_of(raw);
    // A NATS server list: only the last URL may carry a path or query (in which a comma
    // is part of a value): the list is split at the last comma before the last `://`.
    let last_scheme = raw.rfind("://").unwrap_or(0);
    let (head, last) = match raw[..last_scheme].rfind(',') {
        Some(i) => (Some(&raw[..i]), raw[i + 1..].trim()),
        None => (None, raw),
    };
    let parsed = url::Url::parse(last)
        .map_err(|e| invalid(format!("{key}.url"), format!("{last:?}: {e}")))?;
    let mut q: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in parsed.query_pairs() {
        if q.insert(k.to_string(), v.to_string()).is_some() {
            return Err(invalid(
                format!("{key}.url"),
                format!("{k:?} is given twice"),
            ));
        }
    }
    // MQTT: `#` starts a URL fragment, so mqtt://host/dnstap/#?share=g arrives as the path
    // and a fragment "?share=g": put the `#` back and read the query from the fragment.
    let mut path = parsed.path().trim_start_matches('/').to_string();
    if let (Some(f), true) = (parsed.fragment(), matches!(scheme, "mqtt" | "mqtts")) {
        path.push('#');
        if let Some(query) = f.strip_prefix('?') {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                if q.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!("{k:?} is given twice"),
                    ));
                }
            }
        } else if !f.is_empty() {
            return Err(invalid(
                format!("{key}.url"),
                format!("{raw:?}: '#' must end the topic filter"),
            ));
        }
    }
    let path = percent_decode(&path);
    let mut base = parsed.clone();
    base.set_query(None);
    base.set_fragment(None);
    match scheme {
        "redis" | "rediss" => {
            // The path is the database number: part of the connection.
        }
        _ => {
            base.set_path("");
            if !path.is_empty() {
                let k = match scheme {
                    "jetstream" => "stream",
                    "mqtt" | "mqtts" => "topic",
                    _ => "subject",
                };
                if q.insert(k.to_string(), path).is_some() {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!("{k:?} is given in the path and in the query"),
                    ));
                }
            }
        }
    }
    let mut conn = base.to_string();
    if conn.ends_with('/') && !matches!(scheme, "redis" | "rediss") {
        conn.pop();
    }
    let conn = match head {
        Some(h) => format!("{h},{conn}"),
        None => conn,
    };
    Ok((conn, q))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// The subscription a URL's scheme, path and query describe.
fn from_query(
    key: &str,
    scheme: &str,
    connect: &BusConnect,
    mut q: BTreeMap<String, String>,
) -> Result<SubscribeConfig, ConfigError> {
    let mut take = |k: &str| q.remove(k);
    let dur = |k: &str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
        v.map(|v| {
            humantime::parse_duration(&v)
                .map_err(|e| invalid(format!("{key}.url"), format!("{k}={v:?}: {e}")))
        })
        .transpose()
    };
    let num = |k: &str, v: Option<String>| -> Result<Option<i64>, ConfigError> {
        v.map(|v| {
            v.parse::<i64>()
                .map_err(|_| invalid(format!("{key}.url"), format!("{k}={v:?} is not a number")))
        })
        .transpose()
    };
    let flag = |k: &str, v: Option<String>| -> Result<Option<bool>, ConfigError> {
        v.map(|v| match v.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(invalid(
                format!("{key}.url"),
                format!("{k}={v:?}: use true or false"),
            )),
        })
        .transpose()
    };
    let sub = match (scheme, connect) {
        ("jetstream", _) => SubscribeConfig::Jetstream {
            stream: take("stream"),
            durable: take("durable"),
            inactive_threshold: dur(
                "inactive",
                take("inactive").or_else(|| take("inactive_threshold")),
            )?,
            filter_subject: take("filter").or_else(|| take("filter_subject")),
            max_ack_pending: num("max_ack_pending", take("max_ack_pending"))?,
            ack_wait: dur("ack_wait", take("ack_wait"))?,
            batch: num("batch", take("batch"))?,
            deliver: match take("deliver").as_deref() {
                None => None,
                Some("all") => Some(DeliverFrom::All),
                Some("new") => Some(DeliverFrom::New),
                Some(v) => {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!("deliver={v:?}: use all or new"),
                    ));
                }
            },
        },
        (_, BusConnect::Nats(_)) => SubscribeConfig::Nats {
            subject: take("subject"),
            queue_group: take("queue").or_else(|| take("queue_group")),
        },
        (_, BusConnect::Mqtt(_)) => SubscribeConfig::Mqtt {
            topic: take("topic"),
            share: take("share"),
            qos: num("qos", take("qos"))?.map(|n| u8::try_from(n).unwrap_or(u8::MAX)),
            persistent: flag("persistent", take("persistent"))?,
        },
        (_, BusConnect::Redis(_)) => {
            if let Some(stream) = take("stream") {
                SubscribeConfig::RedisStream {
                    key: Some(stream),
                    group: take("group"),
                    consumer: take("consumer"),
                    claim_idle: dur("claim_idle", take("claim_idle"))?,
                }
            } else {
                SubscribeConfig::RedisPubsub {
                    pattern: take("pattern"),
                }
            }
        }
    };
    if let Some(k) = q.keys().next() {
        return Err(invalid(
            format!("{key}.url"),
            format!("unknown URL parameter {k:?} for this bus (docs/bus-urls.md)"),
        ));
    }
    Ok(sub)
}

fn nats_name(key: &str, field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(invalid(
            format!("{key}.subscribe.{field}"),
            format!("{v:?}: must be non-empty, without whitespace, '.', '*', '>', '/' or '\\'"),
        ));
    }
    Ok(())
}

fn subject_ok(key: &str, field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.chars().any(char::is_whitespace) || v.split('.').any(str::is_empty) {
        return Err(invalid(
            format!("{key}.subscribe.{field}"),
            format!("{v:?} is not a valid NATS subject"),
        ));
    }
    Ok(())
}

fn validate_mode(
    key: &str,
    connect: &BusConnect,
    sub: SubscribeConfig,
    program: &str,
    natural: &str,
) -> Result<SubscribeMode, ConfigError> {
    let base = natural
        .strip_suffix(".>")
        .or_else(|| natural.strip_suffix(".*"))
        .unwrap_or(natural);
    let wrong_bus = |mode: &str, bus: &str| {
        invalid(
            format!("{key}.subscribe.mode"),
            format!("{mode:?} needs a {bus} URL"),
        )
    };
    Ok(match sub {
        SubscribeConfig::Nats {
            subject,
            queue_group,
        } => {
            let BusConnect::Nats(_) = connect else {
                return Err(wrong_bus("nats", "nats://"));
            };
            let subject = subject.unwrap_or_else(|| natural.into());
            subject_ok(key, "subject", &subject)?;
            if let Some(g) = &queue_group {
                subject_ok(key, "queue_group", g)?;
            }
            SubscribeMode::Nats {
                subject,
                queue_group,
            }
        }
        SubscribeConfig::Jetstream {
            stream,
            durable,
            inactive_threshold,
            filter_subject,
            max_ack_pending,
            ack_wait,
            deliver,
            batch,
        } => {
            let BusConnect::Nats(_) = connect else {
                return Err(wrong_bus("jetstream", "nats:// or jetstream://"));
            };
            let stream = stream.unwrap_or_else(|| "DNSTAP".into());
            nats_name(key, "stream", &stream)?;
            if let Some(d) = &durable {
                nats_name(key, "durable", d)?;
            }
            if let Some(f) = &filter_subject {
                subject_ok(key, "filter_subject", f)?;
            }
            let max_ack_pending = max_ack_pending.unwrap_or(4096);
            if !(1..=1_000_000).contains(&max_ack_pending) {
                return Err(invalid(
                    format!("{key}.subscribe.max_ack_pending"),
                    "must be between 1 and 1000000",
                ));
            }
            let batch = batch.unwrap_or(DEFAULT_PULL_BATCH.min(max_ack_pending));
            // A pull batch arrives into the client's subscription buffer (65,536
            // messages): a larger one would be dropped there and redelivered after ack_wait.
            let most = max_ack_pending.min(MAX_PULL_BATCH);
            let batch = match usize::try_from(batch) {
                Ok(b) if b >= 1 && batch <= most => b,
                _ => {
                    return Err(invalid(
                        format!("{key}.subscribe.batch"),
                        format!(
                            "must be between 1 and {most} (max_ack_pending, and at most {MAX_PULL_BATCH}, the NATS client's subscription buffer)"
                        ),
                    ));
                }
            };
            let ack_wait = ack_wait.unwrap_or(Duration::from_secs(30));
            if ack_wait < Duration::from_secs(1) {
                return Err(invalid(
                    format!("{key}.subscribe.ack_wait"),
                    "must be at least 1s",
                ));
            }
            let inactive_threshold = match (inactive_threshold, &durable) {
                (Some(t), _) if t < Duration::from_secs(1) => {
                    return Err(invalid(
                        format!("{key}.subscribe.inactive_threshold"),
                        "must be at least 1s",
                    ));
                }
                (Some(t), _) => Some(t),
                (None, Some(_)) => None,
                (None, None) => Some(Duration::from_secs(60)),
            };
            SubscribeMode::JetStream {
                stream,
                durable,
                inactive_threshold,
                filter_subject,
                max_ack_pending,
                ack_wait,
                deliver: deliver.unwrap_or_default(),
                batch,
            }
        }
        SubscribeConfig::Mqtt {
            topic,
            share,
            qos,
            persistent,
        } => {
            let BusConnect::Mqtt(_) = connect else {
                return Err(wrong_bus("mqtt", "mqtt:// or mqtts://"));
            };
            let topic = topic.unwrap_or_else(|| natural.replace('.', "/").replace('>', "#"));
            if topic.is_empty() || topic.starts_with("$share/") {
                return Err(invalid(
                    format!("{key}.subscribe.topic"),
                    format!("{topic:?}: give the topic filter, and the group as share"),
                ));
            }
            if let Some(g) = &share
                && (g.is_empty() || g.contains(['/', '+', '#']))
            {
                return Err(invalid(
                    format!("{key}.subscribe.share"),
                    format!("{g:?}: must be non-empty, without '/', '+' or '#'"),
                ));
            }
            let qos = qos.unwrap_or(1);
            if qos > 1 {
                return Err(invalid(format!("{key}.subscribe.qos"), "must be 0 or 1"));
            }
            SubscribeMode::Mqtt {
                topic,
                share,
                qos,
                persistent: persistent.unwrap_or(false),
            }
        }
        SubscribeConfig::RedisPubsub { pattern } => {
            let BusConnect::Redis(_) = connect else {
                return Err(wrong_bus("redis_pubsub", "redis://"));
            };
            let pattern = pattern.unwrap_or_else(|| natural.replace('>', "*"));
            if pattern.is_empty() {
                return Err(invalid(
                    format!("{key}.subscribe.pattern"),
                    "must not be empty",
                ));
            }
            SubscribeMode::RedisPubsub { pattern }
        }
        SubscribeConfig::RedisStream {
            key: stream_key,
            group,
            consumer,
            claim_idle,
        } => {
            let BusConnect::Redis(_) = connect else {
                return Err(wrong_bus("redis_stream", "redis://"));
            };
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            let v = |f: &str, v: Option<String>, d: String| -> Result<String, ConfigError> {
                let v = v.unwrap_or(d);
                if v.is_empty() {
                    return Err(invalid(format!("{key}.subscribe.{f}"), "must not be empty"));
                }
                Ok(v)
            };
            SubscribeMode::RedisStream {
                key: v("key", stream_key, base.into())?,
                group: v("group", group, "tapbus".into())?,
                consumer: v(
                    "consumer",
                    consumer,
                    format!("{program}-{host}-{}", std::process::id()),
                )?,
                claim_idle: claim_idle.unwrap_or(Duration::from_secs(60)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> InputSpec {
        InputConfig::from_url(url)
            .validate("input", "tapbus-tail")
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn err(url: &str) -> String {
        match InputConfig::from_url(url).validate("input", "tapbus-tail") {
            Ok(s) => panic!("{url} accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_url_without_a_subject_reads_the_consumers_natural_input() {
        let s = |url: &str| {
            InputConfig::from_url(url)
                .validate_reading("input", "tapbus-mimir", "tapbus.metrics.>")
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .mode
        };
        assert!(
            matches!(s("nats://127.0.0.1:4222"), SubscribeMode::Nats { subject, .. } if subject == "tapbus.metrics.>")
        );
        assert!(
            matches!(s("mqtt://127.0.0.1:1883"), SubscribeMode::Mqtt { topic, .. } if topic == "tapbus/metrics/#")
        );
        assert!(
            matches!(s("redis://127.0.0.1:6379"), SubscribeMode::RedisPubsub { pattern } if pattern == "tapbus.metrics.*")
        );
        // A subject given is kept.
        assert!(
            matches!(s("nats://127.0.0.1:4222/x.>"), SubscribeMode::Nats { subject, .. } if subject == "x.>")
        );
    }

    #[test]
    fn url_shorthands() {
        let s = spec("nats://127.0.0.1:4222");
        assert_eq!(
            s.mode,
            SubscribeMode::Nats {
                subject: "dnstap.>".into(),
                queue_group: None
            }
        );
        let BusConnect::Nats(n) = &s.connect else {
            panic!("nats")
        };
        assert_eq!(n.servers, "nats://127.0.0.1:4222");

        let s = spec("nats://127.0.0.1:4222/dnstap.bind.>?queue=workers");
        assert_eq!(
            s.mode,
            SubscribeMode::Nats {
                subject: "dnstap.bind.>".into(),
                queue_group: Some("workers".into())
            }
        );

        let s =
            spec("jetstream://127.0.0.1:4222/DNSTAP?durable=ops&ack_wait=5s&max_ack_pending=10");
        assert_eq!(
            s.mode,
            SubscribeMode::JetStream {
                stream: "DNSTAP".into(),
                durable: Some("ops".into()),
                inactive_threshold: None,
                filter_subject: None,
                max_ack_pending: 10,
                ack_wait: Duration::from_secs(5),
                deliver: DeliverFrom::All,
                batch: 10,
            }
        );
        let BusConnect::Nats(n) = &s.connect else {
            panic!("nats")
        };
        assert_eq!(n.servers, "nats://127.0.0.1:4222");

        // The pull batch: 1024 unless set, never above max_ack_pending.
        let batch = |url: &str| match spec(url).mode {
            SubscribeMode::JetStream { batch, .. } => batch,
            m => panic!("{m:?}"),
        };
        assert_eq!(batch("jetstream://127.0.0.1:4222/DNSTAP"), 1024);
        assert_eq!(
            batch("jetstream://127.0.0.1:4222/DNSTAP?batch=4096&max_ack_pending=20000"),
            4096
        );

        // Without a durable: a per-process consumer the server removes after 1m idle.
        let s = spec("jetstream://127.0.0.1:4222/DNSTAP");
        assert!(matches!(
            s.mode,
            SubscribeMode::JetStream { durable: None, inactive_threshold: Some(t), .. }
                if t == Duration::from_secs(60)
        ));
        let s = spec("jetstream://127.0.0.1:4222/DNSTAP?durable=d&inactive=10m");
        assert!(matches!(
            s.mode,
            SubscribeMode::JetStream { inactive_threshold: Some(t), .. }
                if t == Duration::from_secs(600)
        ));

        let s = spec("jetstream://127.0.0.1:4222,nats://127.0.0.1:4223/DNSTAP?durable=a");
        let BusConnect::Nats(n) = &s.connect else {
            panic!("nats")
        };
        assert_eq!(n.servers, "nats://127.0.0.1:4222,nats://127.0.0.1:4223");

        let s = spec("mqtt://127.0.0.1:1883/dnstap/#?share=g");
        assert_eq!(
            s.mode,
            SubscribeMode::Mqtt {
                topic: "dnstap/#".into(),
                share: Some("g".into()),
                qos: 1,
                persistent: false
            }
        );
        let s = spec("mqtt://127.0.0.1");
        assert!(matches!(s.mode, SubscribeMode::Mqtt { ref topic, .. } if topic == "dnstap/#"));

        let s = spec("redis://127.0.0.1:6379");
        assert_eq!(
            s.mode,
            SubscribeMode::RedisPubsub {
                pattern: "dnstap.*".into()
            }
        );
        let s = spec("redis://127.0.0.1:6379/2?stream=dns&group=g&consumer=c1&claim_idle=10s");
        assert_eq!(
            s.mode,
            SubscribeMode::RedisStream {
                key: "dns".into(),
                group: "g".into(),
                consumer: "c1".into(),
                claim_idle: Duration::from_secs(10),
            }
        );
        let BusConnect::Redis(r) = &s.connect else {
            panic!("redis")
        };
        assert_eq!(r.url, "redis://127.0.0.1:6379/2");
    }

    #[test]
    fn bad_inputs_name_the_key() {
        assert!(err("jetstream://127.0.0.1:4222/A.B").starts_with("input.subscribe.stream:"));
        assert!(
            err("nats://127.0.0.1:4222?durable=x").contains("unknown URL parameter \"durable\"")
        );
        assert!(err("mqtt://127.0.0.1/t?qos=2").starts_with("input.subscribe.qos:"));
        assert!(err("mqtt://127.0.0.1/$share/g/t").starts_with("input.subscribe.topic:"));
        assert!(err("jetstream://127.0.0.1:4222?ack_wait=soon").starts_with("input.url:"));
        assert!(
            err("jetstream://127.0.0.1:4222?inactive=100ms")
                .starts_with("input.subscribe.inactive_threshold:")
        );
        assert!(err("jetstream://127.0.0.1:4222?batch=0").starts_with("input.subscribe.batch:"));
        assert!(
            err("jetstream://127.0.0.1:4222?max_ack_pending=100&batch=101")
                .starts_with("input.subscribe.batch:")
        );
        assert!(err("jetstream://127.0.0.1:4222?batch=many").starts_with("input.url:"));
        assert!(
            err("jetstream://127.0.0.1:4222?max_ack_pending=100000&batch=65537")
                .starts_with("input.subscribe.batch:")
        );
        assert!(err("kafka://x:1").starts_with("input.url: unsupported bus"));
        assert_eq!(err(""), "input.url: missing");
    }

    #[test]
    fn tagged_table_form() {
        let toml = r#"
            url = "nats://127.0.0.1:4222"
            username = "u"
            password = "p"
            [subscribe]
            mode = "jetstream"
            durable = "loki"
            ack_wait = "10s"
        "#;
        let c: InputConfig = figment::Figment::from(figment::providers::Serialized::defaults(
            InputConfig::default(),
        ))
        .merge(<figment::providers::Toml as figment::providers::Format>::string(toml))
        .extract()
        .expect("parses");
        let s = c.validate("input", "tapbus-loki").expect("valid");
        assert!(matches!(
            s.mode,
            SubscribeMode::JetStream { ref durable, ack_wait, .. }
                if durable.as_deref() == Some("loki") && ack_wait == Duration::from_secs(10)
        ));
        let bad = "url = \"nats://127.0.0.1:4222\"\n[subscribe]\nmode = \"jetstream\"\nqueue_group = \"x\"\n";
        let r: Result<InputConfig, _> = figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(bad),
        )
        .extract();
        assert!(r.is_err(), "unknown key in a mode is refused");
        let wrong = "url = \"redis://127.0.0.1\"\n[subscribe]\nmode = \"jetstream\"\n";
        let c: InputConfig = figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(wrong),
        )
        .extract()
        .expect("parses");
        let e = c.validate("input", "x").expect_err("wrong bus");
        assert!(e.to_string().starts_with("input.subscribe.mode:"), "{e}");
    }
}
