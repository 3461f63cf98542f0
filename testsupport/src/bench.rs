//! What the end-to-end benchmarks share (`consumers/*/benches/e2e.rs`): a process's CPU
//! time, a metric summed from an exposition text, and JetStream filled with copies of a
//! capture by a real broker.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A number from the environment (`AGG_BENCH_RATE`, ...), `default` when unset or not a
/// number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process in seconds (`/proc/PID/stat`), 0 when it is gone.
pub fn cpu_secs(pid: u32, ticks: f64) -> f64 {
    let mut s = String::new();
    let ok = std::fs::File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_ok();
    if !ok {
        return 0.0;
    }
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / ticks
}

/// The sum of every sample of `name` (any labels) in a Prometheus exposition text
/// ([`crate::prom::sum`]).
pub fn metric(text: &str, name: &str) -> f64 {
    crate::prom::sum(&crate::prom::Scrape::parse(text), name, &[])
}

/// `broker` replays the test data's `capture` `copies` times into JetStream on
/// `nats_url` (stream `DNSTAP`, made by the broker); returns the events published. The
/// bench's own `TAPBUS_*` variables (settings of the consumer under test) are not passed.
pub fn fill_jetstream(broker: &Path, nats_url: &str, capture: &str, copies: usize) -> u64 {
    (0..copies)
        .map(|_| crate::jetstream::replay_capture(broker, nats_url, capture).len() as u64)
        .sum()
}

/// What [`replay_core`] and [`Paced::stop`] measured of the broker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Replay {
    /// `tapbus_published_total` at the broker's last metrics scrape (a lower bound).
    pub published: f64,
    /// `tapbus_dropped_total` (every output and reason) at the same scrape
    /// ([`Paced::stop`] only).
    pub dropped: f64,
    /// `tapbus_events_total` (events decoded and handed to the outputs) at the same
    /// scrape ([`Paced::stop`] only).
    pub events: f64,
    /// The broker's utime + stime over the copies.
    pub broker_cpu: f64,
    /// Wall time from the first broker's start to the last one's exit.
    pub seconds: f64,
}

/// `broker` replays the test data's `capture` `copies` times, one after the other and at
/// full speed, into NATS core on `nats_url` (`dnstap.<identity>...`, at most once).
pub fn replay_core(broker: &Path, nats_url: &str, capture: &str, copies: usize) -> Replay {
    let file = crate::testdata::path(capture);
    let ticks = clock_ticks();
    let t0 = Instant::now();
    let mut r = Replay::default();
    for _ in 0..copies {
        let metrics_addr = format!("127.0.0.1:{}", crate::free_port());
        let mut b = crate::proc::Proc::spawn(
            Command::new(broker)
                .env(
                    "TAPBUS_INPUTS__FILE__URL",
                    format!("file://{}", file.display()),
                )
                .env("TAPBUS_METRICS_LISTEN", &metrics_addr)
                .env("TAPBUS_OUTPUTS__BUS__URL", nats_url)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        // The broker exits when the file is done; its last published count is read first.
        let mut last = String::new();
        let mut cpu = 0.0f64;
        while b.is_running() && t0.elapsed() < Duration::from_secs(600) {
            if let Some(m) = crate::http_get(&metrics_addr, "/metrics") {
                last = m;
            }
            cpu = cpu_secs(b.pid(), ticks).max(cpu);
            std::thread::sleep(Duration::from_millis(5));
        }
        r.published += metric(&last, "tapbus_published_total");
        r.broker_cpu += cpu;
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r
}

/// The broker reads Frame Streams on a unix socket and publishes to NATS core on
/// `nats_url`; `fstrm_blast` (beside `broker`, under `examples/`) writes `count` data
/// frames of the test data's `capture` (cycled) into it at `rate` frames/s. Returns once
/// the writer got FINISH; [`Paced::stop`] ends the broker after the caller has counted.
pub struct Paced {
    broker: crate::proc::Proc,
    metrics_addr: String,
    /// Wall time of the writer, first frame to FINISH.
    pub seconds: f64,
    /// When the writer started.
    pub started: Instant,
    broker_cpu0: f64,
    _dir: tempfile::TempDir,
}

/// What [`Paced::start`] runs: a broker reading Frame Streams on a unix socket of its own
/// (`-i unix://… --metrics-listen …`, given by [`Paced`]), configured further by `args`
/// and `env`, and `fstrm_blast` writing `count` data frames of `file` (cycled) into it at
/// `rate` frames/s.
#[derive(Clone, Debug)]
pub struct PacedRun {
    pub broker: PathBuf,
    /// A Frame Streams file: a capture of the test data ([`crate::testdata::path`]) or one
    /// a test wrote ([`crate::testdata::distinct_copies`]).
    pub file: PathBuf,
    pub count: u64,
    pub rate: u64,
    /// More broker arguments (`["-o", url]`).
    pub args: Vec<String>,
    /// The broker's environment (its outputs as `TAPBUS_OUTPUTS__NAME__*`, `TAPBUS_LOG`);
    /// no `TAPBUS_*` variable of the caller's own environment reaches it.
    pub env: Vec<(String, String)>,
    /// The broker's standard error goes here (appended); `None`: discarded.
    pub log: Option<PathBuf>,
    /// How long the broker may take to listen and `ready()` to hold.
    pub ready_timeout: Duration,
}

impl PacedRun {
    /// `count` frames of `file` at `rate` frames/s through `broker`, configured by `args`
    /// and `env` alone, its log discarded, ready within 15 s.
    pub fn new(broker: &Path, file: &Path, count: u64, rate: u64) -> PacedRun {
        PacedRun {
            broker: broker.to_path_buf(),
            file: file.to_path_buf(),
            count,
            rate,
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            ready_timeout: Duration::from_secs(15),
        }
    }
}

impl Paced {
    /// Starts the broker, waits until it listens and `ready()` holds (the subscriber under
    /// test is up), then writes the frames.
    pub fn run(
        broker: &Path,
        nats_url: &str,
        capture: &str,
        count: u64,
        rate: u64,
        ready: impl FnMut() -> bool,
    ) -> Paced {
        let mut run = PacedRun::new(broker, &crate::testdata::path(capture), count, rate);
        run.args = vec!["-o".into(), nats_url.into()];
        run.env = vec![("TAPBUS_LOG".into(), "warn".into())];
        Paced::start(run, ready)
    }

    /// [`Paced::run`] with everything set by `run`: starts the broker, waits until it
    /// listens (socket and `/metrics`) and `ready()` holds, then writes the frames and
    /// returns once the writer got FINISH.
    pub fn start(run: PacedRun, mut ready: impl FnMut() -> bool) -> Paced {
        let blast = run
            .broker
            .parent()
            .map(|d| d.join("examples/fstrm_blast"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("fstrm_blast missing: cargo build --release -p tapbus-broker --examples")
            });
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dnstap.sock");
        let metrics_addr = format!("127.0.0.1:{}", crate::free_port());
        let mut cmd = Command::new(&run.broker);
        for (k, _) in std::env::vars() {
            if k.starts_with("TAPBUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["-i", &format!("unix://{}", sock.display())])
            .args(["--metrics-listen", &metrics_addr])
            .args(&run.args)
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        match &run.log {
            Some(p) => cmd.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ),
            None => cmd.stderr(Stdio::null()),
        };
        let mut b = crate::proc::Proc::spawn(&mut cmd);
        let t = Instant::now();
        while !(sock.exists() && crate::http_get(&metrics_addr, "/metrics").is_some() && ready()) {
            assert!(b.is_running(), "the broker exited");
            assert!(
                t.elapsed() < run.ready_timeout,
                "not ready in {:?}",
                run.ready_timeout
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        let broker_cpu0 = cpu_secs(b.pid(), clock_ticks());
        let started = Instant::now();
        let mut w = crate::proc::Proc::spawn(
            Command::new(&blast)
                .args(["--file", &run.file.display().to_string()])
                .args([
                    "--count",
                    &run.count.to_string(),
                    "--rate",
                    &run.rate.to_string(),
                ])
                .args(["--unix", &sock.display().to_string()])
                .stdout(Stdio::null()),
        );
        // Paced: count / rate seconds, and a margin; a writer stuck on a stalled broker is
        // killed (on drop) rather than hanging the bench.
        let limit = Duration::from_secs_f64(run.count as f64 / run.rate.max(1) as f64 * 2.0 + 30.0);
        let status = w
            .wait_within(limit)
            .expect("fstrm_blast did not finish in time");
        assert!(status.success(), "fstrm_blast failed: {status}");
        Paced {
            broker: b,
            metrics_addr,
            seconds: started.elapsed().as_secs_f64(),
            started,
            broker_cpu0,
            _dir: dir,
        }
    }

    /// The broker's `/metrics` now (empty when it does not answer).
    pub fn metrics(&self) -> crate::prom::Scrape {
        crate::prom::scrape(&self.metrics_addr)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// Ends the broker; returns what it published, dropped and handed to its outputs (its
    /// last metrics) and its CPU since the first frame.
    pub fn stop(mut self) -> Replay {
        let m = self.metrics();
        let sum = |name: &str| crate::prom::sum(&m, name, &[]);
        let broker_cpu = cpu_secs(self.broker.pid(), clock_ticks()) - self.broker_cpu0;
        let _ = self.broker.terminate();
        Replay {
            published: sum("tapbus_published_total"),
            dropped: sum("tapbus_dropped_total"),
            events: sum("tapbus_events_total"),
            broker_cpu,
            seconds: self.seconds,
        }
    }
}
