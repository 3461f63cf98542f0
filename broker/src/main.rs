//! `tapbus-broker`: the command line. Parses flags, loads and validates the configuration
//! (errors name the key, exit 2), starts the runtime and runs the broker until SIGINT or
//! SIGTERM (or, with only file inputs, until every file is published).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tapbus_broker::{Outcome, metrics::Metrics};
use tapbus_config::BrokerConfig;
use tokio_util::sync::CancellationToken;

/// dnstap in (unix, TCP, TLS, dial-out, files), JSON events out (NATS, MQTT, Redis, stdout).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see config/broker.toml).
    #[arg(short, long, env = "TAPBUS_CONFIG")]
    config: Option<PathBuf>,
    /// dnstap input URL, repeatable: unix:///PATH, tcp://HOST:PORT, tls://HOST:PORT,
    /// dial+tcp://HOST:PORT, dial+unix:///PATH, file:///PATH.
    #[arg(short, long = "input", value_name = "URL")]
    inputs: Vec<String>,
    /// Output URL, repeatable: nats://HOST:PORT, mqtt://HOST:PORT, mqtts://HOST:PORT,
    /// redis://HOST:PORT, rediss://HOST:PORT or stdout.
    #[arg(short, long = "output", value_name = "URL")]
    outputs: Vec<String>,
    /// Address for /metrics and /health ("" disables).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// Load and validate the configuration, print a one-line summary and exit (0 valid,
    /// 2 invalid, naming the key); opens no socket.
    #[arg(long)]
    check: bool,
    /// Log format on standard error.
    #[arg(long, env = "TAPBUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let settings = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            tapbus_config::errln!("tapbus-broker: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Key files and databases are opened now, so a bad one is a configuration error
    // (also under --check).
    let views = match tapbus_broker::views::build(&settings) {
        Ok(v) => v,
        Err(e) => {
            tapbus_config::errln!("tapbus-broker: configuration error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        tapbus_config::outln!("tapbus-broker: configuration ok: {}", summary(&settings));
        for line in &views.summary {
            tapbus_config::outln!("tapbus-broker: {line}");
        }
        return ExitCode::SUCCESS;
    }
    drop(views);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tapbus_config::errln!("tapbus-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match tapbus_broker::run(settings, Arc::new(Metrics::new()), shutdown).await {
            Ok(Outcome::Clean) => ExitCode::SUCCESS,
            Ok(Outcome::FileErrors) => {
                tracing::error!("finished; some input files were malformed (see above)");
                ExitCode::FAILURE
            }
            Ok(Outcome::Dropped {
                output,
                dropped,
                events,
            }) => {
                tracing::error!(%output, dropped, events, "finished, but the output dropped events (tapbus_dropped_total says why)");
                tapbus_config::errln!(
                    "tapbus-broker: output {output} dropped {dropped} of {events} events: the replay is incomplete"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                tracing::error!("cannot start: {e}");
                tapbus_config::errln!("tapbus-broker: {e}");
                ExitCode::from(2)
            }
        }
    })
}

fn load(cli: &Cli) -> anyhow::Result<tapbus_config::BrokerSettings> {
    let defaults = BrokerConfig::default();
    let mut cfg = tapbus_config::load(cli.config.as_deref(), defaults.clone())?;
    // --input/--output add to their own kind, replacing only built-in defaults, never what
    // the file or TAPBUS_* configured.
    cfg.apply_flags(&defaults, &cli.inputs, &cli.outputs);
    if let Some(m) = &cli.metrics_listen {
        cfg.metrics_listen = m.clone();
    }
    cfg.validate().context("invalid configuration")
}

/// `--check`'s line: the inputs and outputs by name and kind, and the metrics address.
fn summary(s: &tapbus_config::BrokerSettings) -> String {
    use tapbus_config::{InputSpec, OutputKind};
    let inputs: Vec<String> = s
        .inputs
        .iter()
        .map(|i| {
            let what = match &i.spec {
                InputSpec::Unix { path, .. } => format!("unix:{}", path.display()),
                InputSpec::Tcp { addr } => format!("tcp:{addr}"),
                InputSpec::Tls { addr, .. } => format!("tls:{addr}"),
                InputSpec::DialTcp { addr, .. } => format!("dial+tcp:{addr}"),
                InputSpec::DialUnix { path, .. } => format!("dial+unix:{}", path.display()),
                InputSpec::DialTls { addr, tls, .. } => format!(
                    "dial+tls:{addr} (server name {}{}{})",
                    tls.server_name,
                    if tls.client.is_some() {
                        ", client certificate"
                    } else {
                        ""
                    },
                    if tls.skip_verify {
                        ", NOT VERIFIED"
                    } else {
                        ""
                    }
                ),
                InputSpec::File { path } => format!("file:{}", path.display()),
            };
            format!("{}={what}", i.name)
        })
        .collect();
    let outputs: Vec<String> = s
        .outputs
        .iter()
        .map(|o| {
            let mut what = match &o.kind {
                OutputKind::Nats(n) => {
                    let servers = tapbus_bus::connect::nats::servers_for_logs(
                        &tapbus_bus::connect::nats::server_list(&n.connect),
                    );
                    match &n.jetstream {
                        Some(js) => format!(
                            "{servers} jetstream stream={} stream_subjects={} subject={}",
                            js.stream,
                            js.subjects.join(","),
                            n.subject
                        ),
                        None => format!("{servers} subject={}", n.subject),
                    }
                }
                OutputKind::Mqtt(m) => format!(
                    "mqtt://{}:{} topic={} qos={}",
                    m.connect.host, m.connect.port, m.topic, m.qos
                ),
                OutputKind::Redis(r) => {
                    let url = tapbus_bus::connect::nats::servers_for_logs(std::slice::from_ref(
                        &r.connect.url,
                    ));
                    match &r.mode {
                        tapbus_config::RedisMode::Publish(t) => {
                            format!("{url} mode=publish subject={t}")
                        }
                        tapbus_config::RedisMode::List { key, max_len } => {
                            format!("{url} mode=list key={key} max_len={max_len}")
                        }
                        tapbus_config::RedisMode::Stream { key, max_len } => {
                            format!("{url} mode=stream key={key} max_len={max_len}")
                        }
                    }
                }
                OutputKind::Stdout => "stdout".into(),
                OutputKind::TcpJson { addr, .. } => format!("tcp+json:{addr}"),
                OutputKind::DnstapFile(f) => {
                    let mut w = format!("dnstap+file://{} keep={}", f.path.display(), f.keep);
                    if let Some(n) = f.rotate_size {
                        w.push_str(&format!(" rotate_size={n}"));
                    }
                    if let Some(d) = f.rotate_age {
                        w.push_str(&format!(" rotate_age={}", humantime::format_duration(d)));
                    }
                    w
                }
                OutputKind::DnstapRelay(r) => format!(
                    "{} reconnect_min={} reconnect_max={}",
                    r.target,
                    humantime::format_duration(r.backoff.min),
                    humantime::format_duration(r.backoff.max)
                ),
            };
            if let Some(f) = &o.filter {
                what.push_str(&format!(" filter=\"{f}\""));
            }
            format!("{}={what}", o.name)
        })
        .collect();
    format!(
        "inputs {}; outputs {}; metrics_listen {}",
        inputs.join(" "),
        outputs.join(" "),
        s.metrics_listen.map_or("off".into(), |a| a.to_string())
    )
}

fn init_logging(format: &str) {
    // async-nats logs every client event at info, so each failed reconnect attempt (several
    // a second while a server is down) would be a line; tapbus logs them itself, once per
    // change of state. TAPBUS_LOG replaces the whole filter.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=off"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("signal received");
    shutdown.cancel();
}
