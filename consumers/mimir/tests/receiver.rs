//! tapbus-mimir against a scripted remote-write receiver: 503 and 429 are retried until a
//! 204 (the batch arrives intact, with the required headers and the tenant), a 400 is
//! dropped and counted by Mimir's error id and not retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, wait_until};

/// One request as the receiver saw it: headers (lowercased names) and the body.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves the scripted answers in order (the last one repeats), recording every request.
fn receiver(script: Vec<(u16, &'static str, &'static str)>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().expect("clone"));
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = r.read_line(&mut line); // request line
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            log.lock().expect("log").push(Seen { headers, body });
            let (status, extra, text) = script[n.min(script.len() - 1)];
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{text}",
                text.len()
            );
        }
    });
    (port, seen)
}

fn mimir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-mimir"))
}

fn batch(seq: u64) -> String {
    format!(
        r#"{{"instance":"t","seq":{seq},"timestamp_ms":{},"series":[{{"name":"dnstap_messages_total","labels":{{"instance":"t","operation":"CLIENT_QUERY"}},"value":{seq}}}]}}"#,
        1_795_315_298_000u64 + seq
    )
}

/// The value of the series `name{labels}` in an exposition text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    prom::value(&prom::Scrape::parse(text), name, labels).map(|v| v as u64)
}

#[test]
fn retries_5xx_and_429_until_written_and_drops_a_400_by_its_reason() {
    let nats = Nats::start();
    let (rport, seen) = receiver(vec![
        (503, "", "down"),
        (429, "Retry-After: 1\r\n", "slow down"),
        (204, "", ""),
        (
            400,
            "",
            "the sample has been rejected because another sample with a more recent timestamp has already been ingested (err-mimir-sample-out-of-order)",
        ),
    ]);
    let mport = free_port();
    let mut mimir = Proc::spawn(
        Command::new(mimir_bin())
            .args([
                "--input",
                &format!("{}/tapbus.metrics.>", nats.url()),
                "--url",
                &format!("http://127.0.0.1:{rport}/api/v1/push"),
                "--tenant",
                "dns",
                "--metrics-listen",
                &format!("127.0.0.1:{mport}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{mport}");
    wait_until("mimir subscribed", Duration::from_secs(20), || {
        http_get(&addr, "/health").is_some()
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let publish = |seq: u64| {
        rt.block_on(async {
            client
                .publish("tapbus.metrics.t", batch(seq).into())
                .await
                .expect("publish");
            client.flush().await.expect("flush");
        })
    };
    publish(1);
    wait_until(
        "the first batch written after two retries",
        Duration::from_secs(30),
        || {
            let t = http_get(&addr, "/metrics").unwrap_or_default();
            metric(&t, "tapbus_mimir_requests_total", &[("outcome", "written")]) == Some(1)
        },
    );
    publish(2);
    wait_until("the second batch refused", Duration::from_secs(30), || {
        let t = http_get(&addr, "/metrics").unwrap_or_default();
        metric(
            &t,
            "tapbus_mimir_dropped_total",
            &[("reason", "err-mimir-sample-out-of-order")],
        ) == Some(1)
    });
    // Not retried: four requests in all (503, 429, 204, 400).
    std::thread::sleep(Duration::from_millis(1500));
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let text = http_get(&addr, "/metrics").unwrap_or_default();
    assert_eq!(
        metric(&text, "tapbus_mimir_retries_total", &[]),
        Some(2),
        "{text}"
    );
    // Every request counted by outcome: 503 and 429 retried, 204 written, 400 refused.
    for (outcome, n) in [("retried", 2), ("written", 1), ("refused", 1)] {
        assert_eq!(
            metric(
                &text,
                "tapbus_mimir_requests_total",
                &[("outcome", outcome)]
            ),
            Some(n),
            "{outcome}: {text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "tapbus_consumer_acked_total",
            &[("consumer", "mimir")]
        ),
        Some(2),
        "{text}"
    );
    for s in &seen {
        assert_eq!(s.header("content-encoding"), Some("snappy"));
        assert_eq!(s.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(s.header("x-prometheus-remote-write-version"), Some("0.1.0"));
        assert_eq!(s.header("x-scope-orgid"), Some("dns"));
        assert!(
            s.header("user-agent")
                .is_some_and(|u| u.starts_with("tapbus-mimir/"))
        );
        // A snappy block that holds the series name.
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&s.body)
            .expect("snappy block");
        assert!(raw.windows(21).any(|w| w == b"dnstap_messages_total"));
    }
    // The three tries of the first batch carried the same bytes.
    assert!(seen[0].body == seen[1].body && seen[1].body == seen[2].body);
    assert!(mimir.terminate().success());
}
