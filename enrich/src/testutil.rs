//! Writes small MaxMind DB files (a GeoIP2-City and a GeoLite2-ASN database) from a table,
//! for this crate's tests and benches and the broker's tests. It generates input for, and
//! runs, a Perl script using `MaxMind::DB::Writer::Tree` (Debian's
//! `libmaxmind-db-writer-perl`, installed by `scripts/install-test-deps.sh`).
//!
//! The databases are IPv6 trees with the IPv4 space aliased (`alias_ipv6_to_ipv4`), as
//! MaxMind's are, so IPv4, IPv4-mapped and 6to4 addresses find the IPv4 entries. Reserved
//! networks are kept (`remove_reserved_networks => 0`) so that tests can put private
//! ranges in and check they are skipped by the reader, not just missing.

use std::{io, path::Path, process::Command};

use serde_json::{Map, Value, json};

/// One network of the table and what the databases say about it; `None` fields are left
/// out of the record. A row with no City field is not in the City database, one with no
/// ASN field not in the ASN database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoRow {
    /// CIDR: `81.2.69.0/24`, `2001:4860::/32`.
    pub network: String,
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

impl GeoRow {
    pub fn new(network: &str) -> GeoRow {
        GeoRow {
            network: network.to_owned(),
            ..GeoRow::default()
        }
    }
    pub fn country(mut self, iso: &str) -> GeoRow {
        self.country = Some(iso.to_owned());
        self
    }
    pub fn city(mut self, name: &str) -> GeoRow {
        self.city = Some(name.to_owned());
        self
    }
    pub fn asn(mut self, asn: u32, org: &str) -> GeoRow {
        self.asn = Some(asn);
        self.as_org = Some(org.to_owned());
        self
    }
}

/// Which database to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// `database_type` "GeoIP2-City": `country.iso_code`, `city.names.en`.
    City,
    /// `database_type` "GeoLite2-ASN": `autonomous_system_number`,
    /// `autonomous_system_organization`.
    Asn,
}

const SCRIPT: &str = r#"
use strict;
use warnings;
use JSON::PP;
use MaxMind::DB::Writer::Tree;
my ($in, $out, $type, $record_size) = @ARGV;
open(my $ifh, '<:raw', $in) or die "$in: $!";
my $rows = JSON::PP->new->utf8->decode(do { local $/; <$ifh> });
my %types = (
    country => 'map', iso_code => 'utf8_string', city => 'map', names => 'map',
    en => 'utf8_string', autonomous_system_number => 'uint32',
    autonomous_system_organization => 'utf8_string',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version => 6,
    record_size => $record_size,
    database_type => $type,
    languages => ['en'],
    description => { en => "tapbus test $type" },
    alias_ipv6_to_ipv4 => 1,
    remove_reserved_networks => 0,
    map_key_type_callback => sub { $types{ $_[0] } // die "no type for key $_[0]\n" },
);
$tree->insert_network($_->[0], $_->[1]) for @$rows;
open(my $ofh, '>:raw', $out) or die "$out: $!";
$tree->write_tree($ofh);
close($ofh) or die "$out: $!";
"#;

/// Writes a City database with the rows' country and city (record size 28).
pub fn write_city_db(path: &Path, rows: &[GeoRow]) -> io::Result<()> {
    write_db(path, DbKind::City, rows, 28)
}

/// Writes an ASN database with the rows' ASN and AS organisation (record size 24).
pub fn write_asn_db(path: &Path, rows: &[GeoRow]) -> io::Result<()> {
    write_db(path, DbKind::Asn, rows, 24)
}

/// Writes `kind` from `rows` to `path` (record size 24, 28 or 32). Later rows win where
/// networks overlap.
pub fn write_db(path: &Path, kind: DbKind, rows: &[GeoRow], record_size: u8) -> io::Result<()> {
    let mut table = Vec::new();
    for r in rows {
        let mut rec = Map::new();
        match kind {
            DbKind::City => {
                if let Some(c) = &r.country {
                    rec.insert("country".into(), json!({ "iso_code": c }));
                }
                if let Some(c) = &r.city {
                    rec.insert("city".into(), json!({ "names": { "en": c } }));
                }
            }
            DbKind::Asn => {
                if let Some(a) = r.asn {
                    rec.insert("autonomous_system_number".into(), json!(a));
                }
                if let Some(o) = &r.as_org {
                    rec.insert("autonomous_system_organization".into(), json!(o));
                }
            }
        }
        if !rec.is_empty() {
            table.push(json!([r.network, Value::Object(rec)]));
        }
    }
    let input = tempfile_path(path, "json");
    std::fs::write(&input, serde_json::to_vec(&table)?)?;
    let ty = match kind {
        DbKind::City => "GeoIP2-City",
        DbKind::Asn => "GeoLite2-ASN",
    };
    let out = Command::new("perl")
        .arg("-e")
        .arg(SCRIPT)
        .arg(&input)
        .arg(path)
        .arg(ty)
        .arg(record_size.to_string())
        .output();
    let _ = std::fs::remove_file(&input);
    let out = out.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running perl (apt-get install libmaxmind-db-writer-perl): {e}"),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "writing {} with MaxMind::DB::Writer::Tree failed ({}; is libmaxmind-db-writer-perl installed?): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `<path>.<pid>.<n>.<ext>` next to `path`.
fn tempfile_path(path: &Path, ext: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.{ext}", std::process::id()));
    path.with_file_name(name)
}
