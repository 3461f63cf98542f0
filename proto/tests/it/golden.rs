//! Reading the reference decoder's output: one golang-dnstap JSON object per message, whose
//! DNS messages are miekg/dns `Msg.String()` text, e.g.
//!
//! ```text
//! ;; opcode: QUERY, status: NOERROR, id: 14540
//! ;; flags: rd ad; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1
//!
//! ;; OPT PSEUDOSECTION:
//! ; EDNS: version 0; flags: ; udp: 1232
//! ; COOKIE: 0b9590e981ec3415
//!
//! ;; QUESTION SECTION:
//! ;.<TAB>IN<TAB> SOA
//! ```
//!
//! or `parse failed: <error>` when miekg could not unpack the wire message.

/// A parsed miekg `Msg.String()`.
#[derive(Debug, Clone, Default)]
pub struct GoldDns {
    pub opcode: String,
    pub status: String,
    pub id: u16,
    /// Flag words in order (`qr aa tc rd ra z ad cd`, only those set).
    pub flags: Vec<String>,
    /// QUERY, ANSWER, AUTHORITY, ADDITIONAL as printed (miekg counts the parsed records;
    /// ADDITIONAL includes the OPT record).
    pub counts: [u32; 4],
    /// First question: name (miekg presentation, trailing dot), class, type.
    pub question: Option<(String, String, String)>,
    pub edns: Option<GoldEdns>,
    /// Records of the answer, authority and additional sections (OPT excluded).
    pub sections: [Vec<GoldRr>; 3],
}

#[derive(Debug, Clone, Default)]
pub struct GoldEdns {
    pub version: u8,
    pub dnssec_ok: bool,
    pub udp_size: u16,
    /// Option lines `; NAME: value` as (NAME, value).
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldRr {
    pub name: String,
    pub ttl: u32,
    pub class: String,
    pub rtype: String,
    pub rdata: String,
}

#[derive(Debug, Clone)]
pub enum GoldText {
    /// miekg could not unpack the message (`parse failed: ...`).
    Failed(String),
    Msg(Box<GoldDns>),
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find([',', ';']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Parses miekg's `Msg.String()`; `Err` describes text this parser does not understand.
pub fn parse_dns_text(text: &str) -> Result<GoldText, String> {
    if let Some(e) = text.strip_prefix("parse failed: ") {
        return Ok(GoldText::Failed(e.trim().to_string()));
    }
    let mut d = GoldDns::default();
    let mut lines = text.lines();
    let l1 = lines.next().ok_or("empty text")?;
    d.opcode = field(l1, ";; opcode: ").ok_or("no opcode")?.to_string();
    d.status = field(l1, "status: ").ok_or("no status")?.to_string();
    d.id = field(l1, "id: ")
        .and_then(|s| s.parse().ok())
        .ok_or("no id")?;
    let l2 = lines.next().ok_or("no flags line")?;
    let flags = l2
        .strip_prefix(";; flags:")
        .and_then(|r| r.split(';').next())
        .ok_or("no flags")?;
    d.flags = flags.split_whitespace().map(str::to_string).collect();
    for (i, k) in ["QUERY: ", "ANSWER: ", "AUTHORITY: ", "ADDITIONAL: "]
        .iter()
        .enumerate()
    {
        d.counts[i] = field(l2, k)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no {k}count in {l2:?}"))?;
    }
    let rest: Vec<&str> = lines.collect();
    let rest = rest.join("\n");
    for block in rest.split("\n\n") {
        let block = block.trim_matches('\n');
        let mut bl = block.lines();
        let Some(header) = bl.next() else { continue };
        match header {
            ";; OPT PSEUDOSECTION:" => {
                let mut e = GoldEdns::default();
                for l in bl {
                    let l = l.strip_prefix("; ").ok_or("bad OPT line")?;
                    if let Some(r) = l.strip_prefix("EDNS: ") {
                        e.version = field(r, "version ")
                            .and_then(|s| s.parse().ok())
                            .ok_or("edns version")?;
                        e.dnssec_ok = field(r, "flags:")
                            .is_some_and(|f| f.split_whitespace().any(|w| w == "do"));
                        e.udp_size = field(r, "udp: ")
                            .and_then(|s| s.parse().ok())
                            .ok_or("edns udp")?;
                    } else {
                        let (k, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
                        e.options.push((k.to_string(), v.to_string()));
                    }
                }
                d.edns = Some(e);
            }
            ";; QUESTION SECTION:" => {
                if let Some(q) = bl.next() {
                    let q = q.strip_prefix(';').ok_or("question line")?;
                    let mut parts = q.split('\t');
                    let name = parts.next().unwrap_or_default().to_string();
                    let class = parts.next().unwrap_or_default().trim().to_string();
                    let qtype = parts.next().unwrap_or_default().trim().to_string();
                    d.question = Some((name, class, qtype));
                }
            }
            ";; ANSWER SECTION:" | ";; AUTHORITY SECTION:" | ";; ADDITIONAL SECTION:" => {
                let si = match header {
                    ";; ANSWER SECTION:" => 0,
                    ";; AUTHORITY SECTION:" => 1,
                    _ => 2,
                };
                for l in bl {
                    let mut p = l.splitn(5, '\t');
                    let (Some(name), Some(ttl), Some(class), Some(rtype)) =
                        (p.next(), p.next(), p.next(), p.next())
                    else {
                        return Err(format!("bad RR line {l:?}"));
                    };
                    d.sections[si].push(GoldRr {
                        name: name.to_string(),
                        ttl: ttl.parse().map_err(|_| format!("bad ttl in {l:?}"))?,
                        class: class.to_string(),
                        rtype: rtype.to_string(),
                        rdata: p.next().unwrap_or_default().to_string(),
                    });
                }
            }
            "" => {}
            other => return Err(format!("unknown block {other:?}")),
        }
    }
    Ok(GoldText::Msg(Box::new(d)))
}

/// A domain name in presentation format (miekg's or ours) as its labels' raw bytes, so that
/// both escaping styles compare equal: `\DDD` and `\c` are decoded, a trailing dot (miekg
/// always writes one, we never do except for the root `.`) is dropped.
pub fn name_labels(s: &str) -> Vec<Vec<u8>> {
    let b = s.as_bytes();
    let mut labels = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let digits = b.get(i + 1..i + 4);
                match digits {
                    Some(d) if d.iter().all(u8::is_ascii_digit) => {
                        let v = d.iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0'));
                        cur.push(u8::try_from(v).unwrap_or(b'?'));
                        i += 4;
                    }
                    _ => {
                        if let Some(&c) = b.get(i + 1) {
                            cur.push(c);
                        }
                        i += 2;
                    }
                }
            }
            b'.' => {
                if !cur.is_empty() {
                    labels.push(std::mem::take(&mut cur));
                }
                i += 1;
            }
            c => {
                cur.push(c);
                i += 1;
            }
        }
    }
    if !cur.is_empty() {
        labels.push(cur);
    }
    labels
}

/// miekg opcode names -> numbers.
pub fn opcode_number(name: &str) -> Option<u64> {
    Some(match name {
        "QUERY" => 0,
        "IQUERY" => 1,
        "STATUS" => 2,
        "NOTIFY" => 4,
        "UPDATE" => 5,
        other => return other.strip_prefix("OPCODE").and_then(|n| n.parse().ok()),
    })
}

/// miekg rcode names that differ from ours. miekg has one name per value and prints 16 as
/// `BADSIG` (TSIG error) where the message-header meaning, with EDNS, is `BADVERS` (RFC 6891);
/// both name the value 16.
pub fn normalize_rcode(name: &str) -> &str {
    match name {
        "BADSIG" => "BADVERS",
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sample() {
        let t = ";; opcode: QUERY, status: NOERROR, id: 26940\n;; flags: qr aa cd; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 2\n\n;; OPT PSEUDOSECTION:\n; EDNS: version 0; flags: do; udp: 1232\n; COOKIE: 0b95\n\n;; QUESTION SECTION:\n;.\tIN\t NS\n\n;; ANSWER SECTION:\n.\t3600\tIN\tNS\ta.root.test.\n.\t3600\tIN\tRRSIG\tNS 13 0 3600 x\n\n;; ADDITIONAL SECTION:\na.root.test.\t3600\tIN\tA\t127.53.0.1\n";
        let GoldText::Msg(d) = parse_dns_text(t).expect("parses") else {
            panic!("not a message")
        };
        assert_eq!(d.id, 26940);
        assert_eq!(d.flags, ["qr", "aa", "cd"]);
        assert_eq!(d.counts, [1, 2, 0, 2]);
        assert_eq!(d.question, Some((".".into(), "IN".into(), "NS".into())));
        let e = d.edns.expect("edns");
        assert!(e.dnssec_ok);
        assert_eq!(e.options, [("COOKIE".to_string(), "0b95".to_string())]);
        assert_eq!(d.sections[0].len(), 2);
        assert_eq!(d.sections[0][1].rtype, "RRSIG");
        assert_eq!(d.sections[2][0].rdata, "127.53.0.1");
    }

    #[test]
    fn names_compare_across_escaping_styles() {
        assert_eq!(
            name_labels("with\\ space.test."),
            name_labels("with\\032space.test")
        );
        assert_eq!(
            name_labels("dot\\.inside.test."),
            vec![b"dot.inside".to_vec(), b"test".to_vec()]
        );
        assert_eq!(
            name_labels("\\195\\169t\\195\\169.test."),
            name_labels("\\195\\169t\\195\\169.test")
        );
        assert!(name_labels(".").is_empty());
    }
}
