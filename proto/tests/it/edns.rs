//! EDNS details decoded from real traffic (MANIFEST.md: unbound has ECS and a BADVERS
//! answer, kresd has EDE). The differential test compares these with miekg's text option by
//! option; here we check they are really there and structured as the schema says.

use serde_json::Value;

use super::{encode_file, testdata};

/// Every EDNS option of every event of a capture, with the event.
fn options(name: &str) -> Vec<(Value, Value)> {
    let (events, stream) = encode_file(&testdata(name));
    assert_eq!(stream, Ok(()));
    events
        .into_iter()
        .map(|e| e.expect("every capture frame is an event").0)
        .flat_map(|ev| {
            let opts = ev["edns"]["options"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            opts.into_iter().map(move |o| (ev.clone(), o))
        })
        .collect()
}

#[test]
fn unbound_has_client_subnet_options() {
    let all = options("unbound.fstrm");
    let ecs: Vec<&Value> = all
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["code"] == 8)
        .collect();
    assert!(!ecs.is_empty(), "no ECS option in unbound.fstrm");
    for o in &ecs {
        assert_eq!(o["name"], "CSUBNET");
        let data = o["data"].as_str().expect("data");
        let (addr, prefix) = data.split_once('/').expect("address/prefix");
        assert_eq!(prefix.parse::<u64>().ok(), o["source-prefix"].as_u64());
        let fam = o["family"].as_u64().expect("family");
        match fam {
            1 => assert!(addr.parse::<std::net::Ipv4Addr>().is_ok(), "{data}"),
            2 => assert!(addr.parse::<std::net::Ipv6Addr>().is_ok(), "{data}"),
            _ => panic!("family {fam}"),
        }
        assert!(o["scope-prefix"].is_u64());
    }
    let datas: Vec<&str> = ecs.iter().filter_map(|o| o["data"].as_str()).collect();
    // The dig runs sent these (cf. `; SUBNET: ...` in the golang output).
    for want in [
        "127.53.0.0/24",
        "127.99.0.0/24",
        "2001:db8:ec5::/48",
        "0.0.0.0/0",
    ] {
        assert!(datas.contains(&want), "no ECS {want}: {datas:?}");
    }
}

#[test]
fn kresd_has_extended_dns_errors() {
    let all = options("kresd.fstrm");
    let ede: Vec<(&Value, &Value)> = all
        .iter()
        .filter(|(_, o)| o["code"] == 15)
        .map(|(e, o)| (e, o))
        .collect();
    assert!(!ede.is_empty(), "no EDE option in kresd.fstrm");
    for (_, o) in &ede {
        assert_eq!(o["name"], "ERRORS");
        assert!(o["info-code"].is_u64() && o["info"].is_string() && o["extra-text"].is_string());
    }
    // blocked.test. is DENY_MSG: EDE 15 (Blocked) on a response.
    let blocked = ede
        .iter()
        .find(|(_, o)| o["info-code"] == 15)
        .expect("an EDE Blocked");
    assert_eq!(blocked.1["info"], "Blocked");
    assert_eq!(blocked.1["data"], "15 Blocked: CR36");
    assert_eq!(blocked.0["dnstap"]["operation"], "CLIENT_RESPONSE");
    assert!(
        blocked.0["dns"]["qname"]
            .as_str()
            .is_some_and(|q| q.ends_with("blocked.test")),
        "{}",
        blocked.0["dns"]
    );
    let codes: Vec<u64> = ede
        .iter()
        .filter_map(|(_, o)| o["info-code"].as_u64())
        .collect();
    for want in [6, 15, 18, 20] {
        assert!(codes.contains(&want), "no EDE {want}: {codes:?}");
    }
}

#[test]
fn unbound_has_a_badvers_answer() {
    let (events, _) = encode_file(&testdata("unbound.fstrm"));
    let badvers: Vec<_> = events
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter(|(v, _)| v["dns"]["rcode"] == "BADVERS")
        .collect();
    assert_eq!(badvers.len(), 1, "MANIFEST: one BADVERS answer");
    let (v, s) = badvers[0];
    assert_eq!(s.rcode, Some(16));
    assert_eq!(v["dnstap"]["operation"], "CLIENT_RESPONSE");
    // header RCODE 0 + OPT extended RCODE 1 (<< 4) = 16
    assert_eq!(v["edns"]["rcode"], 1);
    assert_eq!(v["edns"]["version"], 0);
    // The query that caused it asked for EDNS version 1.
    let asked_v1 = events.iter().filter_map(|e| e.as_ref().ok()).any(|(q, _)| {
        q["dnstap"]["operation"] == "CLIENT_QUERY"
            && q["dns"]["id"] == v["dns"]["id"]
            && q["edns"]["version"] == 1
    });
    assert!(
        asked_v1,
        "no EDNS version 1 query with id {}",
        v["dns"]["id"]
    );
}
