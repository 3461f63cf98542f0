//! Real servers from the installed binaries (Debian packages: `scripts/install-test-deps.sh`
//! installs them), each on free loopback ports, never the system's 4222/1883/6379, with its
//! files in a temporary directory of its own, and stopped (by its own PID) when dropped.
//!
//! * [`Nats`]: one nats-server, core or JetStream.
//! * [`NatsCluster`]: n nats-servers with JetStream forming one cluster.
//! * [`Mosquitto`]: mosquitto 2 (MQTT 3.1.1 and 5, `$share/` subscriptions), anonymous.
//! * [`Redis`]: redis-server, throw-away or durable (append-only file, fsync always).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::Proc;
use crate::{free_port, free_ports, http_get, need, port_open, read_text, wait_until};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn log_file(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("log file {}: {e}", p.display()))
}

/// Waits until `port` accepts connections (and `ready` holds), failing at once with the
/// log when the process exits first.
fn wait_listening(
    what: &str,
    proc: &mut Proc,
    port: u16,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = proc.try_wait() {
            panic!("{what} exited at start ({st}):\n{}", read_text(log));
        }
        if port_open(port) && ready() {
            return;
        }
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "{what} not listening on 127.0.0.1:{port} after {START_TIMEOUT:?}:\n{}",
            read_text(log)
        );
        crate::pause(Duration::from_millis(25));
    }
}

/// The methods every single-process server has: `pid`, `log_text` (everything it logged,
/// over restarts), `terminate` (SIGTERM and wait) and `kill` (SIGKILL, as a crash).
macro_rules! server_common {
    ($t:ty) => {
        impl $t {
            /// The server's process id.
            pub fn pid(&self) -> u32 {
                self.proc.pid()
            }

            /// What the server logged so far.
            pub fn log_text(&self) -> String {
                read_text(&self.log)
            }

            /// Stops the server with SIGTERM (it closes its connections and files) and
            /// waits for it to exit.
            pub fn terminate(mut self) {
                self.proc.terminate();
            }

            /// SIGKILL, as a crash.
            pub fn kill(mut self) {
                self.proc.kill();
            }
        }
    };
}

// --- NATS ------------------------------------------------------------------------------

/// A nats-server on 127.0.0.1, its log (stderr) in a temporary directory.
#[derive(Debug)]
pub struct Nats {
    proc: Proc,
    port: u16,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Core NATS on a free port.
    pub fn start() -> Nats {
        Self::start_on_with(free_port(), &[])
    }

    /// On a free port with extra arguments (e.g. `["-c", "server.conf"]`).
    pub fn start_with(args: &[&str]) -> Nats {
        Self::start_on_with(free_port(), args)
    }

    /// Core NATS on `port` (to restart one that was stopped on the same port).
    pub fn start_on(port: u16) -> Nats {
        Self::start_on_with(port, &[])
    }

    /// With JetStream on, storing in `store_dir` (the caller's directory, so a restart with
    /// [`Nats::start_jetstream_on`] finds the streams again).
    pub fn start_jetstream(store_dir: &Path) -> Nats {
        Self::start_jetstream_on(free_port(), store_dir)
    }

    /// JetStream on `port`, storing in `store_dir`.
    pub fn start_jetstream_on(port: u16, store_dir: &Path) -> Nats {
        let sd = store_dir.to_str().expect("utf-8 store dir");
        Self::start_on_with(port, &["-js", "-sd", sd])
    }

    /// On `port` with extra arguments; `-a 127.0.0.1 -p PORT` come last, so they win over a
    /// configuration file's `listen`.
    pub fn start_on_with(port: u16, args: &[&str]) -> Nats {
        let dir = tempdir();
        let log = dir.path().join("nats-server.log");
        let mut proc = Proc::spawn(
            Command::new(need("nats-server"))
                .args(args)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(log_file(&log)),
        );
        wait_listening("nats-server", &mut proc, port, &log, || true);
        Nats {
            proc,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

server_common!(Nats);

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn spawn(&mut self) {
        let proc = Proc::spawn(
            Command::new(need("nats-server"))
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(log_file(&self.log)),
        );
        self.proc = Some(proc);
    }

    fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let body = http_get(&format!("127.0.0.1:{}", self.monitor_port), path)?;
        serde_json::from_str(&body).ok()
    }

    fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }
}

/// `n` nats-servers with JetStream, one cluster (`tapbus-test`): each node has its own
/// server name (`n0`, `n1`, ...), store directory, client, cluster (route) and monitoring
/// port on 127.0.0.1, and routes to all the others. [`NatsCluster::start`] returns once
/// every node is routed to every other and JetStream has a meta leader that sees all
/// peers. Every node is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

/// The cluster name every [`NatsCluster`] uses.
pub const CLUSTER_NAME: &str = "tapbus-test";

impl NatsCluster {
    /// Starts `n` (at least 1) nodes and waits (up to 30 s) until the cluster has formed.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs a node");
        let dir = tempdir();
        let ports = free_ports(3 * n);
        let (client, rest) = ports.split_at(n);
        let (route, monitor) = rest.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{i}");
            let store = dir.path().join(format!("{name}-store"));
            std::fs::create_dir_all(&store).expect("store dir");
            let routes: String = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("    \"nats-route://127.0.0.1:{}\"\n", route[j]))
                .collect();
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: \"{name}\"\n\
                     listen: \"127.0.0.1:{}\"\n\
                     http: \"127.0.0.1:{}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n}}\n\
                     cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{routes}  ]\n}}\n",
                    client[i],
                    monitor[i],
                    store.display(),
                    route[i]
                ),
            )
            .expect("write node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port: client[i],
                monitor_port: monitor[i],
                conf,
                proc: None,
            });
        }
        for node in &mut nodes {
            node.spawn();
        }
        let mut c = NatsCluster { nodes, dir };
        c.wait_formed(Duration::from_secs(30));
        c
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client port of node `i`.
    pub fn node_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Monitoring (HTTP) port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].monitor_port
    }

    /// Server name of node `i` (`n{i}`).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// `nats://127.0.0.1:PORT` of node `i`.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated (`nats://127.0.0.1:P0,nats://127.0.0.1:P1,...`):
    /// a broker `url`. For async-nats, which takes a list, use [`NatsCluster::url_list`].
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Every node's URL.
    pub fn url_list(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.node_url(i)).collect()
    }

    /// The URLs of the nodes still running.
    pub fn running_urls(&mut self) -> Vec<String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        running.into_iter().map(|i| self.node_url(i)).collect()
    }

    /// Node `i`'s log so far.
    pub fn log_text(&self, i: usize) -> String {
        read_text(&self.nodes[i].log)
    }

    /// The temporary directory with the nodes' configurations, logs and stores.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s `/jsz` (or any monitoring path) as JSON, if it answers.
    pub fn monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        self.nodes[i].monitor(path)
    }

    /// SIGKILL node `i` (a crash); the others keep running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// SIGTERM node `i` and wait for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.terminate();
        }
    }

    /// Starts node `i` again (same ports, store and name) after [`kill`](Self::kill) or
    /// [`terminate`](Self::terminate), and waits until the cluster has formed again.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none(), "node {i} is running");
        self.nodes[i].spawn();
        self.wait_formed(Duration::from_secs(30));
    }

    /// The server name of the JetStream meta leader as node `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor(i, "/jsz")?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_string())
    }

    /// Waits until the running nodes agree on a JetStream meta leader that is one of them,
    /// and returns its index (after [`kill`](Self::kill) of the leader: the new one).
    pub fn wait_meta_leader(&mut self, timeout: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.agreed_leader() {
                return i;
            }
            assert!(
                t0.elapsed() < timeout,
                "no JetStream meta leader among the running nodes after {timeout:?}\n{}",
                self.describe()
            );
            crate::pause(Duration::from_millis(100));
        }
    }

    fn agreed_leader(&mut self) -> Option<usize> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        let first = self.meta_leader(*running.first()?)?;
        for &i in &running {
            if self.meta_leader(i).as_deref() != Some(first.as_str()) {
                return None;
            }
        }
        let leader = self.nodes.iter().position(|n| n.name == first)?;
        running.contains(&leader).then_some(leader)
    }

    /// Every running node accepts clients, is routed to every other running node, and the
    /// running nodes agree on a meta leader whose peers are all current.
    fn formed(&mut self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        for &i in &running {
            if !port_open(self.nodes[i].port) {
                return false;
            }
            let Some(routez) = self.monitor(i, "/routez") else {
                return false;
            };
            let mut peers: Vec<&str> = routez["routes"]
                .as_array()
                .map(|r| r.iter().filter_map(|r| r["remote_id"].as_str()).collect())
                .unwrap_or_default();
            peers.sort();
            peers.dedup();
            if peers.len() + 1 < running.len() {
                return false;
            }
        }
        let Some(leader) = self.agreed_leader() else {
            return false;
        };
        let Some(jsz) = self.monitor(leader, "/jsz") else {
            return false;
        };
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let current = replicas
            .iter()
            .filter(|r| {
                r["current"].as_bool() == Some(true) && r["offline"].as_bool() != Some(true)
            })
            .count();
        current + 1 >= running.len()
    }

    fn wait_formed(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if let Some(p) = node.proc.as_mut()
                    && let Some(st) = p.try_wait()
                {
                    panic!(
                        "nats-server node {i} exited at start ({st}):\n{}",
                        read_text(&node.log)
                    );
                }
            }
            if self.formed() {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "the NATS cluster did not form within {timeout:?}\n{}",
                self.describe()
            );
            crate::pause(Duration::from_millis(100));
        }
    }

    /// Every node's routes, meta leader and log tail (for a failure message).
    fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let routes = self
                .monitor(i, "/routez")
                .map(|r| r["num_routes"].to_string())
                .unwrap_or_else(|| "?".into());
            let log = read_text(&n.log);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- node {i} ({}) port {} routes {routes} meta leader {:?}\n{}\n",
                n.name,
                n.port,
                self.meta_leader(i),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }
}

// --- Mosquitto -------------------------------------------------------------------------

/// mosquitto on 127.0.0.1 with a configuration file of its own (`allow_anonymous true`, no
/// persistence, every packet logged to its log file: tests wait for `Sending SUBACK`).
/// MQTT 5 and `$share/` subscriptions need nothing more in mosquitto 2.0.
#[derive(Debug)]
pub struct Mosquitto {
    proc: Proc,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// On a free port.
    pub fn start() -> Mosquitto {
        Self::start_with(free_port(), "")
    }

    /// On `port` (to restart one that was stopped on the same port).
    pub fn start_on(port: u16) -> Mosquitto {
        Self::start_with(port, "")
    }

    /// Listens on `port` (plain MQTT) plus whatever `extra` configures (more listeners, TLS
    /// files, ...).
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        let dir = tempdir();
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type all\nlistener {port} 127.0.0.1\n{extra}"
            ),
        )
        .expect("write mosquitto.conf");
        let proc = Self::spawn(&conf, &log, port);
        Mosquitto {
            proc,
            port,
            conf,
            log,
            _dir: dir,
        }
    }

    fn spawn(conf: &Path, log: &Path, port: u16) -> Proc {
        let mut proc = Proc::spawn(
            Command::new(need("mosquitto"))
                .arg("-c")
                .arg(conf)
                .stdout(Stdio::null())
                .stderr(log_file(log)),
        );
        wait_listening("mosquitto", &mut proc, port, log, || true);
        proc
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops mosquitto (SIGTERM) and starts it again with the same configuration, on the
    /// same port; its clients see the connection drop.
    pub fn restart(&mut self) {
        self.proc.terminate();
        self.proc = Self::spawn(&self.conf, &self.log, self.port);
    }
}

server_common!(Mosquitto);

// --- Redis -----------------------------------------------------------------------------

/// redis-server on 127.0.0.1. [`Redis::start`] keeps nothing on disk; [`Redis::start_durable`]
/// writes an append-only file fsynced on every write (what it acknowledged survives
/// SIGKILL) in the caller's directory, for a restart on the same port and directory.
#[derive(Debug)]
pub struct Redis {
    proc: Proc,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// No snapshots, no append-only file.
pub const REDIS_EPHEMERAL: &[&str] = &["--save", "", "--appendonly", "no"];
/// No snapshots; an append-only file fsynced on every write.
pub const REDIS_DURABLE: &[&str] = &[
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
];

impl Redis {
    /// On a free port, nothing kept on disk.
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    /// On `port`, nothing kept on disk.
    pub fn start_on(port: u16) -> Redis {
        Self::start_on_with(port, None, REDIS_EPHEMERAL)
    }

    /// On `port` with its append-only file in `data_dir` ([`REDIS_DURABLE`]); starting again
    /// with the same `data_dir` loads what was acknowledged.
    pub fn start_durable(port: u16, data_dir: &Path) -> Redis {
        Self::start_on_with(port, Some(data_dir), REDIS_DURABLE)
    }

    /// On `port` with `args`, its files in `data_dir` (a temporary directory when `None`).
    /// Returns once it answers PING (it may be loading its append-only file before that).
    pub fn start_on_with(port: u16, data_dir: Option<&Path>, args: &[&str]) -> Redis {
        let dir = tempdir();
        let log = dir.path().join("redis.log");
        let data = data_dir.unwrap_or(dir.path());
        let mut proc = Proc::spawn(
            Command::new(need("redis-server"))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(args)
                .arg("--dir")
                .arg(data)
                .stdout(log_file(&log))
                .stderr(log_file(&log)),
        );
        wait_listening("redis-server", &mut proc, port, &log, || {
            redis_ping(port).as_deref() == Some("+PONG")
        });
        Redis {
            proc,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

server_common!(Redis);

/// Sends `PING` in RESP and returns the first reply line (`+PONG`, `-LOADING ...`).
fn redis_ping(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().map(str::to_string)
}

/// Waits until nothing listens on `port` any more (after stopping a server).
pub fn wait_port_closed(port: u16, timeout: Duration) {
    wait_until(&format!("127.0.0.1:{port} to close"), timeout, || {
        !port_open(port)
    });
}

// --- Prometheus ------------------------------------------------------------------------

/// Debian's prometheus on 127.0.0.1 with the remote-write receiver on
/// (`POST /api/v1/write`), its TSDB in a temporary directory, scraping nothing
/// ([`Prometheus::start`]) or the given [`Scrape`] targets every second
/// ([`Prometheus::start_scraping`]).
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _data: Option<tempfile::TempDir>,
}

impl Prometheus {
    /// On a free port, its TSDB in a temporary directory.
    pub fn start() -> Prometheus {
        let dir = tempdir();
        let data = dir.path().join("data");
        let mut p = Self::start_on(free_port(), &data);
        p._data = Some(dir);
        p
    }

    /// On `port` with its TSDB in `data`: starting again with the same `data` keeps what
    /// was written (a restart after an outage).
    pub fn start_on(port: u16, data: &Path) -> Prometheus {
        Self::start_with_config(port, data, "global:\n  scrape_interval: 1h\n")
    }

    /// On a free port, its TSDB in a temporary directory, scraping every target of
    /// `scrapes` once a second (and still receiving remote writes).
    pub fn start_scraping(scrapes: &[Scrape]) -> Prometheus {
        let dir = tempdir();
        let data = dir.path().join("data");
        let mut p = Self::start_with_config(free_port(), &data, &scrape_config(scrapes));
        p._data = Some(dir);
        p
    }

    fn start_with_config(port: u16, data: &Path, config_text: &str) -> Prometheus {
        let dir = tempdir();
        let log = dir.path().join("prometheus.log");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text).expect("prometheus.yml");
        let mut proc = Proc::spawn(
            Command::new(need("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .stdout(log_file(&log))
                .stderr(log_file(&log)),
        );
        wait_listening("prometheus", &mut proc, port, &log, || {
            crate::http_get(&format!("127.0.0.1:{port}"), "/-/ready")
                .is_some_and(|b| b.contains("Ready"))
        });
        Prometheus {
            proc,
            port,
            log,
            _dir: dir,
            _data: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/api/v1/write`.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// An instant query's JSON answer (`/api/v1/query?query=...`), `None` if it failed.
    pub fn query(&self, promql: &str) -> Option<String> {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
    }

    /// The expression as Prometheus prints it (`/api/v1/format_query`), `None` when it
    /// does not parse (Prometheus answers 400).
    pub fn format_query(&self, promql: &str) -> Option<String> {
        self.api(&format!(
            "/api/v1/format_query?query={}",
            url_encode(promql)
        ))
    }

    /// The values of `label` on the series `selector` selects
    /// (`/api/v1/label/LABEL/values?match[]=SELECTOR`, what Grafana's `label_values`
    /// asks), `None` if the request failed.
    pub fn label_values(&self, label: &str, selector: &str) -> Option<Vec<String>> {
        let answer = self.api(&format!(
            "/api/v1/label/{}/values?match%5B%5D={}",
            url_encode(label),
            url_encode(selector)
        ))?;
        let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
        v["data"].as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    }

    /// A GET on the HTTP API: the body of a 200 answer.
    pub fn api(&self, path_and_query: &str) -> Option<String> {
        crate::http_get(&format!("127.0.0.1:{}", self.port), path_and_query)
    }

    /// An instant query's status and answer, also when Prometheus refused it (400, 422:
    /// the answer names the error).
    pub fn query_status(&self, promql: &str) -> Option<(u16, String)> {
        crate::http_get_status(
            &format!("127.0.0.1:{}", self.port),
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
    }
}

/// One scrape job of [`Prometheus::start_scraping`]: `job` scrapes
/// `http://TARGET/metrics`, keeping only the metric names matching `keep` (a regex) when
/// set.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub job: String,
    pub target: String,
    pub keep: Option<String>,
}

impl Scrape {
    /// Every metric of `target` (`host:port`) under `job`.
    pub fn new(job: &str, target: &str) -> Scrape {
        Scrape {
            job: job.into(),
            target: target.into(),
            keep: None,
        }
    }

    /// Only the metric names matching `regex` (`tapbus_consumer_.*`).
    pub fn keep(mut self, regex: &str) -> Scrape {
        self.keep = Some(regex.into());
        self
    }
}

/// prometheus.yml scraping `scrapes` every second; scrapes of one job are one scrape
/// config with several targets. Values are JSON strings (valid YAML).
fn scrape_config(scrapes: &[Scrape]) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut jobs: Vec<(&str, Vec<String>, Option<&str>)> = Vec::new();
    for s in scrapes {
        match jobs.iter_mut().find(|(job, _, _)| *job == s.job) {
            Some((_, targets, keep)) => {
                assert_eq!(*keep, s.keep.as_deref(), "job {}: one keep per job", s.job);
                targets.push(q(&s.target));
            }
            None => jobs.push((&s.job, vec![q(&s.target)], s.keep.as_deref())),
        }
    }
    let mut y = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, targets, keep) in jobs {
        y += &format!(
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            q(job),
            targets.join(", ")
        );
        if let Some(keep) = keep {
            y += &format!(
                "    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: {}\n        action: keep\n",
                q(keep)
            );
        }
    }
    y
}

/// Percent-encodes everything but the unreserved characters (a query parameter).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

server_common!(Prometheus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_config_has_one_job_per_name_with_its_targets_and_keep() {
        let y = scrape_config(&[
            Scrape::new("a", "127.0.0.1:1"),
            Scrape::new("b", "127.0.0.1:2").keep("x_.*"),
            Scrape::new("a", "127.0.0.1:3"),
        ]);
        assert!(y.contains("scrape_interval: 1s"), "{y}");
        assert_eq!(y.matches("job_name").count(), 2, "{y}");
        assert!(
            y.contains("- job_name: \"a\"\n    static_configs:\n      - targets: [\"127.0.0.1:1\", \"127.0.0.1:3\"]\n"),
            "{y}"
        );
        assert!(y.contains("regex: \"x_.*\"\n        action: keep"), "{y}");
    }

    #[test]
    fn url_encode_leaves_only_unreserved_characters() {
        assert_eq!(
            url_encode("sum(a{b=\"c d\"})"),
            "sum%28a%7Bb%3D%22c%20d%22%7D%29"
        );
        assert_eq!(url_encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
