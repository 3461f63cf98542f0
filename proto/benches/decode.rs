//! Decode throughput over the frames of `bulk-100k.fstrm` (100,002 real unbound messages):
//!
//! * `prost_decode`: `Dnstap::decode` only, per message;
//! * `event_encode`: the full `event::encode` (protobuf decode + DNS walk + JSON), per message,
//!   reusing one output buffer as the broker does;
//! * `views_clear+truncate`, `views_clear+cryptopan`: `event::encode_views` writing the
//!   clear event and one pseudonymised view (two JSON events per message), as the broker
//!   does for two outputs with different privacy settings;
//! * `fstrm_decode_all`: splitting the whole file into frames, per frame.
//!
//! Run with `cargo bench -p tapbus-proto --bench decode`; criterion prints time per
//! iteration and elements/s (an element is one message or frame).
//!
//! For profiling or counting instructions independently of machine load, set
//! `TAPBUS_BENCH_ONCE=prost|encode|fstrm` to run just that loop once over the file and exit,
//! e.g. `TAPBUS_BENCH_ONCE=encode perf stat -e instructions:u target/release/deps/decode-*`
//! (subtract a run with `TAPBUS_BENCH_ONCE=load`, which only loads the frames).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use tapbus_proto::dnstap::Dnstap;
use tapbus_proto::event;
use tapbus_proto::fstrm::{DEFAULT_MAX_DATA_FRAME, Frame, decode_all};

fn load() -> (Vec<u8>, Vec<Bytes>) {
    let bulk = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    let bytes = std::fs::read(&bulk).unwrap_or_else(|e| panic!("reading {}: {e}", bulk.display()));
    let (frames, result) = decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
    assert_eq!(result, Ok(()), "bulk capture decodes");
    let data: Vec<Bytes> = frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Data(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), 100_002);
    (bytes, data)
}

/// One pass of one loop, without criterion (see the module docs).
fn once(which: &str) {
    let (file, frames) = load();
    let mut out = Vec::with_capacity(4096);
    let mut acc = 0usize;
    match which {
        "load" => {}
        "prost" => {
            for f in &frames {
                acc += usize::from(black_box(Dnstap::decode(f.clone())).is_ok());
            }
        }
        "encode" => {
            for f in &frames {
                out.clear();
                let _ = event::encode(f.clone(), "bench", &mut out);
                acc += out.len();
            }
        }
        "fstrm" => acc += decode_all(&file, DEFAULT_MAX_DATA_FRAME).0.len(),
        other => panic!("TAPBUS_BENCH_ONCE={other}: use load, prost, encode or fstrm"),
    }
    eprintln!("{which}: {} frames, {acc}", frames.len());
}

fn benches(c: &mut Criterion) {
    if let Ok(which) = std::env::var("TAPBUS_BENCH_ONCE") {
        once(&which);
        std::process::exit(0);
    }
    let (file, frames) = load();
    let n = frames.len() as u64;

    let mut g = c.benchmark_group("bulk-100k");
    g.throughput(Throughput::Elements(n));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));

    g.bench_function("prost_decode", |b| {
        b.iter(|| {
            for f in &frames {
                // Cloning `Bytes` is a reference-count increment, as for a frame off the wire.
                let tap = Dnstap::decode(f.clone()).expect("valid dnstap");
                black_box(&tap);
            }
        })
    });

    g.bench_function("event_encode", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            for f in &frames {
                out.clear();
                let s = event::encode(f.clone(), "bench", &mut out).expect("encodes");
                black_box((&s, out.len()));
            }
        })
    });

    // Privacy views: the clear event plus one pseudonymised view, each encoded once per
    // event (what the broker does for two outputs with different privacy settings).
    let key = std::env::temp_dir().join(format!("tapbus-bench-{}.key", std::process::id()));
    std::fs::write(&key, [7u8; 32]).expect("key file");
    for (name, mode) in [
        ("views_clear+truncate", tapbus_privacy::Mode::Truncate),
        ("views_clear+cryptopan", tapbus_privacy::Mode::CryptoPan),
    ] {
        let p = tapbus_privacy::Pseudonymizer::new(&tapbus_privacy::Settings {
            client_ip: mode,
            key_file: (mode == tapbus_privacy::Mode::CryptoPan).then(|| key.clone()),
            ..Default::default()
        })
        .expect("pseudonymizer");
        let views = [
            event::View::default(),
            event::View {
                addr: Some(std::sync::Arc::new(Anon(p))),
                ..Default::default()
            },
        ];
        g.bench_function(name, |b| {
            let mut outs = vec![Vec::with_capacity(4096), Vec::with_capacity(4096)];
            let mut scratch = event::Scratch::default();
            b.iter(|| {
                for f in &frames {
                    for o in &mut outs {
                        o.clear();
                    }
                    let s = event::encode_views(
                        f.clone(),
                        "bench",
                        &event::STANDARD,
                        &views,
                        &mut scratch,
                        &mut outs,
                    )
                    .expect("encodes");
                    black_box((&s, outs[1].len()));
                }
            })
        });
    }
    let _ = std::fs::remove_file(&key);

    g.bench_function("fstrm_decode_all", |b| {
        b.iter(|| {
            let (frames, result) = decode_all(black_box(&file), DEFAULT_MAX_DATA_FRAME);
            black_box((frames.len(), result.is_ok()));
        })
    });
    g.finish();

    // Bytes of JSON per message, for the record.
    let mut out = Vec::new();
    let mut total = 0usize;
    for f in &frames {
        out.clear();
        let _ = event::encode(f.clone(), "bench", &mut out);
        total += out.len();
    }
    eprintln!(
        "bulk-100k: {n} messages, {} bytes of frames, {} bytes of JSON ({} per message)",
        file.len(),
        total,
        total / frames.len().max(1)
    );
}

/// The privacy crate's transform as the encoder's (what the broker wires).
#[derive(Debug)]
struct Anon(tapbus_privacy::Pseudonymizer);

impl event::AddrMap for Anon {
    fn addr(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        self.0.addr(ip)
    }
    fn prefix(&self, ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
        self.0.prefix(ip, len)
    }
}

criterion_group!(decode, benches);
criterion_main!(decode);
