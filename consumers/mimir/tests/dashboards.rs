//! The Grafana dashboards of `grafana/` tested against data, at the end of both arrows
//! that feed them:
//!
//! ```text
//! captures --> broker --> JetStream --> aggregate --> tapbus.metrics.> --> tapbus-mimir --> Prometheus <-- Grafana (PromQL)
//!              broker, aggregate, reduce, mimir /metrics ---------------- scraped ---/
//! events, records --> tapbus-loki --> Loki <-- Grafana (LogQL)
//! ```
//!
//! * Every dashboard parses; every panel and variable uses a datasource that is
//!   provisioned (`grafana/provisioning/datasources/tapbus.yaml`) or a datasource variable
//!   of the right type; the provisioning files say what compose expects.
//! * Every PromQL expression, with the Grafana variables substituted (`$__rate_interval`,
//!   `$identity`, ...), parses in a real Prometheus (`/api/v1/format_query`) and returns
//!   series from a Prometheus filled by the real pipeline: every capture replayed through
//!   broker -> JetStream -> aggregate -> mimir, and the processes' own `/metrics`
//!   scraped (tapbus-loki's counters from its contract, served by the test until that
//!   binary exists). The variables' `label_values` resolve to non-empty lists.
//! * Every LogQL expression parses with Grafana's own LogQL grammar
//!   (`@grafana/lezer-logql`, driven by `grafana/tests/logql-parse.cjs`); its stream
//!   selectors use only tapbus-loki's labels, and every label it reads after `| json` is
//!   a field of the event (`proto/event.schema.json`) or record
//!   (`consumers/reduce/record.schema.json`) as Loki's json parser names it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    bin, durable_input, geo_capture, geo_dbs, start_aggregate_listening, start_mimir_listening,
};
use serde_json::Value;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::{Nats, Prometheus, Scrape};
use tapbus_testsupport::{free_ports, need, pause, testdata, wait_until};

/// tapbus-loki's stream labels (the contract of issue 10), per `kind`.
const EVENT_LABELS: &[&str] = &["job", "kind", "identity", "operation", "protocol"];
const RECORD_LABELS: &[&str] = &["job", "kind", "reduction", "identity"];
/// The labels of both kinds (a selector without `kind`).
const COMMON_LABELS: &[&str] = &["job", "identity"];
/// Labels Loki itself adds in a pipeline.
const LOKI_LABELS: &[&str] = &["__error__", "__error_details__"];

/// The 14 dnstap message types, the values of the `operation` label.
const OPERATIONS: &[&str] = &[
    "AUTH_QUERY",
    "AUTH_RESPONSE",
    "RESOLVER_QUERY",
    "RESOLVER_RESPONSE",
    "CLIENT_QUERY",
    "CLIENT_RESPONSE",
    "FORWARDER_QUERY",
    "FORWARDER_RESPONSE",
    "STUB_QUERY",
    "STUB_RESPONSE",
    "TOOL_QUERY",
    "TOOL_RESPONSE",
    "UPDATE_QUERY",
    "UPDATE_RESPONSE",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Which language a query is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    PromQL,
    LogQL,
}

impl Lang {
    fn of_type(t: &str) -> Option<Lang> {
        match t {
            "prometheus" => Some(Lang::PromQL),
            "loki" => Some(Lang::LogQL),
            _ => None,
        }
    }
}

/// One query of a panel or variable, as written in the dashboard.
#[derive(Debug, Clone)]
struct Query {
    /// `dashboard file / panel title / refId` or `... / $variable`.
    at: String,
    lang: Lang,
    expr: String,
}

/// A query variable.
#[derive(Debug, Clone)]
struct Var {
    name: String,
    lang: Lang,
    query: String,
}

/// One dashboard file.
#[derive(Debug)]
struct Dashboard {
    file: String,
    json: Value,
    queries: Vec<Query>,
    vars: Vec<Var>,
    /// Textbox variables and their default values.
    textboxes: BTreeMap<String, String>,
}

/// The provisioned datasources: uid -> type.
fn provisioned() -> BTreeMap<String, String> {
    let p = root().join("grafana/provisioning/datasources/tapbus.yaml");
    let y: Value = serde_norway::from_str(&std::fs::read_to_string(&p).expect("datasources"))
        .expect("datasources YAML");
    y["datasources"]
        .as_array()
        .expect("datasources list")
        .iter()
        .map(|d| {
            (
                d["uid"].as_str().expect("uid").to_string(),
                d["type"].as_str().expect("type").to_string(),
            )
        })
        .collect()
}

/// Every dashboard of `grafana/dashboards/`, its queries and variables, with the
/// datasource of every query resolved (a datasource variable or a provisioned uid).
fn dashboards() -> Vec<Dashboard> {
    let dir = root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("grafana/dashboards")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "dashboards: {files:?}");
    let provisioned = provisioned();
    files
        .iter()
        .map(|p| {
            let file = p.file_name().expect("name").to_string_lossy().into_owned();
            let json: Value = serde_json::from_slice(&std::fs::read(p).expect("read"))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            load(&file, json, &provisioned)
        })
        .collect()
}

fn load(file: &str, json: Value, provisioned: &BTreeMap<String, String>) -> Dashboard {
    let list = json["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Datasource variables: name -> type.
    let mut ds_vars = BTreeMap::new();
    for v in &list {
        if v["type"] == "datasource" {
            let name = v["name"].as_str().expect("name").to_string();
            let t = v["query"]
                .as_str()
                .expect("datasource variable type")
                .to_string();
            let default = v["current"]["value"].as_str().unwrap_or_default();
            assert_eq!(
                provisioned.get(default),
                Some(&t),
                "{file}: ${name} defaults to {default:?}, not a provisioned {t} datasource"
            );
            ds_vars.insert(name, t);
        }
    }
    let lang_of = |ds: &Value, at: &str| -> Lang {
        let uid = ds["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no datasource uid"));
        let t = match uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')) {
            Some(var) => ds_vars
                .get(var)
                .unwrap_or_else(|| panic!("{at}: datasource ${var} is not a datasource variable")),
            None => provisioned
                .get(uid)
                .unwrap_or_else(|| panic!("{at}: datasource uid {uid} is not provisioned")),
        };
        if let Some(declared) = ds["type"].as_str() {
            assert_eq!(declared, t, "{at}: datasource type");
        }
        Lang::of_type(t).unwrap_or_else(|| panic!("{at}: datasource type {t}"))
    };
    let mut vars = Vec::new();
    let mut textboxes = BTreeMap::new();
    for v in &list {
        let name = v["name"].as_str().expect("name").to_string();
        match v["type"].as_str() {
            Some("query") => {
                let at = format!("{file} / ${name}");
                let lang = lang_of(&v["datasource"], &at);
                let query = match &v["query"] {
                    Value::String(s) => s.clone(),
                    q => q["query"].as_str().expect("variable query").to_string(),
                };
                vars.push(Var { name, lang, query });
            }
            Some("textbox") => {
                let value = v["current"]["value"].as_str().unwrap_or_default();
                textboxes.insert(name, value.to_string());
            }
            Some("datasource") => {}
            other => panic!("{file}: variable ${name} of type {other:?}"),
        }
    }
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    let mut panels: Vec<Value> = json["panels"].as_array().expect("panels").clone();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{file}: panel id of {title:?} repeats"
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "{file}: {title}: gridPos"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{file}: {title}: no queries");
        for t in targets {
            let at = format!("{file} / {title} / {}", t["refId"].as_str().unwrap_or("?"));
            let ds = if t["datasource"].is_object() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            let lang = lang_of(ds, &at);
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no expr"))
                .to_string();
            queries.push(Query { at, lang, expr });
        }
    }
    Dashboard {
        file: file.to_string(),
        json,
        queries,
        vars,
        textboxes,
    }
}

/// Grafana's built-in interval variables, with values a dashboard gets on a 1 h range.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "30s"),
    ("__interval_ms", "30000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__auto", "30s"),
];

/// `expr` with every `$name`, `${name}` and `[[name]]` replaced: Grafana's built-ins and
/// `values`. An unknown variable is an error (a typo in a dashboard).
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let lookup = |name: &str| -> Result<String, String> {
        BUILTINS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .or_else(|| values.get(name).cloned())
            .ok_or_else(|| format!("unknown variable ${name}"))
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').ok_or("unclosed ${")?;
            out += &lookup(&braced[..end])?;
            rest = &braced[end + 1..];
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            let end = bracketed.find("]]").ok_or("unclosed [[")?;
            out += &lookup(&bracketed[..end])?;
            rest = &bracketed[end + 2..];
        } else if let Some(plain) = tail.strip_prefix('$') {
            // `$1` in label_replace is not a variable: names start with a letter or _.
            let len = plain.find(|c: char| !ident(c)).unwrap_or(plain.len());
            if len == 0 || plain.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = plain;
            } else {
                out += &lookup(&plain[..len])?;
                rest = &plain[len..];
            }
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as Grafana puts a selected value of a multi-value variable into a Prometheus
/// regex matcher: regex metacharacters escaped (doubled backslash: a PromQL string).
fn prom_regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\^$*+?.()|{}[]".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

#[test]
fn substitute_replaces_grafana_variables_and_refuses_unknown_ones() {
    let values = BTreeMap::from([("identity".to_string(), "(a|b)".to_string())]);
    assert_eq!(
        substitute(
            r#"sum(rate(m{identity=~"$identity", x=~"${identity}"}[$__rate_interval])) [[identity]] $1"#,
            &values
        )
        .as_deref(),
        Ok(r#"sum(rate(m{identity=~"(a|b)", x=~"(a|b)"}[1m])) (a|b) $1"#)
    );
    assert!(substitute("m{a=~\"$nope\"}", &values).is_err());
    assert_eq!(prom_regex_escape("ns1.example"), "ns1\\\\.example");
}

#[test]
fn dashboards_parse_and_use_provisioned_datasources() {
    let ds = provisioned();
    assert_eq!(
        ds.get("tapbus-mimir").map(String::as_str),
        Some("prometheus")
    );
    assert_eq!(ds.get("tapbus-loki").map(String::as_str), Some("loki"));
    let y: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("grafana/provisioning/datasources/tapbus.yaml"))
            .expect("read"),
    )
    .expect("yaml");
    let url = |uid: &str| {
        y["datasources"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["uid"] == uid))
            .and_then(|d| d["url"].as_str())
            .map(str::to_owned)
    };
    // The compose services (compose/docker-compose.yml).
    assert_eq!(
        url("tapbus-mimir").as_deref(),
        Some("http://mimir:9009/prometheus")
    );
    assert_eq!(url("tapbus-loki").as_deref(), Some("http://loki:3100"));
    let providers: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("grafana/provisioning/dashboards/tapbus.yaml"))
            .expect("read"),
    )
    .expect("yaml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"], "file");
    assert_eq!(provider["options"]["path"], "/var/lib/grafana/dashboards");

    let all = dashboards();
    let mut uids = BTreeSet::new();
    for d in &all {
        let uid = d.json["uid"].as_str().expect("uid");
        assert!(
            uids.insert(uid.to_string()),
            "{}: uid {uid} repeats",
            d.file
        );
        assert!(d.json["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(!d.queries.is_empty(), "{}: no queries", d.file);
        // Every variable a query uses is defined (or built in).
        let mut values: BTreeMap<String, String> = d
            .vars
            .iter()
            .map(|v| (v.name.clone(), ".*".into()))
            .collect();
        values.extend(d.textboxes.clone());
        for v in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if v["type"] == "datasource" {
                let n = v["name"].as_str().expect("name").to_string();
                values.insert(n, "x".into());
            }
        }
        for q in &d.queries {
            if let Err(e) = substitute(&q.expr, &values) {
                panic!("{}: {e}", q.at);
            }
        }
    }
    let langs: BTreeSet<_> = all
        .iter()
        .flat_map(|d| d.queries.iter().map(|q| format!("{:?}", q.lang)))
        .collect();
    assert_eq!(langs.len(), 2, "both PromQL and LogQL panels");
}

// --- LogQL -----------------------------------------------------------------------------

/// Loki's json parser's label names for every scalar field of a JSON Schema (nested keys
/// joined with `_`, characters outside `[A-Za-z0-9_]` made `_`, arrays skipped), and
/// the dotted paths of those fields (`network.query-ip`).
fn json_fields(schema_file: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(root().join(schema_file)).expect("schema"))
            .expect("schema JSON");
    let mut labels = BTreeSet::new();
    let mut paths = BTreeSet::new();
    walk_schema(&schema, &schema, &mut Vec::new(), &mut labels, &mut paths);
    assert!(labels.len() > 10, "{schema_file}: {labels:?}");
    (labels, paths)
}

fn walk_schema(
    root: &Value,
    node: &Value,
    at: &mut Vec<String>,
    labels: &mut BTreeSet<String>,
    paths: &mut BTreeSet<String>,
) {
    let node = match node["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(def) => &root["$defs"][def],
        None => node,
    };
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            at.push(k.clone());
            walk_schema(root, v, at, labels, paths);
            at.pop();
        }
        return;
    }
    let is_array = node["type"] == "array"
        || node["type"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t == "array"));
    if is_array || at.is_empty() {
        return;
    }
    let label: String = at
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    labels.insert(label);
    paths.insert(at.join("."));
}

/// A Loki json expression path (`dns.qname`, `network["query-ip"]`) as a dotted path.
fn json_path(p: &str) -> String {
    p.replace("[\"", ".").replace("\"]", "")
}

/// The node script's verdict on `exprs`, one JSON report each.
fn lezer_reports(exprs: &[String]) -> Vec<Value> {
    let script = root().join("grafana/tests/logql-parse.cjs");
    let modules = root().join("target/node_modules");
    assert!(
        modules.join("@grafana/lezer-logql/package.json").is_file(),
        "{} has no @grafana/lezer-logql: run scripts/install-test-deps.sh",
        modules.display()
    );
    let mut child = Command::new(need("node"))
        .arg(&script)
        .arg(&modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let input = serde_json::to_vec(exprs).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write to node");
    let out = child.wait_with_output().expect("node output");
    assert!(
        out.status.success(),
        "logql-parse.cjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reports JSON");
    assert_eq!(reports.len(), exprs.len());
    reports
}

/// What is wrong with one LogQL expression's report: parse errors, selectors outside the
/// tapbus-loki contract, labels read that no stream or parser provides.
fn logql_problems(report: &Value, events: &JsonFields, records: &JsonFields) -> Vec<String> {
    let mut problems = Vec::new();
    for e in report["errors"].as_array().into_iter().flatten() {
        problems.push(format!("parse error at {}: near {}", e["from"], e["near"]));
    }
    let selectors = report["selectors"].as_array().cloned().unwrap_or_default();
    if selectors.is_empty() {
        problems.push("no stream selector".into());
    }
    let mut kinds = BTreeSet::new();
    for sel in &selectors {
        let matchers = sel.as_array().cloned().unwrap_or_default();
        let eq = |label: &str| {
            matchers
                .iter()
                .find(|m| m["label"] == label && m["op"] == "=")
                .and_then(|m| m["value"].as_str())
                .map(str::to_owned)
        };
        if eq("job").as_deref() != Some("tapbus") {
            problems.push("a selector without job=\"tapbus\"".into());
        }
        let kind = eq("kind");
        let allowed = match kind.as_deref() {
            Some("event") => EVENT_LABELS,
            Some("reduced") => RECORD_LABELS,
            // No kind: events and records, so only the labels both have.
            None if !matchers.iter().any(|m| m["label"] == "kind") => COMMON_LABELS,
            other => {
                problems.push(format!(
                    "a selector with kind {other:?}, not event or reduced"
                ));
                continue;
            }
        };
        kinds.insert(kind.unwrap_or_else(|| "any".into()));
        for m in &matchers {
            let label = m["label"].as_str().unwrap_or_default();
            if !allowed.contains(&label) {
                problems.push(format!("selector label {label} is not a tapbus-loki label"));
            }
            if label == "operation" {
                let v = m["value"].as_str().unwrap_or_default();
                for alt in v.split('|') {
                    if alt != ".*" && !OPERATIONS.contains(&alt) {
                        problems.push(format!("operation value {alt:?} is no dnstap type"));
                    }
                }
            }
        }
    }
    if kinds.len() > 1 {
        problems.push(format!("selectors of several kinds {kinds:?}"));
    }
    let Some(kind) = kinds.into_iter().next() else {
        return problems;
    };
    let none: JsonFields = Default::default();
    let (stream, fields) = match kind.as_str() {
        "event" => (EVENT_LABELS, events),
        "reduced" => (RECORD_LABELS, records),
        _ => (COMMON_LABELS, &none),
    };
    let mut known: BTreeSet<String> = stream
        .iter()
        .chain(LOKI_LABELS)
        .map(|s| s.to_string())
        .collect();
    for p in report["produced"].as_array().into_iter().flatten() {
        known.insert(p.as_str().unwrap_or_default().to_string());
    }
    for parser in report["parsers"].as_array().into_iter().flatten() {
        let params = parser["params"].as_array().cloned().unwrap_or_default();
        match parser["kind"].as_str() {
            Some("json") if params.is_empty() => {
                for l in &fields.0 {
                    // A field named like a stream label comes out as NAME_extracted.
                    if stream.contains(&l.as_str()) {
                        known.insert(format!("{l}_extracted"));
                    } else {
                        known.insert(l.clone());
                    }
                }
            }
            Some("json") => {
                for p in params {
                    let path = json_path(p["path"].as_str().unwrap_or_default());
                    if !fields.1.contains(&path) {
                        problems.push(format!("json path {path} is not a field of a {kind} line"));
                    }
                }
            }
            other => problems.push(format!("parser {other:?}: the lines are JSON")),
        }
    }
    for r in report["refs"].as_array().into_iter().flatten() {
        let label = r["label"].as_str().unwrap_or_default();
        if !known.contains(label) {
            problems.push(format!(
                "{} reads label {label}, which neither tapbus-loki nor the parsed {kind} JSON has",
                r["where"].as_str().unwrap_or_default()
            ));
        }
    }
    problems
}

/// Loki json labels and dotted paths of one kind of line.
type JsonFields = (BTreeSet<String>, BTreeSet<String>);

/// `label_values(SELECTOR, LABEL)` (or `label_values(LABEL)`) split.
fn label_values_parts(q: &str) -> Option<(Option<String>, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((sel, label)) => Some((Some(sel.trim().to_string()), label.trim().to_string())),
        None => Some((None, inner.trim().to_string())),
    }
}

#[test]
fn every_logql_expression_parses_and_reads_only_contract_labels_and_event_fields() {
    let events = json_fields("proto/event.schema.json");
    let records = json_fields("consumers/reduce/record.schema.json");
    for f in [
        "dns_qname",
        "dns_rcode",
        "network_query_ip",
        "edns_dnssec_ok",
        "dnstap_latency",
    ] {
        assert!(events.0.contains(f), "event field {f}: {:?}", events.0);
    }
    assert!(records.0.contains("key_qname") && records.0.contains("count"));

    let mut exprs = Vec::new();
    let mut at = Vec::new();
    let mut var_labels = Vec::new();
    for d in dashboards() {
        let mut values: BTreeMap<String, String> = d
            .vars
            .iter()
            .map(|v| (v.name.clone(), ".*".into()))
            .collect();
        values.extend(d.textboxes.clone());
        for q in d.queries.iter().filter(|q| q.lang == Lang::LogQL) {
            exprs.push(substitute(&q.expr, &values).expect("variables"));
            at.push(q.at.clone());
        }
        for v in d.vars.iter().filter(|v| v.lang == Lang::LogQL) {
            let (sel, label) = label_values_parts(&v.query)
                .unwrap_or_else(|| panic!("{}: ${}: not label_values(...)", d.file, v.name));
            let sel = sel.unwrap_or_else(|| panic!("{}: ${}: no selector", d.file, v.name));
            exprs.push(substitute(&sel, &values).expect("variables"));
            at.push(format!("{} / ${}", d.file, v.name));
            var_labels.push((exprs.len() - 1, label));
        }
    }
    assert!(exprs.len() >= 15, "LogQL expressions: {}", exprs.len());
    // The checker fails on what it must catch.
    let canaries = [
        r#"{job="tapbus", kind="event"} | json | dns_rcode="NXDOMAIN""#.to_string(),
        r#"sum(rate({job="tapbus", kind="event"} [1m]"#.to_string(),
        r#"{job="tapbus", kind="event", qname="x"}"#.to_string(),
        r#"{job="tapbus", kind="event"} | json | rcode="NXDOMAIN""#.to_string(),
        r#"{job="tapbus", kind="event"} | json q="dns.name""#.to_string(),
        r#"{job="tapbus", kind="event", operation="client_query"}"#.to_string(),
    ];
    let mut all = exprs.clone();
    all.extend(canaries.iter().cloned());
    let reports = lezer_reports(&all);
    let (reports, canary_reports) = reports.split_at(exprs.len());
    assert!(logql_problems(&canary_reports[0], &events, &records).is_empty());
    for (c, r) in canaries.iter().zip(canary_reports).skip(1) {
        assert!(
            !logql_problems(r, &events, &records).is_empty(),
            "the check let through {c}"
        );
    }

    let mut failures = Vec::new();
    for ((r, at), expr) in reports.iter().zip(&at).zip(&exprs) {
        let problems = logql_problems(r, &events, &records);
        if !problems.is_empty() {
            failures.push(format!("{at}: {expr}\n    {}", problems.join("\n    ")));
        }
    }
    for (i, label) in &var_labels {
        let kind = reports[*i]["selectors"][0]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["label"] == "kind"))
            .and_then(|m| m["value"].as_str())
            .unwrap_or("any");
        let allowed = match kind {
            "reduced" => RECORD_LABELS,
            "event" => EVENT_LABELS,
            _ => COMMON_LABELS,
        };
        if !allowed.contains(&label.as_str()) {
            failures.push(format!(
                "{}: label_values of {label}, not a tapbus-loki label",
                at[*i]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "LogQL problems:\n{}",
        failures.join("\n")
    );
}

// --- PromQL names ------------------------------------------------------------------------

/// A PromQL token: an identifier, a string literal's content, or one other character.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokens(e: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = e.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            while let Some(d) = chars.next() {
                if d == '\\' && c != '`' {
                    if let Some(x) = chars.next() {
                        s.push(x);
                    }
                } else if d == c {
                    break;
                } else {
                    s.push(d);
                }
            }
            out.push(Tok::Str(s));
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut s = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Ident(s));
        } else if !c.is_whitespace() {
            out.push(Tok::Punct(c));
        }
    }
    out
}

/// The tapbus metric names an expression reads (`dnstap_*`, `tapbus_*`, `coredns_*`).
fn promql_metrics(e: &str) -> BTreeSet<String> {
    tokens(e)
        .into_iter()
        .filter_map(|t| match t {
            Tok::Ident(s)
                if ["dnstap_", "tapbus_", "coredns_"]
                    .iter()
                    .any(|p| s.starts_with(p)) =>
            {
                Some(s)
            }
            _ => None,
        })
        .collect()
}

/// The label names in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`
/// lists, less the labels `label_replace` makes.
fn promql_grouping_labels(e: &str) -> BTreeSet<String> {
    let toks = tokens(e);
    let mut labels = BTreeSet::new();
    let mut made = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        let Tok::Ident(word) = t else { continue };
        let keyword = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&word.as_str());
        if keyword && toks.get(i + 1) == Some(&Tok::Punct('(')) {
            for t in toks[i + 2..].iter() {
                match t {
                    Tok::Ident(l) => {
                        labels.insert(l.clone());
                    }
                    Tok::Punct(',') => {}
                    _ => break,
                }
            }
        }
        if word == "label_replace" && toks.get(i + 1) == Some(&Tok::Punct('(')) {
            // label_replace(v, "dst", "replacement", "src", "regex"): the first string
            // after a comma at the call's own depth.
            let mut depth = 0;
            for w in toks[i + 1..].windows(2) {
                match &w[0] {
                    Tok::Punct('(' | '{' | '[') => depth += 1,
                    Tok::Punct(')' | '}' | ']') => depth -= 1,
                    _ => {}
                }
                if depth == 1 && w[0] == Tok::Punct(',') {
                    if let Tok::Str(dst) = &w[1] {
                        made.insert(dst.clone());
                    }
                    break;
                }
            }
        }
    }
    labels.retain(|l| !made.contains(l));
    labels
}

#[test]
fn promql_names_are_found() {
    let e = r#"sort_desc(sum by (domain, identity) (label_replace(a_b{x="tapbus_no"} + on (instance, rank) group_left (qname) tapbus_c, "domain", "$1", "qname", "(.*)"))) / ignoring (rcode) dnstap_x[1m]"#;
    assert_eq!(
        promql_metrics(e),
        BTreeSet::from(["tapbus_c".to_string(), "dnstap_x".to_string()])
    );
    let want: BTreeSet<String> = ["identity", "instance", "rank", "qname", "rcode"]
        .map(String::from)
        .into();
    assert_eq!(promql_grouping_labels(e), want);
}

// --- PromQL against the pipeline ------------------------------------------------------

/// Series in an instant query's answer.
fn series(answer: &str) -> usize {
    serde_json::from_str::<Value>(answer)
        .ok()
        .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[test]
fn every_promql_expression_parses_and_returns_series_from_the_pipeline() {
    let dashboards = dashboards();
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let ports = free_ports(5);
    let (broker_port, tcp_port, agg_port, reduce_port, loki_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let addr = |p: u16| format!("127.0.0.1:{p}");

    // The processes' own /metrics scraped (their ports picked before Prometheus starts).
    let mimir_ports = free_ports(2);
    let prom = Prometheus::start_scraping(&[
        Scrape::new("tapbus-broker", &addr(broker_port)),
        // aggregate's dnstap_* and tapbus_aggregate_* arrive through mimir already.
        Scrape::new("tapbus-aggregate", &addr(agg_port)).keep("tapbus_consumer_.*"),
        Scrape::new("tapbus-reduce", &addr(reduce_port)),
        Scrape::new("tapbus-mimir", &addr(mimir_ports[0])),
        Scrape::new("tapbus-mimir", &addr(mimir_ports[1])),
        Scrape::new("tapbus-loki", &addr(loki_port)),
    ]);
    assert!(
        prom.format_query("sum(").is_none(),
        "format_query refuses bad PromQL"
    );
    assert!(prom.format_query("sum(up)").is_some());

    // One broker for everything: every capture (the bulk one aside) and the malformed
    // set as file inputs, and a TCP input so it keeps running (and serving /metrics).
    let mut broker_cmd = Command::new(bin("tapbus-broker"));
    broker_cmd
        .env("TAPBUS_METRICS_LISTEN", addr(broker_port))
        .env(
            "TAPBUS_INPUTS__TCP__URL",
            format!("tcp://{}", addr(tcp_port)),
        )
        .env("TAPBUS_OUTPUTS__BUS__URL", nats.url())
        .env("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut files: Vec<PathBuf> = testdata::captures()
        .iter()
        .filter(|n| !n.starts_with("bulk"))
        .map(|n| testdata::path(n))
        .collect();
    let malformed = testdata::dir().join("malformed");
    let mut bad: Vec<PathBuf> = std::fs::read_dir(&malformed)
        .expect("malformed/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "fstrm"))
        .collect();
    bad.sort();
    files.extend(bad);
    // Clients with a country and an ASN (the test captures' are all loopback): a
    // generated capture and MaxMind DB files for it, so the geo panels have series.
    let (city, asn) = geo_dbs(dir.path());
    let geo = dir.path().join("geo.fstrm");
    geo_capture(&geo, 20);
    files.push(geo);
    broker_cmd
        .env("TAPBUS_ENRICH__GEOIP__CITY", &city)
        .env("TAPBUS_ENRICH__GEOIP__ASN", &asn);
    for (i, f) in files.iter().enumerate() {
        broker_cmd.env(
            format!("TAPBUS_INPUTS__F{i}__URL"),
            format!("file://{}", f.display()),
        );
    }
    let _broker = Proc::spawn(&mut broker_cmd);
    wait_until("the broker published", Duration::from_secs(60), || {
        prom::value(
            &prom::scrape(&addr(broker_port)),
            "tapbus_published_total",
            &[("output", "bus")],
        )
        .is_some_and(|n| n > 0.0)
    });

    let _mimir = start_mimir_listening(&nats, &prom.write_url(), mimir_ports[0]);
    // A second mimir whose receiver refuses everything (404): tapbus_mimir_dropped_total.
    let refused = format!("http://127.0.0.1:{}/api/v1/no-such-endpoint", prom.port());
    let _refused = start_mimir_listening(&nats, &refused, mimir_ports[1]);
    let _agg = start_aggregate_listening(
        &nats,
        &durable_input(&nats, "aggregate"),
        "dash",
        &[],
        &addr(agg_port),
    );
    let _reduce = Proc::spawn(
        Command::new(bin("tapbus-reduce"))
            .args([
                "--input",
                &durable_input(&nats, "reduce"),
                "--output",
                nats.url(),
                "--metrics-listen",
                &addr(reduce_port),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    // tapbus-loki into the test suite's Loki receiver, scraped like the others: its
    // counters (errors at 0 included) are on /metrics from its start.
    let loki_receiver = tapbus_testsupport::loki::LokiReceiver::start();
    let _loki = Proc::spawn(
        Command::new(bin("tapbus-loki"))
            .args([
                "--input",
                &durable_input(&nats, "loki"),
                "--url",
                &loki_receiver.push_url(),
                "--metrics-listen",
                &addr(loki_port),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    // The variables, resolved in order (a later one may use an earlier one).
    let mut checks: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    let t0 = Instant::now();
    for d in &dashboards {
        let mut all = d.textboxes.clone();
        let mut picked = d.textboxes.clone();
        for v in d.vars.iter() {
            all.insert(v.name.clone(), ".*".into());
        }
        for v in d.vars.iter().filter(|v| v.lang == Lang::PromQL) {
            let (sel, label) = label_values_parts(&v.query)
                .unwrap_or_else(|| panic!("{}: ${}: not label_values(...)", d.file, v.name));
            let sel = sel
                .map(|s| substitute(&s, &all).expect("variables"))
                .unwrap_or_else(|| "{__name__=~\".+\"}".into());
            assert!(
                prom.format_query(&sel).is_some(),
                "{}: ${}: selector {sel} does not parse",
                d.file,
                v.name
            );
            let mut values = Vec::new();
            while t0.elapsed() < Duration::from_secs(120) {
                values = prom.label_values(&label, &sel).unwrap_or_default();
                if !values.is_empty() {
                    break;
                }
                pause(Duration::from_millis(500));
            }
            if values.is_empty() {
                failures.push(format!(
                    "{}: ${}: {} resolves to nothing",
                    d.file, v.name, v.query
                ));
                continue;
            }
            // Every value selected, as Grafana writes a multi-value selection.
            let escaped: Vec<String> = values.iter().map(|v| prom_regex_escape(v)).collect();
            picked.insert(v.name.clone(), format!("({})", escaped.join("|")));
        }
        for v in d.vars.iter().filter(|v| v.lang == Lang::LogQL) {
            picked.insert(v.name.clone(), ".*".into());
        }
        for q in d.queries.iter().filter(|q| q.lang == Lang::PromQL) {
            for (how, values) in [("All", &all), ("every value selected", &picked)] {
                let e = substitute(&q.expr, values).expect("variables");
                if prom.format_query(&e).is_none() {
                    failures.push(format!("{} ({how}): does not parse: {e}", q.at));
                } else {
                    checks.push((format!("{} ({how})", q.at), e));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checks.len() >= 100, "PromQL checks: {}", checks.len());

    // Until every expression returns series (the pipeline needs a while: replay,
    // batches, rate windows of two samples), at most 3 minutes.
    let deadline = Instant::now() + Duration::from_secs(180);
    let empty = loop {
        let empty: Vec<&(String, String)> = checks
            .iter()
            .filter(|(_, e)| prom.query(e).map(|a| series(&a)).unwrap_or(0) == 0)
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        pause(Duration::from_secs(2));
    };
    assert!(
        empty.is_empty(),
        "{} PromQL expressions return no series:\n{}",
        empty.len(),
        empty
            .iter()
            .map(|(at, e)| {
                let answer = prom.query_status(e).map(|(s, b)| format!("{s} {b}"));
                format!("{at}: {e}\n    -> {}", answer.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Every metric an expression names has series, and every label it groups or matches
    // by is on one of them: `or vector(0)` or a typo in `by (...)` cannot hide a wrong
    // name.
    let mut names = BTreeSet::new();
    let mut wrong = Vec::new();
    for (at, e) in &checks {
        let metrics = promql_metrics(e);
        if metrics.is_empty() {
            wrong.push(format!("{at}: names no tapbus metric: {e}"));
            continue;
        }
        names.extend(metrics.iter().cloned());
        let any = metrics.iter().cloned().collect::<Vec<_>>().join("|");
        for l in promql_grouping_labels(e) {
            let q = format!("count({{__name__=~\"{any}\", {l}!=\"\"}})");
            if prom.query(&q).map(|a| series(&a)).unwrap_or(0) == 0 {
                wrong.push(format!("{at}: no series of {any} has the label {l}"));
            }
        }
    }
    for n in &names {
        let q = format!("count({{__name__=\"{n}\"}})");
        if prom.query(&q).map(|a| series(&a)).unwrap_or(0) == 0 {
            wrong.push(format!("metric {n} has no series"));
        }
    }
    assert!(names.len() >= 40, "metrics used: {names:?}");
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The docs against reality: every family each process exports (the pipeline has run,
    // so the labelled ones have series), with its labels, is described in its pages.
    let mut undocumented = Vec::new();
    for (process, port, pages) in [
        ("tapbus-broker", broker_port, &["metrics.md"][..]),
        (
            "tapbus-aggregate",
            agg_port,
            &["aggregate.md", "consumers.md"][..],
        ),
        (
            "tapbus-reduce",
            reduce_port,
            &["reduce.md", "consumers.md"][..],
        ),
        (
            "tapbus-mimir",
            mimir_ports[0],
            &["mimir.md", "consumers.md"][..],
        ),
        ("tapbus-loki", loki_port, &["loki.md", "consumers.md"][..]),
    ] {
        let text = prom::scrape(&addr(port)).text;
        assert!(!text.is_empty(), "{process}: no /metrics");
        undocumented.extend(
            tapbus_testsupport::docs::undocumented_metrics(&text, pages)
                .into_iter()
                .map(|m| format!("{process}: {m} (docs/{})", pages.join(", docs/"))),
        );
    }
    assert!(
        undocumented.is_empty(),
        "metrics the docs do not describe (a table row naming the family and each label in \
         code spans): {undocumented:#?}"
    );
}
