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

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig, ConsumerInputSpec, SubscribeMode};
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::{CommonArgs, init_logging, listen_addr};
use tapbus_loki::labels::{Labeler, LabelsConfig};
use tapbus_loki::push::Encoding;
use tapbus_loki::stage::{Endpoint, LokiMetrics, LokiSink, LokiStage, Stamp};

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

async fn run(s: Settings) -> anyhow::Result<()> {
    let c = &s.cfg;
    let mut opts = Options::new(PROGRAM, "loki");
    opts.max_pending = c.max_pending;
    opts.drain_timeout = c.drain_timeout;
    opts.min_backoff = c.min_backoff;
    opts.max_backoff = c.max_backoff;
    opts.renew_every = runtime::renew_every(&s.inputs);
    let mut consumer = Consumer::new(opts);
    let metrics = LokiMetrics::default();
    metrics.register(consumer.registry());
    let mut http = reqwest::Client::builder()
        .timeout(c.timeout)
        .user_agent(concat!("tapbus-loki/", env!("CARGO_PKG_VERSION")));
    if !s.ca.is_empty() {
        http = http.tls_certs_merge(s.ca.clone());
    }
    let http = http.build().context("HTTP client")?;
    let sink = LokiSink::new(
        http,
        Endpoint {
            url: s.url.clone(),
            tenant: c.tenant.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
            bearer_token: c.bearer_token.clone(),
            encoding: c.encoding,
        },
        metrics.clone(),
    );
    let stage = LokiStage::new(
        s.labeler.clone(),
        c.timestamp,
        c.batch_max_bytes,
        c.batch_wait,
        metrics,
    );
    tracing::info!(url = %s.url, "pushing to");
    consumer
        .run(s.inputs, s.listen, stage, sink, String::new)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapbus_loki::stage::line_of;

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
