//! Parsing of the Redis stream replies the stream subscriber reads (`XREADGROUP`,
//! `XAUTOCLAIM`, extended `XPENDING`), RESP2 and RESP3, from [`redis::Value`]: pure
//! functions, unit-tested without a server. Own parsing rather than redis-rs's
//! `StreamReadReply`, because an entry deleted while pending comes back as `[id, nil]`
//! from a read of the consumer's own pending entries, and that must be seen (and acked
//! as lost) rather than fail the whole reply.

use redis::Value;

/// An entry's field-value pairs.
pub(super) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry; `fields` is `None` for an entry deleted (trimmed) while pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub id: String,
    pub fields: Option<Fields>,
}

impl Entry {
    /// The value of `field`, if the entry has it.
    pub fn field(&self, field: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k.as_slice() == field.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// `XAUTOCLAIM` reply: where to go on, the entries now ours, ids deleted while pending
/// (Redis 7; already removed from the pending list by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AutoClaim {
    pub cursor: String,
    pub entries: Vec<Entry>,
    pub deleted: Vec<String>,
}

/// One line of an extended `XPENDING` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    pub id: String,
    pub consumer: String,
    pub times_delivered: u64,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) | Value::Push { data: a, .. } => Some(a),
        _ => None,
    }
}

fn fields(v: &Value) -> Result<Option<Fields>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| match (bytes(k), bytes(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(format!("field pair {k:?} {v:?}")),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        other => {
            let a = list(other).ok_or_else(|| format!("fields: {other:?}"))?;
            if a.len() % 2 != 0 {
                return Err("odd number of field items".into());
            }
            a.chunks(2)
                .map(|kv| match (bytes(&kv[0]), bytes(&kv[1])) {
                    (Some(k), Some(v)) => Ok((k, v)),
                    _ => Err(format!("field pair {kv:?}")),
                })
                .collect::<Result<_, _>>()
                .map(Some)
        }
    }
}

/// `[[id, fields], ...]`.
fn entries(v: &Value) -> Result<Vec<Entry>, String> {
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    let a = list(v).ok_or_else(|| format!("entries: {v:?}"))?;
    a.iter()
        .map(|e| {
            let pair = list(e).ok_or_else(|| format!("entry: {e:?}"))?;
            let [id, f] = pair else {
                return Err(format!("entry with {} items", pair.len()));
            };
            Ok(Entry {
                id: text(id).ok_or_else(|| format!("entry id {id:?}"))?,
                fields: fields(f)?,
            })
        })
        .collect()
}

/// `XREADGROUP ... STREAMS key id` for one key: nil (timed out), RESP2
/// `[[key, entries]]` or RESP3 `{key: entries}`.
pub(super) fn parse_read(v: &Value, key: &str) -> Result<Vec<Entry>, String> {
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        other => {
            let a = list(other).ok_or_else(|| format!("XREADGROUP reply: {other:?}"))?;
            a.iter()
                .map(|s| match list(s) {
                    Some([k, e]) => Ok((k, e)),
                    _ => Err(format!("XREADGROUP stream: {s:?}")),
                })
                .collect::<Result<_, _>>()?
        }
    };
    let mut out = Vec::new();
    for (k, e) in streams {
        let name = text(k).ok_or_else(|| format!("stream name {k:?}"))?;
        if name != key {
            return Err(format!("reply for stream {name:?}, asked for {key:?}"));
        }
        out.extend(entries(e)?);
    }
    Ok(out)
}

/// `XAUTOCLAIM key group consumer min-idle start COUNT n`: `[cursor, entries]`, plus
/// `deleted ids` from Redis 7 on.
pub(super) fn parse_autoclaim(v: &Value) -> Result<AutoClaim, String> {
    let a = list(v).ok_or_else(|| format!("XAUTOCLAIM reply: {v:?}"))?;
    let (cursor, es, deleted) = match a {
        [c, e] => (c, e, None),
        [c, e, d] => (c, e, Some(d)),
        _ => return Err(format!("XAUTOCLAIM reply with {} items", a.len())),
    };
    let deleted = match deleted {
        None | Some(Value::Nil) => Vec::new(),
        Some(d) => list(d)
            .ok_or_else(|| format!("XAUTOCLAIM deleted ids: {d:?}"))?
            .iter()
            .map(|i| text(i).ok_or_else(|| format!("deleted id {i:?}")))
            .collect::<Result<_, _>>()?,
    };
    Ok(AutoClaim {
        cursor: text(cursor).ok_or_else(|| format!("XAUTOCLAIM cursor {cursor:?}"))?,
        entries: entries(es)?,
        deleted,
    })
}

/// Extended `XPENDING key group start end count [consumer]`:
/// `[[id, consumer, idle-ms, times-delivered], ...]`.
pub(super) fn parse_pending(v: &Value) -> Result<Vec<Pending>, String> {
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    let a = list(v).ok_or_else(|| format!("XPENDING reply: {v:?}"))?;
    a.iter()
        .map(|p| match list(p) {
            Some([id, consumer, _idle, n]) => Ok(Pending {
                id: text(id).ok_or_else(|| format!("pending id {id:?}"))?,
                consumer: text(consumer).ok_or_else(|| format!("pending consumer {consumer:?}"))?,
                times_delivered: int(n).ok_or_else(|| format!("delivery count {n:?}"))?,
            }),
            _ => Err(format!("XPENDING line: {p:?}")),
        })
        .collect()
}

/// `XINFO GROUPS key` reply: `(lag, pending)` of `group`. `lag` is `None` where Redis
/// cannot tell (it answers nil after entries were deleted, and Redis before 7.0 has no
/// `lag`); `None` overall when the group is not in the reply.
pub(super) fn parse_group_backlog(v: &Value, group: &str) -> Option<(Option<u64>, u64)> {
    for g in list(v)? {
        let pairs: Vec<(String, &Value)> = match g {
            Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            other => list(other)?
                .chunks(2)
                .filter(|kv| kv.len() == 2)
                .filter_map(|kv| Some((text(&kv[0])?, &kv[1])))
                .collect(),
        };
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let pending = get("pending").and_then(int)?;
        return Some((get("lag").and_then(int), pending));
    }
    None
}

/// Orders stream ids (`ms-seq`) numerically; `None` for a malformed id.
pub(super) fn id_key(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }
    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
    fn entry(id: &str, data: &str) -> Value {
        arr(vec![bulk(id), arr(vec![bulk("data"), bulk(data)])])
    }

    #[test]
    fn read_reply_resp2_resp3_and_timeout() {
        let resp2 = arr(vec![arr(vec![
            bulk("k"),
            arr(vec![entry("1-0", "a"), entry("2-5", "b")]),
        ])]);
        let got = parse_read(&resp2, "k").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "1-0");
        assert_eq!(got[0].field("data"), Some(&b"a"[..]));
        assert_eq!(got[1].id, "2-5");
        assert_eq!(got[1].field("data"), Some(&b"b"[..]));
        assert_eq!(got[1].field("other"), None);

        let resp3 = Value::Map(vec![(bulk("k"), arr(vec![entry("3-0", "c")]))]);
        let got = parse_read(&resp3, "k").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].field("data"), Some(&b"c"[..]));

        assert_eq!(parse_read(&Value::Nil, "k").unwrap(), vec![]);
        assert!(parse_read(&resp2, "other").is_err());
        assert!(parse_read(&Value::Int(3), "k").is_err());
    }

    #[test]
    fn read_reply_with_deleted_pending_entry_and_map_fields() {
        let v = arr(vec![arr(vec![
            bulk("k"),
            arr(vec![
                arr(vec![bulk("1-0"), Value::Nil]),
                arr(vec![
                    bulk("2-0"),
                    Value::Map(vec![(bulk("data"), bulk("x")), (bulk("n"), Value::Int(7))]),
                ]),
            ]),
        ])]);
        let got = parse_read(&v, "k").unwrap();
        assert_eq!(
            got[0],
            Entry {
                id: "1-0".into(),
                fields: None
            }
        );
        assert_eq!(got[0].field("data"), None);
        assert_eq!(got[1].field("data"), Some(&b"x"[..]));
        assert_eq!(got[1].field("n"), Some(&b"7"[..]));
    }

    #[test]
    fn malformed_entries_are_errors() {
        let odd = arr(vec![arr(vec![
            bulk("k"),
            arr(vec![arr(vec![bulk("1-0"), arr(vec![bulk("data")])])]),
        ])]);
        assert!(parse_read(&odd, "k").is_err());
        let short = arr(vec![arr(vec![
            bulk("k"),
            arr(vec![arr(vec![bulk("1-0")])]),
        ])]);
        assert!(parse_read(&short, "k").is_err());
    }

    #[test]
    fn autoclaim_reply_6_2_and_7() {
        let v62 = arr(vec![bulk("0-0"), arr(vec![entry("5-0", "e")])]);
        let c = parse_autoclaim(&v62).unwrap();
        assert_eq!(c.cursor, "0-0");
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].field("data"), Some(&b"e"[..]));
        assert!(c.deleted.is_empty());

        let v7 = arr(vec![
            bulk("9-1"),
            arr(vec![entry("6-0", "f"), entry("7-0", "g")]),
            arr(vec![bulk("4-0")]),
        ]);
        let c = parse_autoclaim(&v7).unwrap();
        assert_eq!(c.cursor, "9-1");
        assert_eq!(
            c.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["6-0", "7-0"]
        );
        assert_eq!(c.deleted, vec!["4-0".to_string()]);

        let empty = arr(vec![bulk("0-0"), arr(vec![]), arr(vec![])]);
        let c = parse_autoclaim(&empty).unwrap();
        assert!(c.entries.is_empty() && c.deleted.is_empty());
        assert!(parse_autoclaim(&arr(vec![bulk("0-0")])).is_err());
    }

    #[test]
    fn pending_reply() {
        let v = arr(vec![
            arr(vec![
                bulk("1-0"),
                bulk("c1"),
                Value::Int(1500),
                Value::Int(2),
            ]),
            arr(vec![bulk("2-0"), bulk("c2"), Value::Int(10), Value::Int(1)]),
        ]);
        let p = parse_pending(&v).unwrap();
        assert_eq!(
            p,
            vec![
                Pending {
                    id: "1-0".into(),
                    consumer: "c1".into(),
                    times_delivered: 2
                },
                Pending {
                    id: "2-0".into(),
                    consumer: "c2".into(),
                    times_delivered: 1
                },
            ]
        );
        assert_eq!(parse_pending(&arr(vec![])).unwrap(), vec![]);
        assert!(parse_pending(&arr(vec![arr(vec![bulk("1-0")])])).is_err());
    }

    #[test]
    fn group_backlog_resp2_resp3_and_unknown_lag() {
        let group = |name: &str, pending: i64, lag: Value| {
            arr(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(1),
                bulk("pending"),
                Value::Int(pending),
                bulk("last-delivered-id"),
                bulk("5-0"),
                bulk("entries-read"),
                Value::Int(5),
                bulk("lag"),
                lag,
            ])
        };
        let reply = arr(vec![
            group("other", 9, Value::Int(9)),
            group("loki", 3, Value::Int(12)),
        ]);
        assert_eq!(parse_group_backlog(&reply, "loki"), Some((Some(12), 3)));
        assert_eq!(parse_group_backlog(&reply, "none"), None);
        let nil = arr(vec![group("loki", 2, Value::Nil)]);
        assert_eq!(parse_group_backlog(&nil, "loki"), Some((None, 2)));
        let resp3 = arr(vec![Value::Map(vec![
            (bulk("name"), bulk("loki")),
            (bulk("pending"), Value::Int(1)),
            (bulk("lag"), Value::Int(0)),
        ])]);
        assert_eq!(parse_group_backlog(&resp3, "loki"), Some((Some(0), 1)));
        assert_eq!(parse_group_backlog(&Value::Nil, "loki"), None);
    }

    #[test]
    fn id_order() {
        assert!(id_key("10-0") > id_key("9-5"));
        assert!(id_key("9-10") > id_key("9-9"));
        assert_eq!(id_key("7"), Some((7, 0)));
        assert_eq!(id_key("x-1"), None);
    }
}
