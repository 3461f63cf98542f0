//! `tapbus-aggregate`: the arrows bus --JSON events--> aggregate --metrics--> `/metrics` and
//! `tapbus.metrics.<instance>`. Subscribes on any bus URL, keeps the metrics of
//! [`tapbus_aggregate::Aggregator`], serves them for a Prometheus scrape and, with an
//! `--output`, publishes the whole state as a batch every `interval`.
//!
//! Acknowledgements: with an output, the events counted since the last batch are acked
//! only once a batch holding them was confirmed by the bus (`bus::publish::settle`); while
//! the output is down they stay unacked (at most `max_pending`, then reading pauses) and the
//! next interval tries again with a fresh, cumulative batch. Without an output the scrape is
//! the downstream: events are acked once counted. Batches carry the state since this
//! process started; counters restart from zero with the process (Prometheus handles the
//! reset), and what was counted but not yet acked when a process dies is delivered again
//! and counted by the next one (docs/aggregate.md).

use clap::Parser;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use tapbus_aggregate::Aggregator;
use tapbus_aggregate::settings::{Flags, Settings};
use tapbus_aggregate::stage::{AggregateStage, Batches};
use tapbus_config::ConfigError;
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::sink::BusSink;
use tapbus_consumer::{CommonArgs, NoSink, init_logging};

const PROGRAM: &str = "tapbus-aggregate";

/// Count dnstap events from the bus into Prometheus metrics: /metrics for a scrape, and
/// metric batches on tapbus.metrics.<instance> for tapbus-mimir.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL to read events from (the URLs of tapbus-tail, docs/bus-urls.md), e.g.
    /// 'jetstream://127.0.0.1:4222/DNSTAP?durable=aggregate'.
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// Bus URL to publish metric batches to, e.g. nats://127.0.0.1:4222 (none: scrape only).
    #[arg(short, long, value_name = "URL")]
    output: Option<String>,
    /// The `instance` label of every series (default: the host name).
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    tapbus_aggregate::settings::settings(&Flags {
        config: cli.common.config.as_deref(),
        input: cli.input.as_deref(),
        output: cli.output.as_deref(),
        metrics_listen: cli.common.metrics_listen.as_deref(),
        instance: cli.instance.as_deref(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.common.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |s| {
            format!(
                "input {}, {}, instance {}, metrics_listen {}",
                s.input.mode,
                match s.output {
                    Some(_) => format!(
                        "batches to tapbus.metrics.{} every {:?}",
                        s.instance, s.interval
                    ),
                    None => "no output (scrape only)".into(),
                },
                s.instance,
                s.listen.map_or("off".into(), |a| a.to_string()),
            )
        });
    }
    init_logging(&cli.common.log_format);
    tapbus_consumer::main(PROGRAM, settings(&cli), run)
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let agg = Arc::new(Mutex::new(Aggregator::new(s.aggregate.clone())));
    let mut opts = Options::new(PROGRAM, "aggregate");
    opts.max_pending = s.max_pending;
    opts.renew_every = runtime::renew_every(std::slice::from_ref(&s.input));
    let consumer = Consumer::new(opts);
    let a = agg.clone();
    let exposition = move || {
        a.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .exposition()
    };
    let batches = s.output.as_ref().map(|_| Batches {
        instance: s.instance.clone(),
        interval: s.interval,
    });
    let stage = AggregateStage::new(agg, batches, tokio::time::Instant::now());
    tracing::info!(instance = %s.instance, "starting");
    match s.output {
        Some(o) => {
            consumer
                .run(
                    vec![s.input],
                    s.listen,
                    stage,
                    BusSink::start(o),
                    exposition,
                )
                .await
        }
        None => {
            consumer
                .run(vec![s.input], s.listen, stage, NoSink, exposition)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tapbus_aggregate::config::Config;
    use tapbus_config::OutputConfig;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once(PROGRAM).chain(args.iter().copied()))
    }

    #[test]
    fn the_example_config_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/aggregate.toml");
        let s = settings(&cli(&["--config", path])).expect("config/aggregate.toml");
        assert_eq!(s.instance, "agg-1");
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.max_pending, 20_000);
        assert!(s.output.is_some());
        assert_eq!(s.listen, Some("127.0.0.1:9635".parse().expect("addr")));
        // Flags win over the file.
        let s = settings(&cli(&[
            "--config",
            path,
            "--metrics-listen",
            "",
            "--instance",
            "x",
        ]))
        .expect("overridden");
        assert_eq!((s.listen, s.instance.as_str()), (None, "x"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |args: &[&str]| {
            settings(&cli(args))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(&[]).starts_with("input.url"));
        assert!(e(&["--input", "kafka://x:1"]).starts_with("input.url"));
        assert!(
            e(&[
                "--input",
                "nats://127.0.0.1:4222",
                "--output",
                "jetstream://127.0.0.1:4222"
            ])
            .starts_with("output")
        );
        assert!(
            e(&["--input", "nats://127.0.0.1:4222", "--metrics-listen", "x"])
                .starts_with("metrics_listen")
        );
        // With an output, events wait up to one interval (10s) for their batch.
        let js = "jetstream://127.0.0.1:4222/DNSTAP?durable=a&ack_wait=15s";
        let err = e(&["--input", js, "--output", "nats://127.0.0.1:4222"]);
        assert!(err.starts_with("input.subscribe.ack_wait"), "{err}");
        assert_eq!(e(&["--input", js]), "", "without an output nothing waits");
    }

    /// Every key the configuration file accepts is documented: in docs/aggregate.md, `[input]` in
    /// docs/bus-urls.md, `[output]` in docs/configuration.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = Config {
            output: Some(OutputConfig::default()),
            ..Config::default()
        };
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(
            &v,
            "aggregate.md",
            &[("input", "bus-urls.md"), ("output", "configuration.md")],
        );
    }
}
