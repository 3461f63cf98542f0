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
