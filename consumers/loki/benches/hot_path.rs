//! The Loki writer's hot path per line, over the events of the bulk capture
//! (`bulk-100k.fstrm`, 100,002 events as the broker publishes them): read the event and
//! write its stream selector ([`Labeler::line`]), add it to the batch, seal batches at
//! 1 MiB of lines and encode each push body, as the binary does. The numbers are in
//! bench/README.md ("tapbus-loki").
//!
//! `cargo bench -p tapbus-loki --bench hot_path -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_loki::batch::{Batch, Sealed};
use tapbus_loki::labels::{Field, Labeler, LabelsConfig};
use tapbus_loki::push::{Encoder, Encoding};

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Bytes> {
    tapbus_testsupport::testdata::events("bulk-100k.fstrm")
        .into_iter()
        .map(Bytes::from)
        .collect()
}

/// Lines per measured iteration (the first of the capture).
const N: usize = 20_000;
const MAX_BYTES: usize = 1 << 20;

/// Fills batches from `lines`; each sealed one goes to `sealed`.
fn fill(labeler: &Labeler, lines: &[Bytes], mut sealed: impl FnMut(Sealed<usize>)) {
    let now = Instant::now();
    let mut batch: Batch<usize> = Batch::new();
    let mut selector = String::with_capacity(256);
    for (i, line) in lines.iter().enumerate() {
        let Some((ts, meta)) = labeler.line("dnstap.bench.client_response", line, &mut selector)
        else {
            continue;
        };
        if batch.would_overflow(line.len(), MAX_BYTES) {
            sealed(batch.seal());
        }
        batch.add(now, &selector, ts.unwrap_or(0), line.clone(), meta, i);
    }
    sealed(batch.seal());
}

fn bench(c: &mut Criterion) {
    let all = events();
    let lines = &all[..N.min(all.len())];
    let bytes: usize = lines.iter().map(Bytes::len).sum();
    eprintln!(
        "{} lines, {} bytes, {:.0} bytes per line",
        lines.len(),
        bytes,
        bytes as f64 / lines.len() as f64
    );
    let default = Labeler::new(&LabelsConfig::default()).expect("labels");
    let with_metadata = Labeler::new(&LabelsConfig {
        structured_metadata: vec![Field::Qname, Field::QueryAddress, Field::Rcode],
        ..LabelsConfig::default()
    })
    .expect("labels");

    // Body sizes, once.
    let mut enc = Encoder::new();
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let (mut n, mut body, mut streams) = (0usize, 0usize, 0usize);
        fill(&default, lines, |s| {
            n += 1;
            streams += s.streams.len();
            body += enc.encode(encoding, &s.streams).expect("encode").len();
        });
        eprintln!(
            "{encoding:?}: {n} pushes, {:.1} streams and {:.0} body bytes per push, {:.1} body bytes per line",
            streams as f64 / n as f64,
            body as f64 / n as f64,
            body as f64 / lines.len() as f64
        );
    }

    let mut g = c.benchmark_group("loki");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse+label (Labeler::line)", |b| {
        let mut selector = String::new();
        b.iter(|| {
            for l in lines {
                black_box(default.line("dnstap.x", l, &mut selector));
            }
        })
    });
    g.bench_function("line+batch+seal", |b| {
        b.iter(|| fill(&default, lines, |s| drop(black_box(s))))
    });
    for (name, labeler, encoding) in [
        ("line+batch+protobuf", &default, Encoding::Protobuf),
        ("line+batch+json", &default, Encoding::Json),
        (
            "line+batch+protobuf, 3 metadata",
            &with_metadata,
            Encoding::Protobuf,
        ),
    ] {
        let mut enc = Encoder::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                fill(labeler, lines, |s| {
                    black_box(enc.encode(encoding, &s.streams).expect("encode"));
                })
            })
        });
    }
    // Encoding alone, the push task's share.
    let mut sealed = Vec::new();
    fill(&default, lines, |s| sealed.push(s));
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let mut enc = Encoder::new();
        g.bench_function(format!("encode only {encoding:?}"), |b| {
            b.iter(|| {
                for s in &sealed {
                    black_box(enc.encode(encoding, &s.streams).expect("encode"));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
