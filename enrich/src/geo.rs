//! GeoIP and ASN of an address from MaxMind DB files (GeoLite2/GeoIP2 City or Country, and
//! ASN; DB-IP's files have the same format), for the broker's JSON encoder, which calls
//! [`GeoIp::write_geo`] once per event for the query address (and the response address
//! when `response = true`). The files are read into memory, verified, and swapped for new
//! ones by [`GeoIp::check_reload`] when replaced on disk; lookups never wait for a reload.
//!
//! # Addresses that are not looked up
//!
//! Only globally routable unicast addresses are looked up; these ranges are skipped
//! (written as `null`, counted by [`GeoIp::lookups_skipped`]):
//!
//! * IPv4: `0.0.0.0/8` (this network, unspecified), `10.0.0.0/8`, `172.16.0.0/12`,
//!   `192.168.0.0/16` (private), `100.64.0.0/10` (shared address space, CGNAT),
//!   `127.0.0.0/8` (loopback), `169.254.0.0/16` (link-local), `192.0.0.0/24` (IETF
//!   protocol assignments), `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`
//!   (documentation), `198.18.0.0/15` (benchmarking), `224.0.0.0/4` (multicast),
//!   `240.0.0.0/4` (reserved, with the broadcast address).
//! * IPv6: `::/96` (unspecified, loopback `::1`, deprecated IPv4-compatible),
//!   `100::/64` (discard-only), `2001:db8::/32` and `3fff::/20` (documentation),
//!   `fc00::/7` (unique local), `fe80::/10` (link-local), `fec0::/10` (deprecated
//!   site-local), `ff00::/8` (multicast).
//! * An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is looked up (and skipped) as the
//!   IPv4 address it carries. Other translated forms (NAT64 `64:ff9b::/96`, 6to4
//!   `2002::/16`, Teredo) are looked up as the IPv6 addresses they are.
//!
//! Test databases must therefore use addresses outside these ranges (the tests use
//! `81.2.69.0/24`, `2001:4860::/32`, ...): a real `192.0.2.0/24` entry is never reached.
//!
//! # Fields
//!
//! `country` is the record's `country.iso_code` (not `registered_country`), `city` is
//! `city.names.en`, `asn` and `as-org` are `autonomous_system_number` and
//! `autonomous_system_organization` of the ASN database. A field whose database is not
//! configured, or which the database does not have for the address, is left out; an
//! address with no field at all is `null`. Only these fields are decoded, borrowed from
//! the file's bytes (no `geoip2::City` with all its names).
//!
//! # Cache
//!
//! Each loaded generation of the databases has two bounded two-way set-associative caches
//! (`cache_size` entries each, rounded up to a power of two; 0 turns them off) of the JSON
//! written: one keyed by the address, one by the pair of records the address leads to
//! (their offsets in the files). DNS traffic repeats its addresses (a resolver's clients,
//! the servers it asks), so most lookups are a hash, an uncontended `try_lock` and a copy;
//! a new address in a network already seen costs the two tree walks but no decoding. A
//! set held by another thread is not waited for: the lookup goes on without it. A reload
//! starts new, empty caches with the new generation. Counted by [`GeoIp::cache_hits`]
//! and [`GeoIp::record_cache_hits`].

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use maxminddb::Reader;
use serde::Deserialize;

use crate::json;

/// The configuration key of the City/Country database, used in errors and logs.
pub const CITY_KEY: &str = "enrich.geoip.city";
/// The configuration key of the ASN database.
pub const ASN_KEY: &str = "enrich.geoip.asn";

/// `[enrich.geoip]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A GeoLite2/GeoIP2 (or DB-IP) City or Country database.
    #[serde(default)]
    pub city: Option<PathBuf>,
    /// A GeoLite2/GeoIP2 ASN (or ISP, or DB-IP ASN) database.
    #[serde(default)]
    pub asn: Option<PathBuf>,
    /// Also look up the response address (the encoder reads this).
    #[serde(default)]
    pub response: bool,
    /// How often the files are checked for replacement; `0s` turns reloading off.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Entries of each of the two per-generation caches (module docs; rounded up to a
    /// power of two, at most 2^20); 0 turns the caches off.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Verify every file completely (`Reader::verify`: the whole search tree and data
    /// section) before using it, at start and at each reload. Off: only the checks of
    /// opening (metadata, tree layout); a bad record then shows at lookup time as a
    /// missing field counted by [`GeoIp::lookup_errors`].
    #[serde(default = "default_verify")]
    pub verify: bool,
}

fn default_verify() -> bool {
    true
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_cache_size() -> usize {
    4096
}

const MAX_CACHE_SIZE: usize = 1 << 20;

impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            city: None,
            asn: None,
            response: false,
            reload_interval: default_reload_interval(),
            cache_size: default_cache_size(),
            verify: default_verify(),
        }
    }
}

/// A database that cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing, unreadable, not a MaxMind DB, fails verification, or is not
    /// the kind of database the key wants.
    #[error("{key} = {}: {reason}", path.display())]
    Open {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// What is known of an address (owned; the encoder's path is [`GeoIp::write_geo`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoInfo {
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

impl GeoInfo {
    pub fn is_empty(&self) -> bool {
        self.country.is_none() && self.city.is_none() && self.asn.is_none() && self.as_org.is_none()
    }
}

/// What [`GeoIp::check_reload`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// No file configured for this key.
    NotConfigured,
    /// Same size, modification time and inode as when last seen (or still failing the
    /// same way: a failure is logged and counted once per change of the file).
    Unchanged,
    /// The file changed and the new one is in use.
    Reloaded,
    /// The file changed (or disappeared) and the new one cannot be used; the old one stays.
    Failed(String),
}

/// The result of one [`GeoIp::check_reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub city: FileOutcome,
    pub asn: FileOutcome,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
    dev: u64,
}

fn stamp(path: &Path) -> Result<Stamp, String> {
    let m = fs::metadata(path).map_err(|e| e.to_string())?;
    Ok(Stamp {
        len: m.len(),
        mtime: m.modified().ok(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

struct Db {
    reader: Reader<Vec<u8>>,
}

/// Opens, verifies and type-checks one database; the error is the reason only.
fn open_db(key: &'static str, path: &Path, verify: bool) -> Result<Db, String> {
    let reader = Reader::open_readfile(path).map_err(|e| e.to_string())?;
    if verify {
        reader
            .verify()
            .map_err(|e| format!("verification failed: {e}"))?;
    }
    let ty = &reader.metadata().database_type;
    let ok = if key == CITY_KEY {
        ["City", "Country", "Enterprise"]
            .iter()
            .any(|k| ty.contains(k))
    } else {
        ty.contains("ASN") || ty.contains("ISP")
    };
    if !ok {
        return Err(format!(
            "database type {ty:?} is not a{} database",
            if key == CITY_KEY {
                " City or Country"
            } else {
                "n ASN"
            }
        ));
    }
    Ok(Db { reader })
}

/// One loaded set of databases and its cache.
struct Generation {
    city: Option<Arc<Db>>,
    asn: Option<Arc<Db>>,
    /// Address -> JSON.
    cache: Cache,
    /// Pair of records (data offsets) -> JSON: a new address in a known network costs two
    /// tree walks, not two decodes.
    records: Cache,
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

/// The fields found, borrowed from the readers.
#[derive(Default)]
struct Found<'a> {
    country: Option<&'a str>,
    city: Option<&'a str>,
    asn: Option<u32>,
    as_org: Option<&'a str>,
}

impl Found<'_> {
    /// Writes the object (or `null`); true when an object was written.
    fn write_json(&self, out: &mut Vec<u8>) -> bool {
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>, key: &[u8]| {
            out.push(if first { b'{' } else { b',' });
            first = false;
            out.extend_from_slice(key);
        };
        if let Some(c) = self.country {
            sep(out, b"\"country\":");
            json::write_str(out, c);
        }
        if let Some(c) = self.city {
            sep(out, b"\"city\":");
            json::write_str(out, c);
        }
        if let Some(a) = self.asn {
            sep(out, b"\"asn\":");
            json::write_u32(out, a);
        }
        if let Some(o) = self.as_org {
            sep(out, b"\"as-org\":");
            json::write_str(out, o);
        }
        if first {
            out.extend_from_slice(b"null");
            false
        } else {
            out.push(b'}');
            true
        }
    }
}

type Hit<'a> = Option<maxminddb::LookupResult<'a, Vec<u8>>>;

impl Generation {
    /// Walks the trees: the records of `ip` (data offsets and all), not decoded yet.
    fn walk(&self, ip: IpAddr, counters: &Counters) -> (Hit<'_>, Hit<'_>) {
        fn walk<'a>(db: &'a Option<Arc<Db>>, ip: IpAddr, counters: &Counters) -> Hit<'a> {
            let db = db.as_ref()?;
            match db.reader.lookup(ip) {
                Ok(r) if r.has_data() => Some(r),
                Ok(_) => None,
                Err(_) => {
                    counters.lookup_errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }
        (
            walk(&self.city, ip, counters),
            walk(&self.asn, ip, counters),
        )
    }

    /// Decodes the fields of the records found by [`walk`](Self::walk).
    fn decode<'a>(city: &Hit<'a>, asn: &Hit<'a>, counters: &Counters) -> Found<'a> {
        let mut f = Found::default();
        if let Some(r) = city {
            match r.decode::<CityRecord<'a>>() {
                Ok(Some(rec)) => {
                    f.country = rec.country.and_then(|c| c.iso_code);
                    f.city = rec.city.and_then(|c| c.names).and_then(|n| n.en);
                }
                Ok(None) => {}
                Err(_) => {
                    counters.lookup_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(r) = asn {
            match r.decode::<AsnRecord<'a>>() {
                Ok(Some(rec)) => {
                    f.asn = rec.autonomous_system_number;
                    f.as_org = rec.autonomous_system_organization;
                }
                Ok(None) => {}
                Err(_) => {
                    counters.lookup_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        f
    }

    fn find(&self, ip: IpAddr, counters: &Counters) -> Found<'_> {
        let (city, asn) = self.walk(ip, counters);
        Self::decode(&city, &asn, counters)
    }
}

/// A cache entry: a key and the JSON written for it.
type Entry = Option<(u128, Box<[u8]>)>;
/// A set of a two-way set-associative cache: the newest entry first.
type Set = Mutex<[Entry; 2]>;
type Locked<'a> = Option<MutexGuard<'a, [Entry; 2]>>;

/// A bounded two-way set-associative cache of the JSON written for a key: an address
/// ([`addr_key`]) or a pair of records ([`record_key`]).
struct Cache {
    sets: Box<[Set]>,
    mask: usize,
}

/// An address as a cache key: IPv6 as it is, IPv4 as its IPv4-mapped form (which
/// [`global`] never passes on as IPv6, so the two cannot collide).
fn addr_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The records of an address as a cache key: both data offsets (0 for none).
fn record_key(city: &Hit<'_>, asn: &Hit<'_>) -> u128 {
    let off = |h: &Hit<'_>| {
        h.as_ref()
            .and_then(|r| r.offset())
            .map_or(0, |o| o as u128 + 1)
    };
    (off(city) << 64) | off(asn)
}

impl Cache {
    /// `size` entries (rounded up to a power of two, at least 2) in sets of two; 0: none.
    fn new(size: usize) -> Cache {
        let sets = if size == 0 {
            0
        } else {
            (size.min(MAX_CACHE_SIZE).next_power_of_two() / 2).max(1)
        };
        Cache {
            sets: (0..sets).map(|_| Mutex::new([None, None])).collect(),
            mask: sets.saturating_sub(1),
        }
    }

    /// The set of `key`, locked, unless the cache is off or another thread holds it.
    fn lock(&self, key: u128) -> Locked<'_> {
        if self.sets.is_empty() {
            return None;
        }
        let x = (key as u64) ^ ((key >> 64) as u64);
        let i = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask;
        self.sets.get(i)?.try_lock().ok()
    }
}

/// Copies a cached answer for `key` out of `set`; `Some(object?)` when there was one.
fn copy_hit(set: &Locked<'_>, key: u128, out: &mut Vec<u8>) -> Option<bool> {
    let (_, bytes) = set.as_ref()?.iter().flatten().find(|(k, _)| *k == key)?;
    out.extend_from_slice(bytes);
    Some(bytes.first() == Some(&b'{'))
}

/// Puts `key` first in its set; the older of the two goes.
fn insert(set: Locked<'_>, key: u128, json: &[u8]) {
    if let Some(mut set) = set {
        set.swap(0, 1);
        set[0] = Some((key, json.into()));
    }
}

#[derive(Default)]
struct Counters {
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    skipped: AtomicU64,
    lookups: AtomicU64,
    cache_hits: AtomicU64,
    record_cache_hits: AtomicU64,
    lookup_errors: AtomicU64,
}

/// The last seen state of each file, for [`GeoIp::check_reload`].
struct Seen {
    city: Option<Stamp>,
    asn: Option<Stamp>,
}

struct Inner {
    config: GeoIpConfig,
    current: ArcSwap<Generation>,
    seen: Mutex<Seen>,
    counters: Counters,
}

/// The GeoIP/ASN databases in use: cheap to clone (one `Arc`), `Send + Sync`; every clone
/// sees reloads.
#[derive(Clone)]
pub struct GeoIp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Opens one configured file at start.
fn open_at_start(
    key: &'static str,
    path: Option<&Path>,
    verify: bool,
) -> Result<(Option<Arc<Db>>, Option<Stamp>), Error> {
    let Some(path) = path else {
        return Ok((None, None));
    };
    let err = |reason: String| Error::Open {
        key,
        path: path.to_path_buf(),
        reason,
    };
    // Stamp first: a file replaced while it is read is read again at the next check.
    let st = stamp(path).map_err(err)?;
    let db = open_db(key, path, verify).map_err(err)?;
    Ok((Some(Arc::new(db)), Some(st)))
}

impl GeoIp {
    /// Opens and verifies the configured databases. Neither configured is fine (every
    /// address is then `null`); a configured file that is missing or unusable is an error
    /// naming its key and path.
    pub fn open(config: &GeoIpConfig) -> Result<GeoIp, Error> {
        let (city, city_seen) = open_at_start(CITY_KEY, config.city.as_deref(), config.verify)?;
        let (asn, asn_seen) = open_at_start(ASN_KEY, config.asn.as_deref(), config.verify)?;
        let generation = Generation {
            city,
            asn,
            cache: Cache::new(config.cache_size),
            records: Cache::new(config.cache_size),
        };
        Ok(GeoIp {
            inner: Arc::new(Inner {
                config: config.clone(),
                current: ArcSwap::from_pointee(generation),
                seen: Mutex::new(Seen {
                    city: city_seen,
                    asn: asn_seen,
                }),
                counters: Counters::default(),
            }),
        })
    }

    pub fn config(&self) -> &GeoIpConfig {
        &self.inner.config
    }

    /// Whether the encoder should also look up the response address.
    pub fn response(&self) -> bool {
        self.inner.config.response
    }

    /// Appends `{"country":..,"city":..,"asn":..,"as-org":..}` (keys in this order, absent
    /// ones left out) for `ip`, or `null` when nothing is known or `ip` is not global
    /// (module docs). Returns true when an object was written.
    pub fn write_geo(&self, ip: IpAddr, out: &mut Vec<u8>) -> bool {
        let c = &self.inner.counters;
        let Some(ip) = global(ip) else {
            c.skipped.fetch_add(1, Ordering::Relaxed);
            out.extend_from_slice(b"null");
            return false;
        };
        c.lookups.fetch_add(1, Ordering::Relaxed);
        let g = self.inner.current.load();
        let akey = addr_key(ip);
        let aslot = g.cache.lock(akey);
        if let Some(object) = copy_hit(&aslot, akey, out) {
            c.cache_hits.fetch_add(1, Ordering::Relaxed);
            return object;
        }
        let start = out.len();
        let (city, asn) = g.walk(ip, c);
        let rkey = record_key(&city, &asn);
        let rslot = g.records.lock(rkey);
        let object = match copy_hit(&rslot, rkey, out) {
            Some(object) => {
                c.record_cache_hits.fetch_add(1, Ordering::Relaxed);
                object
            }
            None => {
                let object = Generation::decode(&city, &asn, c).write_json(out);
                insert(rslot, rkey, &out[start..]);
                object
            }
        };
        insert(aslot, akey, &out[start..]);
        object
    }

    /// The fields known for `ip` (all `None` when not global or unknown). Counted like
    /// [`write_geo`](Self::write_geo) but not cached.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let c = &self.inner.counters;
        let Some(ip) = global(ip) else {
            c.skipped.fetch_add(1, Ordering::Relaxed);
            return GeoInfo::default();
        };
        c.lookups.fetch_add(1, Ordering::Relaxed);
        let g = self.inner.current.load();
        let f = g.find(ip, c);
        GeoInfo {
            country: f.country.map(str::to_owned),
            city: f.city.map(str::to_owned),
            asn: f.asn,
            as_org: f.as_org.map(str::to_owned),
        }
    }

    /// Checks each configured file (size, modification time, inode) and loads the ones
    /// that changed. A file that cannot be used (missing, partly written, corrupt, wrong
    /// type) leaves the old database in use; the failure is logged with the key, path and
    /// reason and counted once per change of the file. Runs the verification of a new
    /// file on the calling thread (seconds for a large City file): call it off the async
    /// runtime (as [`spawn_reload_task`](Self::spawn_reload_task) does).
    pub fn check_reload(&self) -> ReloadOutcome {
        let inner = &*self.inner;
        let mut seen = inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let cur = inner.current.load_full();
        let (city, new_city) =
            self.check_one(CITY_KEY, inner.config.city.as_deref(), &mut seen.city);
        let (asn, new_asn) = self.check_one(ASN_KEY, inner.config.asn.as_deref(), &mut seen.asn);
        if new_city.is_some() || new_asn.is_some() {
            inner.current.store(Arc::new(Generation {
                city: new_city.or_else(|| cur.city.clone()),
                asn: new_asn.or_else(|| cur.asn.clone()),
                cache: Cache::new(inner.config.cache_size),
                records: Cache::new(inner.config.cache_size),
            }));
        }
        ReloadOutcome { city, asn }
    }

    fn check_one(
        &self,
        key: &'static str,
        path: Option<&Path>,
        seen: &mut Option<Stamp>,
    ) -> (FileOutcome, Option<Arc<Db>>) {
        let Some(path) = path else {
            return (FileOutcome::NotConfigured, None);
        };
        let c = &self.inner.counters;
        let now = match stamp(path) {
            Ok(s) => s,
            Err(reason) => {
                if seen.take().is_none() {
                    // Already missing at the last check: reported then.
                    return (FileOutcome::Unchanged, None);
                }
                c.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, path = %path.display(), %reason, "GeoIP database not reloaded; the old one stays in use");
                return (FileOutcome::Failed(reason), None);
            }
        };
        if *seen == Some(now) {
            return (FileOutcome::Unchanged, None);
        }
        *seen = Some(now);
        match open_db(key, path, self.inner.config.verify) {
            Ok(db) => {
                c.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(key, path = %path.display(), "GeoIP database reloaded");
                (FileOutcome::Reloaded, Some(Arc::new(db)))
            }
            Err(reason) => {
                c.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, path = %path.display(), %reason, "GeoIP database not reloaded; the old one stays in use");
                (FileOutcome::Failed(reason), None)
            }
        }
    }

    /// Spawns a task on the current Tokio runtime that runs
    /// [`check_reload`](Self::check_reload) (on the blocking pool) every
    /// `reload_interval`. `None` when reloading is off (`0s`), no file is configured, or
    /// there is no current runtime. Abort the handle to stop it.
    #[cfg(feature = "tokio")]
    pub fn spawn_reload_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.inner.config.reload_interval;
        if every.is_zero() || (self.inner.config.city.is_none() && self.inner.config.asn.is_none())
        {
            return None;
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let this = self.clone();
        Some(rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the files were just opened
            loop {
                tick.tick().await;
                let h = this.clone();
                if tokio::task::spawn_blocking(move || h.check_reload())
                    .await
                    .is_err()
                {
                    tracing::warn!("GeoIP reload check did not finish");
                }
            }
        }))
    }

    /// Databases (re)loaded by [`check_reload`](Self::check_reload) since start.
    pub fn reloads(&self) -> u64 {
        self.inner.counters.reloads.load(Ordering::Relaxed)
    }

    /// Changed files that could not be loaded (the old database stayed in use).
    pub fn reload_failures(&self) -> u64 {
        self.inner.counters.reload_failures.load(Ordering::Relaxed)
    }

    /// Addresses not looked up because they are not global (module docs).
    pub fn lookups_skipped(&self) -> u64 {
        self.inner.counters.skipped.load(Ordering::Relaxed)
    }

    /// Global addresses looked up (cache hits included).
    pub fn lookups(&self) -> u64 {
        self.inner.counters.lookups.load(Ordering::Relaxed)
    }

    /// Lookups answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.inner.counters.cache_hits.load(Ordering::Relaxed)
    }

    /// Lookups not in the address cache whose pair of records was in the record cache.
    pub fn record_cache_hits(&self) -> u64 {
        self.inner
            .counters
            .record_cache_hits
            .load(Ordering::Relaxed)
    }

    /// Records that could not be decoded (the field is then left out).
    pub fn lookup_errors(&self) -> u64 {
        self.inner.counters.lookup_errors.load(Ordering::Relaxed)
    }
}

/// `ip` as it is looked up (an IPv4-mapped IPv6 address as IPv4), or `None` when it is
/// not a global address (module docs).
pub fn global(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => global_v4(a).then_some(ip),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return global_v4(v4).then_some(IpAddr::V4(v4));
            }
            global_v6(a).then_some(ip)
        }
    }
}

fn global_v4(a: Ipv4Addr) -> bool {
    let x = u32::from(a);
    // (network, prefix length)
    const SKIP: [(u32, u32); 14] = [
        (0x0000_0000, 8),  // 0.0.0.0/8
        (0x0a00_0000, 8),  // 10.0.0.0/8
        (0x6440_0000, 10), // 100.64.0.0/10
        (0x7f00_0000, 8),  // 127.0.0.0/8
        (0xa9fe_0000, 16), // 169.254.0.0/16
        (0xac10_0000, 12), // 172.16.0.0/12
        (0xc000_0000, 24), // 192.0.0.0/24
        (0xc000_0200, 24), // 192.0.2.0/24
        (0xc0a8_0000, 16), // 192.168.0.0/16
        (0xc612_0000, 15), // 198.18.0.0/15
        (0xc633_6400, 24), // 198.51.100.0/24
        (0xcb00_7100, 24), // 203.0.113.0/24
        (0xe000_0000, 4),  // 224.0.0.0/4
        (0xf000_0000, 4),  // 240.0.0.0/4
    ];
    !SKIP
        .iter()
        .any(|&(net, len)| x & (u32::MAX << (32 - len)) == net)
}

fn global_v6(a: Ipv6Addr) -> bool {
    let x = u128::from(a);
    const SKIP: [(u128, u32); 8] = [
        (0, 96),                           // ::/96
        (0x0100_0000_0000_0000 << 64, 64), // 100::/64
        (0x2001_0db8 << 96, 32),           // 2001:db8::/32
        (0x3fff << 112, 20),               // 3fff::/20
        (0xfc00 << 112, 7),                // fc00::/7
        (0xfe80 << 112, 10),               // fe80::/10
        (0xfec0 << 112, 10),               // fec0::/10
        (0xff00 << 112, 8),                // ff00::/8
    ];
    !SKIP
        .iter()
        .any(|&(net, len)| x & (u128::MAX << (128 - len)) == net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Option<IpAddr> {
        global(s.parse().ok()?)
    }

    #[test]
    fn non_global_ranges() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::1.2.3.4",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(g(s), None, "{s}");
        }
    }

    #[test]
    fn cache_is_bounded_two_way() {
        let c = Cache::new(2);
        assert_eq!(c.sets.len(), 1);
        let mut out = Vec::new();
        for k in 1..=3u128 {
            insert(c.lock(k), k, format!("{{\"k\":{k}}}").as_bytes());
        }
        assert_eq!(copy_hit(&c.lock(1), 1, &mut out), None, "the oldest went");
        assert_eq!(copy_hit(&c.lock(2), 2, &mut out), Some(true));
        assert_eq!(copy_hit(&c.lock(3), 3, &mut out), Some(true));
        assert_eq!(out, b"{\"k\":2}{\"k\":3}");
        insert(c.lock(4), 4, b"null");
        assert_eq!(copy_hit(&c.lock(4), 4, &mut out), Some(false));
        assert_eq!(Cache::new(5000).sets.len(), 4096);
        assert_eq!(Cache::new(usize::MAX).sets.len(), MAX_CACHE_SIZE / 2);
        assert!(Cache::new(0).lock(1).is_none());
        // A set held elsewhere is not waited for.
        let c = Cache::new(2);
        let held = c.lock(1);
        assert!(held.is_some() && c.lock(1).is_none());
    }

    #[test]
    fn global_ranges() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "81.2.69.160",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2001:4860::8888",
            "2a00:1450::1",
            "2001:db9::1",
            "3fff:1000::1",
            "fbff::1",
            "64:ff9b::808:808",
            "2002:c000:201::1",
        ] {
            let ip: IpAddr = s.parse().expect("test address");
            assert_eq!(g(s), Some(ip), "{s}");
        }
        assert_eq!(
            g("::ffff:81.2.69.160"),
            Some(IpAddr::V4(Ipv4Addr::new(81, 2, 69, 160)))
        );
    }
}
