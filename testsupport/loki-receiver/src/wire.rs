//! The push bodies: Loki's `logproto` messages (written from `pkg/push/push.proto`,
//! independent of tapbus-loki's, so the tests are an oracle), a protobuf body writer for
//! tests, and the decoder of what a writer sends (protobuf in a snappy block, or JSON; either
//! optionally gzip or deflate).

use std::io::Read;

use crate::selector::labels_string;

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    #[prost(string, tag = "2")]
    pub format: String,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// LogQL selector text, e.g. `{job="tapbus", kind="event"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A protobuf push body: the request encoded and snappy block-compressed.
pub fn encode_protobuf(req: &PushRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// An entry of a [`PushRequest`] from nanoseconds, a line and structured metadata.
pub fn entry(ts_ns: i64, line: &str, sm: &[(&str, &str)]) -> EntryAdapter {
    EntryAdapter {
        timestamp: Some(prost_types::Timestamp {
            seconds: ts_ns.div_euclid(1_000_000_000),
            nanos: ts_ns.rem_euclid(1_000_000_000) as i32,
        }),
        line: line.to_string(),
        structured_metadata: sm
            .iter()
            .map(|(n, v)| LabelPairAdapter {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        parsed: vec![],
    }
}

/// A decoded stream of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InStream {
    /// Selector text as sent (protobuf) or rendered from the JSON map.
    pub labels: String,
    pub entries: Vec<InEntry>,
}

/// A decoded entry of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InEntry {
    pub ts_ns: i64,
    pub line: String,
    pub structured_metadata: Vec<(String, String)>,
}

/// Why a body did not decode (a 400, or 413 for `TooLarge`).
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    Bad(String),
}

/// Decodes a push body by content type and encoding (Loki's `ParseRequest`).
pub fn decode_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    max: usize,
) -> Result<Vec<InStream>, DecodeError> {
    let inflated;
    let body = match content_encoding.map(str::trim).unwrap_or("") {
        "" | "snappy" => body,
        "gzip" => {
            inflated = read_bounded(flate2::read::GzDecoder::new(body), max)?;
            &inflated[..]
        }
        "deflate" => {
            inflated = read_bounded(flate2::read::DeflateDecoder::new(body), max)?;
            &inflated[..]
        }
        other => {
            return Err(DecodeError::Bad(format!(
                "Content-Encoding {other:?} not supported"
            )));
        }
    };
    let ct = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if ct == "application/json" {
        decode_json(body)
    } else {
        decode_protobuf(body, max)
    }
}

fn read_bounded(r: impl Read, max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Bad(format!("decompress: {e}")))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge(max));
    }
    Ok(out)
}

fn decode_protobuf(body: &[u8], max: usize) -> Result<Vec<InStream>, DecodeError> {
    let len =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Bad(format!("snappy: {e}")))?;
    if len > max {
        return Err(DecodeError::TooLarge(max));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Bad(format!("snappy: {e}")))?;
    let req: PushRequest =
        prost::Message::decode(&raw[..]).map_err(|e| DecodeError::Bad(format!("proto: {e}")))?;
    Ok(req
        .streams
        .into_iter()
        .map(|s| InStream {
            labels: s.labels,
            entries: s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e
                        .timestamp
                        .map(|t| {
                            (t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
                                .clamp(i64::MIN as i128, i64::MAX as i128)
                                as i64
                        })
                        .unwrap_or(0);
                    InEntry {
                        ts_ns: ts,
                        line: e.line,
                        structured_metadata: e
                            .structured_metadata
                            .into_iter()
                            .map(|p| (p.name, p.value))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect())
}

fn decode_json(body: &[u8]) -> Result<Vec<InStream>, DecodeError> {
    use serde_json::Value;
    let bad = |m: &str| DecodeError::Bad(m.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|e| DecodeError::Bad(e.to_string()))?;
    let streams = v
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("streams: expected an array"))?;
    let mut out = Vec::with_capacity(streams.len());
    for s in streams {
        let map = s
            .get("stream")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("stream: expected an object of labels"))?;
        let mut ls: Vec<(String, String)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| bad("stream: label values must be strings"))?;
            ls.push((k.clone(), v.to_string()));
        }
        ls.sort();
        // Loki renders the map as Prometheus labels and parses that text again.
        let labels = labels_string(&ls);
        let values = s
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("values: expected an array"))?;
        let mut entries = Vec::with_capacity(values.len());
        for e in values {
            let a = e
                .as_array()
                .filter(|a| a.len() == 2 || a.len() == 3)
                .ok_or_else(|| bad("values: each value must be [ts, line] or [ts, line, {}]"))?;
            let ts = a[0]
                .as_str()
                .ok_or_else(|| bad("values: the timestamp must be a string of nanoseconds"))?;
            let ts_ns: i64 = ts
                .parse()
                .map_err(|_| bad("values: the timestamp must be a string of nanoseconds"))?;
            let line = a[1]
                .as_str()
                .ok_or_else(|| bad("values: the line must be a string"))?
                .to_string();
            let mut sm = Vec::new();
            if let Some(m) = a.get(2) {
                let m = m
                    .as_object()
                    .ok_or_else(|| bad("values: structured metadata must be an object"))?;
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("values: structured metadata values must be strings"))?;
                    sm.push((k.clone(), v.to_string()));
                }
            }
            entries.push(InEntry {
                ts_ns,
                line,
                structured_metadata: sm,
            });
        }
        out.push(InStream { labels, entries });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NOW: i64 = 1_714_557_600_000_000_000;

    #[test]
    fn bodies_decode_protobuf_json_and_gzip() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{job=\"t\"}".into(),
                entries: vec![entry(NOW + 5, "line", &[("k", "v")])],
                hash: 0,
            }],
            format: String::new(),
        };
        let pb = encode_protobuf(&req);
        let s = decode_body(Some("application/x-protobuf"), None, &pb, 1 << 20).unwrap();
        assert_eq!(s[0].labels, "{job=\"t\"}");
        assert_eq!(s[0].entries[0].ts_ns, NOW + 5);
        assert_eq!(
            s[0].entries[0].structured_metadata,
            vec![("k".into(), "v".into())]
        );
        // No content type: protobuf; "snappy" encoding tolerated.
        assert!(decode_body(None, Some("snappy"), &pb, 1 << 20).is_ok());
        // Framed snappy or plain protobuf is not a block.
        assert!(matches!(
            decode_body(None, None, &prost::Message::encode_to_vec(&req), 1 << 20),
            Err(DecodeError::Bad(_))
        ));
        let json = format!(
            r#"{{"streams":[{{"stream":{{"job":"t","b":"x y"}},"values":[["{}","l1"],["{}","l2",{{"qname":"a."}}]]}}]}}"#,
            NOW,
            NOW + 1
        );
        let s = decode_body(
            Some("application/json; charset=utf-8"),
            None,
            json.as_bytes(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(s[0].labels, "{b=\"x y\", job=\"t\"}");
        assert_eq!(
            s[0].entries[1].structured_metadata,
            vec![("qname".into(), "a.".into())]
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decode_body(Some("application/json"), Some("gzip"), &gz, 1 << 20).unwrap()[0]
                .entries
                .len(),
            2
        );
        // A number timestamp is refused.
        let bad = r#"{"streams":[{"stream":{"job":"t"},"values":[[1,"l"]]}]}"#;
        assert!(
            matches!(decode_body(Some("application/json"), None, bad.as_bytes(), 1 << 20), Err(DecodeError::Bad(m)) if m.contains("string of nanoseconds"))
        );
        assert!(
            matches!(decode_body(Some("application/json"), Some("br"), b"{}", 1 << 20), Err(DecodeError::Bad(m)) if m == "Content-Encoding \"br\" not supported")
        );
        assert_eq!(
            decode_body(Some("application/json"), Some("gzip"), &gz, 10),
            Err(DecodeError::TooLarge(10))
        );
    }
}
