//! Loki's answer --> what happens to the batch: the last arrow of the Loki writer.
//!
//! * 2xx: written, ack. (A 2xx whose body says `ingestion blocked for user ...` is
//!   Loki's `block_ingestion_until`, answered with its configurable status, 260 by
//!   default: nothing was stored; the lines are counted as `blocked_ingestion`.)
//! * 400: Loki stored the valid entries and names the others; [`refusals`] counts them
//!   by Loki's reason names (`loki_discarded_samples_total{reason}`); ack, never retry.
//! * 429, 5xx (and no answer at all): retry the same body.
//! * any other status: refused, the batch's lines counted as `http_<status>`, ack.
//!
//! The 400 texts, from Loki's source (v3: `pkg/validation/validate.go`,
//! `pkg/distributor/validator.go`, `pkg/distributor/distributor.go`,
//! `pkg/ingester/stream.go`):
//!
//! * The distributor validates each stream and entry and joins the distinct messages
//!   with `"; "` (`util.GroupedErrors`), each prefixed `"<n> errors like: "` when there
//!   is more than one distinct message or a message repeats. Per entry:
//!   `entry for stream '{..}' has timestamp too old: T, oldest acceptable timestamp is: T`
//!   (greater_than_max_sample_age), `... has timestamp too new: T` (too_far_in_future),
//!   `Max entry size 'N' bytes exceeded for stream '{..}' while adding an entry with
//!   length 'N' bytes` (line_too_long), structured metadata disallowed / too large / too
//!   many. Per stream (every entry of the stream is refused): `entry for stream '{..}' has
//!   N label names; limit N` (max_label_names_per_series), `stream '{..}' has label name
//!   too long: '..'`, `... label value too long: '..'`, `... duplicate label name: '..'`,
//!   `Error parsing labels '{..}' with error: ..` (invalid_labels), `error at least one
//!   label pair is required per stream` (missing_labels), `missing required labels L for
//!   user U for stream S` (missing_enforced_labels).
//! * The ingester refuses entries too far behind the newest of their stream (or out of
//!   order without unordered writes) with lines `entry with timestamp T ignored, reason:
//!   'entry too far behind, ...',` (at most 10 listed) and `user 'U', total ignored: N
//!   out of M for stream: {..}`: N counts.
//!
//! The stream in a message is Loki's printing of the parsed label set, which may have
//! gained `service_name` (Loki 3 fills it in); it is matched to the batch's streams by
//! label set, ignoring a `service_name` the batch did not send.

use std::time::Duration;

use crate::labels::parse_selector;

/// What to do with a batch after Loki's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: stored.
    Written,
    /// 400: stored except the entries the body names.
    Partial,
    /// 429, 5xx: send the same body again later.
    Retry,
    /// Other statuses: dropped.
    Refused,
}

/// The outcome of an HTTP status.
pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Written,
        400 => Outcome::Partial,
        429 | 500..=599 => Outcome::Retry,
        _ => Outcome::Refused,
    }
}

/// Whether a 2xx body is Loki's `block_ingestion_until` refusal.
pub fn blocked(body: &str) -> bool {
    body.trim_start().starts_with("ingestion blocked for user")
}

/// A `Retry-After` value in seconds (the HTTP-date form is not used by Loki).
pub fn retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What the 400 parser needs to know of a stream of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The label pairs as sent.
    pub labels: Vec<(String, String)>,
    /// Entries of the stream in the request.
    pub entries: usize,
}

/// Refused entries by reason, from a 400 body; `None` when no part of it is a text Loki
/// writes for refused entries (then the whole request was refused, e.g. a body Loki
/// could not read). Parts not recognised among recognised ones count 1 each as
/// `unknown`.
pub fn refusals(body: &str, streams: &[StreamInfo]) -> Option<Vec<(&'static str, u64)>> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    let mut add = |reason: &'static str, n: u64| {
        if n == 0 {
            return;
        }
        match out.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => out.push((reason, n)),
        }
    };
    let body = body.trim();
    if let Some(ingester) = ingester_refusals(body) {
        for (r, n) in ingester {
            add(r, n);
        }
    } else {
        let mut known = false;
        for (n, msg) in segments(body) {
            match classify(msg) {
                Some((reason, Scope::Entry)) => {
                    known = true;
                    add(reason, n);
                }
                Some((reason, Scope::Stream(text))) => {
                    known = true;
                    let entries = text
                        .and_then(|t| find_stream(t, streams))
                        .map_or(1, |s| s.entries as u64);
                    add(reason, n.saturating_mul(entries));
                }
                None => add("unknown", n),
            }
        }
        if !known {
            return None;
        }
    }
    Some(out)
}

enum Scope<'a> {
    /// The message stands for `n` refused entries.
    Entry,
    /// The message refuses every entry of the stream it names (if it names one).
    Stream(Option<&'a str>),
}

/// Splits a distributor body into (count, message) parts.
fn segments(body: &str) -> Vec<(u64, &str)> {
    let Some((_, _)) = count_prefix(body) else {
        return vec![(1, body)];
    };
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((n, after)) = count_prefix(rest) {
        // The next part starts at "; <digits> errors like: ".
        let mut end = after.len();
        let mut from = 0;
        while let Some(i) = after[from..].find("; ") {
            let at = from + i;
            if count_prefix(&after[at + 2..]).is_some() {
                end = at;
                break;
            }
            from = at + 2;
        }
        out.push((n, &after[..end]));
        if end == after.len() {
            break;
        }
        rest = &after[end + 2..];
    }
    out
}

/// `"<n> errors like: "` at the start of `s`: (n, the rest).
fn count_prefix(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n = s.get(..digits)?.parse().ok()?;
    let rest = s[digits..].strip_prefix(" errors like: ")?;
    Some((n, rest))
}

fn classify(msg: &str) -> Option<(&'static str, Scope<'_>)> {
    let quoted_stream = |prefix: &str| -> Option<&str> {
        let rest = msg.strip_prefix(prefix)?;
        let end = rest.find("}' ")?;
        Some(&rest[..=end])
    };
    if msg.starts_with("entry for stream '") {
        if msg.contains("' has timestamp too old: ") {
            return Some(("greater_than_max_sample_age", Scope::Entry));
        }
        if msg.contains("' has timestamp too new: ") {
            return Some(("too_far_in_future", Scope::Entry));
        }
        if msg.contains(" label names; limit ") {
            return Some((
                "max_label_names_per_series",
                Scope::Stream(quoted_stream("entry for stream '")),
            ));
        }
    }
    if msg.starts_with("Max entry size '") && msg.contains("' bytes exceeded for stream '") {
        return Some(("line_too_long", Scope::Entry));
    }
    if msg.starts_with("stream '") {
        let stream = || Scope::Stream(quoted_stream("stream '"));
        if msg.contains("' has label name too long: '") {
            return Some(("label_name_too_long", stream()));
        }
        if msg.contains("' has label value too long: '") {
            return Some(("label_value_too_long", stream()));
        }
        if msg.contains("' has duplicate label name: '") {
            return Some(("duplicate_label_names", stream()));
        }
        if msg.contains("' includes structured metadata, but this feature is disallowed") {
            return Some(("disallowed_structured_metadata", Scope::Entry));
        }
        if msg.contains("' has structured metadata too large: '") {
            return Some(("structured_metadata_too_large", Scope::Entry));
        }
        if msg.contains("' has too many structured metadata labels: '") {
            return Some(("structured_metadata_too_many", Scope::Entry));
        }
    }
    if let Some(rest) = msg.strip_prefix("Error parsing labels '") {
        let stream = rest.find("' with error: ").map(|i| &rest[..i]);
        return Some(("invalid_labels", Scope::Stream(stream)));
    }
    if msg.starts_with("error at least one label pair is required per stream") {
        return Some(("missing_labels", Scope::Stream(None)));
    }
    if msg.starts_with("missing required labels ") {
        let stream = msg.rfind(" for stream ").map(|i| &msg[i + 12..]);
        return Some(("missing_enforced_labels", Scope::Stream(stream)));
    }
    None
}

/// The ingester's `total ignored: N out of M` reports, with the reason of the entries
/// listed before each; `None` if there is none.
fn ingester_refusals(body: &str) -> Option<Vec<(&'static str, u64)>> {
    const TOTAL: &str = "total ignored: ";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = body[from..].find(TOTAL) {
        let at = from + i;
        let digits: String = body[at + TOTAL.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: u64 = digits.parse().unwrap_or(0);
        let before = &body[from..at];
        let reason = match before.find("reason: '").map(|j| &before[j + 9..]) {
            Some(r) if r.starts_with("entry too far behind") => "too_far_behind",
            Some(r) if r.starts_with("entry out of order") => "out_of_order",
            Some(r) if r.starts_with("Per stream rate limit exceeded") => "per_stream_rate_limit",
            _ => "unknown",
        };
        out.push((reason, n));
        from = at + TOTAL.len();
    }
    (!out.is_empty()).then_some(out)
}

/// The stream of the request whose labels are `text`'s (Loki may have added
/// `service_name`).
fn find_stream<'a>(text: &str, streams: &'a [StreamInfo]) -> Option<&'a StreamInfo> {
    let mut labels = parse_selector(text)?;
    labels.sort();
    streams.iter().find(|s| {
        let mut ours = s.labels.clone();
        ours.sort();
        if ours == labels {
            return true;
        }
        let theirs: Vec<_> = labels
            .iter()
            .filter(|(n, _)| n != "service_name" || ours.iter().any(|(o, _)| o == n))
            .cloned()
            .collect();
        ours == theirs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> Vec<StreamInfo> {
        vec![
            StreamInfo {
                labels: vec![
                    ("job".into(), "tapbus".into()),
                    ("kind".into(), "event".into()),
                ],
                entries: 7,
            },
            StreamInfo {
                labels: vec![
                    ("job".into(), "tapbus".into()),
                    ("kind".into(), "reduced".into()),
                ],
                entries: 3,
            },
        ]
    }

    #[test]
    fn statuses() {
        assert_eq!(outcome(204), Outcome::Written);
        assert_eq!(outcome(200), Outcome::Written);
        assert_eq!(outcome(400), Outcome::Partial);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(500), Outcome::Retry);
        assert_eq!(outcome(503), Outcome::Retry);
        assert_eq!(outcome(401), Outcome::Refused);
        assert_eq!(outcome(413), Outcome::Refused);
        assert_eq!(outcome(302), Outcome::Refused);
        assert!(blocked(
            "ingestion blocked for user fake until '2026-12-01T00:00:00Z' with status code '260'\n"
        ));
        assert!(!blocked(""));
        assert_eq!(retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    /// One distributor error alone has no count prefix (`util.GroupedErrors`).
    #[test]
    fn one_old_entry() {
        let body = "entry for stream '{job=\"tapbus\", kind=\"event\"}' has timestamp too old: 2026-11-01T00:00:00Z, oldest acceptable timestamp is: 2026-11-25T06:00:00Z\n";
        assert_eq!(
            refusals(body, &streams()),
            Some(vec![("greater_than_max_sample_age", 1)])
        );
    }

    #[test]
    fn grouped_distributor_errors() {
        let body = concat!(
            "1 errors like: entry for stream '{job=\"tapbus\", kind=\"event\"}' has timestamp too old: 2026-11-01T00:00:00Z, oldest acceptable timestamp is: 2026-11-25T06:00:00Z; ",
            "1 errors like: entry for stream '{job=\"tapbus\", kind=\"event\"}' has timestamp too old: 2026-11-01T00:00:01Z, oldest acceptable timestamp is: 2026-11-25T06:00:00Z; ",
            "2 errors like: Max entry size '262144' bytes exceeded for stream '{job=\"tapbus\", kind=\"event\"}' while adding an entry with length '300000' bytes; ",
            "1 errors like: entry for stream '{job=\"tapbus\", kind=\"reduced\"}' has timestamp too new: 2026-12-30T00:00:00Z"
        );
        let mut r = refusals(body, &streams()).unwrap();
        r.sort();
        assert_eq!(
            r,
            vec![
                ("greater_than_max_sample_age", 2),
                ("line_too_long", 2),
                ("too_far_in_future", 1)
            ]
        );
        // One message repeated: prefixed although alone.
        let body = "3 errors like: Max entry size '10' bytes exceeded for stream '{job=\"tapbus\", kind=\"event\"}' while adding an entry with length '11' bytes";
        assert_eq!(refusals(body, &streams()), Some(vec![("line_too_long", 3)]));
    }

    /// A message about a stream's labels refuses all of the stream's entries; Loki names
    /// the stream as it parsed it, possibly with `service_name` added.
    #[test]
    fn stream_errors_count_the_stream() {
        let body = "entry for stream '{job=\"tapbus\", kind=\"event\", service_name=\"tapbus\"}' has 16 label names; limit 15";
        assert_eq!(
            refusals(body, &streams()),
            Some(vec![("max_label_names_per_series", 7)])
        );
        let body = "1 errors like: stream '{job=\"tapbus\", kind=\"reduced\"}' has label value too long: 'xxxx'; 1 errors like: Error parsing labels '{job=\"tapbus\", kind=\"event\"}' with error: 1:2: parse error";
        let mut r = refusals(body, &streams()).unwrap();
        r.sort();
        assert_eq!(r, vec![("invalid_labels", 7), ("label_value_too_long", 3)]);
        let body = "stream '{nope=\"x\"}' has duplicate label name: 'nope'";
        assert_eq!(
            refusals(body, &streams()),
            Some(vec![("duplicate_label_names", 1)]),
            "an unknown stream counts one"
        );
    }

    #[test]
    fn ingester_out_of_order() {
        let body = concat!(
            "entry with timestamp 2026-11-25 04:00:00 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2026-11-25T04:00:00Z, oldest acceptable timestamp is: 2026-11-25T05:00:00Z',\n",
            "entry with timestamp 2026-11-25 04:00:01 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2026-11-25T04:00:01Z, oldest acceptable timestamp is: 2026-11-25T05:00:00Z',\n",
            "user 'fake', total ignored: 12 out of 20 for stream: {job=\"tapbus\", kind=\"event\"}\n"
        );
        assert_eq!(
            refusals(body, &streams()),
            Some(vec![("too_far_behind", 12)])
        );
        let body = "entry with timestamp 2026-11-25 04:00:00 +0000 UTC ignored, reason: 'entry out of order',\nuser 'fake', total ignored: 1 out of 2 for stream: {job=\"tapbus\", kind=\"event\"}";
        assert_eq!(refusals(body, &streams()), Some(vec![("out_of_order", 1)]));
    }

    #[test]
    fn unknown_bodies() {
        assert_eq!(refusals("", &streams()), None);
        assert_eq!(
            refusals(
                "loghttp.PushRequest.Streams: []*loghttp.Stream: ReadString: expects \" or n",
                &streams()
            ),
            None
        );
        let body = "2 errors like: something new; 1 errors like: entry for stream '{a=\"b\"}' has timestamp too new: x";
        let mut r = refusals(body, &streams()).unwrap();
        r.sort();
        assert_eq!(r, vec![("too_far_in_future", 1), ("unknown", 2)]);
    }

    #[test]
    fn segments_split_only_at_count_prefixes() {
        let body = "1 errors like: stream '{a=\"x; 2 y\"}' has label value too long: 'x; 2 y'; 4 errors like: z";
        assert_eq!(
            segments(body),
            vec![
                (
                    1,
                    "stream '{a=\"x; 2 y\"}' has label value too long: 'x; 2 y'"
                ),
                (4, "z")
            ]
        );
        assert_eq!(segments("plain"), vec![(1, "plain")]);
    }
}
