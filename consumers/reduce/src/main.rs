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

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tapbus_bus::metrics::PublishMetrics;
use tapbus_bus::publish::settle::Settlement;
use tapbus_bus::publish::{self, Message};
use tapbus_bus::subscribe::Delivery;
use tapbus_config::{ConfigError, ConsumerInputConfig, OutputConfig, OutputKind};
use tapbus_consumer::{CommonArgs, Own, ack, init_logging, listen_addr, serve, stop_signal};
use tapbus_event::EventView;
use tapbus_reduce::{Record, ReduceConfig, Reducer, Stats};
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// The configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    input: ConsumerInputConfig,
    output: OutputConfig,
    reduce: ReduceConfig,
    /// `/metrics` and `/health`; "" disables.
    metrics_listen: String,
    /// Events placed in windows and not yet acknowledged, at most: at the bound every open
    /// window is closed early.
    max_pending: usize,
    /// With no event for this long, every open window is closed (a stream that stopped
    /// still gets its last records). Default 15s (window + lateness).
    #[serde(with = "humantime_serde")]
    idle_flush: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::default(),
            output: OutputConfig::default(),
            reduce: ReduceConfig::default(),
            metrics_listen: "127.0.0.1:9636".into(),
            max_pending: 200_000,
            idle_flush: Duration::from_secs(15),
        }
    }
}

struct Settings {
    input: tapbus_config::ConsumerInputSpec,
    output: tapbus_config::OutputSpec,
    reduce: tapbus_reduce::ReduceSpec,
    listen: Option<std::net::SocketAddr>,
    max_pending: usize,
    idle_flush: Duration,
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(cli.common.config.as_deref(), Config::default())?;
    if let Some(url) = &cli.input {
        cfg.input.set_url(url);
    }
    if let Some(url) = &cli.output {
        cfg.output.set_url(url);
    }
    if let Some(l) = &cli.common.metrics_listen {
        cfg.metrics_listen = l.clone();
    }
    if cfg.input.connect.url.is_empty() {
        return Err(invalid(
            "input.url",
            "missing: give --input URL or an [input] table with a url",
        ));
    }
    if cfg.output.connect.url.is_empty() {
        return Err(invalid(
            "output.url",
            "missing: give --output URL or an [output] table with a url",
        ));
    }
    let input = cfg.input.validate("input", PROGRAM)?;
    let output = cfg.output.validate("output", "records")?;
    let reduce = cfg
        .reduce
        .validate()
        .map_err(|e| invalid("reduce", e.to_string()))?;
    let listen = listen_addr(&cfg.metrics_listen).map_err(|e| invalid("metrics_listen", e))?;
    if !(1..=10_000_000).contains(&cfg.max_pending) {
        return Err(invalid("max_pending", "must be between 1 and 10000000"));
    }
    if cfg.idle_flush < Duration::from_secs(1) {
        return Err(invalid("idle_flush", "must be at least 1s"));
    }
    // A live event waits for its window to close (the window plus the lateness, in event
    // time, which is wall time for live traffic) or, when traffic stops, for idle_flush.
    let hold = Duration::from_nanos(reduce.window_ns.saturating_add(reduce.lateness_ns))
        .max(cfg.idle_flush);
    input.check_hold(
        "input",
        hold,
        "the longest wait for a window to close (reduce.window + reduce.lateness, or idle_flush)",
    )?;
    Ok(Settings {
        input,
        output,
        reduce,
        listen,
        max_pending: cfg.max_pending,
        idle_flush: cfg.idle_flush,
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

/// The reducer's counters in Prometheus text.
fn write_stats(st: &Stats, out: &mut String) {
    use std::fmt::Write as _;
    let rows: [(&str, &str, u64); 13] = [
        ("tapbus_reduce_events_total", "counter", st.events),
        ("tapbus_reduce_filtered_total", "counter", st.filtered),
        ("tapbus_reduce_grouped_total", "counter", st.grouped),
        ("tapbus_reduce_late_total", "counter", st.late),
        ("tapbus_reduce_overflow_total", "counter", st.overflow),
        (
            "tapbus_reduce_rejected_full_total",
            "counter",
            st.rejected_full,
        ),
        (
            "tapbus_reduce_no_timestamp_total",
            "counter",
            st.no_timestamp,
        ),
        (
            "tapbus_reduce_rejected_future_total",
            "counter",
            st.rejected_future,
        ),
        ("tapbus_reduce_jumps_total", "counter", st.jumps),
        ("tapbus_reduce_records_total", "counter", st.records),
        ("tapbus_reduce_open_groups", "gauge", st.open_groups),
        ("tapbus_reduce_open_windows", "gauge", st.open_windows),
        (
            "tapbus_reduce_rejected_full_events_total",
            "counter",
            st.rejected_full_events,
        ),
    ];
    for (name, kind, v) in rows {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    }
}

struct Shared {
    reducer: Mutex<Reducer>,
    own: Arc<Own>,
}

/// Records of one close, waiting for the bus, and the boundary that settles events.
struct Unsent {
    records: Vec<Record>,
    boundary: u64,
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        reducer: Mutex::new(Reducer::new(s.reduce.clone())),
        own: Arc::new(Own::default()),
    });
    if let Some(addr) = s.listen {
        let sh = shared.clone();
        let render = move || {
            let mut text = String::new();
            if let Ok(r) = sh.reducer.lock() {
                write_stats(&r.stats(), &mut text);
            }
            sh.own.write("reduce", &mut text);
            text
        };
        serve(
            addr,
            "text/plain; version=0.0.4; charset=utf-8",
            render,
            shared.own.clone(),
        )
        .await?;
    }
    let mut sub = tapbus_bus::input::subscribe(PROGRAM, &s.input)
        .await
        .context("cannot subscribe")?;
    tracing::info!(semantics = ?sub.semantics(), "subscribed");
    shared.own.watch_input(&sub);
    // MQTT topics are `/`-separated.
    let slashes = matches!(s.output.kind, OutputKind::Mqtt(_));
    let (tx, rx) = mpsc::channel(4096);
    let task = publish::spawn(
        s.output.name.clone(),
        s.output.kind,
        rx,
        PublishMetrics::unregistered(),
    );
    let mut out = Out {
        tx,
        slashes,
        unsent: Vec::new(),
    };
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<(u64, Delivery)> = Vec::new();
    let mut last_event = Instant::now();
    let mut idle_closed = true;
    let result = loop {
        let full = pending.len() >= s.max_pending || !out.unsent.is_empty();
        let idle_at = last_event + s.idle_flush;
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            _ = retry.tick(), if !out.unsent.is_empty() => {
                out.send(&shared.own, &mut pending).await;
            }
            _ = tokio::time::sleep_until(idle_at), if !idle_closed => {
                idle_closed = true;
                close(&shared, &mut out, true);
                out.send(&shared.own, &mut pending).await;
            }
            d = sub.next(), if !full => {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => break Err(anyhow::anyhow!("subscription ended: {e}")),
                };
                let own = &shared.own;
                own.received(&d);
                last_event = Instant::now();
                idle_closed = false;
                let settles = match EventView::parse(&d.payload) {
                    Ok(v) => shared
                        .reducer
                        .lock()
                        .ok()
                        .and_then(|mut r| r.push(&v).settles_with()),
                    Err(e) => {
                        if own.bad() {
                            tracing::warn!(subject = %d.subject, "not a tapbus event, skipped: {e} (further ones are counted)");
                        }
                        None
                    }
                };
                match settles {
                    None => ack(d, own).await,
                    Some(b) => pending.push((b, d)),
                }
                let early = pending.len() >= s.max_pending;
                if early {
                    tracing::info!(pending = pending.len(), "max_pending reached: closing the open windows early");
                }
                close(&shared, &mut out, early);
                if !out.unsent.is_empty() {
                    out.send(own, &mut pending).await;
                }
                own.set_pending(pending.len());
            }
        }
    };
    // Stopping: close every window, publish, ack what that settled, exit.
    close(&shared, &mut out, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.unsent.is_empty() && Instant::now() < deadline {
        out.send(&shared.own, &mut pending).await;
        if !out.unsent.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !pending.is_empty() {
        tracing::warn!(
            pending = pending.len(),
            "stopping with events whose records were not confirmed: not acked, the bus delivers them again"
        );
    }
    drop(out.tx);
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    result
}

/// Takes the records of the windows closed so far (all of them with `all`).
fn close(shared: &Shared, out: &mut Out, all: bool) {
    let Ok(mut r) = shared.reducer.lock() else {
        return;
    };
    let mut records = Vec::new();
    let boundary = if all {
        r.close_all(&mut records)
    } else {
        r.advance(&mut records)
    };
    if let Some(boundary) = boundary {
        out.unsent.push(Unsent { records, boundary });
    }
}

struct Out {
    tx: mpsc::Sender<Message>,
    slashes: bool,
    unsent: Vec<Unsent>,
}

impl Out {
    /// Publishes the unsent closes in order; for each one the bus confirmed in full, acks
    /// the events it settled. Stops at the first close not confirmed (tried again later).
    async fn send(&mut self, own: &Own, pending: &mut Vec<(u64, Delivery)>) {
        while let Some(u) = self.unsent.first() {
            let mut settlement = Settlement::new();
            for rec in &u.records {
                let subject = if self.slashes {
                    rec.subject.replace('.', "/")
                } else {
                    rec.subject.clone()
                };
                let msg = Message::record(
                    subject.into(),
                    Bytes::from(rec.to_json()),
                    Some(rec.id.as_str().into()),
                    Some(settlement.ticket()),
                );
                if self.tx.send(msg).await.is_err() {
                    return;
                }
            }
            let got = settlement.settled().await;
            if !got.all_published() {
                own.batches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dropped = got.dropped,
                    "records not confirmed by the bus; sending them again"
                );
                return;
            }
            own.batches.fetch_add(1, Ordering::Relaxed);
            let boundary = u.boundary;
            self.unsent.remove(0);
            let mut keep = Vec::with_capacity(pending.len());
            for (b, d) in pending.drain(..) {
                if boundary > b || boundary == u64::MAX {
                    ack(d, own).await;
                } else {
                    keep.push((b, d));
                }
            }
            *pending = keep;
            own.set_pending(pending.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
