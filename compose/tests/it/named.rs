//! `named/` for real: Debian's named runs the authoritative and the caching configs
//! (the lines marked "rewritten by the tests" moved to loopback, free ports and a temporary
//! directory; the caching role forwarding only to the loopback authoritative, its queries
//! sent from 127.0.0.1 only), the caching one started through `named/entrypoint.sh`. Both
//! write dnstap to the unix socket of a tapbus-broker running `compose/config/broker.toml`
//! (its addresses overridden by TAPBUS_* as a deployment would), and the test checks the
//! events that come out on NATS for dig queries: identities, operations, qnames, rcodes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_ports, need};

use crate::{binaries, compose_dir, read, root};

const MARK: &str = "// rewritten by the tests";

/// Rewrites every marked line of a named.conf with `f` (which must change each one).
fn rewrite(conf: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    conf.lines()
        .map(|l| {
            if l.contains(MARK) {
                let new = f(l.trim()).unwrap_or_else(|| panic!("no rewrite for {l:?}"));
                format!("    {new}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rewrites both roles share; `None` for the lines only one role has.
fn common(line: &str, dir: &Path, port: u16, sock: &Path) -> Option<String> {
    let d = dir.display();
    Some(if line.starts_with("directory ") {
        format!("directory \"{d}\";")
    } else if line.starts_with("pid-file ") {
        format!("pid-file \"{d}/named.pid\";")
    } else if line.starts_with("session-keyfile ") {
        format!("session-keyfile \"{d}/session.key\";")
    } else if line.starts_with("listen-on port 53 ") {
        // Also: every query this server sends leaves from 127.0.0.1, so nothing can go
        // anywhere but loopback.
        format!("listen-on port {port} {{ 127.0.0.1; }}; query-source address 127.0.0.1;")
    } else if line.starts_with("dnstap-output unix ") {
        format!("dnstap-output unix \"{}\";", sock.display())
    } else {
        return None;
    })
}

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new(need("dig"))
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(answer: &str) -> &str {
    answer
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
}

/// The sum of every sample of `name` on `addr`'s `/metrics`.
fn metric(addr: &str, name: &str) -> f64 {
    prom::sum(&prom::scrape(addr), name, &[])
}

#[test]
fn named_configs_check() {
    // The files as shipped: configuration syntax and the zones.
    for conf in ["named.auth.conf", "named.caching.conf"] {
        let out = Command::new(need("named-checkconf"))
            .arg(root().join("named").join(conf))
            .output()
            .expect("named-checkconf");
        assert!(
            out.status.success(),
            "{conf}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (zone, file) in [
        ("tapbus.test", "db.tapbus.test"),
        ("2.0.192.in-addr.arpa", "db.192.0.2"),
    ] {
        let out = Command::new(need("named-checkzone"))
            .arg(zone)
            .arg(root().join("named/zones").join(file))
            .output()
            .expect("named-checkzone");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("OK"),
            "{zone}: {text}"
        );
    }
    let out = Command::new("sh")
        .arg("-n")
        .arg(root().join("named/entrypoint.sh"))
        .output()
        .expect("sh -n");
    assert!(out.status.success(), "entrypoint.sh does not parse");
}

#[test]
fn unbound_demo_config_checks() {
    let out = Command::new(need("unbound-checkconf"))
        .arg(root().join("unbound/unbound.conf"))
        .output()
        .expect("unbound-checkconf");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_auth_and_caching_send_dnstap_through_the_broker() {
    let named = need("named");
    let dir = tempfile::tempdir().expect("tempdir");
    let js = dir.path().join("js");
    let nats = Nats::start_jetstream(&js);
    let sock = dir.path().join("dnstap.sock");
    let [auth_port, cache_port, broker_tcp, metrics] = free_ports(4)[..] else {
        unreachable!()
    };
    let metrics_addr = format!("127.0.0.1:{metrics}");

    // The compose broker config, its addresses overridden through the environment.
    let broker_log = dir.path().join("broker.log");
    let mut broker = Command::new(&binaries()["tapbus-broker"]);
    broker
        .arg("--config")
        .arg(compose_dir().join("config/broker.toml"))
        .env(
            "TAPBUS_INPUTS__NAMED__URL",
            format!("unix://{}", sock.display()),
        )
        // The test runs as root; any group will do, and root's always exists.
        .env("TAPBUS_INPUTS__NAMED__SOCKET_GROUP", "0")
        .env(
            "TAPBUS_INPUTS__COREDNS__URL",
            format!("tcp://127.0.0.1:{broker_tcp}"),
        )
        .env("TAPBUS_OUTPUTS__NATS__URL", nats.url())
        // A test server's JetStream has little room; the stream limit is the only change.
        .env("TAPBUS_OUTPUTS__NATS__STREAM_MAX_BYTES", "67108864")
        .env("TAPBUS_METRICS_LISTEN", &metrics_addr)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&broker_log).expect("broker log"));
    let _broker = Proc::spawn(&mut broker);
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no broker socket\n{}",
            read(&broker_log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let client = async_nats::connect(nats.url()).await.expect("nats connect");
    let mut sub = client.subscribe("dnstap.>").await.expect("subscribe");
    client.flush().await.expect("flush");

    // named-auth, as is but for the marked lines.
    let auth_dir = dir.path().join("auth");
    std::fs::create_dir(&auth_dir).expect("auth dir");
    let zones = root().join("named/zones");
    let auth_conf = rewrite(&read(&root().join("named/named.auth.conf")), |l| {
        common(l, &auth_dir, auth_port, &sock).or_else(|| {
            l.starts_with("file \"/etc/bind/zones/").then(|| {
                l.replace("/etc/bind/zones", &zones.display().to_string())
                    .replace(MARK, "")
            })
        })
    });
    let auth_file = auth_dir.join("named.conf");
    std::fs::write(&auth_file, &auth_conf).expect("write auth conf");
    let _auth = Proc::spawn(
        Command::new(&named)
            .args(["-g", "-4", "-n", "1", "-c"])
            .arg(&auth_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(auth_dir.join("named.log")).expect("log")),
    );

    // named-caching through the image's entrypoint (it waits for the socket, sets its
    // group and mode, checks the config, execs named -g).
    let cache_dir = dir.path().join("caching");
    std::fs::create_dir(&cache_dir).expect("caching dir");
    let cache_conf = rewrite(&read(&root().join("named/named.caching.conf")), |l| {
        common(l, &cache_dir, cache_port, &sock).or_else(|| {
            (l.starts_with("forwarders { ") && l.contains("172.28.53.10"))
                .then(|| format!("forwarders {{ 127.0.0.1 port {auth_port}; }};"))
        })
    });
    assert!(
        !cache_conf
            .lines()
            .any(|l| l.contains("forwarders") && l.contains("172.28.53.")),
        "{cache_conf}"
    );
    let cache_file = cache_dir.join("named.conf");
    std::fs::write(&cache_file, &cache_conf).expect("write caching conf");
    let _caching = Proc::spawn(
        Command::new("sh")
            .arg(root().join("named/entrypoint.sh"))
            .args(["-4", "-n", "1"])
            .env("NAMED_CONF", &cache_file)
            .env("DNSTAP_SOCKET", &sock)
            .env("DNSTAP_GROUP", "0")
            .env("DNSTAP_WAIT", "10")
            .env("NAMED_USER", "")
            .env("NAMED", &named)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(cache_dir.join("named.log")).expect("log")),
    );

    let logs = || {
        format!(
            "--- broker\n{}\n--- auth\n{}\n--- caching\n{}",
            read(&broker_log),
            std::fs::read_to_string(auth_dir.join("named.log")).unwrap_or_default(),
            std::fs::read_to_string(cache_dir.join("named.log")).unwrap_or_default()
        )
    };
    // Both servers answer, and both are connected to the broker.
    for port in [auth_port, cache_port] {
        let t0 = Instant::now();
        while status(&dig(port, &["tapbus.test", "SOA"])) != "NOERROR" {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "named on {port} does not answer\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let t0 = Instant::now();
    while metric(&metrics_addr, "tapbus_connections_active") < 2.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "both named connect to the broker\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The queries: through the caching server (which forwards to the authoritative one),
    // and one straight to the authoritative server.
    let queries: [(&[&str], &str); 6] = [
        (&["www.tapbus.test", "A"], "NOERROR"),
        (&["api.tapbus.test", "A"], "NOERROR"),
        (&["tapbus.test", "MX"], "NOERROR"),
        (&["nx.tapbus.test", "A"], "NXDOMAIN"),
        (&["-x", "192.0.2.25"], "NOERROR"),
        // Not served by the authoritative server: REFUSED there, SERVFAIL here; never
        // asked of anyone else.
        (&["outside.example", "A"], "SERVFAIL"),
    ];
    for (args, want) in queries {
        let a = dig(cache_port, args);
        assert_eq!(status(&a), want, "{args:?}\n{a}");
    }
    let a = dig(cache_port, &["www.tapbus.test", "A", "+short"]);
    assert_eq!(a.trim(), "192.0.2.10");
    let a = dig(cache_port, &["-x", "192.0.2.25", "+short"]);
    assert_eq!(a.trim(), "mail.tapbus.test.");
    let a = dig(auth_port, &["+norec", "sip.tapbus.test", "A"]);
    assert_eq!(status(&a), "NOERROR", "{a}");
    assert!(a.contains(" aa"), "authoritative answer: {a}");

    // Collect until every expectation is met (bounded), then a moment longer.
    let mut events: Vec<(String, Value)> = Vec::new();
    let done = |ev: &[(String, Value)]| {
        let has = |id: &str, op: &str, qname: &str, rcode: Option<&str>| {
            ev.iter().any(|(_, e)| {
                e["dnstap"]["identity"] == id
                    && e["dnstap"]["operation"] == op
                    && e["dns"]["qname"] == qname
                    && rcode.is_none_or(|r| e["dns"]["rcode"] == r)
            })
        };
        has(
            "named-caching",
            "CLIENT_RESPONSE",
            "outside.example",
            Some("SERVFAIL"),
        ) && has(
            "named-caching",
            "CLIENT_RESPONSE",
            "25.2.0.192.in-addr.arpa",
            Some("NOERROR"),
        ) && has(
            "named-auth",
            "AUTH_RESPONSE",
            "sip.tapbus.test",
            Some("NOERROR"),
        ) && (has(
            "named-auth",
            "AUTH_RESPONSE",
            "outside.example",
            Some("REFUSED"),
        ) || has(
            "named-auth",
            "CLIENT_RESPONSE",
            "outside.example",
            Some("REFUSED"),
        )) && (has(
            "named-auth",
            "AUTH_RESPONSE",
            "nx.tapbus.test",
            Some("NXDOMAIN"),
        ) || has(
            "named-auth",
            "CLIENT_RESPONSE",
            "nx.tapbus.test",
            Some("NXDOMAIN"),
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle.is_some_and(|s| now >= s) || now >= deadline {
            break;
        }
        let until = settle.unwrap_or(deadline).min(deadline);
        match tokio::time::timeout(until - now, sub.next()).await {
            Ok(Some(m)) => {
                let ev: Value = serde_json::from_slice(&m.payload).expect("event JSON");
                events.push((m.subject.to_string(), ev));
                if settle.is_none() && done(&events) {
                    settle = Some(Instant::now() + Duration::from_millis(1500));
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let seen: Vec<String> = events
        .iter()
        .map(|(_, e)| {
            format!(
                "{} {} {} {}",
                e["dnstap"]["identity"],
                e["dnstap"]["operation"],
                e["dns"]["qname"],
                e["dns"]["rcode"]
            )
        })
        .collect();
    assert!(
        done(&events),
        "expected events missing ({} seen)\n{}\n{}",
        events.len(),
        seen.join("\n"),
        logs()
    );

    let count = |id: &str, op: &str, qname: &str| {
        events
            .iter()
            .filter(|(_, e)| {
                e["dnstap"]["identity"] == id
                    && e["dnstap"]["operation"] == op
                    && e["dns"]["qname"] == qname
            })
            .count()
    };
    let mut ops: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (subject, e) in &events {
        let id = e["dnstap"]["identity"]
            .as_str()
            .expect("identity")
            .to_string();
        let op = e["dnstap"]["operation"]
            .as_str()
            .expect("operation")
            .to_string();
        assert_eq!(
            subject,
            &format!("dnstap.{id}.{}", op.to_lowercase()),
            "the broker's subject template"
        );
        assert_eq!(e["dnstap"]["version"], "bind9");
        *ops.entry((id, op)).or_default() += 1;
        // Whatever named sent or answered, it was on loopback.
        for k in ["query-ip", "response-ip"] {
            if let Some(ip) = e["network"][k].as_str() {
                assert!(ip.starts_with("127."), "{k} {ip} in {e}");
            }
        }
    }
    let ops_of = |id: &str| -> Vec<&str> {
        ops.keys()
            .filter(|(i, _)| i == id)
            .map(|(_, o)| o.as_str())
            .collect()
    };
    let auth = ops_of("named-auth");
    assert!(
        auth.contains(&"AUTH_QUERY") && auth.contains(&"AUTH_RESPONSE"),
        "{ops:?}"
    );
    assert!(
        auth.iter()
            .all(|o| o.starts_with("AUTH_") || o.starts_with("CLIENT_")),
        "{ops:?}"
    );
    let caching = ops_of("named-caching");
    assert!(
        caching.contains(&"CLIENT_QUERY") && caching.contains(&"CLIENT_RESPONSE"),
        "{ops:?}"
    );
    assert!(
        caching
            .iter()
            .any(|o| o.starts_with("FORWARDER_") || o.starts_with("RESOLVER_")),
        "the caching server's upstream queries are tapped: {ops:?}"
    );
    assert!(
        ops.keys()
            .all(|(i, _)| i == "named-auth" || i == "named-caching"),
        "{ops:?}"
    );

    // Exactly one client query and response per dig through the caching server.
    for q in [
        "www.tapbus.test",
        "api.tapbus.test",
        "nx.tapbus.test",
        "outside.example",
    ] {
        let n = if q == "www.tapbus.test" { 2 } else { 1 };
        assert_eq!(count("named-caching", "CLIENT_QUERY", q), n, "{q}");
        assert_eq!(count("named-caching", "CLIENT_RESPONSE", q), n, "{q}");
    }
    // The caching server asked the authoritative one (which logged it): a miss for each
    // name, the second www answered from the cache.
    assert_eq!(count("named-auth", "AUTH_QUERY", "nx.tapbus.test"), 1);
    let nx = events
        .iter()
        .find(|(_, e)| {
            e["dnstap"]["identity"] == "named-auth"
                && e["dnstap"]["operation"]
                    .as_str()
                    .is_some_and(|o| o.ends_with("_RESPONSE"))
                && e["dns"]["qname"] == "nx.tapbus.test"
        })
        .map(|(_, e)| e)
        .expect("nx at the authoritative server");
    assert_eq!(nx["dns"]["rcode"], "NXDOMAIN");
    assert_eq!(nx["dns"]["flags"]["aa"], true);
    assert_eq!(nx["network"]["response-port"], auth_port);
    let www = events
        .iter()
        .find(|(_, e)| {
            e["dnstap"]["identity"] == "named-caching"
                && e["dnstap"]["operation"] == "CLIENT_RESPONSE"
                && e["dns"]["qname"] == "www.tapbus.test"
        })
        .map(|(_, e)| e)
        .expect("www at the caching server");
    assert_eq!(
        www["dns"]["resource-records"]["an"][0]["rdata"],
        "192.0.2.10"
    );
    assert_eq!(www["network"]["response-port"], cache_port);
    assert!(
        www["dnstap"]["peer-name"]
            .as_str()
            .is_some_and(|p| p.starts_with("unix:")),
        "{www}"
    );
    // The entrypoint set the socket's group and mode.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(&sock).expect("socket");
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    assert_eq!(md.gid(), 0);
}
