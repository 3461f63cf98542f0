//! `tapbus-loki`: the arrow bus (`dnstap.>` raw events, `tapbus.reduced.>` records) -->
//! Grafana Loki `POST /loki/api/v1/push`. Subscribes on any bus URL, puts each message's
//! payload as one line into a batch grouped by stream ([`tapbus_loki::labels`],
//! [`tapbus_loki::batch`]) until `batch_max_bytes` or `batch_wait`, pushes it
//! ([`tapbus_loki::push`]) while the next batch fills (one push in flight, so each
//! stream's lines reach Loki in order), and acks the batch's deliveries only once Loki
//! answered ([`tapbus_loki::response`]): 2xx and 400 (Loki stored the valid entries;
//! the refused ones are counted by reason, never retried) and other 4xx (dropped,
//! counted) ack; 429, 5xx and no answer are retried with the same body, honouring
//! `Retry-After`, with in-progress acks to the bus meanwhile. Messages taken and not
//! acked are bounded by `max_pending`: at the bound reading pauses and the bus holds the
//! rest. SIGINT/SIGTERM push what is batched (within `drain_timeout`), ack it, exit 0.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tapbus_bus::backoff::Backoff;
use tapbus_bus::subscribe::{Delivery, SubscribeError, Subscriber};
use tapbus_config::{ConfigError, ConsumerInputConfig, ConsumerInputSpec, SubscribeMode};
use tapbus_consumer::{CommonArgs, Own, ack, init_logging, listen_addr, serve, stop_signal};
use tapbus_loki::batch::{Batch, Sealed};
use tapbus_loki::labels::{Labeler, LabelsConfig};
use tapbus_loki::push::{Encoder, Encoding};
use tapbus_loki::response::{self, Outcome, StreamInfo};
use tokio::sync::mpsc;

const PROGRAM: &str = "tapbus-loki";

/// Push dnstap events and reduced records from the bus to Grafana Loki.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL to read from (the URLs of tapbus-tail, docs/bus-urls.md), e.g.
    /// 'jetstream://127.0.0.1:4222/DNSTAP?durable=loki'. A NATS or Redis pub/sub URL
    /// without a subject reads both dnstap.> and tapbus.reduced.>.
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// Loki push endpoint, e.g. http://127.0.0.1:3100/loki/api/v1/push.
    #[arg(short, long, value_name = "URL")]
    url: Option<String>,
    /// Tenant (`X-Scope-OrgID`).
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// `timestamp`: which time a line gets in Loki.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stamp {
    /// The dnstap event time (a reduced record: its window end). A re-push after a
    /// crash stores nothing twice (Loki drops identical entries).
    Event,
    /// The time the message was taken from the bus (for captures older than Loki
    /// accepts); a re-push after a crash stores a duplicate.
    Received,
}

/// The configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    input: ConsumerInputConfig,
    /// Loki push endpoint (http or https).
    url: String,
    /// `X-Scope-OrgID`; empty: not sent.
    tenant: String,
    /// HTTP basic auth.
    username: String,
    password: String,
    /// `Authorization: Bearer ...` (instead of basic auth).
    bearer_token: String,
    /// PEM CA certificate(s) trusted for https besides the system's.
    ca_file: String,
    /// Per request.
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    /// "protobuf" (snappy + logproto.PushRequest) or "json".
    encoding: Encoding,
    /// "event" or "received".
    timestamp: Stamp,
    /// A batch holds at most this many bytes of lines.
    batch_max_bytes: usize,
    /// A batch goes out at the latest this long after its first line.
    #[serde(with = "humantime_serde")]
    batch_wait: Duration,
    /// Messages taken from the bus and not yet acked, at most; reading pauses there.
    max_pending: usize,
    /// Retry backoff for 429, 5xx and an unreachable Loki.
    #[serde(with = "humantime_serde")]
    min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    max_backoff: Duration,
    /// At SIGINT/SIGTERM, the time to push and ack what is batched.
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    labels: LabelsConfig,
    /// `/metrics` and `/health`; "" disables.
    metrics_listen: String,
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
        }
    }
}

struct Settings {
    inputs: Vec<ConsumerInputSpec>,
    url: reqwest::Url,
    cfg: Config,
    labeler: Labeler,
    ca: Vec<reqwest::Certificate>,
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
    let inputs = input_specs(&cfg.input)?;
    if cfg.url.is_empty() {
        return Err(invalid(
            "url",
            "missing: give --url http://HOST:3100/loki/api/v1/push",
        ));
    }
    let url = reqwest::Url::parse(&cfg.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| invalid("url", format!("{:?} is not an http(s) URL", cfg.url)))?;
    if !cfg.bearer_token.is_empty() && !cfg.username.is_empty() {
        return Err(invalid(
            "bearer_token",
            "only one of bearer_token and username/password",
        ));
    }
    if cfg.username.is_empty() != cfg.password.is_empty() {
        return Err(invalid("username", "username and password go together"));
    }
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
    Ok(Settings {
        inputs,
        url,
        cfg,
        labeler,
        ca,
        listen,
    })
}

/// The input's subscriptions: one, or for a NATS core or Redis pub/sub input that names
/// no subject, the raw events and the reduced records.
fn input_specs(input: &ConsumerInputConfig) -> Result<Vec<ConsumerInputSpec>, ConfigError> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.common.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |s| {
            let inputs: Vec<String> = s.inputs.iter().map(|i| i.mode.to_string()).collect();
            format!(
                "inputs [{}], url {}, tenant {:?}, metrics_listen {}",
                inputs.join(", "),
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

/// A Prometheus histogram with fixed buckets.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum: Mutex<f64>,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: Mutex::new(0.0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b)
            && let Some(c) = self.counts.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut s) = self.sum.lock() {
            *s += v;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum.lock().map(|s| *s).unwrap_or(0.0);
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A counter by label value, bounded: past 64 values new ones count as `other`.
#[derive(Default)]
struct ByLabel(Mutex<BTreeMap<String, u64>>);

impl ByLabel {
    fn add(&self, value: &str, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            let key = if m.len() < 64 || m.contains_key(value) {
                value
            } else {
                "other"
            };
            *m.entry(key.to_string()).or_insert(0) += n;
        }
    }

    fn write(&self, name: &str, label: &str, help: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        if let Ok(m) = self.0.lock() {
            for (v, n) in m.iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
            }
        }
    }
}

/// The writer's counters, on `/metrics` beside `tapbus_consumer_*`.
struct Metrics {
    lines: AtomicU64,
    pushed: AtomicU64,
    requests: ByLabel,
    retries: AtomicU64,
    dropped: ByLabel,
    batch_lines: Histogram,
    batch_bytes: Histogram,
    push_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            lines: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            requests: ByLabel::default(),
            retries: AtomicU64::new(0),
            dropped: ByLabel::default(),
            batch_lines: Histogram::new(&[
                1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0,
            ]),
            batch_bytes: Histogram::new(&[
                1024.0, 16384.0, 65536.0, 262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0,
                16777216.0, 67108864.0,
            ]),
            push_duration: Histogram::new(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        }
    }
}

impl Metrics {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            out,
            "tapbus_loki_lines_total",
            "messages taken from the bus (each becomes a line, or is dropped as bad_message)",
            &self.lines,
        );
        counter(
            out,
            "tapbus_loki_pushed_lines_total",
            "lines in requests Loki answered 2xx or 400 for, minus the ones it refused",
            &self.pushed,
        );
        self.requests.write(
            "tapbus_loki_requests_total",
            "status",
            "push requests by HTTP status (error: no answer)",
            out,
        );
        counter(
            out,
            "tapbus_loki_retries_total",
            "push requests sent again after 429, 5xx or no answer",
            &self.retries,
        );
        self.dropped.write(
            "tapbus_loki_dropped_lines_total",
            "reason",
            "lines not stored, by Loki's reason, http_<status> or bad_message",
            out,
        );
        self.batch_lines
            .write("tapbus_loki_batch_lines", "lines per push request", out);
        self.batch_bytes.write(
            "tapbus_loki_batch_bytes",
            "line bytes per push request",
            out,
        );
        self.push_duration.write(
            "tapbus_loki_push_duration_seconds",
            "time of one push request until Loki's answer",
            out,
        );
    }
}

/// What the push task shares with the main loop.
struct Pusher {
    http: reqwest::Client,
    url: reqwest::Url,
    cfg: Config,
    own: Arc<Own>,
    metrics: Arc<Metrics>,
}

/// A push task's result: the encoder back for the next batch.
struct Done {
    encoder: Encoder,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A message ready for the batch.
struct Line {
    selector: String,
    ts_ns: i64,
    metadata: Vec<(&'static str, String)>,
}

/// Reads one message: its stream, timestamp and metadata; `None` if it is neither an
/// event nor a record.
fn line_of(
    labeler: &Labeler,
    stamp: Stamp,
    subject: &str,
    payload: &[u8],
    selector: &mut String,
) -> Option<(i64, Vec<(&'static str, String)>)> {
    let (ts, meta) = labeler.line(subject, payload, selector)?;
    let ts = match stamp {
        Stamp::Event => ts.unwrap_or_else(now_ns),
        Stamp::Received => now_ns(),
    };
    Some((ts, meta))
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let own = Arc::new(Own::default());
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = s.listen {
        let (o, m) = (own.clone(), metrics.clone());
        let render = move || {
            let mut text = String::new();
            m.write(&mut text);
            o.write("loki", &mut text);
            text
        };
        serve(
            addr,
            "text/plain; version=0.0.4; charset=utf-8",
            render,
            own.clone(),
        )
        .await?;
    }
    let mut http = reqwest::Client::builder()
        .timeout(s.cfg.timeout)
        .user_agent(concat!("tapbus-loki/", env!("CARGO_PKG_VERSION")));
    if !s.ca.is_empty() {
        http = http.tls_certs_merge(s.ca.clone());
    }
    let http = http.build().context("HTTP client")?;
    let mut subs = Vec::new();
    for spec in &s.inputs {
        let sub = tapbus_bus::input::subscribe(PROGRAM, spec)
            .await
            .context("cannot subscribe")?;
        tracing::info!(semantics = ?sub.semantics(), mode = ?spec.mode, url = %s.url, "subscribed");
        subs.push(sub);
    }
    watch_inputs(&own, &subs);
    // Each subscriber runs in a task of its own (so no `next()` is ever cancelled) and
    // hands its deliveries over a small channel.
    let (tx, mut rx) = mpsc::channel::<Result<Delivery, SubscribeError>>(256);
    for mut sub in subs {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let r = sub.next().await;
                let end = r.is_err();
                if tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
    }
    drop(tx);

    let pusher = Arc::new(Pusher {
        http,
        url: s.url.clone(),
        cfg: s.cfg.clone(),
        own: own.clone(),
        metrics: metrics.clone(),
    });
    let max_bytes = s.cfg.batch_max_bytes;
    let wait = s.cfg.batch_wait;
    let mut batch: Batch<Delivery> = Batch::new();
    let mut encoder = Some(Encoder::new());
    let mut inflight: Option<tokio::task::JoinHandle<Done>> = None;
    let mut inflight_n = 0usize;
    // A message that did not fit the batch while a push was in flight.
    let mut carry: Option<(Line, Delivery)> = None;
    let mut selector = String::with_capacity(256);
    let mut stopping: Option<Instant> = None;
    let mut ended: Option<String> = None;
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let pending = batch.deliveries() + inflight_n + usize::from(carry.is_some());
        own.set_pending(pending);
        // Start a push when one is due and none is in flight.
        if inflight.is_none()
            && let Some(mut enc) = encoder.take()
        {
            let now = Instant::now();
            let go = !batch.is_empty()
                && (carry.is_some()
                    || batch.line_bytes() >= max_bytes
                    || pending >= s.cfg.max_pending
                    || stopping.is_some()
                    || ended.is_some()
                    || batch.due(now, wait));
            if go {
                let sealed = batch.seal();
                inflight_n = sealed.deliveries.len();
                let p = pusher.clone();
                inflight = Some(tokio::spawn(async move {
                    p.push(&mut enc, sealed).await;
                    Done { encoder: enc }
                }));
                if let Some((line, d)) = carry.take() {
                    batch.add(
                        now,
                        &line.selector,
                        line.ts_ns,
                        d.payload.clone(),
                        line.metadata,
                        d,
                    );
                }
                continue;
            }
            encoder = Some(enc);
        }
        if (stopping.is_some() || ended.is_some()) && inflight.is_none() && batch.is_empty() {
            break;
        }
        let reading =
            stopping.is_none() && ended.is_none() && carry.is_none() && pending < s.cfg.max_pending;
        let deadline = match (stopping, batch.deadline(wait)) {
            (Some(t), _) => t,
            (None, Some(d)) if inflight.is_none() => d,
            _ => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = &mut stop, if stopping.is_none() => {
                tracing::info!(pending, "stopping: pushing what is batched");
                stopping = Some(Instant::now() + s.cfg.drain_timeout);
            }
            done = async {
                match inflight.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                inflight = None;
                inflight_n = 0;
                match done {
                    Ok(d) => encoder = Some(d.encoder),
                    Err(e) => {
                        tracing::error!("push task failed: {e}");
                        encoder = Some(Encoder::new());
                    }
                }
            }
            _ = progress.tick(), if inflight.is_some() && !batch.is_empty() => {
                // The batch waits for the push in flight (Loki slow or down): keep its
                // messages from being delivered again meanwhile.
                if batch
                    .deadline(PROGRESS_EVERY)
                    .is_some_and(|t| Instant::now() >= t)
                {
                    in_progress(batch.held()).await;
                    if let Some((_, d)) = &carry {
                        let _ = d.in_progress().await;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Some(t) = stopping
                    && Instant::now() >= t
                {
                    let left = batch.deliveries() + inflight_n + usize::from(carry.is_some());
                    tracing::warn!(left, "drain_timeout passed: exiting with messages not acked (the bus delivers them again)");
                    if let Some(h) = inflight.take() {
                        h.abort();
                    }
                    break;
                }
            }
            m = rx.recv(), if reading => {
                let d = match m {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        ended = Some(format!("subscription ended: {e}"));
                        continue;
                    }
                    None => {
                        ended = Some("subscription ended".into());
                        continue;
                    }
                };
                take(d, &s, &own, &metrics, &mut batch, &mut carry, &mut selector);
                // Take what else is waiting without a trip through select! (and its
                // timer) per message.
                for _ in 0..1024 {
                    if carry.is_some()
                        || batch.line_bytes() >= max_bytes
                        || batch.deliveries() + inflight_n >= s.cfg.max_pending
                    {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(Ok(d)) => take(d, &s, &own, &metrics, &mut batch, &mut carry, &mut selector),
                        Ok(Err(e)) => {
                            ended = Some(format!("subscription ended: {e}"));
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            ended = Some("subscription ended".into());
                            break;
                        }
                    }
                }
            }
        }
    }
    own.set_pending(0);
    match ended {
        Some(e) if stopping.is_none() => Err(anyhow::anyhow!(e)),
        _ => Ok(()),
    }
}

/// Puts one delivery into the batch (or, when it would take the batch over
/// `batch_max_bytes`, into `carry` for the next one).
fn take(
    d: Delivery,
    s: &Settings,
    own: &Own,
    metrics: &Metrics,
    batch: &mut Batch<Delivery>,
    carry: &mut Option<(Line, Delivery)>,
    selector: &mut String,
) {
    own.received(&d);
    metrics.lines.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    match line_of(
        &s.labeler,
        s.cfg.timestamp,
        &d.subject,
        &d.payload,
        selector,
    ) {
        Some((ts_ns, metadata)) => {
            if batch.would_overflow(d.payload.len(), s.cfg.batch_max_bytes) {
                let line = Line {
                    selector: selector.clone(),
                    ts_ns,
                    metadata,
                };
                *carry = Some((line, d));
            } else {
                batch.add(now, selector, ts_ns, d.payload.clone(), metadata, d);
            }
        }
        None => {
            if own.bad() {
                tracing::warn!(subject = %d.subject, "not a tapbus event or reduced record, skipped (further ones are counted)");
            }
            metrics.dropped.add("bad_message", 1);
            batch.hold(now, d);
        }
    }
}

/// `tapbus_consumer_input_up`: 1 while every subscription is connected.
fn watch_inputs(own: &Arc<Own>, subs: &[Subscriber]) {
    let slots: Arc<Vec<AtomicBool>> =
        Arc::new(subs.iter().map(|_| AtomicBool::new(false)).collect());
    for (i, sub) in subs.iter().enumerate() {
        own.watch_drops(sub);
        let mut up = sub.connected();
        let (own, slots) = (own.clone(), slots.clone());
        tokio::spawn(async move {
            loop {
                let v = *up.borrow_and_update();
                if let Some(s) = slots.get(i) {
                    s.store(v, Ordering::Relaxed);
                }
                let all = slots.iter().all(|s| s.load(Ordering::Relaxed));
                own.up.store(u64::from(all), Ordering::Relaxed);
                if up.changed().await.is_err() {
                    break;
                }
            }
        });
    }
}

impl Pusher {
    /// Encodes and POSTs one batch until Loki answered with something other than 429 or
    /// 5xx, counts the answer, then acks every delivery of the batch.
    async fn push(&self, encoder: &mut Encoder, sealed: Sealed<Delivery>) {
        let Sealed {
            streams,
            deliveries,
            lines,
            line_bytes,
        } = sealed;
        if lines > 0 {
            let m = &self.metrics;
            m.batch_lines.observe(lines as f64);
            m.batch_bytes.observe(line_bytes as f64);
            let infos: Vec<StreamInfo> = streams
                .iter()
                .map(|s| StreamInfo {
                    labels: s.labels.clone(),
                    entries: s.entries.len(),
                })
                .collect();
            match encoder.encode(self.cfg.encoding, &streams) {
                Ok(body) => {
                    drop(streams);
                    self.deliver(body, lines as u64, &infos, &deliveries).await;
                }
                Err(e) => {
                    tracing::error!(lines, "{e}; batch dropped");
                    m.dropped.add("encode_error", lines as u64);
                }
            }
        }
        for d in deliveries {
            ack(d, &self.own).await;
        }
    }

    /// POSTs `body` until it is answered for good.
    async fn deliver(&self, body: Bytes, lines: u64, streams: &[StreamInfo], held: &[Delivery]) {
        let cfg = &self.cfg;
        let m = &self.metrics;
        let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
        let mut warned = false;
        loop {
            let mut req = self
                .http
                .post(self.url.clone())
                .header("Content-Type", cfg.encoding.content_type())
                .body(body.clone());
            if !cfg.tenant.is_empty() {
                req = req.header("X-Scope-OrgID", &cfg.tenant);
            }
            if !cfg.bearer_token.is_empty() {
                req = req.bearer_auth(&cfg.bearer_token);
            } else if !cfg.username.is_empty() {
                req = req.basic_auth(&cfg.username, Some(&cfg.password));
            }
            let t0 = Instant::now();
            let send = req.send();
            tokio::pin!(send);
            // A slow answer must not let the bus's ack_wait run out meanwhile.
            let sent = loop {
                tokio::select! {
                    r = &mut send => break r,
                    () = tokio::time::sleep(PROGRESS_EVERY) => in_progress(held).await,
                }
            };
            let (status, text, retry_after) = match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(response::retry_after);
                    (
                        Some(status),
                        r.text().await.unwrap_or_default(),
                        retry_after,
                    )
                }
                Err(e) => (None, format!("{e:#}"), None),
            };
            m.push_duration.observe(t0.elapsed().as_secs_f64());
            match status {
                Some(st) => m.requests.add(itoa::Buffer::new().format(st), 1),
                None => m.requests.add("error", 1),
            }
            let outcome = status.map_or(Outcome::Retry, response::outcome);
            match (outcome, status) {
                (Outcome::Written, _) if response::blocked(&text) => {
                    m.dropped.add("blocked_ingestion", lines);
                    tracing::warn!(
                        status,
                        lines,
                        "Loki blocks ingestion; batch dropped: {}",
                        text.trim()
                    );
                    return;
                }
                (Outcome::Written, _) => {
                    m.pushed.fetch_add(lines, Ordering::Relaxed);
                    if warned {
                        tracing::info!("Loki takes pushes again");
                    }
                    return;
                }
                (Outcome::Partial, _) => {
                    let refused = match response::refusals(&text, streams) {
                        Some(by_reason) => {
                            let mut left = lines;
                            for (reason, n) in by_reason {
                                let n = n.min(left);
                                left -= n;
                                m.dropped.add(reason, n);
                            }
                            lines - left
                        }
                        None => {
                            m.dropped.add("http_400", lines);
                            lines
                        }
                    };
                    m.pushed.fetch_add(lines - refused, Ordering::Relaxed);
                    tracing::warn!(
                        lines,
                        refused,
                        "Loki refused entries (400, not retried): {}",
                        text.trim()
                    );
                    return;
                }
                (Outcome::Refused, st) => {
                    let reason = format!("http_{}", st.unwrap_or(0));
                    m.dropped.add(&reason, lines);
                    tracing::warn!(
                        status = st,
                        lines,
                        "Loki refused the batch; dropped: {}",
                        text.trim()
                    );
                    return;
                }
                (Outcome::Retry, st) => {
                    m.retries.fetch_add(1, Ordering::Relaxed);
                    if !warned {
                        warned = true;
                        tracing::warn!(status = ?st, "push failed, retrying with backoff: {}", text.trim());
                    }
                    let wait = retry_after
                        .map(|r| r.min(Duration::from_secs(300)))
                        .unwrap_or_else(|| backoff.next_delay());
                    wait_in_progress(wait, held).await;
                }
            }
        }
    }
}

/// How often messages held while Loki does not answer are reported in progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Tells the bus the messages are still being worked on (JetStream `+WPI`: their
/// `ack_wait` starts again, so they are not delivered to someone else meanwhile).
async fn in_progress(held: &[Delivery]) {
    for d in held {
        let _ = d.in_progress().await;
    }
}

/// Sleeps `wait`, reporting the held messages in progress at once and every
/// [`PROGRESS_EVERY`].
async fn wait_in_progress(wait: Duration, held: &[Delivery]) {
    let step = PROGRESS_EVERY;
    let mut left = wait;
    loop {
        in_progress(held).await;
        let now = left.min(step);
        tokio::time::sleep(now).await;
        left = left.saturating_sub(now);
        if left.is_zero() {
            return;
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
    fn the_example_config_loads_and_errors_name_the_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/loki.toml");
        let s = settings(&cli(&["--config", path])).expect("config/loki.toml");
        assert_eq!(s.url.as_str(), "http://127.0.0.1:3100/loki/api/v1/push");
        assert_eq!(s.cfg.tenant, "dns");
        assert_eq!(s.cfg.encoding, Encoding::Protobuf);
        assert_eq!(s.cfg.timestamp, Stamp::Event);
        assert_eq!(s.cfg.batch_max_bytes, 1 << 20);
        assert_eq!(s.cfg.max_pending, 20_000);
        assert_eq!(s.inputs.len(), 1, "the example reads one JetStream stream");
        let e = |args: &[&str]| {
            settings(&cli(args))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(&[]).starts_with("url"));
        assert!(e(&["--url", "ftp://x/"]).starts_with("url"));
        assert!(e(&["--url", "http://x/", "--input", "kafka://x"]).starts_with("input.url"));
        let dir = tempfile::tempdir().unwrap();
        let file = |body: &str| {
            let p = dir.path().join("c.toml");
            std::fs::write(
                &p,
                format!("url = \"http://127.0.0.1:3100/loki/api/v1/push\"\n{body}"),
            )
            .unwrap();
            e(&["--config", p.to_str().unwrap()])
        };
        assert!(file("[labels]\nfields = [\"identity\", \"qname\"]").starts_with("labels.fields"));
        assert!(file("[labels]\nfields = [\"query_address\"]").starts_with("labels.fields"));
        assert!(
            file("[labels]\nstatic = { \"bad-name\" = \"x\" }")
                .starts_with("labels.static.bad-name")
        );
        assert!(file("max_pending = 0").starts_with("max_pending"));
        assert!(file("batch_max_bytes = 10").starts_with("batch_max_bytes"));
        assert!(file("ca_file = \"/nonexistent.pem\"").starts_with("ca_file"));
        assert!(
            file("bearer_token = \"t\"\nusername = \"u\"\npassword = \"p\"")
                .starts_with("bearer_token")
        );
        assert!(file("min_backoff = \"2s\"\nmax_backoff = \"1s\"").starts_with("max_backoff"));
        assert!(
            file("encoding = \"xml\"").contains("encoding"),
            "{}",
            file("encoding = \"xml\"")
        );
        assert_eq!(file("encoding = \"json\"\ntimestamp = \"received\""), "");
        // A file's list replaces the default one; its static table adds to job.
        let p = dir.path().join("d.toml");
        std::fs::write(
            &p,
            "url = \"http://127.0.0.1:3100/loki/api/v1/push\"\n[labels]\nfields = [\"rcode\"]\nstatic = { env = \"prod\" }\n",
        )
        .unwrap();
        let s = settings(&cli(&["--config", p.to_str().unwrap()])).unwrap();
        assert_eq!(s.cfg.labels.fields, vec![tapbus_loki::labels::Field::Rcode]);
        assert_eq!(
            s.cfg.labels.static_labels.keys().collect::<Vec<_>>(),
            vec!["env", "job"]
        );
        assert_eq!(
            s.inputs.len(),
            2,
            "the default input reads events and records"
        );
    }

    #[test]
    fn default_input_reads_events_and_records() {
        let specs = |url: &str| {
            input_specs(&ConsumerInputConfig::from_url(url))
                .unwrap()
                .into_iter()
                .map(|s| match s.mode {
                    SubscribeMode::Nats { subject, .. } => subject,
                    SubscribeMode::RedisPubsub { pattern } => pattern,
                    SubscribeMode::JetStream { stream, .. } => stream,
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            specs("nats://127.0.0.1:4222"),
            vec!["dnstap.>", "tapbus.reduced.>"]
        );
        assert_eq!(specs("nats://127.0.0.1:4222/dnstap.>"), vec!["dnstap.>"]);
        assert_eq!(
            specs("nats://127.0.0.1:4222/tapbus.reduced.>"),
            vec!["tapbus.reduced.>"]
        );
        assert_eq!(
            specs("redis://127.0.0.1:6379"),
            vec!["dnstap.*", "tapbus.reduced.*"]
        );
        assert_eq!(
            specs("redis://127.0.0.1:6379?pattern=dnstap.ns1.*"),
            vec!["dnstap.ns1.*"]
        );
        assert_eq!(
            specs("jetstream://127.0.0.1:4222/DNSTAP?durable=loki"),
            vec!["DNSTAP"]
        );
    }

    #[test]
    fn lines_of_events_records_and_others() {
        let l = Labeler::new(&LabelsConfig::default()).unwrap();
        let mut sel = String::new();
        let ev = br#"{"network":{"protocol":"UDP"},"dns":{},"dnstap":{"operation":"CLIENT_QUERY","identity":"ns1","timestamp":1795315298535458000}}"#;
        let (ts, meta) =
            line_of(&l, Stamp::Event, "dnstap.ns1.client_query", ev, &mut sel).unwrap();
        assert_eq!(ts, 1_795_315_298_535_458_000);
        assert!(meta.is_empty());
        assert_eq!(
            sel,
            r#"{identity="ns1", job="tapbus", kind="event", operation="CLIENT_QUERY", protocol="UDP"}"#
        );
        let (ts, _) = line_of(&l, Stamp::Received, "dnstap", ev, &mut sel).unwrap();
        assert!(ts > 1_700_000_000_000_000_000 && ts != 1_795_315_298_535_458_000);
        let rec = br#"{"reduction":"qname","identity":"ns1","window-end-ns":1795315300000000000,"count":2}"#;
        let (ts, _) = line_of(&l, Stamp::Event, "tapbus.reduced.qname", rec, &mut sel).unwrap();
        assert_eq!(ts, 1_795_315_300_000_000_000);
        assert_eq!(
            sel,
            r#"{identity="ns1", job="tapbus", kind="reduced", reduction="qname"}"#
        );
        // A record on a Redis stream key: read by content.
        assert!(line_of(&l, Stamp::Event, "dnstap", rec, &mut sel).is_some());
        assert!(line_of(&l, Stamp::Event, "dnstap.x", b"not json", &mut sel).is_none());
        assert!(line_of(&l, Stamp::Event, "tapbus.reduced.x", b"{}", &mut sel).is_none());
    }

    /// Every key the configuration file accepts is documented: in docs/loki.md, `[input]` in
    /// docs/bus-urls.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = Config::default();
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(&v, "loki.md", &[("input", "bus-urls.md")]);
    }
}
