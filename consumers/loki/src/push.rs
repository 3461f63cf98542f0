//! Push bodies: the arrow sealed batch --> bytes of one `POST /loki/api/v1/push`.
//!
//! * `protobuf` (the default): `logproto.PushRequest` (`pkg/push/push.proto`, prost
//!   derive below, `google.protobuf.Timestamp` from prost-types) in the snappy **block**
//!   format (`snap::raw`, not the framed format), `Content-Type: application/x-protobuf`.
//! * `json`: `{"streams":[{"stream":{labels},"values":[["<ns>","<line>",{metadata}]]}]}`
//!   with the nanosecond timestamp as a string (a JSON number gets a 400) and structured
//!   metadata as the optional third element, `Content-Type: application/json`.
//!
//! [`Encoder`] keeps its buffers and the snappy encoder's hash table between batches.

use bytes::Bytes;
use prost::Message as _;

use crate::batch::Stream;

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// LogQL selector text.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Internal to Loki; 0.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`. `line` is a proto `string`; it is declared `bytes` here,
/// which has the same wire form, so the bus payload is shared instead of copied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(bytes = "bytes", tag = "2")]
    pub line: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `encoding`: the body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Snappy block + `logproto.PushRequest`.
    #[default]
    Protobuf,
    /// The JSON push body.
    Json,
}

impl Encoding {
    /// The request's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The protobuf timestamp of `ns` since the epoch.
pub fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        // In 0..1e9, so it fits.
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// Encodes batches, reusing its buffers.
pub struct Encoder {
    snappy: snap::raw::Encoder,
    raw: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

/// A body that could not be made (snappy refused the input: larger than it handles).
#[derive(Debug, thiserror::Error)]
#[error("cannot compress the push body: {0}")]
pub struct EncodeError(#[from] snap::Error);

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            snappy: snap::raw::Encoder::new(),
            raw: Vec::new(),
        }
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The body in `encoding`.
    pub fn encode(&mut self, encoding: Encoding, streams: &[Stream]) -> Result<Bytes, EncodeError> {
        match encoding {
            Encoding::Protobuf => self.protobuf(streams),
            Encoding::Json => Ok(self.json(streams)),
        }
    }

    /// The snappy-compressed `PushRequest`.
    pub fn protobuf(&mut self, streams: &[Stream]) -> Result<Bytes, EncodeError> {
        let req = PushRequest {
            streams: streams
                .iter()
                .map(|s| StreamAdapter {
                    labels: s.selector.clone(),
                    entries: s
                        .entries
                        .iter()
                        .map(|e| EntryAdapter {
                            timestamp: Some(timestamp(e.ts_ns)),
                            line: e.line.clone(),
                            structured_metadata: e
                                .metadata
                                .iter()
                                .map(|(n, v)| LabelPairAdapter {
                                    name: (*n).to_string(),
                                    value: v.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
        };
        self.raw.clear();
        self.raw.reserve(req.encoded_len());
        // A Vec grows as needed: encoding into it cannot fail.
        let _ = req.encode(&mut self.raw);
        let mut out = vec![0u8; snap::raw::max_compress_len(self.raw.len())];
        let n = self.snappy.compress(&self.raw, &mut out)?;
        out.truncate(n);
        Ok(Bytes::from(out))
    }

    /// The JSON body.
    pub fn json(&mut self, streams: &[Stream]) -> Bytes {
        let size: usize = streams
            .iter()
            .flat_map(|s| s.entries.iter())
            .map(|e| e.line.len() + e.line.len() / 8 + 32)
            .sum();
        let mut out = Vec::with_capacity(size + 64 * streams.len() + 16);
        out.extend_from_slice(b"{\"streams\":[");
        for (i, s) in streams.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"stream\":{");
            for (j, (n, v)) in s.labels.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                json_str(&mut out, n);
                out.push(b':');
                json_str(&mut out, v);
            }
            out.extend_from_slice(b"},\"values\":[");
            for (j, e) in s.entries.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"[\"");
                out.extend_from_slice(itoa::Buffer::new().format(e.ts_ns).as_bytes());
                out.extend_from_slice(b"\",");
                match std::str::from_utf8(&e.line) {
                    Ok(l) => json_str(&mut out, l),
                    Err(_) => json_str(&mut out, &String::from_utf8_lossy(&e.line)),
                }
                if !e.metadata.is_empty() {
                    out.extend_from_slice(b",{");
                    for (k, (n, v)) in e.metadata.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        json_str(&mut out, n);
                        out.push(b':');
                        json_str(&mut out, v);
                    }
                    out.push(b'}');
                }
                out.push(b']');
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Entry;

    fn streams() -> Vec<Stream> {
        vec![
            Stream {
                selector: r#"{job="tapbus", kind="event"}"#.into(),
                labels: vec![
                    ("job".into(), "tapbus".into()),
                    ("kind".into(), "event".into()),
                ],
                entries: vec![
                    Entry {
                        ts_ns: 1_795_315_298_535_458_000,
                        line: Bytes::from_static(br#"{"dns":{"qname":"a\"b"}}"#),
                        metadata: vec![],
                    },
                    Entry {
                        ts_ns: 1_795_315_298_535_458_001,
                        line: Bytes::from_static(b"second\n\x01"),
                        metadata: vec![("qname", "example.com".into())],
                    },
                ],
            },
            Stream {
                selector: r#"{job="tapbus", kind="reduced"}"#.into(),
                labels: vec![
                    ("job".into(), "tapbus".into()),
                    ("kind".into(), "reduced".into()),
                ],
                entries: vec![Entry {
                    ts_ns: 10,
                    line: Bytes::from_static(b"{}"),
                    metadata: vec![],
                }],
            },
        ]
    }

    #[test]
    fn protobuf_round_trip() {
        let mut enc = Encoder::new();
        for _ in 0..2 {
            let body = enc.protobuf(&streams()).unwrap();
            let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            let req = PushRequest::decode(raw.as_slice()).unwrap();
            assert_eq!(req.streams.len(), 2);
            let s = &req.streams[0];
            assert_eq!(s.labels, r#"{job="tapbus", kind="event"}"#);
            assert_eq!(s.hash, 0);
            assert_eq!(s.entries.len(), 2);
            assert_eq!(
                s.entries[0].timestamp,
                Some(prost_types::Timestamp {
                    seconds: 1_795_315_298,
                    nanos: 535_458_000
                })
            );
            assert_eq!(&s.entries[0].line[..], br#"{"dns":{"qname":"a\"b"}}"#);
            assert!(s.entries[0].structured_metadata.is_empty());
            assert_eq!(
                s.entries[1].structured_metadata,
                vec![LabelPairAdapter {
                    name: "qname".into(),
                    value: "example.com".into()
                }]
            );
            assert_eq!(req.streams[1].entries[0].timestamp.unwrap().nanos, 10);
        }
    }

    /// The line is a proto3 `string` in Loki's schema: a decoder with `string` reads it.
    #[test]
    fn line_reads_as_a_proto_string() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct E {
            #[prost(string, tag = "2")]
            line: String,
        }
        let e = EntryAdapter {
            timestamp: None,
            line: Bytes::from_static("ünï".as_bytes()),
            structured_metadata: vec![],
        };
        assert_eq!(E::decode(e.encode_to_vec().as_slice()).unwrap().line, "ünï");
    }

    #[test]
    fn json_shape() {
        let body = Encoder::new().json(&streams());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"streams":[
                {"stream":{"job":"tapbus","kind":"event"},
                 "values":[["1795315298535458000", r#"{"dns":{"qname":"a\"b"}}"#],
                           ["1795315298535458001", "second\n\u{1}", {"qname":"example.com"}]]},
                {"stream":{"job":"tapbus","kind":"reduced"},"values":[["10","{}"]]}
            ]})
        );
        assert!(body.starts_with(br#"{"streams":[{"stream":{"job":"tapbus","kind":"event"},"values":[["1795315298535458000","#));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_999_999
            }
        );
        assert_eq!(timestamp(i64::MAX).nanos, 854_775_807);
    }
}
