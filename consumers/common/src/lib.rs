//! The consumer runtime, the arrows bus --JSON--> consumer --> its one downstream write,
//! shared by every consumer binary (reduce, aggregate, mimir, loki):
//!
//! - [`stage`]: what a consumer supplies, a pure [`Stage`] (deliveries in, decisions and
//!   batches out) and a [`Sink`] (bus publish, HTTP push, stdout);
//! - [`runtime`]: the loop around them: readers, holds, acks and in-progress acks,
//!   exactly-once effects on JetStream, retries, the drain deadline;
//! - [`state`]: the loop's bookkeeping, apart from any socket;
//! - [`sink`]: the bus sink and the one HTTP retry policy;
//! - [`metrics`]: `tapbus_consumer_*` in prometheus-client, `/metrics` and `/health`;
//! - here: the flags, `main`/`--check` bodies, logging and stop signals.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod runtime;
pub mod sink;
pub mod stage;
pub mod state;

pub use metrics::Own;
pub use runtime::{Consumer, Options, ack};
pub use stage::{Attempt, Flush, Flushed, Msg, NoSink, Settled, Sink, Stage, Verdict};

/// The flags every consumer binary takes beside its own (`#[command(flatten)]`): the
/// configuration file, the `/metrics` address, `--check` and the log format.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// TOML configuration file (see config/<program>.toml); `TAPBUS_*` environment
    /// variables and the flags override it.
    #[arg(short, long, env = "TAPBUS_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address for /metrics and /health; "" disables.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Load and validate the configuration, print a one-line summary and exit (0 valid,
    /// 2 invalid, naming the key); starts nothing.
    #[arg(long)]
    pub check: bool,
    /// Log format on standard error.
    #[arg(long, env = "TAPBUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The body of a consumer's `main`: a configuration error exits 2 (the message names the
/// key), otherwise `run` goes on a two-worker runtime; its error exits 3, its end 0.
pub fn main<S, F>(
    program: &str,
    settings: Result<S, impl std::fmt::Display>,
    run: impl FnOnce(S) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let s = match settings {
        Ok(s) => s,
        Err(e) => {
            tapbus_config::errln!("{program}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tapbus_config::errln!("{program}: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tapbus_config::errln!("{program}: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// The body of a consumer's `main` under `--check`: loads and validates the configuration
/// like [`main`] but starts nothing. Valid: prints `{program}: configuration ok: {summary}`
/// on one line and exits 0; invalid: exits 2 with the message naming the key.
pub fn check<S>(
    program: &str,
    settings: Result<S, impl std::fmt::Display>,
    summary: impl FnOnce(&S) -> String,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    match settings {
        Ok(s) => {
            tapbus_config::outln!("{program}: configuration ok: {}", summary(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            tapbus_config::errln!("{program}: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Logs to standard error, filtered by `TAPBUS_LOG` (default `warn`, without async-nats's
/// own lines), as text (coloured only on a terminal) or JSON.
pub fn init_logging(format: &str) {
    // async-nats logs each failed reconnect attempt itself; tapbus logs every change of
    // state once (bus/src/connect/nats.rs). TAPBUS_LOG replaces the whole filter.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,async_nats=off"));
    // Colour only for a terminal: a file, a pipe or journald gets plain text.
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

/// `TABLE.url: missing: give --TABLE URL or an [TABLE] table with a url` when `url` is
/// empty (`table` is `input` or `output`).
pub fn require_url(table: &str, url: &str) -> Result<(), tapbus_config::ConfigError> {
    if url.trim().is_empty() {
        return Err(tapbus_config::ConfigError::invalid(
            format!("{table}.url"),
            format!("missing: give --{table} URL or an [{table}] table with a url"),
        ));
    }
    Ok(())
}

/// `max_pending`: 1 to 10,000,000 messages taken and not acked.
pub fn check_max_pending(n: usize) -> Result<(), tapbus_config::ConfigError> {
    if !(1..=10_000_000).contains(&n) {
        return Err(tapbus_config::ConfigError::invalid(
            "max_pending",
            "must be between 1 and 10000000",
        ));
    }
    Ok(())
}

/// Parses a `metrics_listen` value: `""` disables.
pub fn listen_addr(v: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match v.trim() {
        "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| format!("{a:?} is not an address like 127.0.0.1:9635")),
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
