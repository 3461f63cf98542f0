//! `tapbus-reduce`: the arrows bus --JSON events--> reduce --records-->
//! `tapbus.reduced.<reduction>`. Subscribes on any bus URL, counts events into event-time
//! windows with [`tapbus_reduce::Reducer`] and publishes one record per group when a
//! window closes (watermark = latest event time - lateness).
//!
//! Acknowledgements: an event is acked once the records of the close that settles it
//! ([`tapbus_reduce::Placed::settles_with`]) were all confirmed by the bus
//! (`bus::publish::settle`); events no reduction wants, or without a timestamp, are acked
//! at once. Records the bus did not confirm are sent again (same ids: a JetStream stream
//! drops the copies) before anything newer. Pending events are bounded by `max_pending`:
//! at the bound, and when the input has been idle for `idle_flush`, every open window is
//! closed early (`close_all`; events for it that come later make late records, so sums
//! stay exact).

use clap::Parser;
use std::process::ExitCode;
use tapbus_config::{ConfigError, OutputKind};
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::sink::BusSink;
use tapbus_consumer::{CommonArgs, init_logging};
use tapbus_reduce::Reducer;
use tapbus_reduce::settings::{Flags, Settings};
use tapbus_reduce::stage::ReduceStage;

const PROGRAM: &str = "tapbus-reduce";

/// Reduce dnstap events from the bus into per-window records on tapbus.reduced.<reduction>.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL to read events from (docs/bus-urls.md), e.g.
    /// 'jetstream://127.0.0.1:4222/DNSTAP?durable=reduce'.
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// Bus URL to publish records to, e.g. nats://127.0.0.1:4222.
    #[arg(short, long, value_name = "URL")]
    output: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    tapbus_reduce::settings::settings(&Flags {
        config: cli.common.config.as_deref(),
        input: cli.input.as_deref(),
        output: cli.output.as_deref(),
        metrics_listen: cli.common.metrics_listen.as_deref(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.common.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |s| {
            let subjects: Vec<&str> = s
                .reduce
                .reductions
                .iter()
                .map(|r| r.subject.as_str())
                .collect();
            format!(
                "input {}, records to {}, metrics_listen {}",
                s.input.mode,
                subjects.join(" "),
                s.listen.map_or("off".into(), |a| a.to_string()),
            )
        });
    }
    init_logging(&cli.common.log_format);
    tapbus_consumer::main(PROGRAM, settings(&cli), run)
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let mut opts = Options::new(PROGRAM, "reduce");
    opts.max_pending = s.max_pending;
    opts.renew_every = runtime::renew_every(std::slice::from_ref(&s.input));
    let mut consumer = Consumer::new(opts);
    // MQTT topics are `/`-separated.
    let slashes = matches!(s.output.kind, OutputKind::Mqtt(_));
    let stage = ReduceStage::new(
        Reducer::new(s.reduce.clone()),
        s.idle_flush,
        slashes,
        tokio::time::Instant::now(),
    );
    consumer
        .registry()
        .register_collector(Box::new(stage.collector()));
    let sink = BusSink::start(s.output);
    consumer
        .run(vec![s.input], s.listen, stage, sink, String::new)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapbus_reduce::settings::Config;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once(PROGRAM).chain(args.iter().copied()))
    }

    #[test]
    fn the_example_config_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/reduce.toml");
        let s = settings(&cli(&["--config", path])).expect("config/reduce.toml");
        assert_eq!(s.reduce.reductions.len(), 2);
        assert_eq!(s.max_pending, 200_000);
        assert_eq!(s.listen, Some("127.0.0.1:9636".parse().expect("addr")));
        let s = settings(&cli(&["--config", path, "--metrics-listen", ""])).expect("flags");
        assert_eq!(s.listen, None);
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
        assert!(e(&["--input", "nats://127.0.0.1:4222"]).starts_with("output.url"));
        // A key of the [reduce] table is named once, in full.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("r.toml");
        std::fs::write(&file, "[reduce]\nwindow = \"0s\"\n").expect("write");
        let err = e(&[
            "--config",
            file.to_str().unwrap_or_default(),
            "--input",
            "nats://127.0.0.1:4222",
            "--output",
            "nats://127.0.0.1:4222",
        ]);
        assert!(err.starts_with("reduce.window: "), "{err}");
        assert_eq!(err.matches("reduce").count(), 1, "{err}");
        assert!(
            e(&[
                "--input",
                "nats://127.0.0.1:4222",
                "--output",
                "nats://127.0.0.1:4222",
                "--metrics-listen",
                "x"
            ])
            .starts_with("metrics_listen")
        );
        // An ack_wait the windows outlast: refused, naming the key.
        let js = |q: &str| format!("jetstream://127.0.0.1:4222/DNSTAP?durable=r{q}");
        let out = ["--output", "nats://127.0.0.1:4222"];
        let short = js("&ack_wait=20s");
        let err = e(&[&["--input", short.as_str()][..], &out[..]].concat());
        assert!(err.starts_with("input.subscribe.ack_wait"), "{err}");
        assert!(err.contains("at least 30s"), "{err}");
        let ok = js("");
        assert_eq!(e(&[&["--input", ok.as_str()][..], &out[..]].concat()), "");
    }

    /// Every key the configuration file accepts is documented: in docs/reduce.md, `[input]` in
    /// docs/bus-urls.md, `[output]` in docs/configuration.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = Config::default();
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(
            &v,
            "reduce.md",
            &[("input", "bus-urls.md"), ("output", "configuration.md")],
        );
    }
}
