//! The one-line form and filters on real events of the unbound capture.

use tapbus_event::{EventView, Filter, write_line};

fn events(name: &str) -> Vec<Vec<u8>> {
    tapbus_testsupport::testdata::events(name)
}

fn lines(name: &str) -> Vec<String> {
    events(name)
        .iter()
        .map(|e| {
            let v = EventView::parse(e).expect("view");
            let mut s = String::new();
            write_line(&v, &mut s);
            s
        })
        .collect()
}

#[test]
fn unbound_lines() {
    let lines = lines("unbound.fstrm");
    assert_eq!(lines.len(), 1757);
    // The first line of the capture, as in the task's example.
    let first = &lines[0];
    eprintln!("{}", lines[..6].join("\n"));
    let parts: Vec<&str> = first.split(' ').collect();
    assert_eq!(parts.len(), 9, "{first}");
    assert!(
        parts[0].starts_with("2026-11-22T02:41:38.") && parts[0].len() == 27,
        "{first}"
    );
    assert_eq!(parts[1], "unbound-resolver", "{first}");
    for l in &lines {
        let p: Vec<&str> = l.split(' ').collect();
        assert_eq!(p.len(), 9, "{l}");
        if p[2].ends_with("_QUERY") {
            assert_eq!(p[3], "-", "{l}");
        } else {
            assert_ne!(p[3], "-", "{l}");
        }
        assert!(p[6].ends_with('b') || p[6] == "-", "{l}");
        assert!(p[7].ends_with('.') || p[7] == "-", "{l}");
    }
    let exact = lines
        .iter()
        .filter(|l| {
            l.contains(" CLIENT_RESPONSE NOERROR 127.") && l.contains(" UDP ") && l.ends_with(" A")
        })
        .count();
    assert!(exact > 10, "{exact}");
}

#[test]
fn an_exact_line() {
    // A query and a response of the unbound capture, checked against its JSON by hand.
    let evs = events("unbound.fstrm");
    let mut found = 0;
    for e in &evs {
        let v = EventView::parse(e).expect("view");
        let mut s = String::new();
        write_line(&v, &mut s);
        if !(v.client_ip().is_some_and(|ip| ip.is_ipv4()) && v.qname().is_some_and(|q| q != ".")) {
            continue;
        }
        let t = v.dnstap.timestamp_rfc3339ns.as_deref().expect("time");
        let want = format!(
            "{}Z {} {} {} {}:{} {} {}b {}. {}",
            &t[..26],
            v.identity().expect("identity"),
            v.operation(),
            if v.is_query() {
                "-"
            } else {
                v.rcode().expect("rcode")
            },
            v.client_ip().expect("client"),
            v.network.query_port.expect("port"),
            v.protocol().expect("protocol"),
            v.size().expect("size"),
            v.qname().expect("qname"),
            v.qtype().expect("qtype"),
        );
        assert_eq!(s, want);
        found += 1;
    }
    assert!(found > 100, "{found}");
}

#[test]
fn filters_on_real_events() {
    let evs = events("bulk-100k.fstrm");
    let views: Vec<EventView<'_>> = evs
        .iter()
        .map(|e| EventView::parse(e).expect("view"))
        .collect();
    let count = |f: &str| {
        let f = Filter::parse(f).expect("filter");
        views.iter().filter(|v| f.matches(v)).count()
    };
    // From bulk-100k.fstrm.summary.json (see MANIFEST.md).
    assert_eq!(views.len(), 100_002);
    assert_eq!(count("operation=client_query"), 50_001);
    assert_eq!(count("operation=CLIENT_RESPONSE rcode=NXDOMAIN"), 7526);
    assert_eq!(count("operation=CLIENT_RESPONSE rcode!=NXDOMAIN"), 42_475);
    assert_eq!(count("qtype=A"), 52_772);
    assert_eq!(count("qtype=a,aaaa"), 52_772 + 22_246);
    assert_eq!(count("qtype!=A"), 100_002 - 52_772);
    assert_eq!(count("family=INET protocol=UDP"), 100_002);
    assert_eq!(count("identity=unbound-bulk"), 100_002);
    assert_eq!(count("client=127.0.0.0/8"), 100_002);
    assert_eq!(count("client=::/0"), 0);
    assert_eq!(count("qname=."), 2);
    let below = count("qname=*.bulk.test");
    assert_eq!(below, count("qname~(^|\\.)bulk\\.test$"));
    assert!(below > 80_000 && below < 100_000, "{below}");
}
