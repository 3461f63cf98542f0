//! Instruction counts that do not depend on the machine's load, for `benches/reduce.rs`:
//!
//! ```text
//! cargo build --release -p tapbus-reduce --example push_loop
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/push_loop
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep push_loop::
//! ```
//!
//! `push_all` pushes pre-parsed views (hot: parsed just before), `parse_push_all` parses
//! and pushes; both advance every 256 events and close at the end, building the records.

use std::hint::black_box;

use tapbus_event::EventView;
use tapbus_reduce::{Record, ReduceConfig, Reducer};

const N: usize = 20_000;

fn events() -> Vec<Vec<u8>> {
    let path = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    tapbus_testsupport::testdata::events_in(&path)
        .take(N)
        .collect()
}

fn reducer() -> Reducer {
    Reducer::new(ReduceConfig::default().validate().expect("defaults"))
}

#[inline(never)]
fn push_all(views: &[EventView<'_>]) -> Vec<Record> {
    let mut r = reducer();
    let mut out = Vec::new();
    for (i, v) in views.iter().enumerate() {
        black_box(r.push(v));
        if i % 256 == 0 {
            r.advance(&mut out);
        }
    }
    r.close_all(&mut out);
    out
}

#[inline(never)]
fn parse_all(events: &[Vec<u8>]) -> usize {
    events
        .iter()
        .map(|e| {
            black_box(EventView::parse(e).expect("parses"))
                .dnstap
                .operation
                .code() as usize
        })
        .sum()
}

#[inline(never)]
fn parse_push_all(events: &[Vec<u8>]) -> Vec<Record> {
    let mut r = reducer();
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let v = EventView::parse(e).expect("parses");
        black_box(r.push(&v));
        if i % 256 == 0 {
            r.advance(&mut out);
        }
    }
    r.close_all(&mut out);
    out
}

fn main() {
    let events = events();
    let views: Vec<EventView<'_>> = events
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    let a = push_all(&views);
    black_box(parse_all(&events));
    let b = parse_push_all(&events);
    assert_eq!(a, b);
    println!("{} events, {} records", events.len(), a.len());
}
