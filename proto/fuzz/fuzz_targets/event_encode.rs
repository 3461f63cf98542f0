//! Event encoder: any bytes as a dnstap data frame. `event::encode` must not panic; when it
//! returns an event, the event must be JSON (an object with the four blocks); when it
//! returns an error, it must have written nothing.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tapbus_proto::event;

fuzz_target!(|data: &[u8]| {
    let mut out = b"[".to_vec();
    match event::encode(Bytes::copy_from_slice(data), "fuzz", &mut out) {
        Ok(_summary) => {
            let v: serde_json::Value = serde_json::from_slice(&out[1..]).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out[1..]))
            });
            for block in ["network", "dns", "edns", "dnstap"] {
                assert!(v.get(block).is_some(), "no {block}: {v}");
            }
            assert!(v["dns"]["malformed-packet"].is_boolean());
        }
        Err(_) => assert_eq!(out, b"[", "an error appended output"),
    }
});
