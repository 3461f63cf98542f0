//! `tapbus-top`: the arrow bus --JSON--> terminal, live. Subscribes on any bus URL the bus
//! layer supports, counts every event into the model ([`tapbus_top::stats`]) and redraws
//! the screen ([`tapbus_top::ui`]) every `--refresh`; optionally scrapes the broker's
//! `/metrics` ([`tapbus_top::prom`]) every 3 s for its health.
//!
//! Threads: the bus reader and the scraper run on a tokio runtime in their own thread and
//! aggregate straight into the model under a mutex held for one event at a time; the main
//! thread owns the terminal, takes a snapshot under the same mutex (a copy of the top rows,
//! no rendering) and renders it without the lock. So reading never waits for drawing and
//! drawing never waits for the bus, and nothing queues between them (nothing to drop).
//!
//! Exit codes: 0 quit (`q`, Ctrl-C, SIGINT/SIGTERM/SIGHUP, `--duration` passed, or
//! `--once N` reached); 1 `--once N` and `--duration` passed before N events; 2 bad usage
//! or configuration; 3 the bus could not be subscribed, or the terminal could not be set up.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event};
use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig, ConsumerInputSpec};
use tapbus_event::EventView;
use tapbus_top::prom::BrokerHealth;
use tapbus_top::stats::{Filter, Snapshot, Stats};
use tapbus_top::ui::{self, App, BrokerStatus, Conn, Status, View, ViewState};

const PROGRAM: &str = "tapbus-top";
const DEFAULT_INPUT: &str = "nats://127.0.0.1:4222";
/// How often the broker's /metrics is read.
const SCRAPE_EVERY: Duration = Duration::from_secs(3);
/// Largest /metrics body read (the broker's is a few KiB).
const SCRAPE_MAX_BYTES: usize = 4 << 20;
/// Rows of each top table in a snapshot (what a tall terminal can show, and scroll).
const SNAPSHOT_ROWS: usize = 500;

/// A live terminal view of the DNS traffic on the bus: queries/s by server and message type,
/// rcodes, qtypes, top qnames, clients and domains, latency, transports, broker health.
///
/// Keys: 1..7 or Tab switch views, / filters on the qname, i and o cycle the identity and
/// operation filters, c clears them, p pauses, ? helps, q quits.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Bus URL (docs/bus-urls.md): nats://HOST:PORT[/SUBJECT], jetstream://HOST:PORT/STREAM,
    /// mqtt[s]://HOST:PORT[/TOPIC], redis[s]://HOST:PORT[?pattern=P] or
    /// redis://HOST:PORT?stream=KEY&group=G. Default nats://127.0.0.1:4222.
    #[arg(short, long, value_name = "URL")]
    input: Option<String>,
    /// TOML configuration file with an [input] table and `broker_metrics`.
    #[arg(short, long, env = "TAPBUS_CONFIG")]
    config: Option<PathBuf>,
    /// The broker's metrics URL, e.g. http://127.0.0.1:9634/metrics (read every 3 s).
    #[arg(long, value_name = "URL")]
    broker_metrics: Option<String>,
    /// Redraw interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    refresh: Duration,
    /// Quit after this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// No terminal UI: read N events, print every view as text (at --size) and exit
    /// (exit 1 if --duration passes first; the views are printed then too).
    #[arg(long, value_name = "N")]
    once: Option<u64>,
    /// Screen size for --once, COLSxROWS.
    #[arg(long, default_value = "80x24", value_parser = parse_size)]
    size: (u16, u16),
    /// Write logs to this file (the terminal belongs to the screen; without it, the UI
    /// logs nothing and --once logs to standard error).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Count only the events this filter expression matches (the language of
    /// `tapbus-tail --filter`, docs/filters.md), e.g. 'rcode=SERVFAIL qname=*.example.com'.
    /// The keys' filters apply on top of it.
    #[arg(long, value_name = "EXPR", default_value = "")]
    filter: String,
    /// Load and validate the configuration, print a one-line summary and exit (0 valid,
    /// 2 invalid, naming the key); starts nothing.
    #[arg(long)]
    check: bool,
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s.split_once('x').ok_or("expected COLSxROWS, e.g. 80x24")?;
    let w: u16 = w.parse().map_err(|_| "bad column count")?;
    let h: u16 = h.parse().map_err(|_| "bad row count")?;
    if !(20..=1000).contains(&w) || !(5..=1000).contains(&h) {
        return Err("size out of range (20x5 .. 1000x1000)".into());
    }
    Ok((w, h))
}

/// The configuration file (`--config`, then `TAPBUS_*`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TopConfig {
    input: ConsumerInputConfig,
    /// The broker's /metrics URL.
    broker_metrics: Option<String>,
}

/// What the reader and the scraper share with the screen.
struct Shared {
    stats: Stats,
    conn: Conn,
    broker: Option<BrokerStatus>,
}

type SharedRef = Arc<Mutex<Shared>>;

/// The lock, also after a panic in another thread (the data is counters: still usable).
fn lock(s: &SharedRef) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return tapbus_consumer::check(PROGRAM, settings(&cli), |s| {
            format!(
                "input {} ({}), filter {}, broker_metrics {}",
                s.url,
                s.input.mode,
                if s.filter.is_empty() {
                    "none".into()
                } else {
                    s.filter.to_string()
                },
                s.broker.as_deref().unwrap_or("off"),
            )
        });
    }
    let Settings {
        input: spec,
        url,
        broker,
        filter,
    } = match settings(&cli) {
        Ok(s) => s,
        Err(e) => {
            tapbus_config::errln!("{PROGRAM}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_file.as_deref(), cli.once.is_some());
    // The broker scrape may use https, and reqwest's rustls has no provider of its own
    // (the workspace builds it with `rustls-no-provider`): without this the scraper
    // panics on its first request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = Arc::new(Clock(Instant::now()));
    let mut stats = Stats::new(clock.ms());
    stats.set_filter(Filter::new(filter), clock.ms());
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        stats,
        conn: Conn::Connecting,
        broker: broker.as_ref().map(|u| BrokerStatus {
            url: u.clone(),
            ..BrokerStatus::default()
        }),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    // --once N reads exactly N messages (the rest stays on the bus, unacked).
    let reader = match start_background(
        spec,
        broker,
        cli.once,
        shared.clone(),
        clock.clone(),
        stop.clone(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tapbus_config::errln!("{PROGRAM}: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let status = |s: &Shared| Status {
        input: url.clone(),
        conn: s.conn.clone(),
        broker: s.broker.clone(),
    };
    let deadline = cli.duration.map(|d| Instant::now() + d);
    let code = match cli.once {
        Some(n) => once(&cli, n, deadline, &shared, &clock, &stop, &status),
        None => match interactive(&cli, deadline, &shared, &clock, &stop, &status) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tapbus_config::errln!("{PROGRAM}: {e:#}");
                ExitCode::from(3)
            }
        },
    };
    stop.store(true, Ordering::SeqCst);
    // The reader stops at its next poll; do not wait long for a bus that hangs.
    let _ = reader.recv_timeout(Duration::from_secs(2));
    let s = lock(&shared);
    if let Conn::Ended(why) = &s.conn {
        tapbus_config::errln!("{PROGRAM}: {why}");
        if s.stats.events() == 0 && code == ExitCode::SUCCESS {
            return ExitCode::from(3);
        }
    }
    tracing::info!(events = s.stats.events(), bad = s.stats.bad(), "stopped");
    code
}

/// What the flags and the file resolve to.
struct Settings {
    input: ConsumerInputSpec,
    /// The input URL without its password (it is shown on screen).
    url: String,
    broker: Option<String>,
    filter: tapbus_event::Filter,
}

fn settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let mut cfg: TopConfig = tapbus_config::load(cli.config.as_deref(), TopConfig::default())?;
    if let Some(url) = &cli.input {
        cfg.input.set_url(url);
    }
    if cfg.input.connect.url.is_empty() {
        cfg.input.set_url(DEFAULT_INPUT);
    }
    let spec = cfg.input.validate("input", PROGRAM)?;
    if cli.once == Some(0) {
        return Err(ConfigError::Invalid {
            key: "--once".into(),
            msg: "must be at least 1".into(),
        });
    }
    if cli.refresh < Duration::from_millis(50) {
        return Err(ConfigError::Invalid {
            key: "--refresh".into(),
            msg: "must be at least 50ms".into(),
        });
    }
    let broker = cli.broker_metrics.clone().or(cfg.broker_metrics);
    if let Some(b) = &broker
        && !(b.starts_with("http://") || b.starts_with("https://"))
    {
        return Err(ConfigError::Invalid {
            key: "broker_metrics".into(),
            msg: format!("{b:?}: expected an http:// URL"),
        });
    }
    let filter = tapbus_event::Filter::parse(&cli.filter).map_err(|e| ConfigError::Invalid {
        key: "--filter".into(),
        msg: e.to_string(),
    })?;
    Ok(Settings {
        input: spec,
        url: redact(&cfg.input.connect.url),
        broker,
        filter,
    })
}

/// The URL without a password (it is shown on screen).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Starts the runtime thread (reader, scraper, signals); the receiver gets a message when
/// it has stopped.
fn start_background(
    spec: ConsumerInputSpec,
    broker: Option<String>,
    limit: Option<u64>,
    shared: SharedRef,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::sync::mpsc::Receiver<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bus".into())
        .spawn(move || {
            let body = std::panic::AssertUnwindSafe(|| {
                rt.block_on(async {
                    if let Some(url) = broker {
                        tokio::spawn(scrape(url, shared.clone(), stop.clone()));
                    }
                    tokio::spawn(signals(stop.clone()));
                    tokio::select! {
                        _ = read(spec, limit, shared.clone(), clock) => {}
                        _ = stopped(&stop) => {}
                    }
                    // A reader that ended (the bus refused us) leaves the screen showing
                    // why; the signal task must live on until the program stops, or
                    // SIGTERM and SIGHUP would be ignored from then on.
                    stopped(&stop).await;
                })
            });
            if std::panic::catch_unwind(body).is_err() {
                // A bug in the reader: say so and end the program (the panic hook has
                // restored the terminal already).
                lock(&shared).conn = Conn::Ended("internal error in the bus reader".into());
                stop.store(true, Ordering::SeqCst);
            }
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGINT, SIGTERM and SIGHUP (the ssh session went away) stop the program.
async fn signals(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut i), Ok(mut t), Ok(mut h)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    tokio::select! {
        _ = i.recv() => {}
        _ = t.recv() => {}
        _ = h.recv() => {}
    }
    stop.store(true, Ordering::SeqCst);
}

/// The bus reader: every message into the model, then acked.
/// Reads the bus into the model; with a `limit`, stops after that many messages.
async fn read(spec: ConsumerInputSpec, limit: Option<u64>, shared: SharedRef, clock: Arc<Clock>) {
    let mut sub = match tapbus_bus::input::subscribe(PROGRAM, &spec).await {
        Ok(s) => s,
        Err(e) => {
            lock(&shared).conn = Conn::Ended(format!("cannot subscribe: {e}"));
            return;
        }
    };
    tracing::info!(semantics = ?sub.semantics(), "subscribed");
    lock(&shared).conn = Conn::Up;
    let mut up = sub.connected();
    let watch = shared.clone();
    tokio::spawn(async move {
        loop {
            let now = *up.borrow_and_update();
            {
                let mut s = lock(&watch);
                if !matches!(s.conn, Conn::Ended(_)) {
                    s.conn = if now { Conn::Up } else { Conn::Down };
                }
            }
            if up.changed().await.is_err() {
                break;
            }
        }
    });
    let mut ack_errors = 0u64;
    loop {
        let d = match sub.next().await {
            Ok(d) => d,
            Err(e) => {
                lock(&shared).conn = Conn::Ended(format!("subscription ended: {e}"));
                return;
            }
        };
        {
            let now = clock.ms();
            let mut s = lock(&shared);
            match EventView::parse(&d.payload) {
                Ok(v) => s.stats.record(&v, now),
                Err(e) => {
                    s.stats.record_bad();
                    if s.stats.bad() == 1 {
                        tracing::warn!(subject = %d.subject, "not a tapbus event, skipped: {e} (further ones are counted)");
                    }
                }
            }
        }
        if let Err(e) = d.ack().await {
            ack_errors += 1;
            if ack_errors == 1 {
                tracing::warn!("ack failed (the bus may deliver the message again): {e}");
            }
        }
        if let Some(n) = limit {
            let s = lock(&shared);
            if s.stats.events() + s.stats.bad() >= n {
                return;
            }
        }
    }
}

/// Reads the broker's /metrics every [`SCRAPE_EVERY`].
async fn scrape(url: String, shared: SharedRef, stop: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            set_scrape(&shared, Err(format!("HTTP client: {e}")));
            return;
        }
    };
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let r = fetch(&client, &url).await.map(|t| BrokerHealth::parse(&t));
        set_scrape(&shared, r);
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut resp = client.get(url).send().await.map_err(|e| short(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| short(&e))? {
        if body.len() + chunk.len() > SCRAPE_MAX_BYTES {
            return Err(format!("answer larger than {SCRAPE_MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The error and its first cause ("connection refused"), short enough for one line.
fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s = c.to_string();
        src = c.source();
    }
    s
}

fn set_scrape(shared: &SharedRef, r: Result<BrokerHealth, String>) {
    let mut s = lock(shared);
    if let Some(b) = &mut s.broker {
        b.scrapes += 1;
        match r {
            Ok(h) => {
                b.health = Some(h);
                b.error = None;
            }
            Err(e) => {
                b.failures += 1;
                b.error = Some(e);
            }
        }
    }
}

/// The terminal UI until `q`, Ctrl-C, a signal or `--duration`.
fn interactive(
    cli: &Cli,
    deadline: Option<Instant>,
    shared: &SharedRef,
    clock: &Arc<Clock>,
    stop: &Arc<AtomicBool>,
    status: &dyn Fn(&Shared) -> Status,
) -> anyhow::Result<()> {
    // Raw mode, the alternate screen, and a panic hook that restores the terminal.
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("standard input and output must be a terminal (use --once N for scripts)");
    }
    let mut term = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Undo whatever part of the setup succeeded (raw mode, alternate screen).
            ratatui::restore();
            return Err(anyhow::Error::new(e).context("cannot set up the terminal"));
        }
    };
    let beat = Arc::new(AtomicU64::new(clock.ms()));
    watch_terminal(stop, beat.clone(), clock);
    // Asked before every wait for a key: whether to go on (no stop, no deadline passed),
    // and the heartbeat the watch thread reads.
    let go_on = || {
        beat.store(clock.ms(), Ordering::SeqCst);
        !(stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d))
    };
    let r = ui_loop(&mut term, cli, shared, clock, &go_on, status);
    // The UI loop is done: the watch thread must not end the process while the program
    // stops on its own (a heartbeat far ahead is never stale).
    beat.store(u64::MAX, Ordering::SeqCst);
    ratatui::restore();
    r
}

/// Whether the terminal behind standard input has hung up (the ssh session or the tmux
/// server went away): `poll` reports POLLHUP (or the descriptor is gone).
fn terminal_hung_up() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => true,
    }
}

/// Once the terminal has hung up, crossterm's event poll never returns (its reads see end
/// of file and it reads again, at full speed), so the UI loop sees neither SIGHUP nor a
/// hang-up. This thread watches from outside: a hung-up terminal stops the program, and a
/// stop the UI loop has not acted on within 2 s (its heartbeat `beat`, clock ms, is
/// older) ends the process. There is no terminal left to restore by then.
fn watch_terminal(stop: &Arc<AtomicBool>, beat: Arc<AtomicU64>, clock: &Arc<Clock>) {
    let (stop, clock) = (stop.clone(), clock.clone());
    let spawned = std::thread::Builder::new()
        .name("terminal-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                if terminal_hung_up() && !stop.swap(true, Ordering::SeqCst) {
                    tracing::info!("the terminal hung up: stopping");
                }
                if stop.load(Ordering::SeqCst)
                    && clock.ms().saturating_sub(beat.load(Ordering::SeqCst)) > 2000
                {
                    tracing::info!("the terminal does not answer: exiting");
                    std::process::exit(0);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no terminal watch (a hang-up may go unnoticed): {e}");
    }
}

fn ui_loop(
    term: &mut ratatui::DefaultTerminal,
    cli: &Cli,
    shared: &SharedRef,
    clock: &Clock,
    go_on: &dyn Fn() -> bool,
    status: &dyn Fn(&Shared) -> Status,
) -> anyhow::Result<()> {
    let mut app = App {
        filter: lock(shared).stats.filter().clone(),
        ..App::default()
    };
    let take = |paused: bool, prev: Option<(Snapshot, Status)>| {
        let s = lock(shared);
        let st = status(&s);
        match prev {
            // Paused: the tables stay, the status line stays live.
            Some((snap, _)) if paused => (snap, st),
            _ => (s.stats.snapshot(clock.ms(), SNAPSHOT_ROWS), st),
        }
    };
    let mut shown = take(false, None);
    let mut next = Instant::now() + cli.refresh;
    loop {
        term.draw(|f| ui::render(f, &app, &shown.0, &shown.1))
            .context("drawing")?;
        let mut redraw = false;
        while !redraw {
            if !go_on() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next {
                next = now + cli.refresh;
                shown = take(app.paused, Some(shown));
                redraw = true;
                continue;
            }
            let wait = (next - now).min(Duration::from_millis(200));
            if !event::poll(wait).context("reading the terminal")? {
                continue;
            }
            match event::read().context("reading the terminal")? {
                Event::Key(k) => {
                    let (ids, ops) = {
                        let s = lock(shared);
                        (s.stats.identities(), s.stats.operations())
                    };
                    let before = app.filter.clone();
                    let was_paused = app.paused;
                    app.key(k, &ids, &ops);
                    if app.quit {
                        return Ok(());
                    }
                    if app.filter != before {
                        lock(shared)
                            .stats
                            .set_filter(app.filter.clone(), clock.ms());
                        shown = take(false, None);
                    } else if was_paused && !app.paused {
                        shown = take(false, None);
                    }
                    redraw = true;
                }
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
    }
}

/// `--once N`: no terminal; every view printed as text once N events were read.
fn once(
    cli: &Cli,
    n: u64,
    deadline: Option<Instant>,
    shared: &SharedRef,
    clock: &Clock,
    stop: &AtomicBool,
    status: &dyn Fn(&Shared) -> Status,
) -> ExitCode {
    let reached = loop {
        {
            let s = lock(shared);
            if s.stats.events() + s.stats.bad() >= n {
                break true;
            }
            if matches!(s.conn, Conn::Ended(_)) {
                break false;
            }
        }
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (snap, st) = {
        let s = lock(shared);
        (s.stats.snapshot(clock.ms(), SNAPSHOT_ROWS), status(&s))
    };
    let (w, h) = cli.size;
    let mut out = std::io::stdout().lock();
    for v in View::ALL {
        let app = App {
            view: ViewState(v),
            ..App::default()
        };
        let Ok(mut t) = Terminal::new(TestBackend::new(w, h));
        if t.draw(|f| ui::render(f, &app, &snap, &st)).is_err() {
            return ExitCode::from(3);
        }
        let b = t.backend().buffer();
        for y in 0..h {
            let line: String = (0..w)
                .map(|x| b.cell((x, y)).map_or(" ", |c| c.symbol()))
                .collect();
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let _ = out.flush();
    if reached {
        ExitCode::SUCCESS
    } else {
        tapbus_config::errln!("{PROGRAM}: stopped before {n} events");
        ExitCode::from(1)
    }
}

fn init_logging(file: Option<&std::path::Path>, stderr_ok: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,async_nats=off"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some(path) = file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                b.with_ansi(false).with_writer(Mutex::new(f)).init();
            }
            Err(e) => tapbus_config::errln!(
                "{PROGRAM}: cannot open the log file {}: {e}",
                path.display()
            ),
        }
    } else if stderr_ok {
        b.with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once(PROGRAM).chain(args.iter().copied()))
            .expect("arguments parse")
    }

    #[test]
    fn the_example_configuration_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/top.toml");
        let s = settings(&cli(&["--config", path])).expect("config/top.toml");
        assert_eq!(s.url, "nats://127.0.0.1:4222");
        assert_eq!(s.broker.as_deref(), Some("http://127.0.0.1:9634/metrics"));
        assert!(s.filter.is_empty());
    }

    #[test]
    fn defaults_and_bad_values() {
        let s = settings(&cli(&[])).expect("defaults");
        assert_eq!((s.url.as_str(), s.broker), (DEFAULT_INPUT, None));
        let s =
            settings(&cli(&["--input", "nats://u:secret@127.0.0.1:4222"])).expect("password url");
        assert!(!s.url.contains("secret"), "{}", s.url);
        for bad in [
            &["--once", "0"][..],
            &["--refresh", "1ms"],
            &["--broker-metrics", "127.0.0.1:9634"],
            &["--input", "gopher://x"],
            &["--filter", "qtype=NOPE"],
        ] {
            assert!(settings(&cli(bad)).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from([PROGRAM, "--size", "10x10"]).is_err());
        assert_eq!(cli(&["--size", "120x40"]).size, (120, 40));
    }

    /// Every key the configuration file accepts is documented: in docs/top.md, `[input]` in
    /// docs/bus-urls.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = TopConfig::default();
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(&v, "top.md", &[("input", "bus-urls.md")]);
    }
}
