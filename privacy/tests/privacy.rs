//! Tests of the public API: client addresses are pseudonymised here, per
//! output view, before the event is encoded (broker: session -> encode(view)
//! -> fanout). Expected values come from outside the crate: the Crypto-PAn
//! reference's published sample trace, `yacryptopan` (cryptopan_vectors.txt,
//! made by gen_cryptopan_vectors.py), masks built bit by bit, and HMAC
//! computed here directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tapbus_privacy::{Mode, Pseudonymizer, Settings};

/// The key of the reference implementation's sample.cpp.
const SAMPLE_KEY: [u8; 32] = [
    21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131, 121,
    121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
];

/// Distinct (raw, sanitized) address pairs of the reference distribution's
/// sample_trace_raw.txt / sample_trace_sanitized.txt with SAMPLE_KEY.
const PUBLISHED_V4: &str = "
128.11.68.132 135.242.180.132
129.118.74.4 134.136.186.123
130.132.252.244 133.68.164.234
141.223.7.43 141.167.8.160
141.233.145.108 141.129.237.235
152.163.225.39 151.140.114.167
156.29.3.236 147.225.12.42
165.247.96.84 162.9.99.234
166.107.77.190 160.132.178.185
192.102.249.13 252.138.62.131
192.215.32.125 252.43.47.189
192.233.80.103 252.25.108.8
192.41.57.43 252.222.221.184
193.150.244.223 253.169.52.216
195.205.63.100 255.186.223.5
198.200.171.101 249.199.68.213
198.26.132.101 249.36.123.202
198.36.213.5 249.7.21.132
198.51.77.238 249.18.186.254
199.217.79.101 248.38.184.213
202.49.198.20 245.206.7.234
203.12.160.252 244.248.163.4
204.184.162.189 243.192.77.90
204.202.136.230 243.178.4.198
204.29.20.4 243.33.20.123
205.178.38.67 242.108.198.51
205.188.147.153 242.96.16.101
205.188.248.25 242.96.88.27
205.245.121.43 242.21.121.163
207.105.49.5 241.118.205.138
207.135.65.238 241.202.129.222
207.155.9.214 241.220.250.22
207.188.7.45 241.255.249.220
207.25.71.27 241.33.119.156
207.33.151.131 241.1.233.131
208.147.89.59 227.237.98.191
208.234.120.210 227.154.67.17
208.28.185.184 227.39.94.90
208.52.56.122 227.8.63.165
209.12.231.7 226.243.167.8
209.238.72.3 226.6.119.243
209.246.74.109 226.22.124.76
209.68.60.238 226.184.220.233
209.85.249.6 226.170.70.6
212.120.124.31 228.135.163.231
212.146.8.236 228.19.4.234
212.186.227.154 228.59.98.98
212.204.172.118 228.71.195.169
212.206.130.201 228.69.242.193
216.148.237.145 235.84.194.111
216.157.30.252 235.89.31.26
216.184.159.48 235.96.225.78
216.227.10.221 235.28.253.36
216.254.18.172 235.7.16.162
216.32.132.250 235.192.139.38
216.35.217.178 235.195.157.81
24.0.250.221 100.15.198.226
24.13.62.231 100.2.192.247
24.14.213.138 100.1.42.141
24.5.0.80 100.9.15.210
24.7.198.88 100.10.6.25
24.94.26.44 100.88.228.35
38.15.67.68 64.3.66.187
4.3.88.225 124.60.155.63
63.14.55.111 95.9.215.7
63.195.241.44 95.179.238.44
63.97.7.140 95.97.9.123
64.14.118.196 0.255.183.58
64.34.154.117 0.221.154.117
64.39.15.238 0.219.7.41
10.185.25.118 117.161.29.118
";

/// Write `bytes` to a key file in a fresh temporary directory.
fn key_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("privacy.key");
    std::fs::write(&path, bytes).expect("write key");
    (dir, path)
}

fn settings(mode: Mode, key: Option<&PathBuf>) -> Settings {
    Settings {
        client_ip: mode,
        key_file: key.cloned(),
        ..Settings::default()
    }
}

fn cryptopan(cache_entries: usize) -> (tempfile::TempDir, Pseudonymizer) {
    let (dir, path) = key_file(&SAMPLE_KEY);
    let mut s = settings(Mode::CryptoPan, Some(&path));
    s.cache_entries = cache_entries;
    (dir, Pseudonymizer::new(&s).expect("cryptopan"))
}

fn hasher(key: &[u8]) -> (tempfile::TempDir, Pseudonymizer) {
    let (dir, path) = key_file(key);
    (
        dir,
        Pseudonymizer::new(&settings(Mode::Hash, Some(&path))).expect("hash"),
    )
}

fn pairs(text: &str) -> Vec<(IpAddr, IpAddr)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            let a = it.next().expect("original").parse().expect("address");
            let b = it.next().expect("anonymised").parse().expect("address");
            (a, b)
        })
        .collect()
}

fn vectors_file() -> Vec<(IpAddr, IpAddr)> {
    pairs(include_str!("cryptopan_vectors.txt"))
}

/// A small fixed-seed generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn u128(&mut self) -> u128 {
        u128::from(self.next()) << 64 | u128::from(self.next())
    }
}

/// Leading bits set, one by one (independent of the crate's shifts).
fn mask32(bits: u32) -> u32 {
    (0..bits.min(32)).fold(0, |m, i| m | 1u32 << (31 - i))
}
fn mask128(bits: u32) -> u128 {
    (0..bits.min(128)).fold(0, |m, i| m | 1u128 << (127 - i))
}

const EDGE: &[&str] = &[
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "192.0.2.1",
    "10.1.2.3",
    "::",
    "::1",
    "::ffff:192.0.2.1",
    "::ffff:0.0.0.0",
    "::ffff:255.255.255.255",
    "2001:db8::1",
    "fe80::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

fn edge() -> Vec<IpAddr> {
    EDGE.iter()
        .map(|s| s.parse().expect("edge address"))
        .collect()
}

#[test]
fn cryptopan_v4_matches_published_sample_trace() {
    let want = pairs(PUBLISHED_V4);
    assert_eq!(want.len(), 71);
    for cache in [0, 1 << 16] {
        let (_d, p) = cryptopan(cache);
        for &(a, b) in &want {
            assert_eq!(p.addr(a), b, "{a} (cache {cache})");
        }
    }
}

#[test]
fn cryptopan_vectors_file_agrees_with_published_v4() {
    // The yacryptopan file and the published table must agree, so a
    // regenerated file cannot silently drift from the reference.
    let file = vectors_file();
    for (a, b) in pairs(PUBLISHED_V4) {
        assert!(
            file.contains(&(a, b)),
            "{a} -> {b} missing from cryptopan_vectors.txt"
        );
    }
}

#[test]
fn cryptopan_v6_matches_yacryptopan() {
    let v6: Vec<_> = vectors_file()
        .into_iter()
        .filter(|(a, _)| a.is_ipv6())
        .collect();
    assert!(v6.len() >= 40, "only {} IPv6 vectors", v6.len());
    let (_d, p) = cryptopan(0);
    for (a, b) in v6 {
        assert_eq!(p.addr(a), b, "{a}");
    }
}

#[test]
fn cryptopan_v4_mapped_v6_is_the_v4_result_mapped() {
    let (_d, p) = cryptopan(0);
    let a: IpAddr = "::ffff:128.11.68.132".parse().expect("addr");
    let b: IpAddr = "::ffff:135.242.180.132".parse().expect("addr");
    assert_eq!(p.addr(a), b);
    assert_eq!(
        p.prefix(a, 96 + 24),
        "::ffff:135.242.180.0".parse::<IpAddr>().expect("addr")
    );
}

fn common_prefix32(a: u32, b: u32) -> u32 {
    (a ^ b).leading_zeros()
}
fn common_prefix128(a: u128, b: u128) -> u32 {
    (a ^ b).leading_zeros()
}

#[test]
fn cryptopan_preserves_prefixes_exactly() {
    let (_d, p) = cryptopan(0);
    let mut r = Rng(0x5eed_0001);
    for i in 0..3000 {
        // a pair sharing exactly k leading bits
        let k = (i % 33) as u32;
        let a = r.next() as u32;
        let b = if k == 32 {
            a
        } else {
            let flip = 1u32 << (31 - k);
            ((a ^ flip) & !(flip - 1)) | (r.next() as u32 & (flip - 1))
        };
        assert_eq!(common_prefix32(a, b), k);
        let (x, y) = match (
            p.addr(Ipv4Addr::from(a).into()),
            p.addr(Ipv4Addr::from(b).into()),
        ) {
            (IpAddr::V4(x), IpAddr::V4(y)) => (u32::from(x), u32::from(y)),
            other => panic!("family changed: {other:?}"),
        };
        assert_eq!(common_prefix32(x, y), k, "{a:#x} {b:#x}");
    }
    for i in 0..600 {
        let k = (i % 129) as u32;
        let a = r.u128();
        let b = if k == 128 {
            a
        } else {
            let flip = 1u128 << (127 - k);
            ((a ^ flip) & !(flip - 1)) | (r.u128() & (flip - 1))
        };
        let (x, y) = match (
            p.addr(Ipv6Addr::from(a).into()),
            p.addr(Ipv6Addr::from(b).into()),
        ) {
            (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x), u128::from(y)),
            other => panic!("family changed: {other:?}"),
        };
        // mapped addresses take the v4 path; random ones practically never are
        assert_eq!(common_prefix128(x, y), k, "{a:#x} {b:#x}");
    }
}

#[test]
fn cache_never_changes_results() {
    let (_d0, plain) = cryptopan(0);
    let (_d1, cached) = cryptopan(64); // tiny: many evictions
    let (hk_dir, hk) = key_file(b"0123456789abcdef0123");
    let mut hs = settings(Mode::Hash, Some(&hk));
    hs.cache_entries = 0;
    let hash_plain = Pseudonymizer::new(&hs).expect("hash");
    hs.cache_entries = 64;
    let hash_cached = Pseudonymizer::new(&hs).expect("hash");
    drop(hk_dir);
    let mut r = Rng(7);
    let pool: Vec<IpAddr> = (0..300)
        .map(|i| match i % 3 {
            0 => Ipv4Addr::from(r.next() as u32).into(),
            1 => Ipv6Addr::from(r.u128()).into(),
            _ => Ipv4Addr::from(r.next() as u32).to_ipv6_mapped().into(),
        })
        .collect();
    for round in 0..3 {
        for (i, &a) in pool.iter().enumerate() {
            let a = if round == 2 {
                pool[(i * 7) % pool.len()]
            } else {
                a
            };
            assert_eq!(cached.addr(a), plain.addr(a), "{a}");
            assert_eq!(hash_cached.addr(a), hash_plain.addr(a), "{a}");
        }
    }
    let st = cached.cache_stats();
    assert_eq!(st.capacity, 64);
    assert_eq!(st.hits + st.misses, 900);
    assert!(st.hits > 0 && st.evictions > 0, "{st:?}");
    assert_eq!(plain.cache_stats().capacity, 0);
    // neighbours in one /24 and one /64 share the prefix flips
    let before = cached.prefix_cache_stats();
    for i in 0..20u8 {
        let a: IpAddr = Ipv4Addr::new(203, 0, 113, i).into();
        let b: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 5, 6, 0, 0, 0, u16::from(i)).into();
        assert_eq!(cached.addr(a), plain.addr(a));
        assert_eq!(cached.addr(b), plain.addr(b));
    }
    let after = cached.prefix_cache_stats();
    assert_eq!(after.capacity, 64);
    assert!(after.hits >= before.hits + 30, "{before:?} {after:?}");
    assert_eq!(hash_cached.prefix_cache_stats().capacity, 0);
    // clones share the cache
    let c2 = cached.clone();
    c2.addr(pool[0]);
    assert_eq!(c2.cache_stats().hits + c2.cache_stats().misses, 941);
}

#[test]
fn keep_is_identity() {
    let p = Pseudonymizer::new(&Settings::default()).expect("keep");
    assert!(p.is_keep());
    for a in edge() {
        assert_eq!(p.addr(a), a);
    }
}

#[test]
fn truncate_exact_for_every_v4_setting_and_edge_address() {
    for bits in 0..=32u8 {
        let p = Pseudonymizer::new(&Settings {
            client_ip: Mode::Truncate,
            truncate_v4: bits,
            ..Settings::default()
        })
        .expect("truncate");
        assert!(!p.is_keep());
        for a in edge() {
            let want: IpAddr = match a {
                IpAddr::V4(v) => Ipv4Addr::from(u32::from(v) & mask32(bits.into())).into(),
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(m) => Ipv4Addr::from(u32::from(m) & mask32(bits.into()))
                        .to_ipv6_mapped()
                        .into(),
                    None => Ipv6Addr::from(u128::from(v) & mask128(48)).into(),
                },
            };
            assert_eq!(p.addr(a), want, "{a} /{bits}");
        }
    }
    // spot checks written out by hand
    let p = Pseudonymizer::new(&settings(Mode::Truncate, None)).expect("truncate");
    let t = |s: &str| p.addr(s.parse().expect("addr")).to_string();
    assert_eq!(t("192.0.2.77"), "192.0.2.0");
    assert_eq!(t("255.255.255.255"), "255.255.255.0");
    assert_eq!(t("::ffff:192.0.2.77"), "::ffff:192.0.2.0");
    assert_eq!(t("2001:db8:1:2:3:4:5:6"), "2001:db8:1::");
    assert_eq!(t("::1"), "::");
}

#[test]
fn truncate_exact_for_v6_settings() {
    for bits in [0u8, 1, 47, 48, 64, 127, 128] {
        let p = Pseudonymizer::new(&Settings {
            client_ip: Mode::Truncate,
            truncate_v6: bits,
            ..Settings::default()
        })
        .expect("truncate");
        for a in edge() {
            let want: IpAddr = match a {
                IpAddr::V4(v) => Ipv4Addr::from(u32::from(v) & mask32(24)).into(),
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(m) => Ipv4Addr::from(u32::from(m) & mask32(24))
                        .to_ipv6_mapped()
                        .into(),
                    None => Ipv6Addr::from(u128::from(v) & mask128(bits.into())).into(),
                },
            };
            assert_eq!(p.addr(a), want, "{a} /{bits}");
        }
    }
}

#[test]
fn truncate_out_of_range_refused_naming_the_key() {
    for v in [33u8, 64, 255] {
        let e = Pseudonymizer::new(&Settings {
            client_ip: Mode::Truncate,
            truncate_v4: v,
            ..Settings::default()
        })
        .expect_err("out of range");
        assert!(e.to_string().contains("truncate_v4"), "{e}");
    }
    for v in [129u8, 200, 255] {
        let e = Pseudonymizer::new(&Settings {
            client_ip: Mode::Truncate,
            truncate_v6: v,
            ..Settings::default()
        })
        .expect_err("out of range");
        assert!(e.to_string().contains("truncate_v6"), "{e}");
    }
}

fn hmac_expected(key: &[u8], tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac key");
    m.update(&[tag]);
    m.update(bytes);
    m.finalize().into_bytes().to_vec()
}

#[test]
fn hash_exact_on_edge_addresses() {
    let key = b"tapbus privacy test key 0123456789";
    let (_d, p) = hasher(key);
    for a in edge() {
        let want: IpAddr = match a {
            IpAddr::V4(v) => {
                let h = hmac_expected(key, 4, &v.octets());
                Ipv4Addr::new(h[0], h[1], h[2], h[3]).into()
            }
            IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(m) => {
                    let h = hmac_expected(key, 4, &m.octets());
                    Ipv4Addr::new(h[0], h[1], h[2], h[3])
                        .to_ipv6_mapped()
                        .into()
                }
                None => {
                    let h = hmac_expected(key, 6, &v.octets());
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&h[..16]);
                    Ipv6Addr::from(b).into()
                }
            },
        };
        assert_eq!(p.addr(a), want, "{a}");
    }
}

#[test]
fn hash_deterministic_key_dependent_family_preserving_never_identity() {
    let (_d1, p1) = hasher(b"first key, sixteen+ bytes");
    let (_d2, p1b) = hasher(b"first key, sixteen+ bytes");
    let (_d3, p2) = hasher(b"second key, sixteen+ bytes");
    let mut addrs = edge();
    addrs.extend(pairs(PUBLISHED_V4).into_iter().map(|(a, _)| a));
    addrs.extend(vectors_file().into_iter().map(|(a, _)| a));
    for a in addrs {
        let x = p1.addr(a);
        assert_eq!(x, p1.addr(a), "deterministic {a}");
        assert_eq!(x, p1b.addr(a), "same key, same result {a}");
        assert_ne!(x, p2.addr(a), "key dependent {a}");
        assert_ne!(x, a, "never the input {a}");
        assert_eq!(x.is_ipv4(), a.is_ipv4(), "family {a}");
        if let IpAddr::V6(v) = a {
            let IpAddr::V6(y) = x else { panic!("family") };
            assert_eq!(v.to_ipv4_mapped().is_some(), y.to_ipv4_mapped().is_some());
        }
    }
    // v4 and v6 never collide: 1.2.3.4 vs ::102:304 (same low bytes)
    let a: IpAddr = "1.2.3.4".parse().expect("addr");
    let b: IpAddr = "::102:304".parse().expect("addr");
    let (IpAddr::V4(x), IpAddr::V6(y)) = (p1.addr(a), p1.addr(b)) else {
        panic!("family")
    };
    assert_ne!(x.octets()[..], y.octets()[12..]);
}

#[test]
fn hash_prefix_exact() {
    let key = b"tapbus privacy test key 0123456789";
    let (_d, p) = hasher(key);
    let a = Ipv4Addr::new(192, 0, 2, 0);
    let h = hmac_expected(key, 0x14, &[192, 0, 2, 0, 24]);
    let want = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & mask32(24);
    assert_eq!(p.prefix(a.into(), 24), IpAddr::V4(Ipv4Addr::from(want)));
    let b: Ipv6Addr = "2001:db8:1200::".parse().expect("addr");
    let mut input = b.octets().to_vec();
    input.push(40);
    let h = hmac_expected(key, 0x16, &input);
    let mut w = [0u8; 16];
    w.copy_from_slice(&h[..16]);
    let want = u128::from_be_bytes(w) & mask128(40);
    assert_eq!(p.prefix(b.into(), 40), IpAddr::V6(Ipv6Addr::from(want)));
}

fn all_modes() -> (tempfile::TempDir, Vec<Pseudonymizer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let k32 = dir.path().join("k32");
    std::fs::write(&k32, SAMPLE_KEY).expect("write");
    let mut v = vec![Pseudonymizer::new(&Settings::default()).expect("keep")];
    for (b4, b6) in [(24, 48), (0, 0), (32, 128), (7, 61)] {
        v.push(
            Pseudonymizer::new(&Settings {
                client_ip: Mode::Truncate,
                truncate_v4: b4,
                truncate_v6: b6,
                ..Settings::default()
            })
            .expect("truncate"),
        );
    }
    v.push(Pseudonymizer::new(&settings(Mode::Hash, Some(&k32))).expect("hash"));
    v.push(Pseudonymizer::new(&settings(Mode::CryptoPan, Some(&k32))).expect("cryptopan"));
    (dir, v)
}

fn host_bits_zero(ip: IpAddr, len: u8) -> bool {
    match ip {
        IpAddr::V4(v) => u32::from(v) & !mask32(len.into()) == 0,
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(m) if len >= 96 => u32::from(m) & !mask32(u32::from(len - 96)) == 0,
            _ => u128::from(v) & !mask128(len.into()) == 0,
        },
    }
}

#[test]
fn prefix_host_bits_zero_in_every_mode() {
    let (_d, modes) = all_modes();
    let mut inputs = edge();
    inputs.push("198.51.100.0".parse().expect("addr"));
    inputs.push("2001:db8:abcd::".parse().expect("addr"));
    for p in &modes {
        for &a in &inputs {
            for len in 0..=255u8 {
                let out = p.prefix(a, len);
                assert_eq!(out.is_ipv4(), a.is_ipv4(), "{p:?} {a}/{len}");
                assert!(host_bits_zero(out, len), "{p:?} {a}/{len} -> {out}");
            }
        }
    }
}

#[test]
fn cryptopan_prefix_is_the_anonymised_prefix() {
    let (_d, p) = cryptopan(0);
    let mut r = Rng(99);
    for _ in 0..200 {
        let a = r.next() as u32;
        let full = match p.addr(Ipv4Addr::from(a).into()) {
            IpAddr::V4(x) => u32::from(x),
            IpAddr::V6(_) => panic!("family"),
        };
        for len in [0u8, 8, 16, 24, 31, 32] {
            let m = mask32(len.into());
            assert_eq!(
                p.prefix(Ipv4Addr::from(a & m).into(), len),
                IpAddr::V4(Ipv4Addr::from(full & m))
            );
        }
        let b = r.u128();
        let full = match p.addr(Ipv6Addr::from(b).into()) {
            IpAddr::V6(x) => u128::from(x),
            IpAddr::V4(_) => panic!("family"),
        };
        for len in [0u8, 24, 48, 56, 64, 128] {
            let m = mask128(len.into());
            assert_eq!(
                p.prefix(Ipv6Addr::from(b & m).into(), len),
                IpAddr::V6(Ipv6Addr::from(full & m))
            );
        }
    }
}

#[test]
fn truncate_prefix_is_the_shorter_mask() {
    let p = Pseudonymizer::new(&settings(Mode::Truncate, None)).expect("truncate");
    let a: IpAddr = "192.0.2.0".parse().expect("addr");
    assert_eq!(p.prefix(a, 16), "192.0.0.0".parse::<IpAddr>().expect("a"));
    let a: IpAddr = "192.0.2.128".parse().expect("addr");
    assert_eq!(p.prefix(a, 25), "192.0.2.0".parse::<IpAddr>().expect("a"));
    let b: IpAddr = "2001:db8:1:2::".parse().expect("addr");
    assert_eq!(
        p.prefix(b, 64),
        "2001:db8:1::".parse::<IpAddr>().expect("a")
    );
    assert_eq!(p.prefix(b, 32), "2001:db8::".parse::<IpAddr>().expect("a"));
}

#[test]
fn no_mode_panics_on_any_address_or_length() {
    let (_d, modes) = all_modes();
    let mut r = Rng(0xF00D);
    for i in 0..20_000u32 {
        let a: IpAddr = match i % 4 {
            0 => Ipv4Addr::from(r.next() as u32).into(),
            1 => Ipv6Addr::from(r.u128()).into(),
            2 => Ipv4Addr::from(r.next() as u32).to_ipv6_mapped().into(),
            _ => Ipv6Addr::from(r.u128() >> (r.next() % 128)).into(),
        };
        let len = (r.next() % 256) as u8;
        let p = &modes[i as usize % modes.len()];
        let x = p.addr(a);
        assert_eq!(x.is_ipv4(), a.is_ipv4());
        let y = p.prefix(a, len);
        assert!(host_bits_zero(y, len), "{p:?} {a}/{len} -> {y}");
        let raw: Vec<u8> = match a {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        assert_eq!(p.addr_bytes(&raw), Some(x));
        let cut = (r.next() % 20) as usize;
        if cut != 4 && cut != 16 {
            assert_eq!(p.addr_bytes(&vec![0xab; cut]), None);
        }
    }
}

#[test]
fn key_file_errors_name_key_file_and_path() {
    let msg = |s: &Settings| {
        Pseudonymizer::new(s)
            .expect_err("must be refused")
            .to_string()
    };
    for mode in [Mode::Hash, Mode::CryptoPan] {
        let m = msg(&settings(mode, None));
        assert!(m.contains("key_file") && m.contains(mode.name()), "{m}");
        let missing = PathBuf::from("/nonexistent/tapbus/privacy.key");
        let m = msg(&settings(mode, Some(&missing)));
        assert!(
            m.contains("key_file") && m.contains("/nonexistent/tapbus/privacy.key"),
            "{m}"
        );
        let (_d, empty) = key_file(b"");
        let m = msg(&settings(mode, Some(&empty)));
        assert!(
            m.contains("key_file") && m.contains(&*empty.to_string_lossy()) && m.contains("empty"),
            "{m}"
        );
    }
    let (_d, short) = key_file(&[7u8; 15]);
    let m = msg(&settings(Mode::Hash, Some(&short)));
    assert!(
        m.contains("key_file") && m.contains(&*short.to_string_lossy()) && m.contains("15"),
        "{m}"
    );
    let (_d16, k16) = key_file(&[7u8; 16]);
    Pseudonymizer::new(&settings(Mode::Hash, Some(&k16))).expect("16 bytes is enough for hash");
    for n in [1usize, 16, 31, 33, 64] {
        let (_d, k) = key_file(&vec![9u8; n]);
        let m = msg(&settings(Mode::CryptoPan, Some(&k)));
        assert!(
            m.contains("key_file") && m.contains(&*k.to_string_lossy()) && m.contains("32"),
            "{m}"
        );
        assert_eq!(m.matches("key_file").count(), 1, "{m}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fingerprint_and_debug_never_show_the_key() {
    let (_d, p) = cryptopan(0);
    let fp = p.fingerprint().expect("keyed mode has a fingerprint");
    assert_eq!(fp.len(), 16);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    let dbg = format!("{p:?}");
    assert!(dbg.contains(&fp), "{dbg}");
    let key_hex = hex(&SAMPLE_KEY);
    for w in SAMPLE_KEY.windows(4) {
        let h = hex(w);
        assert!(!fp.contains(&h), "fingerprint shows key bytes {h}");
        assert!(!dbg.contains(&h), "debug shows key bytes {h}");
    }
    assert!(
        !dbg.contains(&key_hex) && !dbg.contains("21, 34, 23"),
        "{dbg}"
    );
    let (_d2, h) = hasher(b"another key of enough length");
    assert_ne!(h.fingerprint(), Some(fp));
    assert_eq!(
        Pseudonymizer::new(&settings(Mode::Truncate, None))
            .expect("t")
            .fingerprint(),
        None
    );
}

#[test]
fn same_view_compares_settings_and_key_bytes() {
    let (_a, ka) = key_file(&SAMPLE_KEY);
    let (_b, kb) = key_file(&SAMPLE_KEY);
    let mut other = SAMPLE_KEY;
    other[31] ^= 1;
    let (_c, kc) = key_file(&other);
    let cp = |k: &PathBuf| Pseudonymizer::new(&settings(Mode::CryptoPan, Some(k))).expect("cp");
    let hs = |k: &PathBuf| Pseudonymizer::new(&settings(Mode::Hash, Some(k))).expect("hash");
    let p = cp(&ka);
    assert!(p.same_view(&p.clone()));
    assert!(p.same_view(&cp(&kb)), "same key bytes in another file");
    assert!(!p.same_view(&cp(&kc)), "other key");
    assert!(!p.same_view(&hs(&ka)), "other mode, same key");
    let t = |b4: u8, b6: u8| {
        Pseudonymizer::new(&Settings {
            client_ip: Mode::Truncate,
            truncate_v4: b4,
            truncate_v6: b6,
            ..Settings::default()
        })
        .expect("t")
    };
    assert!(t(24, 48).same_view(&t(24, 48)));
    assert!(!t(24, 48).same_view(&t(16, 48)));
    assert!(!t(24, 48).same_view(&t(24, 56)));
    let keep = Pseudonymizer::new(&Settings::default()).expect("keep");
    assert!(keep.same_view(&Pseudonymizer::new(&Settings::default()).expect("keep")));
    assert!(!keep.same_view(&t(24, 48)));
    let mut s = settings(Mode::CryptoPan, Some(&ka));
    s.cache_entries = 0;
    assert!(
        p.same_view(&Pseudonymizer::new(&s).expect("cp")),
        "cache size does not count"
    );
}

#[test]
fn settings_deserialize() {
    let s: Settings = serde_json::from_str(
        r#"{"client_ip":"cryptopan","key_file":"/etc/tapbus/pan.key","truncate_v4":16}"#,
    )
    .expect("settings");
    assert_eq!(s.client_ip, Mode::CryptoPan);
    assert_eq!(s.key_file, Some(PathBuf::from("/etc/tapbus/pan.key")));
    assert_eq!((s.truncate_v4, s.truncate_v6), (16, 48));
    for (name, mode) in [
        ("keep", Mode::Keep),
        ("truncate", Mode::Truncate),
        ("hash", Mode::Hash),
        ("cryptopan", Mode::CryptoPan),
        ("crypto-pan", Mode::CryptoPan),
    ] {
        let s: Settings =
            serde_json::from_str(&format!(r#"{{"client_ip":"{name}"}}"#)).expect("mode");
        assert_eq!(s.client_ip, mode);
    }
    assert_eq!(
        serde_json::from_str::<Settings>("{}").expect("empty"),
        Settings::default()
    );
    assert!(serde_json::from_str::<Settings>(r#"{"client_ip":"md5"}"#).is_err());
    assert!(serde_json::from_str::<Settings>(r#"{"keyfile":"/x"}"#).is_err());
}
