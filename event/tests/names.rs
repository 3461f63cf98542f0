//! The filter's DNS mnemonic tables agree with the encoder's, for every value.

use tapbus_event::names::{RCODES, TYPES, canonical};
use tapbus_proto::event::dns::{rcode_name, type_mnemonic};

#[test]
fn type_table_is_the_encoders() {
    for t in 0..=u16::MAX {
        let ours = TYPES.iter().find(|(c, _)| *c == t).map(|(_, n)| *n);
        assert_eq!(ours, type_mnemonic(t), "type {t}");
        let want = type_mnemonic(t).map_or(format!("TYPE{t}"), str::to_owned);
        assert_eq!(canonical(TYPES, "TYPE", &t.to_string()), Some(want.clone()));
        assert_eq!(canonical(TYPES, "TYPE", &format!("type{t}")), Some(want));
    }
}

#[test]
fn rcode_table_is_the_encoders() {
    for r in 0..4096u16 {
        let ours = RCODES.iter().find(|(c, _)| *c == r).map(|(_, n)| *n);
        assert_eq!(ours, rcode_name(r), "rcode {r}");
    }
    assert_eq!(
        canonical(RCODES, "RCODE", "nxdomain").as_deref(),
        Some("NXDOMAIN")
    );
    assert_eq!(
        canonical(RCODES, "RCODE", "RCODE3").as_deref(),
        Some("NXDOMAIN")
    );
    assert_eq!(canonical(RCODES, "RCODE", "RCODE"), None);
    assert_eq!(canonical(RCODES, "RCODE", "RCODE+1"), None);
    assert_eq!(canonical(RCODES, "RCODE", "NXDOMIAN"), None);
}
