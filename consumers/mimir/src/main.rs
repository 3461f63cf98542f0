//! `tapbus-mimir`: the arrow `tapbus.metrics.>` batches --> Prometheus remote write (Mimir
//! `/api/v1/push`, Prometheus `/api/v1/write`). Each batch becomes one request
//! ([`tapbus_mimir::write`]); 2xx acks the batch, 429 and 5xx (and unreachable receivers)
//! are retried with backoff while the bus is told the batch is still in progress, any
//! other status drops the batch, counted by reason (Mimir's `err-mimir-*` id when the
//! body has one), and acks it: a refused batch is never retried forever.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig};
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::{CommonArgs, init_logging, listen_addr};
use tapbus_mimir::stage::{MimirMetrics, MimirSink, MimirStage};

const PROGRAM: &str = "tapbus-mimir";

/// Write metric batches from the bus to Prometheus remote write (Mimir, Prometheus).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL to read batches from, e.g. 'nats://127.0.0.1:4222/tapbus.metrics.>' or
    /// 'jetstream://127.0.0.1:4222/METRICS?durable=mimir' (docs/bus-urls.md).
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// Remote-write endpoint, e.g. http://127.0.0.1:9009/api/v1/push.
    #[arg(short, long, value_name = "URL")]
    url: Option<String>,
    /// Tenant (`X-Scope-OrgID`).
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    input: ConsumerInputConfig,
    /// Remote-write endpoint (http or https).
    url: String,
    /// `X-Scope-OrgID` (Mimir multi-tenancy); empty: not sent.
    tenant: String,
    /// HTTP basic auth.
    username: String,
    password: String,
    /// `Authorization: Bearer ...` (instead of basic auth).
    bearer_token: String,
    /// Per request.
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    /// `/metrics` and `/health`; "" disables.
    metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::from_url("nats://127.0.0.1:4222/tapbus.metrics.>"),
            url: String::new(),
            tenant: String::new(),
            username: String::new(),
            password: String::new(),
            bearer_token: String::new(),
            timeout: Duration::from_secs(30),
            metrics_listen: "127.0.0.1:9637".into(),
        }
    }
}

struct Settings {
    target: tapbus_consumer::sink::http::Target,
    input: tapbus_config::ConsumerInputSpec,
    url: reqwest::Url,
    cfg: Config,
    listen: Option<std::net::SocketAddr>,
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(cli.common.config.as_deref(), Config::default())?;
    if let Some(u) = &cli.input {
        cfg.input.set_url(u);
    }
    if let Some(u) = &cli.url {
        cfg.url = u.clone();
    }
    if let Some(t) = &cli.tenant {
        cfg.tenant = t.clone();
    }
    if let Some(l) = &cli.common.metrics_listen {
        cfg.metrics_listen = l.clone();
    }
    let input = cfg
        .input
        .validate_reading("input", PROGRAM, "tapbus.metrics.>")?;
    let target = tapbus_consumer::sink::http::Target::new(
        &cfg.url,
        &cfg.tenant,
        &cfg.username,
        &cfg.password,
        &cfg.bearer_token,
        "http://HOST:PORT/api/v1/push",
    )
    .map_err(|(k, m)| invalid(k, m))?;
    let url = target.url.clone();
    if cfg.timeout < Duration::from_secs(1) {
        return Err(invalid("timeout", "must be at least 1s"));
    }
    let listen = listen_addr(&cfg.metrics_listen).map_err(|e| invalid("metrics_listen", e))?;
    Ok(Settings {
        target,
        input,
        url,
        cfg,
        listen,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.common.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |s| {
            format!(
                "input {}, url {}, tenant {:?}, metrics_listen {}",
                s.input.mode,
                s.url,
                s.cfg.tenant,
                s.listen.map_or("off".into(), |a| a.to_string()),
            )
        });
    }
    init_logging(&cli.common.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    tapbus_consumer::main(PROGRAM, settings(&cli), run)
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let mut opts = Options::new(PROGRAM, "mimir");
    opts.max_pending = 1024;
    opts.min_backoff = Duration::from_millis(250);
    opts.max_backoff = Duration::from_secs(30);
    opts.renew_every = runtime::renew_every(std::slice::from_ref(&s.input));
    let mut consumer = Consumer::new(opts);
    let metrics = MimirMetrics::default();
    metrics.register(consumer.registry());
    let c = &s.cfg;
    let sink = MimirSink::new(s.target.clone(), c.timeout, metrics).context("HTTP client")?;
    tracing::info!(url = %s.url, "writing to");
    consumer
        .run(
            vec![s.input],
            s.listen,
            MimirStage::default(),
            sink,
            String::new,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once(PROGRAM).chain(args.iter().copied()))
    }

    #[test]
    fn the_example_config_loads_and_errors_name_the_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/mimir.toml");
        let s = settings(&cli(&["--config", path])).expect("config/mimir.toml");
        assert_eq!(s.cfg.tenant, "dns");
        assert_eq!(s.url.as_str(), "http://127.0.0.1:9009/api/v1/push");
        let e = |args: &[&str]| {
            settings(&cli(args))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(&[]).starts_with("url"));
        assert!(e(&["--url", "ftp://x/"]).starts_with("url"));
        assert!(e(&["--url", "http://x/", "--input", "kafka://x"]).starts_with("input.url"));
    }

    /// Every key the configuration file accepts is documented: in docs/mimir.md, `[input]` in
    /// docs/bus-urls.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = Config::default();
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(&v, "mimir.md", &[("input", "bus-urls.md")]);
    }
}
