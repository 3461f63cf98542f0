//! What every consumer binary shares, around the arrow bus --JSON--> consumer: the
//! consumer's own counters (`tapbus_consumer_*`), the `/metrics` and `/health` endpoint,
//! acks that count their failures, the stop signals and the log setup.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tapbus_bus::subscribe::{Delivery, Subscriber};

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

/// A consumer's own counters, on its `/metrics` as `tapbus_consumer_*{consumer="NAME"}`.
#[derive(Debug)]
pub struct Own {
    pub received: AtomicU64,
    pub bad: AtomicU64,
    pub acked: AtomicU64,
    pub ack_errors: AtomicU64,
    pub redelivered: AtomicU64,
    pub batches: AtomicU64,
    pub batches_failed: AtomicU64,
    pub pending: AtomicU64,
    pub up: AtomicU64,
    /// The bus's backlog for this consumer ([`tapbus_bus::subscribe::Backlog`]); `u64::MAX`
    /// while unknown (then the series are left out).
    pub lag: AtomicU64,
    pub bus_unacked: AtomicU64,
    /// The inputs' counters of messages their bus client dropped (summed on `/metrics`).
    dropped_by_client: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
}

impl Default for Own {
    fn default() -> Self {
        Own {
            received: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            up: AtomicU64::new(0),
            lag: AtomicU64::new(UNKNOWN),
            bus_unacked: AtomicU64::new(UNKNOWN),
            dropped_by_client: std::sync::Mutex::default(),
        }
    }
}

const UNKNOWN: u64 = u64::MAX;

impl Own {
    /// Counts a delivery as received (and redelivered when the bus says so).
    pub fn received(&self, d: &Delivery) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if d.delivered > 1 {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a message that is not a tapbus event; true for the first (log it once).
    pub fn bad(&self) -> bool {
        self.bad.fetch_add(1, Ordering::Relaxed) == 0
    }

    pub fn set_pending(&self, n: usize) {
        self.pending.store(n as u64, Ordering::Relaxed);
    }

    /// Counts what `sub`'s bus client drops into `tapbus_consumer_input_dropped_total`.
    pub fn watch_drops(&self, sub: &Subscriber) {
        if let Ok(mut v) = self.dropped_by_client.lock() {
            v.push(sub.dropped());
        }
    }

    /// Messages the inputs' bus clients dropped before this process read them
    /// ([`Subscriber::dropped`]).
    pub fn input_dropped(&self) -> u64 {
        self.dropped_by_client
            .lock()
            .map(|v| v.iter().map(|c| c.load(Ordering::Relaxed)).sum())
            .unwrap_or(0)
    }

    /// Prometheus text (0.0.4) of the counters, labelled `consumer="{consumer}"`.
    pub fn write(&self, consumer: &str, out: &mut String) {
        let dropped = AtomicU64::new(self.input_dropped());
        let rows: [(&str, &str, &str, &AtomicU64); 10] = [
            (
                "tapbus_consumer_messages_total",
                "counter",
                "messages received from the bus",
                &self.received,
            ),
            (
                "tapbus_consumer_bad_total",
                "counter",
                "messages that are not tapbus events (counted, acked, skipped)",
                &self.bad,
            ),
            (
                "tapbus_consumer_acked_total",
                "counter",
                "messages acknowledged",
                &self.acked,
            ),
            (
                "tapbus_consumer_ack_errors_total",
                "counter",
                "acks the bus did not take (the message comes again)",
                &self.ack_errors,
            ),
            (
                "tapbus_consumer_redelivered_total",
                "counter",
                "messages the bus delivered more than once",
                &self.redelivered,
            ),
            (
                "tapbus_consumer_batches_total",
                "counter",
                "batches of output the bus confirmed",
                &self.batches,
            ),
            (
                "tapbus_consumer_batches_failed_total",
                "counter",
                "batches of output the bus dropped (tried again)",
                &self.batches_failed,
            ),
            (
                "tapbus_consumer_input_dropped_total",
                "counter",
                "messages the bus client dropped before this consumer read them (NATS slow consumer: lost on NATS core, delivered again on JetStream; a lower bound)",
                &dropped,
            ),
            (
                "tapbus_consumer_pending",
                "gauge",
                "messages taken and not yet acknowledged",
                &self.pending,
            ),
            (
                "tapbus_consumer_input_up",
                "gauge",
                "1 while the input is connected",
                &self.up,
            ),
        ];
        let known = [
            (
                "tapbus_consumer_lag_messages",
                "messages the bus stores for this consumer's durable or group and has not delivered yet (JetStream num_pending, Redis stream lag)",
                &self.lag,
            ),
            (
                "tapbus_consumer_bus_unacked_messages",
                "messages the bus delivered to this consumer's durable or group, not yet acknowledged by any of its processes",
                &self.bus_unacked,
            ),
        ]
        .into_iter()
        .filter(|(_, _, v)| v.load(Ordering::Relaxed) != UNKNOWN)
        .map(|(n, h, v)| (n, "gauge", h, v));
        for (name, kind, help, v) in rows.into_iter().chain(known) {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(
                out,
                "{name}{{consumer=\"{consumer}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }

    /// Follows the subscriber's connection state into `tapbus_consumer_input_up`, and its
    /// backlog (where the bus keeps one) into `tapbus_consumer_lag_messages` and
    /// `tapbus_consumer_bus_unacked_messages`; counts its client's drops ([`Own::watch_drops`]).
    pub fn watch_input(self: &Arc<Self>, sub: &Subscriber) {
        self.watch_drops(sub);
        let mut backlog = sub.backlog();
        let own = self.clone();
        tokio::spawn(async move {
            loop {
                if let Some(b) = *backlog.borrow_and_update() {
                    own.lag
                        .store(b.waiting.unwrap_or(UNKNOWN), Ordering::Relaxed);
                    own.bus_unacked.store(b.unacked, Ordering::Relaxed);
                }
                if backlog.changed().await.is_err() {
                    break;
                }
            }
        });
        let mut up = sub.connected();
        let own = self.clone();
        tokio::spawn(async move {
            loop {
                own.up
                    .store(u64::from(*up.borrow_and_update()), Ordering::Relaxed);
                if up.changed().await.is_err() {
                    break;
                }
            }
        });
    }
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
            eprintln!("{program}: configuration error: {e}");
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
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
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
            println!("{program}: configuration ok: {}", summary(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Acks a delivery, counting the ack or its failure (logged once).
pub async fn ack(d: Delivery, own: &Own) {
    match d.ack().await {
        Ok(()) => {
            own.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            if own.ack_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("ack failed (the bus may deliver the message again): {e}");
            }
        }
    }
}

/// Serves `GET /metrics` (`render()`, with `content_type`) and `GET /health` (200 while
/// `own.up` is 1, else 503) on `addr`, in a task of its own.
pub async fn serve<F>(
    addr: std::net::SocketAddr,
    content_type: &'static str,
    render: F,
    own: Arc<Own>,
) -> anyhow::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let metrics = move || {
        let render = render.clone();
        async move { ([(header::CONTENT_TYPE, content_type)], render()) }
    };
    let health = move || {
        let own = own.clone();
        async move {
            if own.up.load(Ordering::Relaxed) == 1 {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "input not connected\n")
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /health");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
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

/// Logs to standard error, filtered by `TAPBUS_LOG` (default `warn`), as text or JSON.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
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
