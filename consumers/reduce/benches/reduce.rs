//! The reducer on every event of the bulk capture (`bulk-100k.fstrm`, 100,002 events,
//! half of them CLIENT_RESPONSE), default configuration (`client` and `qname`
//! reductions, 10 s windows).
//!
//! NUMBERS (filled in from the run below).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_event::EventView;
use tapbus_proto::fstrm::{self, DEFAULT_MAX_DATA_FRAME, Frame};
use tapbus_reduce::{ReduceConfig, Reducer};

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    let path = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    let bytes = std::fs::read(&path).expect("bulk capture");
    let (frames, result) = fstrm::decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
    result.expect("bulk capture is a clean stream");
    frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Data(b) => Some(b),
            _ => None,
        })
        .map(|frame| {
            let mut out = Vec::new();
            tapbus_proto::event::encode(frame, "bench", &mut out).expect("event");
            out
        })
        .collect()
}

fn reducer() -> Reducer {
    Reducer::new(ReduceConfig::default().validate().expect("defaults"))
}

/// How often the binary would call `advance` (once per delivered batch).
const BATCH: usize = 256;

fn bench(c: &mut Criterion) {
    let events = events();
    let views: Vec<EventView<'_>> = events
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    {
        let mut r = reducer();
        let mut out = Vec::new();
        for v in &views {
            r.push(v);
        }
        r.close_all(&mut out);
        eprintln!(
            "{} events -> {} records, {:?}",
            views.len(),
            out.len(),
            r.stats()
        );
    }
    let mut g = c.benchmark_group("reduce");
    g.throughput(Throughput::Elements(views.len() as u64));
    g.sample_size(10);

    g.bench_function("push (pre-parsed views)", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            for v in &views {
                black_box(r.push(black_box(v)));
            }
            r
        })
    });
    g.bench_function("push + advance + close_all (records built)", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            let mut out = Vec::new();
            for (i, v) in views.iter().enumerate() {
                black_box(r.push(black_box(v)));
                if i % BATCH == 0 {
                    r.advance(&mut out);
                }
            }
            r.close_all(&mut out);
            (r, out)
        })
    });
    g.bench_function("parse only (reference)", |b| {
        b.iter(|| {
            for e in &events {
                black_box(EventView::parse(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("parse + push + advance + close_all", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let v = EventView::parse(black_box(e)).expect("parses");
                black_box(r.push(&v));
                if i % BATCH == 0 {
                    r.advance(&mut out);
                }
            }
            r.close_all(&mut out);
            (r, out)
        })
    });
    g.finish();

    let mut r = reducer();
    let mut out = Vec::new();
    for v in &views {
        r.push(v);
    }
    r.close_all(&mut out);
    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Elements(out.len() as u64));
    g.sample_size(10);
    g.bench_function("Record::write_json", |b| {
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for rec in &out {
                rec.write_json(&mut buf);
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
