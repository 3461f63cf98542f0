//! Client address pseudonymisation for tapbus: client addresses are
//! pseudonymised here, per output view, before the event is encoded (broker:
//! session -> encode(view) -> fanout). The broker's JSON encoder calls a
//! [`Pseudonymizer`] once per event per privacy view for `query-ip`,
//! `response-ip`, the EDNS Client Subnet (ECS) prefix and a policy CLIENT_IP
//! value.
//!
//! # Modes (`client_ip`)
//! - `"keep"`: identity ([`Pseudonymizer::is_keep`] lets the encoder skip us).
//! - `"truncate"`: zero the host bits, keeping `truncate_v4` (default 24,
//!   0..=32) / `truncate_v6` (default 48, 0..=128) leading bits.
//! - `"hash"`: HMAC-SHA256 keyed with the bytes of `key_file` (at least 16
//!   bytes) over a family tag byte and the address bytes (`0x04 ++ 4 bytes`,
//!   `0x06 ++ 16 bytes`, so IPv4 and IPv6 never collide), cut to the first 4
//!   (IPv4) or 16 (IPv6) bytes of the MAC. Not prefix-preserving.
//! - `"cryptopan"`: prefix-preserving Crypto-PAn, bit-for-bit the reference
//!   implementation for IPv4 and its 128-bit extension for IPv6 (as Python's
//!   `yacryptopan`); `key_file` holds exactly 32 raw bytes (16 AES-128 key +
//!   16 pad). Make one with `head -c 32 /dev/urandom > key`.
//!
//! A key file is read as raw bytes, nothing stripped (a trailing newline is
//! part of the key).
//!
//! # Address rules
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is treated as the IPv4
//!   address `a.b.c.d` (truncate uses `truncate_v4`, hash and Crypto-PAn the
//!   IPv4 algorithm) and given back IPv4-mapped again, so the same client
//!   gets the same pseudonym whichever socket family it came in on.
//! - `::`, `::1`, `0.0.0.0`, `255.255.255.255` and every other address are
//!   transformed like any other address: no special case, so the output does
//!   not reveal that a client was loopback or unspecified (with truncate they
//!   stay what the mask makes of them, e.g. `::1` -> `::` at /48).
//! - ECS ([`Pseudonymizer::prefix`]): `len` is the source prefix length of
//!   the address's own family (for an IPv4-mapped address, `len - 96` applies
//!   to the IPv4 part when `len >= 96`; a shorter `len` treats it as IPv6).
//!   `len` is clamped to the family width, so any `u8` is accepted.
//!
//! # API
//! ```text
//! Mode { Keep, Truncate, Hash, CryptoPan }     // serde: "keep" "truncate" "hash" "cryptopan"
//! Settings { client_ip, key_file, truncate_v4, truncate_v6, cache_entries }   // serde, Default
//! Pseudonymizer::new(&Settings) -> Result<Pseudonymizer, PrivacyError>
//! Pseudonymizer::is_keep(&self) -> bool
//! Pseudonymizer::addr(&self, IpAddr) -> IpAddr
//! Pseudonymizer::prefix(&self, IpAddr, len: u8) -> IpAddr
//! Pseudonymizer::addr_bytes(&self, &[u8]) -> Option<IpAddr>   // dnstap's 4 or 16 bytes
//! Pseudonymizer::fingerprint(&self) -> Option<String>         // 16 hex of SHA-256(key)
//! Pseudonymizer::same_view(&self, &Pseudonymizer) -> bool
//! Pseudonymizer::cache_stats(&self) -> CacheStats   // hits, misses, evictions, capacity
//! Pseudonymizer::prefix_cache_stats(&self) -> CacheStats  // Crypto-PAn /24 and /64 flips
//! Pseudonymizer::mode(&self) -> Mode
//! ```
//!
//! # Speed
//! Crypto-PAn needs one AES block per address bit (32 for IPv4, 128 for
//! IPv6); they are independent and encrypted as one batch (AES-NI pipelined
//! by the `aes` crate). The keyed modes also keep a bounded lock-free cache of
//! full results (`cache_entries`, default 65536 slots of 40 bytes in 2-way sets, 0 = off),
//! shared by clones; its counters are [`Pseudonymizer::cache_stats`]. A cache
//! hit returns exactly the value that was computed for that address.
//! Crypto-PAn also caches the flip bits of each /24 (IPv4) and /64 (IPv6)
//! prefix (a second cache of the same size): they depend only on those
//! prefix bits, so a new address in a known prefix needs only 8 (IPv4) or 64
//! (IPv6) AES blocks ([`Pseudonymizer::prefix_cache_stats`]). Numbers are in
//! `benches/privacy.rs`.
#![forbid(unsafe_code)]

mod cache;
mod cryptopan;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use cache::{CacheStats, MAX_CACHE_ENTRIES};
pub use cryptopan::KEY_LEN as CRYPTOPAN_KEY_LEN;

use cache::ResultCache;
use cryptopan::{CryptoPan, top_mask128};

/// The shortest key file accepted for `"hash"`.
pub const MIN_HASH_KEY_LEN: usize = 16;

/// Default `truncate_v4`.
pub const DEFAULT_TRUNCATE_V4: u8 = 24;
/// Default `truncate_v6`.
pub const DEFAULT_TRUNCATE_V6: u8 = 48;
/// Default `cache_entries`.
pub const DEFAULT_CACHE_ENTRIES: usize = 1 << 16;

/// How client addresses are written in one output view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Addresses as they are.
    #[default]
    Keep,
    /// Host bits zeroed to `truncate_v4` / `truncate_v6`.
    Truncate,
    /// Keyed HMAC-SHA256, cut to an address of the same family.
    Hash,
    /// Prefix-preserving Crypto-PAn.
    #[serde(alias = "crypto-pan")]
    CryptoPan,
}

impl Mode {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Keep => "keep",
            Mode::Truncate => "truncate",
            Mode::Hash => "hash",
            Mode::CryptoPan => "cryptopan",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One privacy view's settings, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The mode for client addresses.
    pub client_ip: Mode,
    /// Key for `"hash"` (>= 16 bytes) and `"cryptopan"` (exactly 32 bytes).
    pub key_file: Option<PathBuf>,
    /// IPv4 prefix bits kept by `"truncate"` (0..=32).
    pub truncate_v4: u8,
    /// IPv6 prefix bits kept by `"truncate"` (0..=128).
    pub truncate_v6: u8,
    /// Result cache slots for `"hash"` and `"cryptopan"` (0 = none); rounded
    /// up to a power of two, at most [`MAX_CACHE_ENTRIES`]. Output does not
    /// depend on it.
    pub cache_entries: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client_ip: Mode::Keep,
            key_file: None,
            truncate_v4: DEFAULT_TRUNCATE_V4,
            truncate_v6: DEFAULT_TRUNCATE_V6,
            cache_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// Why a [`Pseudonymizer`] could not be built. Each message names the
/// configuration key once.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// `truncate_v4` above 32.
    #[error("truncate_v4 = {0}: must be 0..=32")]
    TruncateV4(u8),
    /// `truncate_v6` above 128.
    #[error("truncate_v6 = {0}: must be 0..=128")]
    TruncateV6(u8),
    /// A keyed mode without a key.
    #[error("key_file is required for client_ip = \"{0}\"")]
    KeyMissing(Mode),
    /// The key file could not be read.
    #[error("key_file {}: {source}", path.display())]
    KeyRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is empty.
    #[error("key_file {}: empty", path.display())]
    KeyEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A hash key shorter than [`MIN_HASH_KEY_LEN`].
    #[error("key_file {}: {len} bytes, client_ip = \"hash\" needs at least {MIN_HASH_KEY_LEN}", path.display())]
    KeyTooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A Crypto-PAn key that is not exactly 32 bytes.
    #[error("key_file {}: {len} bytes, client_ip = \"cryptopan\" needs exactly 32 (16 AES-128 key + 16 pad)", path.display())]
    KeyWrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

// One per view, inside an Arc: the size difference costs nothing, a Box would
// add a pointer chase per address.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Keep,
    Truncate { v4: u8, v6: u8 },
    Hash { mac: Hmac<Sha256> },
    CryptoPan(CryptoPan),
}

struct Inner {
    engine: Engine,
    mode: Mode,
    /// The key bytes (keyed modes only), for [`Pseudonymizer::same_view`].
    key: Vec<u8>,
    fingerprint: Option<String>,
    /// Full results (keyed modes).
    cache: Option<ResultCache>,
    /// Crypto-PAn only: the flip bits of a /24 (IPv4) or /64 (IPv6), so a
    /// new address in a known prefix costs 8 (or 64) AES blocks, not 32
    /// (or 128).
    prefix_cache: Option<ResultCache>,
}

/// Crypto-PAn prefix cache boundaries: /24 for IPv4, /64 for IPv6.
const PAN_PREFIX_V4: u32 = 24;
const PAN_PREFIX_V6: u32 = 64;

/// Pseudonymises addresses for one privacy view. Cheap to clone (clones
/// share the key schedule and the cache); `Send + Sync`. `Debug` shows the
/// mode and the key's fingerprint, never the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Pseudonymizer");
        d.field("mode", &self.inner.mode);
        if let Engine::Truncate { v4, v6 } = self.inner.engine {
            d.field("truncate_v4", &v4).field("truncate_v6", &v6);
        }
        if let Some(fp) = &self.inner.fingerprint {
            d.field("key_fingerprint", fp);
        }
        d.finish_non_exhaustive()
    }
}

fn read_key(mode: Mode, path: Option<&Path>) -> Result<(PathBuf, Vec<u8>), PrivacyError> {
    let path = path.ok_or(PrivacyError::KeyMissing(mode))?;
    let key = std::fs::read(path).map_err(|source| PrivacyError::KeyRead {
        path: path.to_owned(),
        source,
    })?;
    if key.is_empty() {
        return Err(PrivacyError::KeyEmpty {
            path: path.to_owned(),
        });
    }
    Ok((path.to_owned(), key))
}

fn fingerprint(key: &[u8]) -> String {
    let d = Sha256::digest(key);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[inline]
fn v4_mask(bits: u32) -> u32 {
    (top_mask128(bits.min(32)) >> 96) as u32
}

/// Key of an IPv4 address in the result cache: its IPv4-mapped form, which
/// never reaches the cache as an IPv6 key (mapped addresses go the IPv4 way).
#[inline]
fn v4_cache_key(a: u32) -> u128 {
    0xffff_u128 << 32 | u128::from(a)
}

impl Pseudonymizer {
    /// Check the settings and read the key file.
    pub fn new(s: &Settings) -> Result<Self, PrivacyError> {
        if s.truncate_v4 > 32 {
            return Err(PrivacyError::TruncateV4(s.truncate_v4));
        }
        if s.truncate_v6 > 128 {
            return Err(PrivacyError::TruncateV6(s.truncate_v6));
        }
        let (engine, key) = match s.client_ip {
            Mode::Keep => (Engine::Keep, Vec::new()),
            Mode::Truncate => (
                Engine::Truncate {
                    v4: s.truncate_v4,
                    v6: s.truncate_v6,
                },
                Vec::new(),
            ),
            Mode::Hash => {
                let (path, key) = read_key(s.client_ip, s.key_file.as_deref())?;
                if key.len() < MIN_HASH_KEY_LEN {
                    return Err(PrivacyError::KeyTooShort {
                        path,
                        len: key.len(),
                    });
                }
                // HMAC takes keys of any length; the error arm is unreachable.
                let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| {
                    PrivacyError::KeyTooShort {
                        path: path.clone(),
                        len: key.len(),
                    }
                })?;
                (Engine::Hash { mac }, key)
            }
            Mode::CryptoPan => {
                let (path, key) = read_key(s.client_ip, s.key_file.as_deref())?;
                let cp = CryptoPan::new(&key).ok_or(PrivacyError::KeyWrongLength {
                    path,
                    len: key.len(),
                })?;
                (Engine::CryptoPan(cp), key)
            }
        };
        let keyed = !key.is_empty();
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                mode: s.client_ip,
                fingerprint: keyed.then(|| fingerprint(&key)),
                key,
                cache: if keyed {
                    ResultCache::new(s.cache_entries)
                } else {
                    None
                },
                prefix_cache: if s.client_ip == Mode::CryptoPan {
                    ResultCache::new(s.cache_entries)
                } else {
                    None
                },
            }),
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// True for `"keep"`: every method gives its input back (prefix masked).
    pub fn is_keep(&self) -> bool {
        matches!(self.inner.engine, Engine::Keep)
    }

    /// First 16 hex digits of SHA-256 of the key, for logs; None without key.
    pub fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint.clone()
    }

    /// Same mode, same effective settings and same key bytes: two outputs
    /// with the same view can share one encoded event. (The cache size does
    /// not count: it does not change output.)
    pub fn same_view(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let (a, b) = (&self.inner, &other.inner);
        let engines = match (&a.engine, &b.engine) {
            (Engine::Keep, Engine::Keep) => true,
            (Engine::Truncate { v4, v6 }, Engine::Truncate { v4: w4, v6: w6 }) => {
                v4 == w4 && v6 == w6
            }
            (Engine::Hash { .. }, Engine::Hash { .. })
            | (Engine::CryptoPan(_), Engine::CryptoPan(_)) => true,
            _ => false,
        };
        engines && a.key == b.key
    }

    /// Result cache counters (all zero with capacity 0 when there is none).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner
            .cache
            .as_ref()
            .map(ResultCache::stats)
            .unwrap_or_default()
    }

    /// Crypto-PAn /24 (IPv4) and /64 (IPv6) prefix cache counters (capacity
    /// 0 in other modes or with `cache_entries = 0`).
    pub fn prefix_cache_stats(&self) -> CacheStats {
        self.inner
            .prefix_cache
            .as_ref()
            .map(ResultCache::stats)
            .unwrap_or_default()
    }

    /// Pseudonymise one address. IPv4-mapped IPv6 is handled as IPv4 and
    /// returned IPv4-mapped.
    pub fn addr(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(self.v4(u32::from(a)))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => IpAddr::V6(Ipv4Addr::from(self.v4(u32::from(m))).to_ipv6_mapped()),
                None => IpAddr::V6(Ipv6Addr::from(self.v6(u128::from(a)))),
            },
        }
    }

    /// [`Self::addr`] for dnstap's raw address bytes: 4 bytes are IPv4, 16
    /// bytes IPv6; any other length gives None.
    pub fn addr_bytes(&self, b: &[u8]) -> Option<IpAddr> {
        if let Ok(a) = <[u8; 4]>::try_from(b) {
            Some(self.addr(IpAddr::from(a)))
        } else if let Ok(a) = <[u8; 16]>::try_from(b) {
            Some(self.addr(IpAddr::from(a)))
        } else {
            None
        }
    }

    /// ECS: `ip` is an address prefix of `len` bits. Returns the transformed
    /// prefix with the bits after `len` zero. Keep: the masked input.
    /// Truncate: masked to the shorter of `len` and the setting. Hash:
    /// HMAC over a prefix tag, the masked bytes and `len`, cut and masked.
    /// Crypto-PAn: the anonymised prefix (the first `len` bits of what
    /// [`Self::addr`] gives any address in it). `len` is clamped to the
    /// family's width.
    pub fn prefix(&self, ip: IpAddr, len: u8) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                IpAddr::V4(Ipv4Addr::from(self.v4_prefix(u32::from(a), u32::from(len))))
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) if len >= 96 => {
                    let p = self.v4_prefix(u32::from(m), u32::from(len - 96));
                    IpAddr::V6(Ipv4Addr::from(p).to_ipv6_mapped())
                }
                _ => IpAddr::V6(Ipv6Addr::from(
                    self.v6_prefix(u128::from(a), u32::from(len)),
                )),
            },
        }
    }

    fn hash(&self, mac: &Hmac<Sha256>, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    fn cached(&self, key: u128, f: impl FnOnce() -> u128) -> u128 {
        match &self.inner.cache {
            Some(c) => c.get_or(key, f),
            None => f(),
        }
    }

    fn v4(&self, a: u32) -> u32 {
        match &self.inner.engine {
            Engine::Keep => a,
            Engine::Truncate { v4, .. } => a & v4_mask(u32::from(*v4)),
            Engine::Hash { mac } => self.cached(v4_cache_key(a), || {
                let h = self.hash(mac, &[&[0x04], &a.to_be_bytes()]);
                u128::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
            }) as u32,
            Engine::CryptoPan(c) => self.cached(v4_cache_key(a), || {
                let hi = match &self.inner.prefix_cache {
                    // Tagged above 2^64 so it never meets an IPv6 /64 key.
                    Some(pc) => pc.get_or(1 << 64 | u128::from(a >> (32 - PAN_PREFIX_V4)), || {
                        u128::from(c.flips_v4(a, 0, PAN_PREFIX_V4))
                    }) as u32,
                    None => c.flips_v4(a, 0, PAN_PREFIX_V4),
                };
                u128::from(a ^ hi ^ c.flips_v4(a, PAN_PREFIX_V4, 32))
            }) as u32,
        }
    }

    fn v6(&self, a: u128) -> u128 {
        match &self.inner.engine {
            Engine::Keep => a,
            Engine::Truncate { v6, .. } => a & top_mask128(u32::from(*v6)),
            Engine::Hash { mac } => self.cached(a, || {
                let h = self.hash(mac, &[&[0x06], &a.to_be_bytes()]);
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[..16]);
                u128::from_be_bytes(b)
            }),
            Engine::CryptoPan(c) => self.cached(a, || {
                let hi = match &self.inner.prefix_cache {
                    Some(pc) => pc.get_or(a >> (128 - PAN_PREFIX_V6), || {
                        c.flips_v6(a, 0, PAN_PREFIX_V6)
                    }),
                    None => c.flips_v6(a, 0, PAN_PREFIX_V6),
                };
                a ^ hi ^ c.flips_v6(a, PAN_PREFIX_V6, 128)
            }),
        }
    }

    fn v4_prefix(&self, a: u32, len: u32) -> u32 {
        let len = len.min(32);
        let m = v4_mask(len);
        let a = a & m;
        match &self.inner.engine {
            Engine::Keep => a,
            Engine::Truncate { v4, .. } => a & v4_mask(u32::from(*v4)),
            Engine::Hash { mac } => {
                let h = self.hash(mac, &[&[0x14], &a.to_be_bytes(), &[len as u8]]);
                u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & m
            }
            Engine::CryptoPan(c) => c.v4_prefix(a, len),
        }
    }

    fn v6_prefix(&self, a: u128, len: u32) -> u128 {
        let len = len.min(128);
        let m = top_mask128(len);
        let a = a & m;
        match &self.inner.engine {
            Engine::Keep => a,
            Engine::Truncate { v6, .. } => a & top_mask128(u32::from(*v6)),
            Engine::Hash { mac } => {
                let h = self.hash(mac, &[&[0x16], &a.to_be_bytes(), &[len as u8]]);
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[..16]);
                u128::from_be_bytes(b) & m
            }
            Engine::CryptoPan(c) => c.v6_prefix(a, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + fmt::Debug>() {}

    #[test]
    fn pseudonymizer_is_send_sync_clone_debug() {
        assert_send_sync::<Pseudonymizer>();
    }

    #[test]
    fn default_settings() {
        let s = Settings::default();
        assert_eq!(s.client_ip, Mode::Keep);
        assert_eq!((s.truncate_v4, s.truncate_v6), (24, 48));
        let p = Pseudonymizer::new(&s).expect("default");
        assert!(p.is_keep());
        assert_eq!(p.fingerprint(), None);
        assert_eq!(p.cache_stats().capacity, 0);
    }
}
