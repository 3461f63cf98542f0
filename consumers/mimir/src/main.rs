//! `tapbus-mimir`: the arrow `tapbus.metrics.>` batches --> Prometheus remote write (Mimir
//! `/api/v1/push`, Prometheus `/api/v1/write`). Each batch becomes one request
//! ([`tapbus_mimir::write`]); 2xx acks the batch, 429 and 5xx (and unreachable receivers)
//! are retried with backoff while the bus is told the batch is still in progress, any
//! other status drops the batch, counted by reason (Mimir's `err-mimir-*` id when the
//! body has one), and acks it: a refused batch is never retried forever.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tapbus_bus::backoff::Backoff;
use tapbus_bus::subscribe::Delivery;
use tapbus_config::{ConfigError, ConsumerInputConfig};
use tapbus_consumer::{CommonArgs, Own, ack, init_logging, listen_addr, serve, stop_signal};
use tapbus_mimir::write::{self, Outcome};

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
    let input = cfg.input.validate("input", PROGRAM)?;
    if cfg.url.is_empty() {
        return Err(invalid(
            "url",
            "missing: give --url http://HOST:PORT/api/v1/push",
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
    if cfg.timeout < Duration::from_secs(1) {
        return Err(invalid("timeout", "must be at least 1s"));
    }
    let listen = listen_addr(&cfg.metrics_listen).map_err(|e| invalid("metrics_listen", e))?;
    Ok(Settings {
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

/// Counters of the writes, on `/metrics` beside `tapbus_consumer_*`.
#[derive(Default)]
struct Writes {
    samples: AtomicU64,
    requests_ok: AtomicU64,
    retries: AtomicU64,
    dropped: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Writes {
    fn drop_batch(&self, reason: &str) {
        if let Ok(mut m) = self.dropped.lock() {
            if m.len() < 64 || m.contains_key(reason) {
                *m.entry(reason.to_string()).or_insert(0) += 1;
            } else {
                *m.entry("other".into()).or_insert(0) += 1;
            }
        }
    }

    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE tapbus_mimir_samples_total counter");
        let _ = writeln!(
            out,
            "tapbus_mimir_samples_total {}",
            self.samples.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE tapbus_mimir_requests_total counter");
        let _ = writeln!(
            out,
            "tapbus_mimir_requests_total {}",
            self.requests_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE tapbus_mimir_retries_total counter");
        let _ = writeln!(
            out,
            "tapbus_mimir_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE tapbus_mimir_dropped_total counter");
        if let Ok(m) = self.dropped.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "tapbus_mimir_dropped_total{{reason=\"{reason}\"}} {n}");
            }
        }
    }
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let own = Arc::new(Own::default());
    let writes = Arc::new(Writes::default());
    if let Some(addr) = s.listen {
        let (o, w) = (own.clone(), writes.clone());
        let render = move || {
            let mut text = String::new();
            w.write(&mut text);
            o.write("mimir", &mut text);
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
    let http = reqwest::Client::builder()
        .timeout(s.cfg.timeout)
        .user_agent(concat!("tapbus-mimir/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("HTTP client")?;
    let mut sub = tapbus_bus::input::subscribe(PROGRAM, &s.input)
        .await
        .context("cannot subscribe")?;
    tracing::info!(semantics = ?sub.semantics(), url = %s.url, "subscribed");
    own.watch_input(&sub);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let d = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            d = sub.next() => d.map_err(|e| anyhow::anyhow!("subscription ended: {e}"))?,
        };
        own.received(&d);
        let batch = match write::parse(&d.payload).and_then(|b| write::encode(&b)) {
            Ok(b) => b,
            Err(e) => {
                if own.bad() {
                    tracing::warn!(subject = %d.subject, "not a metric batch, skipped: {e} (further ones are counted)");
                }
                ack(d, &own).await;
                continue;
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            () = deliver(&http, &s, batch, d, &own, &writes) => {}
        }
    }
}

/// POSTs one batch until it is written or refused, then acks it.
async fn deliver(
    http: &reqwest::Client,
    s: &Settings,
    (body, samples): (Vec<u8>, usize),
    d: Delivery,
    own: &Own,
    writes: &Writes,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut warned = false;
    loop {
        let mut req = http
            .post(s.url.clone())
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body.clone());
        if !s.cfg.tenant.is_empty() {
            req = req.header("X-Scope-OrgID", &s.cfg.tenant);
        }
        if !s.cfg.bearer_token.is_empty() {
            req = req.bearer_auth(&s.cfg.bearer_token);
        } else if !s.cfg.username.is_empty() {
            req = req.basic_auth(&s.cfg.username, Some(&s.cfg.password));
        }
        let (status, text, retry_after) = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (
                    Some(status),
                    r.text().await.unwrap_or_default(),
                    retry_after,
                )
            }
            Err(e) => (None, e.to_string(), None),
        };
        match status.map(write::outcome) {
            Some(Outcome::Written) => {
                writes.samples.fetch_add(samples as u64, Ordering::Relaxed);
                writes.requests_ok.fetch_add(1, Ordering::Relaxed);
                if warned {
                    tracing::info!("remote write works again");
                }
                ack(d, own).await;
                return;
            }
            Some(Outcome::Refused) => {
                let status = status.unwrap_or(0);
                let reason = write::refusal_reason(status, &text);
                writes.drop_batch(&reason);
                tracing::warn!(status, %reason, "remote write refused a batch; dropped: {}", text.trim());
                ack(d, own).await;
                return;
            }
            Some(Outcome::Retry) | None => {
                writes.retries.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    warned = true;
                    tracing::warn!(status = ?status, "remote write failed, retrying with backoff: {}", text.trim());
                }
                // Keep the bus from handing the batch to someone else meanwhile.
                let _ = d.in_progress().await;
                let wait = retry_after
                    .map(|r| r.min(Duration::from_secs(60)))
                    .unwrap_or_else(|| backoff.next_delay());
                tokio::time::sleep(wait).await;
            }
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
