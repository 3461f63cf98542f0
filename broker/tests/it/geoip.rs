//! GeoIP and ASN enrichment end to end, on MaxMind DB files the test writes (Debian's
//! libmaxmind-db-writer-perl): every event's `geo` matches the table the databases were
//! built from (known, unknown and private clients, IPv4 and IPv6), a pseudonymised view
//! still carries the clear address's country, a database replaced on disk is reloaded
//! while events flow, and a corrupt file at start is refused naming its key.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tapbus_enrich::testutil::{GeoRow, write_asn_db, write_city_db};
use tapbus_proto::dnstap::{Dnstap, Message};

use crate::harness::*;

/// (client, country, city, asn, as-org) as the databases say; `None`: not in them (or
/// not looked up).
type Want = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<u32>,
    Option<&'static str>,
);

const CLIENTS: [Want; 6] = [
    (
        "81.2.69.160",
        Some("GB"),
        Some("London"),
        Some(20712),
        Some("Andrews & Arnold Ltd"),
    ),
    (
        "89.160.20.129",
        Some("SE"),
        Some("Link\u{f6}ping \"L\""),
        Some(29518),
        Some("Bredband2 AB"),
    ),
    (
        "2001:4860:4860::8888",
        Some("US"),
        None,
        Some(15169),
        Some("Google LLC"),
    ),
    // In no database.
    ("8.8.4.4", None, None, None, None),
    // Private and loopback: never looked up, although the databases have them.
    ("10.1.2.3", None, None, None, None),
    ("127.0.0.1", None, None, None, None),
];

fn city_rows(gb: &str) -> Vec<GeoRow> {
    vec![
        GeoRow::new("81.2.69.0/24").country(gb).city("London"),
        GeoRow::new("89.160.20.0/24")
            .country("SE")
            .city("Link\u{f6}ping \"L\""),
        GeoRow::new("2001:4860::/32").country("US"),
        GeoRow::new("10.0.0.0/8").country("ZZ"),
        GeoRow::new("127.0.0.0/8").country("ZZ"),
    ]
}

fn asn_rows() -> Vec<GeoRow> {
    vec![
        GeoRow::new("81.2.69.0/24").asn(20712, "Andrews & Arnold Ltd"),
        GeoRow::new("89.160.20.0/24").asn(29518, "Bredband2 AB"),
        GeoRow::new("2001:4860::/32").asn(15169, "Google LLC"),
        GeoRow::new("10.0.0.0/8").asn(64512, "private"),
    ]
}

/// A CLIENT_QUERY frame from `client`.
fn frame(client: &str, id: u16) -> Vec<u8> {
    let ip: IpAddr = client.parse().expect("address");
    let (family, addr) = match ip {
        IpAddr::V4(a) => (1, a.octets().to_vec()),
        IpAddr::V6(a) => (2, a.octets().to_vec()),
    };
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
    Dnstap {
        identity: Some(Bytes::from_static(b"geo-test")),
        version: None,
        extra: None,
        r#type: Some(1),
        message: Some(Message {
            r#type: Some(5),
            socket_family: Some(family),
            socket_protocol: Some(1),
            query_address: Some(Bytes::from(addr.clone())),
            response_address: Some(Bytes::from(addr)),
            query_port: Some(40000),
            response_port: Some(53),
            query_time_sec: Some(1_800_000_000),
            query_time_nsec: Some(u32::from(id)),
            query_message: Some(Bytes::from(q)),
            ..Default::default()
        }),
    }
    .encode_to_vec()
}

/// A capture file with `rounds` queries from each client.
fn capture_file(path: &Path, rounds: u16) {
    let frames: Vec<Vec<u8>> = (0..rounds)
        .flat_map(|r| {
            CLIENTS
                .iter()
                .enumerate()
                .map(move |(i, c)| frame(c.0, r * 10 + i as u16))
        })
        .collect();
    let bytes = tapbus_testsupport::fstrm::unidirectional_bytes(b"protobuf:dnstap.Dnstap", &frames);
    std::fs::write(path, bytes).expect("capture");
}

fn want_geo(w: &Want) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(c) = w.1 {
        m.insert("country".into(), c.into());
    }
    if let Some(c) = w.2 {
        m.insert("city".into(), c.into());
    }
    if let Some(a) = w.3 {
        m.insert("asn".into(), a.into());
    }
    if let Some(o) = w.4 {
        m.insert("as-org".into(), o.into());
    }
    if m.is_empty() {
        serde_json::Value::Null
    } else {
        m.into()
    }
}

fn dbs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (city, asn) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    write_city_db(&city, &city_rows("GB")).expect("city db");
    write_asn_db(&asn, &asn_rows()).expect("asn db");
    (city, asn)
}

#[test]
fn every_event_carries_the_geo_of_its_client_in_every_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (city, asn) = dbs(dir.path());
    let cap = dir.path().join("geo.fstrm");
    capture_file(&cap, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .env("TAPBUS_INPUTS__F__URL", format!("file://{}", cap.display()))
        .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
        .env("TAPBUS_OUTPUTS__STDOUT__PRIVACY__CLIENT_IP", "truncate")
        .env("TAPBUS_ENRICH__GEOIP__CITY", &city)
        .env("TAPBUS_ENRICH__GEOIP__ASN", &asn)
        .env("TAPBUS_METRICS_LISTEN", "")
        .output()
        .expect("run broker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert_eq!(events.len(), 3 * CLIENTS.len());
    let schema = validator();
    for (i, ev) in events.iter().enumerate() {
        assert_valid(&schema, ev);
        let w = &CLIENTS[i % CLIENTS.len()];
        // The view shows the truncated address; the geo is the clear one's.
        let clear: IpAddr = w.0.parse().expect("address");
        assert_ne!(ev["network"]["query-ip"], w.0, "{ev}");
        assert_eq!(ev["geo"], want_geo(w), "client {clear}: {ev}");
        assert_eq!(ev["dns"]["qname-registered"], "example.com");
        assert_eq!(ev["dns"]["qname-tld"], "com");
        assert_eq!(ev["schema-version"], 2);
    }
}

/// The events written so far to `path` (whole lines only).
fn events_in(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |n| &text[..n]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect()
}

/// The complete lines written so far to `path`.
fn lines_in(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

fn metric(addr: &str, name: &str, labels: &[&str]) -> f64 {
    http_get(addr, "/metrics").map_or(-1.0, |t| sum_metric(&t, name, labels))
}

#[test]
fn a_replaced_database_is_reloaded_while_events_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (city, asn) = dbs(dir.path());
    let cap = dir.path().join("geo.fstrm");
    capture_file(&cap, 20);
    let sock = dir.path().join("dnstap.sock");
    let stdout = dir.path().join("events.jsonl");
    let addr = format!("127.0.0.1:{}", free_port());
    let _broker = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["-i", &format!("unix://{}", sock.display()), "-o", "stdout"])
            .args(["--metrics-listen", &addr])
            .env("TAPBUS_ENRICH__GEOIP__CITY", &city)
            .env("TAPBUS_ENRICH__GEOIP__ASN", &asn)
            .env("TAPBUS_ENRICH__GEOIP__RELOAD_INTERVAL", "200ms")
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(Stdio::null()),
    );
    wait_until("broker healthy", Duration::from_secs(20), || {
        http_get(&addr, "/health").is_some()
    });
    // Every counter is there from the start, at 0.
    assert_eq!(
        metric(&addr, "tapbus_geoip_reloads_total", &["result=\"ok\""]),
        0.0
    );
    assert_eq!(
        metric(&addr, "tapbus_geoip_reloads_total", &["result=\"failed\""]),
        0.0
    );

    // Events flow (bounded: at most 3,000 replays of 120 events, 90 s) while the city
    // database is replaced the way geoipupdate does it: a new file renamed over the old one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replayer = {
        let (cap, sock, stop) = (cap.clone(), sock.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            let until = std::time::Instant::now() + Duration::from_secs(90);
            while n < 3000
                && std::time::Instant::now() < until
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                fstrm_replay_unix(&cap, &sock);
                n += 1;
                // Paced: a few thousand events a second, not as fast as it goes.
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    wait_until("first events", Duration::from_secs(20), || {
        lines_in(&stdout) >= 100
    });
    let fresh = dir.path().join("city.mmdb.new");
    write_city_db(&fresh, &city_rows("FR")).expect("new city db");
    std::fs::rename(&fresh, &city).expect("rename");
    wait_until("reloaded", Duration::from_secs(20), || {
        metric(&addr, "tapbus_geoip_reloads_total", &["result=\"ok\""]) >= 1.0
    });
    let after_reload = lines_in(&stdout);
    wait_until("events after the reload", Duration::from_secs(20), || {
        lines_in(&stdout) >= after_reload + 200
    });
    // A broken replacement keeps the database in use.
    let mut f = std::fs::File::create(&fresh).expect("garbage");
    f.write_all(b"this is no MaxMind DB").expect("write");
    drop(f);
    std::fs::rename(&fresh, &city).expect("rename");
    wait_until("reload refused", Duration::from_secs(20), || {
        metric(&addr, "tapbus_geoip_reloads_total", &["result=\"failed\""]) >= 1.0
    });
    let after_failure = lines_in(&stdout);
    wait_until("events after the failure", Duration::from_secs(20), || {
        lines_in(&stdout) >= after_failure + 200
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replays = replayer.join().expect("replayer");
    assert!(replays < 3000, "stopped by the test, not by the bound");

    let events = events_in(&stdout);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut switched = false;
    for (i, ev) in events.iter().enumerate() {
        let client = ev["network"]["query-ip"].as_str().expect("client");
        let w = CLIENTS
            .iter()
            .find(|c| c.0 == client)
            .expect("a known client");
        let mut want = want_geo(w);
        if client == "81.2.69.160" {
            let country = ev["geo"]["country"].as_str().unwrap_or("-");
            *seen
                .entry(if country == "GB" { "GB" } else { "FR" })
                .or_default() += 1;
            // GB until the reload, FR from then on (the events come in order): never
            // anything else, never back, and FR for everything after the reload was seen.
            switched |= country == "FR";
            if switched || i >= after_reload {
                want["country"] = "FR".into();
            }
        }
        assert_eq!(ev["geo"], want, "event {i}: {ev}");
    }
    assert!(
        seen.get("GB").copied().unwrap_or(0) > 0 && seen.get("FR").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
}

#[test]
fn a_corrupt_database_at_start_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.mmdb");
    std::fs::write(&bad, b"not a database").expect("write");
    for (key, env) in [
        ("enrich.geoip.city", "TAPBUS_ENRICH__GEOIP__CITY"),
        ("enrich.geoip.asn", "TAPBUS_ENRICH__GEOIP__ASN"),
    ] {
        for file in [bad.clone(), dir.path().join("missing.mmdb")] {
            let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
                .args(["--check", "-i", "file:///dev/null", "-o", "stdout"])
                .env(env, &file)
                .output()
                .expect("run broker");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.contains(key) && err.contains(&file.display().to_string()),
                "{err}"
            );
        }
    }
}
