//! Test databases for the GeoIP tests: one table, written as a City and an ASN database by
//! `tapbus_enrich::testutil` (Perl's MaxMind::DB::Writer).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tapbus_enrich::{
    GeoIp, GeoIpConfig,
    testutil::{GeoRow, write_asn_db, write_city_db},
};

/// Names with a quote, a backslash, a control character and DEL, to check the escaping.
pub const ODD_CITY: &str = "Quote\" Back\\slash \u{1} Ctl \u{7f} Saint-Étienne";
pub const ODD_ORG: &str = "Org \"Q\"\t\n";

/// The table the test databases are built from (global networks).
pub fn table() -> Vec<GeoRow> {
    vec![
        GeoRow::new("81.2.69.0/24")
            .country("GB")
            .city("London")
            .asn(20712, "Andrews & Arnold Ltd"),
        GeoRow::new("89.160.20.0/24")
            .country("SE")
            .city(ODD_CITY)
            .asn(29518, ODD_ORG),
        GeoRow::new("175.16.199.0/24")
            .country("CN")
            .city("Changchun"),
        GeoRow::new("1.0.0.0/24").asn(13335, "Cloudflare, Inc."),
        GeoRow::new("2001:4860::/32")
            .country("US")
            .city("Mountain View")
            .asn(15169, "Google LLC"),
        GeoRow::new("2a02:ff0::/32")
            .country("FR")
            .asn(3215, "Orange"),
        GeoRow {
            asn: Some(64500),
            ..GeoRow::new("2a01:e00::/26").country("FR")
        },
    ]
}

/// Non-global networks that are in the databases too, to show they are skipped by the
/// reader and not merely missing.
pub fn reserved_rows() -> Vec<GeoRow> {
    vec![
        GeoRow::new("10.1.0.0/16")
            .country("XX")
            .city("Private")
            .asn(64512, "Private"),
        GeoRow::new("192.0.2.0/24")
            .country("XX")
            .city("Doc")
            .asn(64496, "Doc"),
        GeoRow::new("100.64.0.0/10")
            .country("XX")
            .city("Shared")
            .asn(64513, "CGN"),
        GeoRow::new("fd00::/8")
            .country("XX")
            .city("ULA")
            .asn(64514, "ULA"),
    ]
}

pub struct Dbs {
    pub dir: tempfile::TempDir,
    pub city: PathBuf,
    pub asn: PathBuf,
}

pub fn write_dbs(rows: &[GeoRow]) -> Dbs {
    let dir = tempfile::tempdir().expect("tempdir");
    let city = dir.path().join("city.mmdb");
    let asn = dir.path().join("asn.mmdb");
    write_city_db(&city, rows).expect("writing the City test db");
    write_asn_db(&asn, rows).expect("writing the ASN test db");
    Dbs { dir, city, asn }
}

pub fn all_rows() -> Vec<GeoRow> {
    let mut rows = table();
    rows.extend(reserved_rows());
    rows
}

pub fn config(city: Option<&Path>, asn: Option<&Path>) -> GeoIpConfig {
    GeoIpConfig {
        city: city.map(Path::to_path_buf),
        asn: asn.map(Path::to_path_buf),
        ..GeoIpConfig::default()
    }
}

pub fn open(city: Option<&Path>, asn: Option<&Path>) -> GeoIp {
    GeoIp::open(&config(city, asn)).expect("opening the test dbs")
}

/// A City database mapping 81.2.69.0/24 to `country`; `extra` more networks change its
/// size (for in-place rewrites, whose mtime may not change).
pub fn write_one_country(path: &Path, country: &str, extra: usize) {
    let mut rows = vec![GeoRow::new("81.2.69.0/24").country(country).city("Town")];
    for i in 0..extra {
        rows.push(GeoRow::new(&format!("5.{}.0.0/16", i + 1)).country("ZZ"));
    }
    write_city_db(path, &rows).expect("writing a City test db");
}
