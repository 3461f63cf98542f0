//! tapbus-top for real: a nats-server, the broker publishing a testdata capture onto it,
//! and tapbus-top reading the bus, once without a terminal (`--once N`, every view printed
//! as text) and once inside a private tmux server (80x24): the screen shows the capture's
//! numbers, keys switch views, `q` quits and the terminal is restored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, need, testdata, wait_until};

/// unbound as a resolver: 1757 events, identity unbound-resolver (MANIFEST.md, summary).
const CAPTURE: &str = "unbound.fstrm";

fn top_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-top"))
}

fn broker_bin() -> PathBuf {
    tapbus_testsupport::sibling_bin(&top_bin(), "tapbus-broker", "tapbus-broker")
}

/// The broker replays the capture onto `nats_url` and exits.
fn publish(nats_url: &str) {
    let file = testdata::path(CAPTURE);
    let st = Command::new(broker_bin())
        .env(
            "TAPBUS_INPUTS__FILE__URL",
            format!("file://{}", file.display()),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_OUTPUTS__BUS__URL", nats_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run broker");
    assert!(st.success(), "broker exited with {st}");
}

/// The broker replaying the capture onto `nats_url` and staying up (a TCP input keeps it
/// running) with its /metrics on `metrics_port`.
fn broker_running(nats_url: &str, metrics_port: u16) -> Proc {
    let file = testdata::path(CAPTURE);
    Proc::spawn(
        Command::new(broker_bin())
            .env(
                "TAPBUS_INPUTS__FILE__URL",
                format!("file://{}", file.display()),
            )
            .env(
                "TAPBUS_INPUTS__TCP__URL",
                format!("tcp://127.0.0.1:{}", free_port()),
            )
            .env("TAPBUS_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("TAPBUS_OUTPUTS__BUS__URL", nats_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// One message that is not an event, on the subject tapbus-top reads.
fn publish_garbage(nats_url: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = async_nats::connect(nats_url).await.expect("connect");
        c.publish("dnstap.junk.client_query", "not an event".into())
            .await
            .expect("publish");
        c.flush().await.expect("flush");
    });
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The numbers of unbound.fstrm that every run must show (summary.json: per type, per
/// rcode of all responses).
fn assert_capture_numbers(text: &str) {
    let n = testdata::expected_count(CAPTURE);
    assert_eq!(n, 1757);
    // The first table row (after a border) that starts with `want`, or the status line.
    let line = |want: &str| {
        let cell = format!("│{want} ");
        text.lines()
            .find(|l| l.contains(&cell) || (want.starts_with("events") && l.contains(want)))
            .unwrap_or_else(|| panic!("{want:?} not shown:\n{text}"))
            .to_string()
    };
    assert!(
        line("events 1757 ").contains("bad 1"),
        "{}",
        line("events 1757 ")
    );
    assert!(line("unbound-resolver").contains("100.0%"));
    assert!(
        line("CLIENT_QUERY").contains(" 609 "),
        "{}",
        line("CLIENT_QUERY")
    );
    assert!(line("CLIENT_RESPONSE").contains(" 606 "));
    assert!(line("RESOLVER_QUERY").contains(" 263 "));
    assert!(line("NOERROR").contains(" 716 "), "{}", line("NOERROR"));
    assert!(line("NXDOMAIN").contains(" 96 "));
    assert!(line("SERVFAIL").contains(" 29 "));
}

#[test]
fn once_prints_every_view_of_a_capture() {
    let nats = Nats::start();
    let d = tempfile::tempdir().expect("tempdir");
    let (out, err) = (d.path().join("out"), d.path().join("err"));
    let n = (testdata::expected_count(CAPTURE) + 1).to_string();
    let mut top = Proc::spawn(
        Command::new(top_bin())
            .args(["--input", nats.url(), "--once", &n, "--duration", "60s"])
            .env("TAPBUS_LOG", "info")
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err")),
    );
    // A second one counts only the client queries (--filter, the language of tapbus-tail).
    let (fout, ferr) = (d.path().join("fout"), d.path().join("ferr"));
    let mut filtered = Proc::spawn(
        Command::new(top_bin())
            .args(["--input", nats.url(), "--once", &n, "--duration", "60s"])
            .args(["--filter", "operation=client_query qname!=nothing.invalid"])
            .args(["--size", "160x24"])
            .env("TAPBUS_LOG", "info")
            .stdout(std::fs::File::create(&fout).expect("out"))
            .stderr(std::fs::File::create(&ferr).expect("err")),
    );
    // A third reads exactly ten messages (the garbage one and nine events), however many
    // more arrive meanwhile.
    let (tout, terr) = (d.path().join("tout"), d.path().join("terr"));
    let mut ten = Proc::spawn(
        Command::new(top_bin())
            .args(["--input", nats.url(), "--once", "10", "--duration", "60s"])
            .env("TAPBUS_LOG", "info")
            .stdout(std::fs::File::create(&tout).expect("out"))
            .stderr(std::fs::File::create(&terr).expect("err")),
    );
    wait_until("tapbus-top subscribed", Duration::from_secs(20), || {
        read(&err).contains("subscribed")
            && read(&ferr).contains("subscribed")
            && read(&terr).contains("subscribed")
    });
    publish_garbage(nats.url());
    publish(nats.url());
    let st = top
        .wait_within(Duration::from_secs(70))
        .unwrap_or_else(|| panic!("tapbus-top did not exit: {}", read(&err)));
    assert_eq!(st.code(), Some(0), "stderr: {}", read(&err));
    let st = filtered
        .wait_within(Duration::from_secs(70))
        .unwrap_or_else(|| panic!("filtered tapbus-top did not exit: {}", read(&ferr)));
    assert_eq!(st.code(), Some(0), "stderr: {}", read(&ferr));
    let st = ten
        .wait_within(Duration::from_secs(70))
        .unwrap_or_else(|| panic!("tapbus-top --once 10 did not exit: {}", read(&terr)));
    assert_eq!(st.code(), Some(0), "stderr: {}", read(&terr));
    let ttext = read(&tout);
    assert!(
        ttext.contains("| events 9 | bad 1 |"),
        "--once 10: {}",
        ttext.lines().nth(23).unwrap_or_default()
    );
    let ftext = read(&fout);
    assert!(
        ftext.contains("filter: operation=CLIENT_QUERY qname!=nothing.invalid"),
        "{ftext}"
    );
    assert!(ftext.contains("│CLIENT_QUERY "), "{ftext}");
    assert!(!ftext.contains("│CLIENT_RESPONSE "), "{ftext}");
    assert!(
        !ftext.contains("│NOERROR "),
        "no responses, so no rcodes: {ftext}"
    );
    let text = read(&out);
    // Eight views of 24 lines, none wider than 80 columns.
    assert_eq!(text.lines().count(), 8 * 24);
    assert!(text.lines().all(|l| l.chars().count() <= 80));
    assert_capture_numbers(&text);
    for title in [
        "Top qnames",
        "Top clients",
        "Top registered domains",
        "Qtypes",
        "Latency",
        "Broker",
        "Countries (",
        "ASNs (",
    ] {
        assert!(text.contains(title), "{title} missing");
    }
}

/// A private tmux server (its own socket name), killed on drop and its socket file
/// removed: no other session is touched.
struct Tmux {
    socket: String,
    socket_path: Option<PathBuf>,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new(need("tmux"));
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn start(shell_cmd: &str) -> Tmux {
        let mut t = Tmux {
            socket: format!("tapbus-top-test-{}-{}", std::process::id(), free_port()),
            socket_path: None,
        };
        let st = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
                "-s",
                "top",
                shell_cmd,
            ])
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux new-session");
        assert!(st.success(), "tmux new-session failed");
        let o = t
            .cmd()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .expect("tmux display-message");
        let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
        t.socket_path = (!p.is_empty()).then(|| PathBuf::from(p));
        t
    }

    fn screen(&self) -> String {
        let o = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "top", keys])
            .status()
            .expect("tmux send-keys");
        assert!(st.success());
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            last = self.screen();
            if f(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn live_under_tmux_80x24() {
    let nats = Nats::start();
    let d = tempfile::tempdir().expect("tempdir");
    let log = d.path().join("top.log");
    let metrics_port = free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    // After tapbus-top: its exit code, and whether the tty is back in canonical mode.
    let shell = format!(
        "TAPBUS_LOG=info {} --input {} --refresh 200ms --broker-metrics {metrics} --log-file {}; \
         echo EXITED:$?; stty -a | tr ' ' '\\n' | grep -x -- '-*icanon' | sed 's/^/MODE:/'; sleep 60",
        top_bin().display(),
        nats.url(),
        log.display()
    );
    let tmux = Tmux::start(&shell);
    let first = tmux.wait_for("the overview", |s| {
        s.contains("1:Overview") && s.contains(" up |")
    });
    assert!(first.lines().all(|l| l.chars().count() <= 80));
    wait_until("subscribed", Duration::from_secs(20), || {
        read(&log).contains("subscribed")
    });
    // The broker is not up yet: its view says so.
    tmux.keys("7");
    tmux.wait_for("a failed scrape", |s| s.contains("scrape failed"));
    tmux.keys("1");
    publish_garbage(nats.url());
    let _broker = broker_running(nats.url(), metrics_port);
    let shown = tmux.wait_for("every event counted", |s| {
        s.contains("events 1757 ") && s.contains("Servers (")
    });
    assert_capture_numbers(&shown);
    // Views by key.
    tmux.keys("2");
    let q = tmux.wait_for("the qnames view", |s| s.contains("Top qnames"));
    assert!(q.contains("#    name"), "{q}");
    tmux.keys("5");
    tmux.wait_for("the rcode/qtype view", |s| s.contains("Qtypes ("));
    // The broker's own numbers: the capture read from the file input and confirmed by NATS.
    tmux.keys("7");
    let b = tmux.wait_for("the broker's counters", |s| {
        s.lines()
            .any(|l| l.starts_with("│bus ") && l.contains(" up ") && l.contains(" 1757 "))
    });
    let file_row = b
        .lines()
        .find(|l| l.starts_with("│file "))
        .unwrap_or_else(|| panic!("no file input row:\n{b}"));
    assert!(file_row.contains(" 1757 "), "{file_row}");
    // A filter typed after '/': no event matches, the tables start afresh.
    tmux.keys("/");
    tmux.wait_for("the filter prompt", |s| s.contains("qname contains:"));
    for k in ["n", "o", "-", "s", "u", "c", "h", "Enter"] {
        tmux.keys(k);
    }
    tmux.keys("1");
    let f = tmux.wait_for("the filtered overview", |s| {
        s.contains("filter: qname~no\\-such") && s.contains("Servers (")
    });
    assert!(f.contains("Servers (0)"), "{f}");
    assert!(
        f.contains("events 1757 "),
        "the status line counts everything: {f}"
    );
    // q quits; the shell behind it is back, in canonical mode, off the alternate screen.
    tmux.keys("q");
    let end = tmux.wait_for("the exit and the tty mode", |s| s.contains("MODE:"));
    assert!(end.contains("EXITED:0"), "{end}");
    assert!(
        end.contains("MODE:icanon"),
        "terminal left in raw mode:\n{end}"
    );
    assert!(
        !end.contains("1:Overview"),
        "the alternate screen was not left:\n{end}"
    );
}

/// The terminal goes away under it (the ssh session or the tmux server ends): it stops
/// within seconds instead of spinning on a dead terminal forever.
#[test]
fn a_terminal_that_hangs_up_ends_it() {
    let nats = Nats::start();
    let d = tempfile::tempdir().expect("tempdir");
    let pid_file = d.path().join("top.pid");
    let log = d.path().join("top.log");
    let shell = format!(
        "echo $$ > {}; TAPBUS_LOG=info exec {} --input {} --log-file {}",
        pid_file.display(),
        top_bin().display(),
        nats.url(),
        log.display()
    );
    let tmux = Tmux::start(&shell);
    tmux.wait_for("the overview", |s| {
        s.contains("1:Overview") && s.contains(" up |")
    });
    let pid: u32 = read(&pid_file).trim().parse().expect("pid");
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z "))
    };
    assert!(running());
    drop(tmux); // tmux kill-server: the pty hangs up
    let t0 = std::time::Instant::now();
    while running() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if running() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!(
            "tapbus-top ({pid}) still ran 10 s after its terminal hung up\n{}",
            read(&log)
        );
    }
}

/// Without a terminal (and without --once) it says so and exits 3, writing no escape
/// sequences; bad flags exit 2.
#[test]
fn no_terminal_and_bad_usage() {
    let o = Command::new(top_bin())
        .args(["--input", "nats://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .expect("run tapbus-top");
    assert_eq!(o.status.code(), Some(3));
    assert!(
        o.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("must be a terminal"), "{err}");
    let o = Command::new(top_bin())
        .args(["--broker-metrics", "localhost:9634"])
        .output()
        .expect("run tapbus-top");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("broker_metrics"));
    // --check validates and starts nothing; a bad --filter is named.
    let o = Command::new(top_bin())
        .args(["--check", "--filter", "rcode=nxdomain  client=10.0.0.0/8"])
        .output()
        .expect("run tapbus-top");
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("tapbus-top: configuration ok: input nats://127.0.0.1:4222"),
        "{out}"
    );
    assert!(
        out.contains("filter rcode=NXDOMAIN client=10.0.0.0/8"),
        "{out}"
    );
    let o = Command::new(top_bin())
        .args(["--check", "--filter", "rcode=BOGUS"])
        .output()
        .expect("run tapbus-top");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--filter: bad filter term `rcode=BOGUS`"),
        "{err}"
    );
}
