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

use anyhow::Context as _;
use clap::Parser;
use tapbus_config::ConfigError;
use tapbus_consumer::runtime::{self, Consumer, Options};
use tapbus_consumer::{CommonArgs, init_logging};
use tapbus_loki::config::{Flags, Settings};
use tapbus_loki::stage::{LokiMetrics, LokiSink, LokiStage};

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

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    tapbus_loki::config::settings(&Flags {
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
    let sink = LokiSink::new(http, s.target.clone(), c.encoding, metrics.clone());
    let stage = LokiStage::new(
        s.labeler.clone(),
        c.timestamp,
        c.batch_max_bytes,
        c.batch_wait,
        metrics,
    )
    .with_privacy(s.privacy.clone());
    if let Some(p) = &s.privacy {
        tracing::info!(
            client_ip = %p.mode(),
            key_fingerprint = p.fingerprint().unwrap_or_default(),
            "lines show pseudonymised client addresses"
        );
    }
    tracing::info!(url = %s.url, "pushing to");
    consumer
        .run(s.inputs, s.listen, stage, sink, String::new)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapbus_config::{ConsumerInputConfig, SubscribeMode};
    use tapbus_loki::config::{Config, input_specs};
    use tapbus_loki::labels::{Labeler, LabelsConfig};
    use tapbus_loki::push::Encoding;
    use tapbus_loki::stage::{Stamp, line_of};

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
