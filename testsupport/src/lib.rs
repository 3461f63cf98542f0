//! Test support for every tapbus crate's tests (never linked into a binary).
//!
//! * crate root: [`free_port`], [`free_ports`], [`need`], [`wait_until`],
//!   [`wait_until_async`], [`http_get`], [`http_get_status`].
//! * [`proc`]: [`proc::Proc`], a child process that is killed (by its own PID) on drop.
//! * [`servers`]: real servers from the installed binaries on free loopback ports, stopped
//!   on drop: [`servers::Nats`], [`servers::NatsCluster`], [`servers::Mosquitto`],
//!   [`servers::Redis`], [`servers::Prometheus`] (remote-write receiver, optionally
//!   scraping [`servers::Scrape`] targets).
//! * [`pki`]: a throw-away CA with a server certificate (127.0.0.1, localhost) and a client
//!   certificate.
//! * [`fstrm`]: a Frame Streams *writer* (what a DNS server does), bidirectional and
//!   unidirectional.
//! * [`jetstream`]: what a test asks a JetStream server: a durable's backlog, every message
//!   a stream stores.
//! * [`loki`]: the crate `tapbus-loki-receiver` re-exported: a Grafana Loki push receiver
//!   ([`loki::LokiReceiver`]) that decodes the real push bodies, enforces Loki's rules with
//!   Loki's texts, stores, and injects faults.
//! * [`docs`]: configuration keys against the `docs/` pages ([`docs::undocumented_keys`],
//!   [`docs::assert_documented`]), so a key the structs accept cannot ship undocumented.
//! * [`testdata`]: the dnstap captures the repository carries (`testdata/dnstap`), read
//!   through one path helper so a fresh clone tests itself, and turned into the JSON events
//!   the broker publishes ([`testdata::events`]).
//! * [`prom`]: the one Prometheus exposition reader of the tests (prometheus-parse): scrape
//!   a `/metrics` page, ask for a value or a sum.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod bench;
pub mod docs;
pub mod fstrm;
pub mod jetstream;
pub mod pki;
pub mod proc;
pub mod prom;
pub mod servers;
pub mod testdata;

/// The Loki test receiver, its own crate ([`tapbus_loki_receiver`]), under its old path.
pub use tapbus_loki_receiver as loki;

/// An unbound configuration for the tests: listens on 127.0.0.1:`port` only, answers
/// `tapbus.test.` from local data, its only upstream a dead loopback port (nothing leaves
/// 127.0.0.1), and writes bidirectional dnstap (client queries and responses) with
/// `identity` into the unix socket `sock`. `username` is the user unbound drops to (`""`:
/// it stays who started it); pid and log files go to `dir` unless `username` is set.
pub fn unbound_conf(dir: &Path, port: u16, sock: &Path, username: &str, identity: &str) -> String {
    let (pidfile, logfile) = if username.is_empty() {
        (
            format!("{}/unbound.pid", dir.display()),
            format!("{}/unbound.log", dir.display()),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        r#"server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    username: "{username}"
    chroot: ""
    directory: "{dir}"
    pidfile: "{pidfile}"
    use-syslog: no
    logfile: "{logfile}"
    verbosity: 1
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    local-zone: "tapbus.test." static
    local-data: "www.tapbus.test. 300 IN A 192.0.2.10"
    local-data: "mail.tapbus.test. 300 IN MX 10 mx.tapbus.test."
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@9
remote-control:
    control-enable: no
dnstap:
    dnstap-enable: yes
    dnstap-bidirectional: yes
    dnstap-socket-path: "{sock}"
    dnstap-send-identity: yes
    dnstap-identity: "{identity}"
    dnstap-send-version: yes
    dnstap-log-client-query-messages: yes
    dnstap-log-client-response-messages: yes
"#,
        dir = dir.display(),
        sock = sock.display()
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: every listener is held until all are picked, so the
/// kernel cannot hand out the same port twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// The path of an installed program (looked up in the system directories and `PATH`);
/// fails the test with a clear message naming `scripts/install-test-deps.sh` when it is
/// missing.
pub fn need(program: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"];
    for dir in fixed.iter().map(PathBuf::from).chain(path_dirs) {
        let p = dir.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{program} is not installed: run scripts/install-test-deps.sh \
         (it apt-get installs the servers and tools the tests need)"
    );
}

/// Polls `f` every 25 ms until it is true; panics naming `what` after `timeout`. Blocks the
/// thread (see [`pause`]): in async code prefer [`wait_until_async`].
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        pause(Duration::from_millis(25));
    }
}

/// Sleeps `d` on this thread. Called from a worker of a multi-thread tokio runtime (a sync
/// helper used by an async test), it goes through `block_in_place`, so the tasks queued on
/// this worker (a subscriber's reader, a forwarder) move to another one instead of
/// stalling.
pub fn pause(d: Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| std::thread::sleep(d))
        }
        _ => std::thread::sleep(d),
    }
}

/// [`wait_until`] for async code: sleeps with `tokio::time::sleep` between polls.
pub async fn wait_until_async(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True once something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A minimal HTTP/1.0 GET to `addr` (`host:port`): the body of a 200 answer, `None`
/// otherwise (no client library needed for local metrics and monitoring endpoints).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    http_get_status(addr, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// [`http_get`] with any status: the status code and the body, `None` when there was no
/// HTTP answer.
pub fn http_get_status(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.get(2..5))
        .and_then(|c| c.parse().ok())?;
    Some((status, body.to_string()))
}

/// `broker` (a tapbus-broker binary) publishes the test data's `capture` (a file input) to
/// the output `output_url` (`outputs.bus`, with `env`'s further `TAPBUS_OUTPUTS__BUS__*`
/// settings) and to its stdout, then exits. Returns the stdout copy, one JSON event per
/// line: the events as published, checked to be as many as the capture holds. No
/// `TAPBUS_*` variable of the caller's environment reaches the broker.
pub fn broker_publish(
    broker: &Path,
    capture: &str,
    output_url: &str,
    env: &[(&str, &str)],
) -> Vec<String> {
    use std::process::{Command, Stdio};
    let file = testdata::path(capture);
    let mut cmd = Command::new(broker);
    for (k, _) in std::env::vars() {
        if k.starts_with("TAPBUS_") {
            cmd.env_remove(k);
        }
    }
    // Everything through TAPBUS_* (with --input the flags would replace the outputs).
    cmd.env(
        "TAPBUS_INPUTS__FILE__URL",
        format!("file://{}", file.display()),
    )
    .env("TAPBUS_METRICS_LISTEN", "")
    .env("TAPBUS_OUTPUTS__BUS__URL", output_url)
    .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start broker");
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read broker stdout");
    let st = child.wait().expect("wait broker");
    assert!(st.success(), "broker publishing {capture}: {st}");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), testdata::expected_count(capture), "{capture}");
    lines
}

/// Reads a file that may not exist yet (a log): its text, or empty.
pub(crate) fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A binary of this workspace beside `exe` (a test's own `CARGO_BIN_EXE_*` binary): built
/// by `cargo test --workspace`, built here with cargo when only one package's tests run.
pub fn sibling_bin(exe: &Path, package: &str, bin: &str) -> PathBuf {
    let path = exe.parent().map(|d| d.join(bin)).expect("target dir");
    if !path.exists() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", package, "--bin", bin])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap_or_else(|e| panic!("cargo build {package}: {e}"));
        assert!(st.success(), "building {bin} failed");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(8);
        let mut d = ports.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 8, "{ports:?}");
        for p in ports {
            assert_ne!(p, 0);
            TcpListener::bind(("127.0.0.1", p)).expect("a free port can be bound");
        }
    }

    #[test]
    #[should_panic(expected = "scripts/install-test-deps.sh")]
    fn need_names_the_install_script() {
        need("tapbus-no-such-program");
    }

    #[test]
    fn need_finds_a_program() {
        assert!(need("sh").is_file());
    }

    #[test]
    #[should_panic(expected = "timed out after")]
    fn wait_until_times_out() {
        wait_until("never", Duration::from_millis(100), || false);
    }

    #[test]
    fn wait_until_returns_when_true() {
        let mut n = 0;
        wait_until("three polls", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn wait_until_async_polls() {
        let mut n = 0;
        wait_until_async("three polls", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        })
        .await;
        assert_eq!(n, 3);
    }

    /// A sync wait in a task on a multi-thread runtime does not stall the worker's other
    /// tasks: with one worker, the waiting task only ends if the other one runs meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocking_wait_lets_other_tasks_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
        });
        let waiter = tokio::spawn(async move {
            wait_until("the other task", Duration::from_secs(5), || {
                flag.load(Ordering::SeqCst)
            });
        });
        waiter.await.expect("the wait ends");
        setter.await.expect("setter");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pause_works_on_a_current_thread_runtime() {
        let t0 = Instant::now();
        pause(Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn http_get_reads_a_200_body_only() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let t = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\nhello",
                "HTTP/1.1 404 Nope\r\n\r\nno",
            ] {
                let (mut s, _) = l.accept().expect("accept");
                // Read the whole request first: closing with unread bytes sends a reset,
                // which can reach the client before the answer is read.
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                s.write_all(answer.as_bytes()).expect("write");
            }
        });
        assert_eq!(http_get(&addr, "/x").as_deref(), Some("hello"));
        assert_eq!(http_get_status(&addr, "/y"), Some((404, "no".to_string())));
        t.join().expect("server thread");
    }
}
