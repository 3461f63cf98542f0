//! Configuration keys against the pages that document them (`docs/` at the repository
//! root): a test serialises a configuration (its defaults, with every `Option` table set to
//! `Some` so its keys appear) and asks which keys no page mentions, so a key a struct
//! accepts cannot ship undocumented.
//!
//! A key counts as documented in a page when its name appears
//! * in an inline code span (`` `queue` ``, `` `outputs.NAME.queue` ``, `` `ack_wait = "30s"` ``,
//!   `` `reduce.reductions[].keys` ``), or
//! * in a fenced ```` ```toml ```` block as an assignment (`queue = 16384`, also commented
//!   out, `# queue = 16384`, or inside an inline table) or a table header (`[labels]`).
//!
//! Map keys the user chooses (an output's name) are written as placeholders in capitals
//! (`NAME`) by the test: they are walked through, never looked up.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's `docs/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// The text of `docs/NAME` (e.g. `"broker.md"`). Panics with the path when it is missing.
pub fn page(name: &str) -> String {
    let p = dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The key paths of `value` (a configuration serialised with serde: tables are objects)
/// whose key name `doc_text` does not mention (see the module documentation), e.g.
/// `["outputs.NAME.queue", "input.subscribe.batch"]`. Only leaves are looked up: a table
/// (a non-empty object, or an array of objects such as `[[reduce.reductions]]`) is walked
/// into; `null`, scalars, arrays of scalars and empty objects are leaves. Keys in capitals
/// (`NAME`) are placeholders: walked through, never reported.
pub fn undocumented_keys(value: &Value, doc_text: &str) -> Vec<String> {
    let doc = Doc::new(doc_text);
    let mut out = Vec::new();
    walk(value, "", &doc, &mut out);
    out
}

/// Panics, listing every undocumented key and the page it was looked for in, unless every
/// key of `value` is documented: the keys under each top-level `(key, page)` of
/// `elsewhere` in that page (the `[input]` table in `bus-urls.md`, say), every other key
/// in `page`.
pub fn assert_documented(value: &Value, page_name: &str, elsewhere: &[(&str, &str)]) {
    let mut own = value.clone();
    let mut missing = Vec::new();
    for (key, other) in elsewhere {
        let Some(sub) = own.as_object_mut().and_then(|o| o.remove(*key)) else {
            panic!("no top-level key {key:?} in the configuration");
        };
        let wrapped = serde_json::json!({ *key: sub });
        missing.extend(
            undocumented_keys(&wrapped, &page(other))
                .into_iter()
                .map(|k| format!("{k} (docs/{other})")),
        );
    }
    missing.extend(
        undocumented_keys(&own, &page(page_name))
            .into_iter()
            .map(|k| format!("{k} (docs/{page_name})")),
    );
    assert!(
        missing.is_empty(),
        "configuration keys the structs accept but the docs do not mention; document each \
         (what it does, its default, an example): {missing:#?}"
    );
}

fn is_placeholder(key: &str) -> bool {
    key.chars().any(|c| c.is_ascii_uppercase())
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn walk(v: &Value, path: &str, doc: &Doc, out: &mut Vec<String>) {
    let Some(obj) = v.as_object() else { return };
    for (k, child) in obj {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let placeholder = is_placeholder(k);
        match child {
            Value::Object(o) if !o.is_empty() => walk(child, &here, doc, out),
            Value::Array(a) if a.iter().any(Value::is_object) => {
                let here = format!("{here}[]");
                for item in a.iter().filter(|i| i.is_object()) {
                    walk(item, &here, doc, out);
                }
            }
            _ if placeholder => {}
            _ => {
                if !doc.mentions(k) && !out.contains(&here) {
                    out.push(here);
                }
            }
        }
    }
}

/// A page split into what can document a key: inline code spans and TOML lines.
struct Doc {
    spans: Vec<String>,
    toml: Vec<String>,
}

impl Doc {
    fn new(text: &str) -> Doc {
        let mut spans = Vec::new();
        let mut toml = Vec::new();
        let mut fence: Option<bool> = None; // Some(is_toml) inside a fenced block
        let mut prose = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            if let Some(info) = t.strip_prefix("```") {
                fence = match fence {
                    Some(_) => None,
                    None => Some(info.trim().eq_ignore_ascii_case("toml")),
                };
                continue;
            }
            match fence {
                Some(true) => toml.push(line.to_string()),
                Some(false) => {}
                None => {
                    prose.push_str(line);
                    prose.push('\n');
                }
            }
        }
        for (i, part) in prose.split('`').enumerate() {
            if i % 2 == 1 {
                spans.push(part.trim().to_string());
            }
        }
        Doc { spans, toml }
    }

    fn mentions(&self, key: &str) -> bool {
        self.spans.iter().any(|s| span_names(s, key))
            || self.toml.iter().any(|l| toml_names(l, key))
    }
}

/// `key`, `a.b.key`, `a.b[].key`, `key = value`, `key=value`, `[a.key]`.
fn span_names(span: &str, key: &str) -> bool {
    let s = span.trim_start_matches('[').trim_end_matches(']');
    if s == key || s.ends_with(&format!(".{key}")) {
        return true;
    }
    s.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// A TOML line assigning `key` (also commented out or in an inline table), or a table
/// header ending in it.
fn toml_names(line: &str, key: &str) -> bool {
    let t = line.trim_start().trim_start_matches('#').trim();
    if t.starts_with('[') {
        let h = t.trim_start_matches('[');
        let h = h.split(']').next().unwrap_or("").trim();
        if h == key || h.ends_with(&format!(".{key}")) {
            return true;
        }
    }
    let mut from = 0;
    while let Some(i) = t[from..].find(key) {
        let at = from + i;
        let before = t[..at].chars().next_back();
        let after = t[at + key.len()..].trim_start();
        if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',')
            && after.starts_with('=')
            && !after.starts_with("==")
        {
            return true;
        }
        from = at + key.len();
    }
    false
}

/// The metric families of a `/metrics` text that `pages` do not document, each with the
/// labels its line leaves out (`["tapbus_reduce_jumps_total (undocumented)",
/// "tapbus_dropped_total: label reason"]`).
///
/// A family is documented by a line of a page (a table row, a list item) that names it in
/// an inline code span (as written, or without `_total`, `_bucket`, `_sum`, `_count`), and
/// its labels by code spans on that same line (`output`, `reason="queue_full"`). The
/// histogram's `le`, the summary's `quantile`, and `instance` and `job` (a scrape adds
/// them) need no mention.
pub fn undocumented_metrics(exposition: &str, pages: &[&str]) -> Vec<String> {
    let text: String = pages.iter().map(|p| page(p)).collect::<Vec<_>>().join("\n");
    // Every line's code-span tokens.
    let lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| {
            l.split('`')
                .skip(1)
                .step_by(2)
                .flat_map(|span| {
                    span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .collect();
    let scrape = crate::prom::Scrape::parse(exposition);
    let mut families: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for s in &scrape.series {
        let labels = families.entry(s.name.clone()).or_default();
        labels.extend(
            s.labels
                .keys()
                .filter(|k| !matches!(k.as_str(), "le" | "quantile" | "instance" | "job"))
                .cloned(),
        );
    }
    let mut out = Vec::new();
    for (name, labels) in families {
        let mut names = vec![name.clone()];
        for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.push(base.to_owned());
                names.push(format!("{base}_total"));
            }
        }
        let documenting: Vec<&Vec<String>> = lines
            .iter()
            .filter(|toks| toks.iter().any(|t| names.contains(t)))
            .collect();
        if documenting.is_empty() {
            out.push(format!("{name} (undocumented)"));
            continue;
        }
        for l in labels {
            if !documenting.iter().any(|toks| toks.contains(&l)) {
                out.push(format!("{name}: label {l}"));
            }
        }
    }
    out
}

/// Panics unless every family (and label) of `process`'s `/metrics` text is documented in
/// `pages` ([`undocumented_metrics`]).
pub fn assert_metrics_documented(exposition: &str, process: &str, pages: &[&str]) {
    let missing = undocumented_metrics(exposition, pages);
    assert!(
        missing.is_empty(),
        "{process} exports metrics that docs/{} do not describe (a table row naming the \
         family and each label in code spans): {missing:#?}",
        pages.join(", docs/")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_families_and_labels_are_looked_up_per_line() {
        let text = "# TYPE tapbus_dropped_total counter\n\
            tapbus_dropped_total{output=\"a\",reason=\"queue_full\"} 0\n\
            # TYPE tapbus_consumer_pending gauge\n\
            tapbus_consumer_pending{instance=\"x\"} 0\n\
            # TYPE tapbus_new_total counter\n\
            tapbus_new_total 0\n";
        // metrics.md documents tapbus_dropped_total with output and reason; consumers.md
        // documents tapbus_consumer_pending; nobody tapbus_new_total.
        let missing = undocumented_metrics(text, &["metrics.md", "consumers.md"]);
        assert_eq!(missing, ["tapbus_new_total (undocumented)"]);
        let missing = undocumented_metrics(text, &["metrics.md"]);
        assert!(missing.contains(&"tapbus_consumer_pending (undocumented)".to_string()));
    }
    use serde_json::json;

    const DOC: &str = "\
The `queue` key, `outputs.NAME.subject`, `ack_wait = \"30s\"` and `reduce.reductions[].keys`.

```toml
[labels]
batch = 1024
# deliver = \"all\"
static = { job = \"tapbus\" }
```

```sh
not_toml = 1
```
";

    #[test]
    fn finds_keys_in_spans_and_toml() {
        let v = json!({
            "outputs": {"NAME": {"queue": 1, "subject": null, "mode": null}},
            "input": {"subscribe": {"ack_wait": "30s", "batch": 1, "deliver": null}},
            "labels": {"static": {"job": "tapbus"}, "fields": ["qname"]},
            "reduce": {"reductions": [{"keys": ["qname"], "name": "x"}]},
            "not_toml": 1,
            "empty": {},
        });
        assert_eq!(
            undocumented_keys(&v, DOC),
            vec![
                "empty".to_string(),
                "labels.fields".into(),
                "not_toml".into(),
                "outputs.NAME.mode".into(),
                "reduce.reductions[].name".into(),
            ]
        );
    }

    #[test]
    fn placeholders_are_walked_not_reported() {
        let v = json!({"inputs": {"NAME": {"url": ""}}, "labels": {"NAME": "VALUE"}});
        assert_eq!(undocumented_keys(&v, "`url`"), Vec::<String>::new());
    }

    #[test]
    fn a_key_inside_a_longer_word_does_not_count() {
        assert_eq!(
            undocumented_keys(&json!({"key": 1}), "`max_key`\n```toml\nmonkey = 1\n```\n"),
            vec!["key".to_string()]
        );
    }
}
