//! The processes of the metrics path for the integration tests of this crate (it.rs,
//! dashboards.rs): the binaries, tapbus-mimir and tapbus-aggregate started against a
//! NATS server, and a capture replayed through a broker into JetStream.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::{free_port, http_get, wait_until};

pub fn mimir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-mimir"))
}

/// Another binary of the workspace (built when missing).
pub fn bin(package: &str) -> PathBuf {
    tapbus_testsupport::sibling_bin(&mimir_bin(), package, package)
}

/// tapbus-mimir from `tapbus.metrics.>` into `prom`, once its input is connected; returns
/// it and its metrics port.
pub fn start_mimir(nats: &Nats, prom: &Prometheus) -> (Proc, u16) {
    start_mimir_to(nats, &prom.write_url())
}

/// tapbus-mimir from `tapbus.metrics.>` writing to `url`, once its input is connected;
/// returns it and its metrics port.
pub fn start_mimir_to(nats: &Nats, url: &str) -> (Proc, u16) {
    let port = free_port();
    (start_mimir_listening(nats, url, port), port)
}

/// [`start_mimir_to`] with its `/metrics` on `port` (a scrape target, known before
/// Prometheus starts).
pub fn start_mimir_listening(nats: &Nats, url: &str, port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new(mimir_bin())
            .args([
                "--input",
                &format!("{}/tapbus.metrics.>", nats.url()),
                "--url",
                url,
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until("mimir subscribed", Duration::from_secs(20), || {
        http_get(&format!("127.0.0.1:{port}"), "/health").is_some()
    });
    p
}

/// tapbus-aggregate from `input` publishing batches every second to `nats`.
pub fn start_aggregate(nats: &Nats, input: &str, instance: &str, env: &[(&str, &str)]) -> Proc {
    start_aggregate_listening(nats, input, instance, env, "")
}

/// [`start_aggregate`] with its `/metrics` on `metrics_listen` (`""`: none).
pub fn start_aggregate_listening(
    nats: &Nats,
    input: &str,
    instance: &str,
    env: &[(&str, &str)],
    metrics_listen: &str,
) -> Proc {
    let mut cmd = Command::new(bin("tapbus-aggregate"));
    cmd.args([
        "--input",
        input,
        "--output",
        nats.url(),
        "--metrics-listen",
        metrics_listen,
        "--instance",
        instance,
    ])
    .env("TAPBUS_AGGREGATE__INTERVAL", "1s")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(&mut cmd)
}

/// The capture replayed by a broker (file input) into JetStream on `nats_url` (the
/// broker makes the stream `DNSTAP`).
pub fn replay(nats_url: &str, capture: &str) {
    tapbus_testsupport::jetstream::replay_capture(&bin("tapbus-broker"), nats_url, capture);
}

/// The JetStream pull-consumer URL of the stream `DNSTAP` on `nats` for `durable`.
pub fn durable_input(nats: &Nats, durable: &str) -> String {
    tapbus_testsupport::jetstream::dnstap_durable(nats.url(), durable)
}

/// One client of the geo capture: its address, what the test databases say of it
/// (country, ASN, AS organisation; `None`: not in them, or not looked up), and how many
/// queries it sends per round.
pub struct GeoClient {
    pub addr: &'static str,
    pub country: Option<&'static str>,
    pub asn: Option<u32>,
    pub as_org: Option<&'static str>,
    pub per_round: u64,
}

/// The geo capture's clients: four countries and ASNs (IPv4 and IPv6), a global address
/// the databases do not know, and a private one (never looked up: `geo` is `null`).
pub const GEO_CLIENTS: &[GeoClient] = &[
    GeoClient {
        addr: "81.2.69.160",
        country: Some("GB"),
        asn: Some(20712),
        as_org: Some("Andrews & Arnold Ltd"),
        per_round: 3,
    },
    GeoClient {
        addr: "89.160.20.129",
        country: Some("SE"),
        asn: Some(29518),
        as_org: Some("Bredband2 AB"),
        per_round: 1,
    },
    GeoClient {
        addr: "2001:4860:4860::8888",
        country: Some("US"),
        asn: Some(15169),
        as_org: Some("Google LLC"),
        per_round: 5,
    },
    GeoClient {
        addr: "2.16.5.9",
        country: Some("FR"),
        asn: Some(3215),
        as_org: Some("Orange"),
        per_round: 2,
    },
    GeoClient {
        addr: "8.8.4.4",
        country: None,
        asn: None,
        as_org: None,
        per_round: 1,
    },
    GeoClient {
        addr: "10.1.2.3",
        country: None,
        asn: None,
        as_org: None,
        per_round: 2,
    },
];

/// The identities the geo capture's queries alternate between.
pub const GEO_IDENTITIES: [&str; 2] = ["geo-a", "geo-b"];

/// City and ASN MaxMind DB files for [`GEO_CLIENTS`] in `dir` (the private range is in
/// them too: the broker must still not look it up).
pub fn geo_dbs(dir: &Path) -> (PathBuf, PathBuf) {
    use tapbus_enrich::testutil::{GeoRow, write_asn_db, write_city_db};
    let nets = [
        "81.2.69.0/24",
        "89.160.20.0/24",
        "2001:4860::/32",
        "2.16.0.0/16",
        "10.0.0.0/8",
    ];
    let mut city = Vec::new();
    let mut asn = Vec::new();
    for (net, c) in nets
        .iter()
        .zip(GEO_CLIENTS.iter().take(4).chain([&GEO_CLIENTS[5]]))
    {
        let cc = c.country.unwrap_or("ZZ");
        city.push(GeoRow::new(net).country(cc));
        asn.push(GeoRow::new(net).asn(c.asn.unwrap_or(64512), c.as_org.unwrap_or("private")));
    }
    let (cp, ap) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    write_city_db(&cp, &city).expect("city db");
    write_asn_db(&ap, &asn).expect("asn db");
    (cp, ap)
}

/// One dnstap frame: a CLIENT_QUERY (or, `response`, its CLIENT_RESPONSE) from `client`,
/// with a DNS id and times from `n` so no two frames are alike.
fn geo_frame(client: &str, identity: &str, n: u32, response: bool) -> Vec<u8> {
    use bytes::Bytes;
    use prost::Message as _;
    use tapbus_proto::dnstap::{Dnstap, Message};
    let ip: IpAddr = client.parse().expect("address");
    let (family, addr) = match ip {
        IpAddr::V4(a) => (1, a.octets().to_vec()),
        IpAddr::V6(a) => (2, a.octets().to_vec()),
    };
    let mut q = (n as u16).to_be_bytes().to_vec();
    q.extend_from_slice(&[if response { 0x81 } else { 1 }, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
    let (sec, nsec) = (1_800_000_000 + u64::from(n / 1000), (n % 1000) * 1000);
    let mut m = Message {
        r#type: Some(if response { 6 } else { 5 }),
        socket_family: Some(family),
        socket_protocol: Some(1),
        query_address: Some(Bytes::from(addr.clone())),
        response_address: Some(Bytes::from(addr)),
        query_port: Some(40000),
        response_port: Some(53),
        query_time_sec: Some(sec),
        query_time_nsec: Some(nsec),
        ..Default::default()
    };
    if response {
        m.response_time_sec = Some(sec);
        m.response_time_nsec = Some(nsec + 500);
        m.response_message = Some(Bytes::from(q));
    } else {
        m.query_message = Some(Bytes::from(q));
    }
    Dnstap {
        identity: Some(Bytes::from(identity.to_owned())),
        version: None,
        extra: None,
        r#type: Some(1),
        message: Some(m),
    }
    .encode_to_vec()
}

/// What the geo capture holds, counted independently of the pipeline.
#[derive(Debug, Default)]
pub struct GeoWant {
    /// Queries by country (`unknown` for no country).
    pub country: BTreeMap<String, u64>,
    /// Queries by ASN (`unknown` for no ASN).
    pub asn: BTreeMap<String, u64>,
    /// Queries by identity.
    pub identity: BTreeMap<String, u64>,
    /// Frames written (queries and responses).
    pub frames: u64,
    /// Every query's (identity, country or `unknown`), in capture order.
    pub queries: Vec<(String, String)>,
}

impl GeoWant {
    /// Queries by (identity, country) as aggregate counts them with `geo_top_n = bound`:
    /// an identity's first `bound` countries keep their own, later ones go to `other`
    /// (`unknown` is never folded); every pair present, `other` at 0 included.
    pub fn by_identity_country(&self, bound: usize) -> BTreeMap<(String, String), u64> {
        let mut kept: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (id, c) in &self.queries {
            out.entry((id.clone(), "other".to_owned())).or_insert(0);
            out.entry((id.clone(), "unknown".to_owned())).or_insert(0);
            let k = kept.entry(id).or_default();
            let key = if c == "unknown" || k.contains(&c.as_str()) {
                c.as_str()
            } else if k.len() < bound {
                k.push(c);
                c.as_str()
            } else {
                "other"
            };
            *out.entry((id.clone(), key.to_owned())).or_insert(0) += 1;
        }
        out
    }
}

/// Writes the geo capture to `path`: `rounds` rounds in which every client of
/// [`GEO_CLIENTS`] sends its `per_round` queries, each followed by its response (not
/// counted by the geo families), alternating between [`GEO_IDENTITIES`].
pub fn geo_capture(path: &Path, rounds: u32) -> GeoWant {
    let mut want = GeoWant::default();
    let mut frames = Vec::new();
    let mut n = 0u32;
    for _ in 0..rounds {
        for c in GEO_CLIENTS {
            for _ in 0..c.per_round {
                let identity = GEO_IDENTITIES[n as usize % 2];
                frames.push(geo_frame(c.addr, identity, n, false));
                frames.push(geo_frame(c.addr, identity, n, true));
                n += 1;
                let country = c.country.unwrap_or("unknown").to_owned();
                *want.country.entry(country.clone()).or_default() += 1;
                want.queries.push((identity.to_owned(), country));
                let asn = c.asn.map_or("unknown".into(), |a| a.to_string());
                *want.asn.entry(asn).or_default() += 1;
                *want.identity.entry(identity.to_owned()).or_default() += 1;
            }
        }
    }
    want.frames = frames.len() as u64;
    let bytes = tapbus_testsupport::fstrm::unidirectional_bytes(b"protobuf:dnstap.Dnstap", &frames);
    std::fs::write(path, bytes).expect("geo capture");
    want
}

/// A broker with `[enrich.geoip]` on `city` / `asn` replays the capture file `path` into
/// JetStream on `nats_url` (stream `DNSTAP`) and exits; returns the events it published
/// (its stdout output).
pub fn replay_geo(nats_url: &str, path: &Path, city: &Path, asn: &Path) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(bin("tapbus-broker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TAPBUS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env(
            "TAPBUS_INPUTS__FILE__URL",
            format!("file://{}", path.display()),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_OUTPUTS__BUS__URL", nats_url)
        .env("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")
        .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
        .env("TAPBUS_ENRICH__GEOIP__CITY", city)
        .env("TAPBUS_ENRICH__GEOIP__ASN", asn)
        .stderr(Stdio::piped())
        .output()
        .expect("run broker");
    assert!(
        out.status.success(),
        "broker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect()
}

/// `sum by (LABEL)` from a Prometheus query answer: label value -> value.
pub fn by_label(answer: &str, label: &str) -> BTreeMap<String, u64> {
    let v: serde_json::Value = serde_json::from_str(answer).unwrap_or(serde_json::Value::Null);
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let k = r["metric"][label].as_str()?.to_string();
                    let n: f64 = r["value"][1].as_str()?.parse().ok()?;
                    Some((k, n as u64))
                })
                .collect()
        })
        .unwrap_or_default()
}
