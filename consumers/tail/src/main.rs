//! `tapbus-tail`: the arrow bus --JSON--> terminal. Subscribes on any bus URL the bus layer
//! supports, prints one readable line (or the raw JSON) per event, filtered, and
//! acknowledges each message only after its line was written to standard output.
//!
//! Exit codes (for scripts): 0 the `--count` was reached, or the program was stopped
//! (SIGINT/SIGTERM, `--timeout` without `--count`, standard output closed); 1 `--timeout`
//! passed before `--count` events were printed; 2 bad usage or configuration (the message
//! names the key); 3 the bus could not be subscribed (also: not within `--timeout`) or
//! the subscription ended.

mod tail;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tapbus_config::{ConfigError, ConsumerInputSpec};
use tapbus_consumer::runtime::{Input, spawn_reader};
use tapbus_consumer::{init_logging, stop_signal};
use tokio::time::Instant;

use crate::tail::{Flags, Handled, Tail};

const PROGRAM: &str = "tapbus-tail";

/// Read DNS traffic from the bus: one line per dnstap event, or the JSON events.
///
/// Exit codes: 0 done (count reached, stopped, or timeout without --count); 1 --timeout
/// before --count events; 2 bad usage or configuration; 3 bus error.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL: nats://HOST:PORT[/SUBJECT][?queue=GROUP],
    /// jetstream://HOST:PORT/STREAM[?durable=NAME&filter=SUBJECT],
    /// mqtt[s]://HOST:PORT[/TOPIC][?share=GROUP&qos=1], redis[s]://HOST:PORT[/DB][?pattern=P]
    /// or redis://HOST:PORT?stream=KEY&group=G (docs/bus-urls.md).
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// TOML configuration file with an [input] table (see config/tail.toml).
    #[arg(short, long, env = "TAPBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Print the events' JSON (one object per line) instead of the text form; the same as
    /// --format json.
    #[arg(long)]
    json: bool,
    /// Output: text (one readable line per event, the default), json (the JSON as it
    /// came, one per line) or yaml (one YAML document per event, for reading one by one).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Only events matching EXPR, e.g. 'operation=CLIENT_RESPONSE rcode=NXDOMAIN
    /// qname~example\.com$' (docs/filters.md); repeatable, all must match.
    #[arg(short, long = "filter", value_name = "EXPR")]
    filters: Vec<String>,
    /// Exit after printing N events.
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long (e.g. 10s, 2m); with --count, exit 1 if fewer were printed.
    #[arg(short, long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Load and validate the configuration, print a one-line summary and exit (0 valid,
    /// 2 invalid, naming the key); subscribes to nothing.
    #[arg(long)]
    check: bool,
    /// Log format on standard error.
    #[arg(long, env = "TAPBUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |(spec, tail)| {
            format!("input {}, {}", spec.mode, tail.describe())
        });
    }
    init_logging(&cli.log_format);
    let (spec, tail) = match settings(&cli) {
        Ok(s) => s,
        Err(e) => {
            tapbus_config::errln!("{PROGRAM}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tapbus_config::errln!("{PROGRAM}: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    rt.block_on(run(spec, tail, cli.count, cli.timeout))
}

fn settings(cli: &Cli) -> Result<(ConsumerInputSpec, Tail), ConfigError> {
    tail::settings(&Flags {
        config: cli.config.as_deref(),
        input: cli.input.as_deref(),
        filters: &cli.filters,
        count: cli.count,
        json: cli.json,
        format: cli.format.as_deref(),
    })
}

async fn run(
    mut spec: ConsumerInputSpec,
    mut tail: Tail,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> ExitCode {
    let deadline = timeout.map(|t| Instant::now() + t);
    let stop = stop_signal();
    tokio::pin!(stop);
    // The subscription is read in a task of its own (a bus read is never a losing
    // `select!` branch here); it waits for the bus, stream and durable, saying so once.
    // With --count N, take no more than N at a time: a JetStream pull asks for at most N,
    // and at most N wait in the channel. What was taken beyond the count is handed back
    // at exit (below).
    let mut capacity = 256;
    if let Some(n) = count.and_then(|n| usize::try_from(n).ok()) {
        capacity = capacity.min(n);
        if let tapbus_config::SubscribeMode::JetStream { batch, .. } = &mut spec.mode {
            *batch = (*batch).min(n);
        }
    }
    let (mut rx, reader) = spawn_reader(PROGRAM, spec, capacity);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let (mut printed, mut filtered, mut bad, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    // Stream sequences printed: a redelivery of one (an ack lost with the connection, or
    // a server that hands a message out twice) is acked, not printed again.
    let mut seen = tapbus_consumer::state::Handled::new(65_536);
    let mut subscribed = false;
    let mut acks = None;
    let code = loop {
        let input = tokio::select! {
            biased;
            _ = &mut stop => break ExitCode::SUCCESS,
            _ = sleep_until(deadline) => {
                if !subscribed {
                    tapbus_config::errln!("{PROGRAM}: the input was not ready within the timeout (the log says what it waited for)");
                    break ExitCode::from(3);
                }
                break timed_out(count, printed);
            }
            m = rx.recv() => m,
        };
        let d = match input {
            Some(Input::Ready(_)) => {
                subscribed = true;
                continue;
            }
            Some(Input::Delivery(_, d)) => d,
            Some(Input::Ended(_, why)) => {
                let _ = out.flush();
                tapbus_config::errln!("{PROGRAM}: {why}");
                break ExitCode::from(3);
            }
            None => {
                let _ = out.flush();
                tapbus_config::errln!("{PROGRAM}: subscription ended");
                break ExitCode::from(3);
            }
        };
        if let Some(seq) = d.seq {
            if seen.contains(seq) {
                duplicates += 1;
                if let Err(e) = d.ack().await {
                    tracing::warn!("ack failed (the bus may deliver the message again): {e}");
                }
                continue;
            }
            seen.insert(seq);
        }
        let handled = match tail.handle(&d.payload, &mut out).and_then(|h| {
            // The line is on standard output before the message is acknowledged.
            out.flush()?;
            Ok(h)
        }) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break ExitCode::SUCCESS,
            Err(e) => {
                tapbus_config::errln!("{PROGRAM}: cannot write to standard output: {e}");
                break ExitCode::from(3);
            }
        };
        match handled {
            Handled::Printed => printed += 1,
            Handled::Filtered => filtered += 1,
            Handled::Bad(why) => {
                bad += 1;
                if bad == 1 {
                    tracing::warn!(subject = %d.subject, "not a tapbus event, skipped: {why} (further ones are counted)");
                }
            }
        }
        acks.get_or_insert_with(|| d.ack_flush());
        if let Err(e) = d.ack().await {
            tracing::warn!("ack failed (the bus may deliver the message again): {e}");
        }
        if count.is_some_and(|n| printed >= n) {
            break ExitCode::SUCCESS;
        }
    };
    let _ = out.flush();
    // Messages taken and not printed are handed back (JetStream: NAK, delivered again at
    // once to the next reader of the durable, in order, instead of after ack_wait). What
    // a pull already requested arrives within moments: the reader runs until the input
    // has been quiet for 200 ms (at most 2 s, and at most two channels' worth); then the
    // subscription goes (so nothing handed back comes back to it) and the messages are
    // handed back in the order they came.
    let mut taken = Vec::new();
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while taken.len() < 2 * capacity
        && let Ok(Some(input)) = tokio::time::timeout(
            Duration::from_millis(200).min(quiet_until.saturating_duration_since(Instant::now())),
            rx.recv(),
        )
        .await
    {
        if let Input::Delivery(_, d) = input {
            acks.get_or_insert_with(|| d.ack_flush());
            taken.push(d);
        }
    }
    // The reader ends, and its subscription with it (the UNSUB goes out before the NAKs).
    let mut reader = reader;
    reader.0.abort();
    let _ = (&mut reader.0).await;
    let handed_back = taken.len();
    for d in taken {
        if let Err(e) = d.release().await {
            tracing::debug!("handing a message back: {e}");
        }
    }
    // The last acks are written to the bus before the process goes (else it delivers
    // those messages again); a bus that is gone gets a moment, not more.
    if let Some(a) = acks
        && !matches!(
            tokio::time::timeout(Duration::from_secs(2), a.flush()).await,
            Ok(Ok(()))
        )
    {
        tracing::warn!(
            "the last acks may not have reached the bus: it may deliver those messages again"
        );
    }
    tracing::info!(printed, filtered, bad, duplicates, handed_back, "stopped");
    code
}

fn timed_out(count: Option<u64>, printed: u64) -> ExitCode {
    match count {
        Some(n) if printed < n => {
            tapbus_config::errln!("{PROGRAM}: timeout after {printed} of {n} events");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
