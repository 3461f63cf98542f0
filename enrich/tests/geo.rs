//! GeoIP/ASN lookups against databases written from a table (tests/support), reloads,
//! start errors, the JSON writer.

mod support;

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;
use tapbus_enrich::{Error, FileOutcome, GeoInfo, GeoIp, GeoIpConfig, geo, testutil::GeoRow};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An address inside `net` (the network address plus 5).
fn inside(net: &str) -> IpAddr {
    let base = net.split('/').next().expect("cidr");
    match ip(base) {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 5).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 5).into()),
    }
}

fn expected(row: &GeoRow, city: bool, asn: bool) -> GeoInfo {
    GeoInfo {
        country: row.country.clone().filter(|_| city),
        city: row.city.clone().filter(|_| city),
        asn: row.asn.filter(|_| asn),
        as_org: row.as_org.clone().filter(|_| asn),
    }
}

/// write_geo's output, checked to be JSON with the keys in the documented order.
fn geo_json(g: &GeoIp, addr: IpAddr) -> (bool, Value) {
    let mut out = b"[".to_vec();
    let object = g.write_geo(addr, &mut out);
    out.push(b']');
    let v: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{addr}: {e}: {}", String::from_utf8_lossy(&out)));
    let v = v[0].clone();
    assert_eq!(object, v.is_object(), "{addr}: return value vs {v}");
    let text = String::from_utf8_lossy(&out);
    let pos: Vec<usize> = ["\"country\":", "\"city\":", "\"asn\":", "\"as-org\":"]
        .iter()
        .filter_map(|k| text.find(k))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "key order: {text}");
    (object, v)
}

fn info_to_json(i: &GeoInfo) -> Value {
    if i.is_empty() {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    if let Some(c) = &i.country {
        m.insert("country".into(), c.clone().into());
    }
    if let Some(c) = &i.city {
        m.insert("city".into(), c.clone().into());
    }
    if let Some(a) = i.asn {
        m.insert("asn".into(), a.into());
    }
    if let Some(o) = &i.as_org {
        m.insert("as-org".into(), o.clone().into());
    }
    Value::Object(m)
}

fn check_table(g: &GeoIp, city: bool, asn: bool) {
    for row in table() {
        let want = expected(&row, city, asn);
        let mut addrs = vec![inside(&row.network)];
        if let IpAddr::V4(a) = addrs[0] {
            addrs.push(IpAddr::V6(a.to_ipv6_mapped()));
        }
        for a in addrs {
            assert_eq!(g.lookup(a), want, "{a} ({})", row.network);
            // Twice: the second comes from the cache.
            for _ in 0..2 {
                let (_, v) = geo_json(g, a);
                assert_eq!(v, info_to_json(&want), "{a} ({})", row.network);
            }
        }
    }
}

#[test]
fn every_field_matches_the_table() {
    let dbs = write_dbs(&all_rows());
    let g = open(Some(&dbs.city), Some(&dbs.asn));
    check_table(&g, true, true);
    assert!(g.cache_hits() > 0);
    // Another address of each network: not in the address cache, its records are.
    let before = g.record_cache_hits();
    for row in table() {
        let IpAddr::V4(a) = inside(&row.network) else {
            continue;
        };
        let other = IpAddr::V4((u32::from(a) + 1).into());
        assert_eq!(
            geo_json(&g, other).1,
            info_to_json(&expected(&row, true, true)),
            "{other}"
        );
    }
    assert!(g.record_cache_hits() > before);
    assert_eq!(g.lookups_skipped(), 0);
    assert_eq!(g.lookup_errors(), 0);
}

#[test]
fn city_only_and_asn_only_leave_the_other_fields_out() {
    let dbs = write_dbs(&all_rows());
    check_table(&open(Some(&dbs.city), None), true, false);
    check_table(&open(None, Some(&dbs.asn)), false, true);
    let none = open(None, None);
    check_table(&none, false, false);
}

#[test]
fn unknown_addresses_give_nothing() {
    let dbs = write_dbs(&all_rows());
    let g = open(Some(&dbs.city), Some(&dbs.asn));
    for a in ["8.8.4.4", "81.2.70.1", "2a00:1450::1", "::ffff:8.8.8.8"] {
        assert!(g.lookup(ip(a)).is_empty(), "{a}");
        assert_eq!(geo_json(&g, ip(a)), (false, Value::Null), "{a}");
    }
    assert_eq!(g.lookups_skipped(), 0);
    assert_eq!(g.lookups(), 8);
}

#[test]
fn non_global_addresses_are_not_looked_up() {
    let dbs = write_dbs(&all_rows());
    let g = open(Some(&dbs.city), Some(&dbs.asn));
    let addrs = [
        "10.1.2.3",
        "192.0.2.5",
        "100.64.1.1",
        "::ffff:10.1.2.3",
        "fd00::1",
        "127.0.0.1",
        "::1",
    ];
    for a in addrs {
        assert!(g.lookup(ip(a)).is_empty(), "{a}");
        assert_eq!(geo_json(&g, ip(a)), (false, Value::Null), "{a}");
    }
    assert_eq!(g.lookups_skipped(), 2 * addrs.len() as u64);
    assert_eq!(g.lookups(), 0);
    // They are in the databases: a reader that did look them up would find them.
    assert!(geo::global(ip("10.1.2.3")).is_none());
}

#[test]
fn escaping_of_names() {
    let dbs = write_dbs(&table());
    let g = open(Some(&dbs.city), Some(&dbs.asn));
    let mut out = Vec::new();
    assert!(g.write_geo(ip("89.160.20.9"), &mut out));
    let text = String::from_utf8(out.clone()).expect("utf-8");
    assert!(
        text.contains(r#"Quote\" Back\\slash \u0001 Ctl \u007f Saint-Étienne"#),
        "{text}"
    );
    assert!(text.contains(r#""as-org":"Org \"Q\"\t\n""#), "{text}");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["city"], ODD_CITY);
    assert_eq!(v["as-org"], ODD_ORG);
    assert_eq!(
        text,
        format!(
            r#"{{"country":"SE","city":{},"asn":29518,"as-org":{}}}"#,
            serde_json::to_string(ODD_CITY)
                .expect("json")
                .replace('\u{7f}', "\\u007f"),
            serde_json::to_string(ODD_ORG).expect("json")
        )
    );
}

#[test]
fn ipv6_and_mapped() {
    let dbs = write_dbs(&table());
    let g = open(Some(&dbs.city), Some(&dbs.asn));
    let (_, v) = geo_json(&g, ip("2001:4860:4860::8888"));
    assert_eq!(
        v,
        serde_json::json!({"country":"US","city":"Mountain View","asn":15169,"as-org":"Google LLC"})
    );
    let mapped = IpAddr::V6(Ipv6Addr::from(0xffff_5102_45a0_u128)); // ::ffff:81.2.69.160
    assert_eq!(g.lookup(mapped).country.as_deref(), Some("GB"));
}

fn replace(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::rename(src, dst).expect("rename");
}

#[test]
fn reload_replaced_file_and_keep_old_on_garbage() {
    let dbs = write_dbs(&table());
    let dir = dbs.dir.path();
    let city = dir.join("one.mmdb");
    write_one_country(&city, "GB", 0);
    let g = open(Some(&city), Some(&dbs.asn));
    let a = ip("81.2.69.160");
    let country = |g: &GeoIp| g.lookup(a).country;
    let cached = |g: &GeoIp| geo_json(g, a).1["country"].clone();
    assert_eq!(country(&g), Some("GB".into()));
    assert_eq!(cached(&g), "GB");
    assert_eq!(cached(&g), "GB");

    let out = g.check_reload();
    assert_eq!(out.city, FileOutcome::Unchanged);
    assert_eq!(out.asn, FileOutcome::Unchanged);

    // Atomic rename of a new file.
    let tmp = dir.join("new.mmdb");
    write_one_country(&tmp, "FR", 0);
    replace(&tmp, &city);
    let out = g.check_reload();
    assert_eq!(out.city, FileOutcome::Reloaded);
    assert_eq!(out.asn, FileOutcome::Unchanged);
    assert_eq!(country(&g), Some("FR".into()));
    assert_eq!(cached(&g), "FR", "the cache of the old generation is gone");
    assert_eq!(g.lookup(ip("81.2.69.160")).asn, Some(20712), "ASN db kept");
    assert_eq!(g.reloads(), 1);
    assert_eq!(g.check_reload().city, FileOutcome::Unchanged);

    // Garbage: the old one stays, the failure is counted once.
    std::fs::write(&tmp, b"not a maxmind db at all").expect("write");
    replace(&tmp, &city);
    assert!(matches!(g.check_reload().city, FileOutcome::Failed(_)));
    assert_eq!(country(&g), Some("FR".into()));
    assert_eq!(cached(&g), "FR");
    assert_eq!(g.reload_failures(), 1);
    assert_eq!(g.check_reload().city, FileOutcome::Unchanged);
    assert_eq!(g.reload_failures(), 1);

    // A truncated database.
    write_one_country(&tmp, "DE", 3);
    let bytes = std::fs::read(&tmp).expect("read");
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).expect("write");
    replace(&tmp, &city);
    assert!(matches!(g.check_reload().city, FileOutcome::Failed(_)));
    assert_eq!(g.reload_failures(), 2);
    assert_eq!(country(&g), Some("FR".into()));

    // Rewritten in place (same inode; a different size).
    std::fs::write(&city, &bytes).expect("write");
    assert_eq!(g.check_reload().city, FileOutcome::Reloaded);
    assert_eq!(country(&g), Some("DE".into()));
    assert_eq!(g.reloads(), 2);

    // Deleted: failure once, old kept; back: reloaded.
    std::fs::remove_file(&city).expect("rm");
    assert!(matches!(g.check_reload().city, FileOutcome::Failed(_)));
    assert_eq!(g.check_reload().city, FileOutcome::Unchanged);
    assert_eq!(g.reload_failures(), 3);
    assert_eq!(country(&g), Some("DE".into()));
    write_one_country(&tmp, "IT", 0);
    replace(&tmp, &city);
    assert_eq!(g.check_reload().city, FileOutcome::Reloaded);
    assert_eq!(country(&g), Some("IT".into()));

    // A valid database of the wrong kind is refused too.
    tapbus_enrich::testutil::write_asn_db(&tmp, &table()).expect("asn db");
    replace(&tmp, &city);
    match g.check_reload().city {
        FileOutcome::Failed(r) => assert!(r.contains("GeoLite2-ASN"), "{r}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(country(&g), Some("IT".into()));
}

#[test]
fn clones_see_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let city = dir.path().join("c.mmdb");
    write_one_country(&city, "GB", 0);
    let g = open(Some(&city), None);
    let g2 = g.clone();
    let tmp = dir.path().join("t.mmdb");
    write_one_country(&tmp, "FR", 0);
    replace(&tmp, &city);
    assert_eq!(g.check_reload().city, FileOutcome::Reloaded);
    assert_eq!(g2.lookup(ip("81.2.69.1")).country.as_deref(), Some("FR"));
    assert_eq!(g2.check_reload().asn, FileOutcome::NotConfigured);
}

#[test]
fn concurrent_lookups_while_reloading_see_old_or_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let city = dir.path().join("c.mmdb");
    let gb = dir.path().join("gb.mmdb");
    let fr = dir.path().join("fr.mmdb");
    write_one_country(&gb, "GB", 0);
    write_one_country(&fr, "FR", 1);
    std::fs::copy(&gb, &city).expect("copy");
    let g = GeoIp::open(&GeoIpConfig {
        cache_size: 4,
        ..config(Some(&city), None)
    })
    .expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let g = g.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = [0u64; 2];
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for a in ["81.2.69.1", "81.2.69.2", "::ffff:81.2.69.3"] {
                        out.clear();
                        assert!(g.write_geo(ip(a), &mut out));
                        let v: Value = serde_json::from_slice(&out).expect("json");
                        match v["country"].as_str() {
                            Some("GB") => seen[0] += 1,
                            Some("FR") => seen[1] += 1,
                            other => panic!("thread {t}: {a}: {other:?}"),
                        }
                        let c = g.lookup(ip(a)).country;
                        assert!(matches!(c.as_deref(), Some("GB" | "FR")), "{c:?}");
                    }
                }
                seen
            })
        })
        .collect();
    let garbage = dir.path().join("garbage");
    for i in 0..30 {
        let tmp = dir.path().join("tmp.mmdb");
        if i % 5 == 4 {
            std::fs::write(&garbage, format!("garbage {i}")).expect("write");
            std::fs::copy(&garbage, &tmp).expect("copy");
        } else {
            std::fs::copy(if i % 2 == 0 { &fr } else { &gb }, &tmp).expect("copy");
        }
        replace(&tmp, &city);
        let _ = g.check_reload();
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = [0u64; 2];
    for t in threads {
        let s = t.join().expect("a lookup thread panicked");
        total[0] += s[0];
        total[1] += s[1];
    }
    assert!(total[0] + total[1] > 0);
    assert_eq!(g.reloads(), 24);
    assert_eq!(g.reload_failures(), 6);
}

fn open_err(cfg: &GeoIpConfig) -> String {
    match GeoIp::open(cfg) {
        Err(e @ Error::Open { .. }) => e.to_string(),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn missing_or_corrupt_file_at_start_names_key_and_path() {
    let dbs = write_dbs(&table());
    let missing = dbs.dir.path().join("missing.mmdb");
    let msg = open_err(&config(Some(&missing), Some(&dbs.asn)));
    assert!(msg.starts_with("enrich.geoip.city = "), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert_eq!(msg.matches("enrich.geoip").count(), 1, "{msg}");

    let corrupt = dbs.dir.path().join("corrupt.mmdb");
    std::fs::write(&corrupt, b"\xab\xcd\xefMaxMind.com garbage").expect("write");
    let msg = open_err(&config(Some(&dbs.city), Some(&corrupt)));
    assert!(msg.starts_with("enrich.geoip.asn = "), "{msg}");
    assert!(msg.contains(&corrupt.display().to_string()), "{msg}");

    // Swapped files: the wrong kind of database.
    let msg = open_err(&config(Some(&dbs.asn), Some(&dbs.city)));
    assert!(msg.starts_with("enrich.geoip.city = "), "{msg}");
    assert!(msg.contains("GeoLite2-ASN"), "{msg}");
}

#[test]
fn config_from_toml() {
    #[derive(serde::Deserialize)]
    struct Root {
        enrich: Enrich,
    }
    #[derive(serde::Deserialize)]
    struct Enrich {
        geoip: GeoIpConfig,
    }
    let r: Root = toml::from_str(
        r#"
        [enrich.geoip]
        city = "/var/lib/GeoIP/GeoLite2-City.mmdb"
        asn = "/var/lib/GeoIP/GeoLite2-ASN.mmdb"
        response = true
        reload_interval = "1m 30s"
        "#,
    )
    .expect("toml");
    let c = r.enrich.geoip;
    assert_eq!(
        c.city.as_deref(),
        Some(std::path::Path::new("/var/lib/GeoIP/GeoLite2-City.mmdb"))
    );
    assert!(c.response);
    assert_eq!(c.reload_interval, Duration::from_secs(90));
    assert_eq!(c.cache_size, 4096);
    let d: GeoIpConfig = toml::from_str("").expect("defaults");
    assert_eq!(d, GeoIpConfig::default());
    assert_eq!(d.reload_interval, Duration::from_secs(10));
    assert!(toml::from_str::<GeoIpConfig>("citty = \"x\"").is_err());
}

#[tokio::test]
async fn reload_task_picks_up_a_replaced_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let city = dir.path().join("c.mmdb");
    write_one_country(&city, "GB", 0);
    let g = GeoIp::open(&GeoIpConfig {
        reload_interval: Duration::from_millis(50),
        ..config(Some(&city), None)
    })
    .expect("open");
    let task = g.spawn_reload_task().expect("task");
    let tmp = dir.path().join("t.mmdb");
    write_one_country(&tmp, "FR", 0);
    replace(&tmp, &city);
    let start = Instant::now();
    while g.lookup(ip("81.2.69.1")).country.as_deref() != Some("FR") {
        assert!(start.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(
        GeoIp::open(&GeoIpConfig {
            reload_interval: Duration::ZERO,
            ..config(Some(&city), None)
        })
        .expect("open")
        .spawn_reload_task()
        .is_none()
    );
}

/// A City database whose data section is all 0xff (maps of maps as keys): it opens (metadata and tree are fine) but
/// fails verification, and its records cannot be decoded.
fn bad_data_section(path: &std::path::Path) {
    write_one_country(path, "GB", 2);
    let mut bytes = std::fs::read(path).expect("read");
    let (nodes, record_size) = {
        let r = maxminddb::Reader::open_readfile(path).expect("valid before");
        (
            r.metadata().node_count as usize,
            r.metadata().record_size as usize,
        )
    };
    let data_start = nodes * record_size * 2 / 8 + 16;
    let marker = b"\xab\xcd\xefMaxMind.com";
    let data_end = bytes
        .windows(marker.len())
        .rposition(|w| w == marker)
        .expect("metadata marker");
    bytes[data_start..data_end].fill(0xff);
    std::fs::write(path, &bytes).expect("write");
}

#[test]
fn verification_at_start_and_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let city = dir.path().join("bad.mmdb");
    bad_data_section(&city);
    let msg = open_err(&config(Some(&city), None));
    assert!(msg.starts_with("enrich.geoip.city = "), "{msg}");
    assert!(msg.contains("verification failed"), "{msg}");
    // Not verified: opens; the records are unreadable, so no field, counted.
    let g = GeoIp::open(&GeoIpConfig {
        verify: false,
        ..config(Some(&city), None)
    })
    .expect("opens without verification");
    assert!(g.lookup(ip("81.2.69.1")).is_empty());
    assert_eq!(geo_json(&g, ip("81.2.69.1")), (false, Value::Null));
    assert_eq!(g.lookup_errors(), 2);
}
