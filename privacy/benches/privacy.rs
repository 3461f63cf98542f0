//! Cost per address of each mode: client addresses are pseudonymised here, per
//! output view, before the event is encoded (broker: session -> encode(view)
//! -> fanout), so this is paid once per event per privacy view.
//!
//! Address sets: 10,000 distinct IPv4 clients from four /16s and 10,000
//! distinct IPv6 clients (random interface ids in 16 /64s under two /48s),
//! each bench walking the whole set (throughput = addresses). `cold` = no
//! result cache (every address computed), `warm` = the default 65536-slot
//! cache after the first pass (the steady state of a resolver whose clients
//! come back); `ecs24`/`ecs56` = `prefix()` of a /24 or /56.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-privacy cargo bench -p tapbus-privacy --bench privacy
//! ```
//!
//! Measured on the project machine (AMD EPYC, 2 vCPUs with AES-NI, VAES and
//! SHA-NI), SHARED WITH OTHER BUILDS running at the same time (load average
//! 2.8-3.5 on 2 cores during run 2, so expect +-50%; truncate, which does
//! no crypto, moved +48% between the runs from load alone). ns per address,
//! run 1 (direct-mapped result cache, no prefix cache) / run 2 (final code):
//!
//! | bench                          | run 1 | run 2 |
//! |--------------------------------|------:|------:|
//! | truncate/v4                    |   8.4 |    12 |
//! | truncate/v6                    |    14 |    19 |
//! | hash/cold/v4                   |   165 |   194 |
//! | hash/warm/v4                   |    31 |    15 |
//! | hash/cold/v6                   |   152 |   193 |
//! | hash/warm/v6                   |    53 |    38 |
//! | cryptopan/cold/v4 (32 AES)     |   152 |   134 |
//! | cryptopan/warm/v4              |    31 |    19 |
//! | cryptopan/ecs24/v4 (24 AES)    |   122 |   175 |
//! | cryptopan/cold/v6 (128 AES)    |   591 |   697 |
//! | cryptopan/warm/v6              |   211 |    62 |
//! | cryptopan/new-iid-known-64/v6  |     - |   544 |
//! | cryptopan/ecs56/v6 (56 AES)    |   426 |   414 |
//!
//! Cache behaviour (run 2, 10,000 distinct clients, 65536 slots in 2-way
//! sets): warm result cache 97.5% hits for IPv4 (280.7 M hits, 7.0 M
//! misses, 7.0 M evictions, i.e. the remaining misses are set conflicts),
//! same 97.5% for IPv6; run 1's direct-mapped cache had 88% hits. The
//! Crypto-PAn prefix cache (/24, /64) hit on every result miss after the
//! first pass (v4: 1024 misses for four /16s' /24s, 0 evictions; v6: 16
//! misses for 16 /64s).
//!
//! So: Crypto-PAn IPv4 is within 0.3 us even uncached; IPv6 is within it
//! only from the result cache (a client seen before); a new IPv6 address
//! costs ~0.55-0.7 us (128 AES blocks, or 64 with a known /64). Instruction
//! counts (callgrind) were not taken.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_privacy::{Mode, Pseudonymizer, Settings};

const KEY: [u8; 32] = [
    21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131, 121,
    121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
];

fn rng(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn v4_set() -> Vec<IpAddr> {
    let nets = [0xc633_0000u32, 0x0a14_0000, 0x5db8_0000, 0xac10_0000];
    let mut seen = std::collections::HashSet::new();
    let mut s = 1u64;
    let mut v = Vec::new();
    while v.len() < 10_000 {
        let net = nets[(rng(&mut s) % 4) as usize];
        let a = net | (rng(&mut s) as u32 & 0xffff);
        if seen.insert(a) {
            v.push(IpAddr::V4(Ipv4Addr::from(a)));
        }
    }
    v
}

fn v6_set() -> Vec<IpAddr> {
    let mut s = 2u64;
    (0..10_000)
        .map(|_| {
            let net48: u128 = if rng(&mut s).is_multiple_of(2) {
                0x2001_0db8_0001
            } else {
                0x2a02_0ab8_7777
            };
            let subnet = u128::from(rng(&mut s) % 8);
            let iid = u128::from(rng(&mut s));
            IpAddr::V6(Ipv6Addr::from(net48 << 80 | subnet << 64 | iid))
        })
        .collect()
}

fn make(mode: Mode, key: &std::path::Path, cache_entries: usize) -> Pseudonymizer {
    Pseudonymizer::new(&Settings {
        client_ip: mode,
        key_file: Some(key.to_owned()),
        cache_entries,
        ..Settings::default()
    })
    .expect("pseudonymizer")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    std::fs::write(&key, KEY).expect("key");
    let sets = [("v4", v4_set()), ("v6", v6_set())];
    let mut g = c.benchmark_group("privacy");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for (fam, set) in &sets {
        g.throughput(Throughput::Elements(set.len() as u64));
        let modes = [
            ("truncate", make(Mode::Truncate, &key, 0)),
            ("hash/cold", make(Mode::Hash, &key, 0)),
            ("hash/warm", make(Mode::Hash, &key, 1 << 16)),
            ("cryptopan/cold", make(Mode::CryptoPan, &key, 0)),
            ("cryptopan/warm", make(Mode::CryptoPan, &key, 1 << 16)),
        ];
        for (name, p) in &modes {
            g.bench_function(format!("{name}/{fam}"), |b| {
                b.iter(|| {
                    for &a in set {
                        black_box(p.addr(black_box(a)));
                    }
                })
            });
            let st = p.cache_stats();
            if st.capacity > 0 {
                eprintln!(
                    "cache {name}/{fam}: results {st:?} prefixes {:?}",
                    p.prefix_cache_stats()
                );
            }
        }
        if *fam == "v6" {
            // Every address new (the result cache misses), its /64 known (the
            // prefix cache hits): a privacy-address client's next address.
            let p = &modes[4].1;
            let mut round = 0u128;
            g.bench_function("cryptopan/new-iid-known-64/v6", |b| {
                b.iter(|| {
                    round += 1;
                    for &a in set {
                        let IpAddr::V6(v) = a else { continue };
                        let a = Ipv6Addr::from(u128::from(v) ^ round << 20);
                        black_box(p.addr(black_box(IpAddr::V6(a))));
                    }
                })
            });
            eprintln!(
                "cache cryptopan/new-iid-known-64/v6: results {:?} prefixes {:?}",
                p.cache_stats(),
                p.prefix_cache_stats()
            );
        }
        let p = &modes[3].1;
        let len = if *fam == "v4" { 24 } else { 56 };
        let ecs: Vec<IpAddr> = set.iter().map(|&a| p_mask(a, len)).collect();
        g.bench_function(format!("cryptopan/ecs{len}/{fam}"), |b| {
            b.iter(|| {
                for &a in &ecs {
                    black_box(p.prefix(black_box(a), len));
                }
            })
        });
    }
    g.finish();
}

fn p_mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(
            u32::from(v) & (u32::MAX << (32 - u32::from(len))),
        )),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v) & (u128::MAX << (128 - u32::from(len))),
        )),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
