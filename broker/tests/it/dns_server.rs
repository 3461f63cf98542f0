//! A real DNS server: unbound (Debian) writes dnstap to the broker's unix socket while dig
//! sends it queries. unbound answers from local-data only and its only upstream is a dead
//! loopback address, so nothing ever leaves 127.0.0.1.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_writes_dnstap_through_the_broker() {
    let unbound = need("unbound");
    let dig = need("dig");
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.unbound-it.>").await;

    let port = free_port();
    let conf = dir.path().join("unbound.conf");
    std::fs::write(
        &conf,
        tapbus_testsupport::unbound_conf(dir.path(), port, &sock, "", "unbound-it"),
    )
    .expect("write unbound.conf");
    let _unbound = Proc::spawn(
        Command::new(unbound)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // unbound connects to the broker on start.
    broker.wait_metric("tapbus_connections_active", &[], 1.0);

    let queries = [
        ("www.tapbus.test", "A"),
        ("mail.tapbus.test", "MX"),
        ("nx.tapbus.test", "A"),
    ];
    let rounds = 5;
    for _ in 0..rounds {
        for (name, qtype) in queries {
            let out = Command::new(&dig)
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+tries=1",
                    "+time=2",
                    name,
                    qtype,
                ])
                .output()
                .expect("dig");
            assert!(
                out.status.success(),
                "dig {name}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let n = 2 * rounds * queries.len();
    let got = sub.collect(n, Duration::from_secs(15)).await;
    assert_eq!(
        got.len(),
        n,
        "every query and response reaches NATS\n{}",
        broker.log_text()
    );
    let schema = validator();
    for (_, ev) in &got {
        assert_valid(&schema, ev);
    }
    let responses: Vec<_> = got
        .iter()
        .filter(|(s, _)| s == "dnstap.unbound-it.client_response")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(responses.len(), n / 2);
    let www = responses
        .iter()
        .find(|e| e["dns"]["qname"] == "www.tapbus.test")
        .expect("www response");
    assert_eq!(www["dns"]["rcode"], "NOERROR");
    assert_eq!(
        www["dns"]["resource-records"]["an"][0]["rdata"],
        "192.0.2.10"
    );
    assert_eq!(www["network"]["query-ip"], "127.0.0.1");
    assert_eq!(www["network"]["response-port"], port);
    assert_eq!(www["dnstap"]["identity"], "unbound-it");
    let nx = responses
        .iter()
        .find(|e| e["dns"]["qname"] == "nx.tapbus.test")
        .expect("nx response");
    assert_eq!(nx["dns"]["rcode"], "NXDOMAIN");
    let mx = responses
        .iter()
        .find(|e| e["dns"]["qtype"] == "MX")
        .expect("mx response");
    assert_eq!(
        mx["dns"]["resource-records"]["an"][0]["rdata"],
        "10 mx.tapbus.test."
    );
}

/// NSD (Debian's nsd 4.6, built with dnstap) as an authoritative sender: its dnstap
/// collector connects to the broker's unix socket and every AUTH_QUERY/AUTH_RESPONSE of
/// the dig queries reaches NATS. NSD serves one local zone on 127.0.0.1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsd_writes_dnstap_through_the_broker() {
    let nsd = need("nsd");
    let dig = need("dig");
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sock = d.join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.nsd-it.>").await;

    let port = free_port();
    std::fs::write(
        d.join("tapbus.test.zone"),
        "$ORIGIN tapbus.test.\n$TTL 300\n\
         @ IN SOA ns1 hostmaster 1 3600 600 86400 300\n\
         @ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A 192.0.2.80\n\
         mail IN A 192.0.2.25\n@ IN MX 10 mail\n",
    )
    .expect("zone");
    let conf = d.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{dir}\"\n  pidfile: \"{dir}/nsd.pid\"\n  database: \"\"\n  \
             xfrdfile: \"{dir}/xfrd.state\"\n  zonelistfile: \"{dir}/zone.list\"\n  \
             logfile: \"{dir}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
             remote-control:\n  control-enable: no\n\
             dnstap:\n  dnstap-enable: yes\n  dnstap-socket-path: \"{sock}\"\n  \
             dnstap-send-identity: yes\n  dnstap-identity: \"nsd-it\"\n  \
             dnstap-send-version: yes\n  dnstap-log-auth-query-messages: yes\n  \
             dnstap-log-auth-response-messages: yes\n\
             zone:\n  name: tapbus.test\n  zonefile: tapbus.test.zone\n",
            dir = d.display(),
            sock = sock.display(),
        ),
    )
    .expect("nsd.conf");
    let _nsd = Proc::spawn(
        Command::new(nsd)
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("nsd.stderr")).expect("stderr")),
    );
    // NSD's dnstap collector connects to the broker on start.
    broker.wait_metric("tapbus_connections_active", &[], 1.0);
    let queries = [
        ("www.tapbus.test", "A"),
        ("tapbus.test", "MX"),
        ("nx.tapbus.test", "A"),
    ];
    for (name, qtype) in queries {
        let out = Command::new(&dig)
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+tries=3",
                "+time=2",
                name,
                qtype,
            ])
            .output()
            .expect("dig");
        assert!(
            out.status.success(),
            "dig {name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(d.join("nsd.log")).unwrap_or_default()
        );
    }
    let n = 2 * queries.len();
    let got = sub.collect(n, Duration::from_secs(15)).await;
    assert_eq!(
        got.len(),
        n,
        "every query and response reaches NATS\n{}",
        broker.log_text()
    );
    let schema = validator();
    for (_, ev) in &got {
        assert_valid(&schema, ev);
        assert_eq!(ev["dnstap"]["identity"], "nsd-it");
    }
    let answers: Vec<(&str, &str, &str)> = got
        .iter()
        .filter(|(s, _)| s == "dnstap.nsd-it.auth_response")
        .map(|(_, e)| {
            (
                e["dns"]["qname"].as_str().unwrap_or(""),
                e["dns"]["qtype"].as_str().unwrap_or(""),
                e["dns"]["rcode"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("www.tapbus.test", "A", "NOERROR"),
            ("tapbus.test", "MX", "NOERROR"),
            ("nx.tapbus.test", "A", "NXDOMAIN")
        ]
    );
    let queries_seen = got
        .iter()
        .filter(|(s, _)| s == "dnstap.nsd-it.auth_query")
        .count();
    assert_eq!(queries_seen, queries.len());
}
