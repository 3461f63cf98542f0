//! tapbus-loki's configuration: the file (`--config`), then `TAPBUS_*`, then the flags,
//! validated into [`Settings`] with errors that name the key.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig, ConsumerInputSpec, SubscribeMode};
use tapbus_consumer::listen_addr;

use crate::labels::{Labeler, LabelsConfig};
use crate::push::Encoding;
use crate::stage::Stamp;

const PROGRAM: &str = "tapbus-loki";

/// What the command line sets over the file and the environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags<'a> {
    pub config: Option<&'a std::path::Path>,
    pub input: Option<&'a str>,
    pub url: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub metrics_listen: Option<&'a str>,
}

/// The configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub input: ConsumerInputConfig,
    /// Loki push endpoint (http or https).
    pub url: String,
    /// `X-Scope-OrgID`; empty: not sent.
    pub tenant: String,
    /// HTTP basic auth.
    pub username: String,
    pub password: String,
    /// `Authorization: Bearer ...` (instead of basic auth).
    pub bearer_token: String,
    /// PEM CA certificate(s) trusted for https besides the system's.
    pub ca_file: String,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// "protobuf" (snappy + logproto.PushRequest) or "json".
    pub encoding: Encoding,
    /// "event" or "received".
    pub timestamp: Stamp,
    /// A batch holds at most this many bytes of lines.
    pub batch_max_bytes: usize,
    /// A batch goes out at the latest this long after its first line.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Messages taken from the bus and not yet acked, at most; reading pauses there.
    pub max_pending: usize,
    /// Retry backoff for 429, 5xx and an unreachable Loki.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// At SIGINT/SIGTERM, the time to push and ack what is batched.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub labels: LabelsConfig,
    /// `/metrics` and `/health`; "" disables.
    pub metrics_listen: String,
    /// What the lines show of client addresses (docs/privacy.md): `client_ip` = keep
    /// (default), truncate, hash or cryptopan, with `key_file`, `truncate_v4`,
    /// `truncate_v6`.
    pub privacy: tapbus_privacy::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::from_url("nats://127.0.0.1:4222"),
            url: String::new(),
            tenant: String::new(),
            username: String::new(),
            password: String::new(),
            bearer_token: String::new(),
            ca_file: String::new(),
            timeout: Duration::from_secs(30),
            encoding: Encoding::Protobuf,
            timestamp: Stamp::Event,
            batch_max_bytes: 1 << 20,
            batch_wait: Duration::from_secs(1),
            max_pending: 20_000,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            labels: LabelsConfig::default(),
            metrics_listen: "127.0.0.1:9638".into(),
            privacy: tapbus_privacy::Settings::default(),
        }
    }
}

pub struct Settings {
    pub target: tapbus_consumer::sink::http::Target,
    pub inputs: Vec<ConsumerInputSpec>,
    pub url: reqwest::Url,
    pub cfg: Config,
    pub labeler: Labeler,
    pub ca: Vec<reqwest::Certificate>,
    pub listen: Option<std::net::SocketAddr>,
    /// `None`: the lines are the messages as read.
    pub privacy: Option<tapbus_privacy::Pseudonymizer>,
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Loads the file and `TAPBUS_*`, applies the flags, validates.
pub fn settings(flags: &Flags<'_>) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(flags.config, Config::default())?;
    if let Some(u) = flags.input {
        cfg.input.set_url(u);
    }
    if let Some(u) = flags.url {
        cfg.url = u.to_string();
    }
    if let Some(t) = flags.tenant {
        cfg.tenant = t.to_string();
    }
    if let Some(l) = flags.metrics_listen {
        cfg.metrics_listen = l.to_string();
    }
    let inputs = input_specs(&cfg.input)?;
    let target = tapbus_consumer::sink::http::Target::new(
        &cfg.url,
        &cfg.tenant,
        &cfg.username,
        &cfg.password,
        &cfg.bearer_token,
        "http://HOST:3100/loki/api/v1/push",
    )
    .map_err(|(k, m)| invalid(k, m))?;
    let url = target.url.clone();
    let ca = if cfg.ca_file.is_empty() {
        Vec::new()
    } else {
        let pem = std::fs::read(&cfg.ca_file)
            .map_err(|e| invalid("ca_file", format!("{}: {e}", cfg.ca_file)))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid("ca_file", format!("{}: {e}", cfg.ca_file)))?;
        if certs.is_empty() {
            return Err(invalid(
                "ca_file",
                format!("{}: no PEM certificate in it", cfg.ca_file),
            ));
        }
        certs
    };
    if cfg.timeout < Duration::from_secs(1) {
        return Err(invalid("timeout", "must be at least 1s"));
    }
    if !(1024..=(64 << 20)).contains(&cfg.batch_max_bytes) {
        return Err(invalid(
            "batch_max_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    if cfg.batch_wait < Duration::from_millis(1) || cfg.batch_wait > Duration::from_secs(600) {
        return Err(invalid("batch_wait", "must be between 1ms and 10m"));
    }
    if !(1..=1_000_000).contains(&cfg.max_pending) {
        return Err(invalid("max_pending", "must be between 1 and 1000000"));
    }
    if cfg.min_backoff < Duration::from_millis(10) {
        return Err(invalid("min_backoff", "must be at least 10ms"));
    }
    if cfg.max_backoff < cfg.min_backoff {
        return Err(invalid("max_backoff", "must be at least min_backoff"));
    }
    if cfg.drain_timeout > Duration::from_secs(600) {
        return Err(invalid("drain_timeout", "must be at most 10m"));
    }
    let labeler = Labeler::new(&cfg.labels).map_err(|e| invalid(&e.key, e.msg))?;
    let listen = listen_addr(&cfg.metrics_listen).map_err(|e| invalid("metrics_listen", e))?;
    let privacy = tapbus_privacy::Pseudonymizer::new(&cfg.privacy).map_err(|e| {
        // The message starts with the key it is about (`key_file ...`, `truncate_v4 ...`).
        let text = e.to_string();
        match text.split_once(' ') {
            Some((k, m)) if ["key_file", "truncate_v4", "truncate_v6"].contains(&k) => {
                invalid(&format!("privacy.{k}"), m.trim_start_matches("= "))
            }
            _ => invalid("privacy.client_ip", text),
        }
    })?;
    let privacy = (!privacy.is_keep()).then_some(privacy);
    Ok(Settings {
        target,
        inputs,
        url,
        cfg,
        labeler,
        ca,
        listen,
        privacy,
    })
}

/// The input's subscriptions: one, or for a NATS core or Redis pub/sub input that names
/// no subject, the raw events and the reduced records.
pub fn input_specs(input: &ConsumerInputConfig) -> Result<Vec<ConsumerInputSpec>, ConfigError> {
    let spec = input.validate("input", PROGRAM)?;
    let mut specs = vec![spec.clone()];
    if input.subscribe.is_none() && !url_names_subject(&input.connect.url) {
        let second = match &spec.mode {
            SubscribeMode::Nats {
                subject,
                queue_group,
            } if subject == "dnstap.>" => Some(SubscribeMode::Nats {
                subject: "tapbus.reduced.>".into(),
                queue_group: queue_group.clone(),
            }),
            SubscribeMode::RedisPubsub { pattern } if pattern == "dnstap.*" => {
                Some(SubscribeMode::RedisPubsub {
                    pattern: "tapbus.reduced.*".into(),
                })
            }
            _ => None,
        };
        if let Some(mode) = second {
            specs.push(ConsumerInputSpec {
                connect: spec.connect.clone(),
                mode,
            });
        }
    }
    Ok(specs)
}

/// Whether a bus URL names what to subscribe (a path, or a subject/pattern parameter).
fn url_names_subject(url: &str) -> bool {
    let last = url.rsplit(',').next().unwrap_or(url).trim();
    match url::Url::parse(last) {
        Ok(u) => {
            let redis = matches!(u.scheme(), "redis" | "rediss");
            (!redis && !u.path().trim_matches('/').is_empty())
                || u.query_pairs()
                    .any(|(k, _)| matches!(k.as_ref(), "subject" | "pattern"))
        }
        Err(_) => true,
    }
}
