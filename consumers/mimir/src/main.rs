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
use tapbus_config::ConfigError;
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::{CommonArgs, init_logging};
use tapbus_mimir::settings::{Flags, Settings};
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

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    tapbus_mimir::settings::settings(&Flags {
        config: cli.common.config.as_deref(),
        input: cli.input.as_deref(),
        url: cli.url.as_deref(),
        tenant: cli.tenant.as_deref(),
        metrics_listen: cli.common.metrics_listen.as_deref(),
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
    use tapbus_mimir::settings::Config;

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
