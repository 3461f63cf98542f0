//! What the deployment tests read: the compose file as data. This is the arrow
//! `docker-compose.yml --> (services, mounts, ports, addresses)` that the tests in
//! `compose/tests/` check against the configs each service mounts; pure functions over
//! the parsed YAML, no Docker and no sockets.
//!
//! * [`load`]: YAML text to JSON (merge keys `<<` applied), for the compose-spec schema
//!   and for the accessors below.
//! * [`Service`]: one service's command, environment, bind mounts, published ports and
//!   static addresses; [`Service::host_path`] maps a path inside the container back to the
//!   file the compose file mounts there.
//! * [`host_port`]: the `HOST:PORT` of a URL (`nats://nats:4222/x` -> `("nats", 4222)`).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A compose file that is not what the tests can read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("YAML to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Shape(String),
}

/// Parses compose YAML into JSON, with YAML merge keys (`<<: *anchor`) applied.
pub fn load(text: &str) -> Result<Value, Error> {
    let mut y: serde_norway::Value = serde_norway::from_str(text)?;
    y.apply_merge()?;
    Ok(serde_json::to_value(&y)?)
}

/// The services of a loaded compose file, by name.
pub fn services(doc: &Value) -> Result<Vec<Service<'_>>, Error> {
    let map = doc
        .get("services")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Shape("no services mapping".into()))?;
    Ok(map
        .iter()
        .map(|(name, v)| Service {
            name: name.as_str(),
            v,
        })
        .collect())
}

/// One bind mount or volume of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `./config/broker.toml` (bind) or `dnstap-socket` (named volume).
    pub source: String,
    /// The path inside the container.
    pub target: String,
    pub read_only: bool,
    /// True for a host path (bind mount), false for a named volume.
    pub bind: bool,
}

/// A published port: `host_ip:published:target/protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Option<String>,
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: String,
}

/// One service of a compose file.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    pub name: &'a str,
    pub v: &'a Value,
}

impl<'a> Service<'a> {
    /// The string at `key`, if any.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.v.get(key).and_then(Value::as_str)
    }

    /// `command` as a list of arguments (a string form is split on whitespace).
    pub fn command(&self) -> Vec<String> {
        match self.v.get("command") {
            Some(Value::Array(a)) => a.iter().map(scalar).collect(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        }
    }

    /// `environment` in either form (mapping or `KEY=VALUE` list); a bare `KEY` has no value.
    pub fn environment(&self) -> Vec<(String, Option<String>)> {
        match self.v.get("environment") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), (!v.is_null()).then(|| scalar(v))))
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| {
                    let e = scalar(e);
                    match e.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (e, None),
                    }
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `volumes`, short (`SRC:DST[:ro]`) and long (`{type, source, target, read_only}`) forms.
    pub fn mounts(&self) -> Result<Vec<Mount>, Error> {
        let Some(list) = self.v.get("volumes") else {
            return Ok(Vec::new());
        };
        let list = list
            .as_array()
            .ok_or_else(|| self.shape("volumes is not a list"))?;
        list.iter()
            .map(|m| match m {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [t] => ("", *t, ""),
                        [s, t] => (*s, *t, ""),
                        [s, t, m] => (*s, *t, *m),
                        _ => return Err(self.shape(&format!("volume {s:?}"))),
                    };
                    Ok(Mount {
                        source: source.to_string(),
                        target: target.to_string(),
                        read_only: mode.split(',').any(|m| m == "ro"),
                        bind: is_host_path(source),
                    })
                }
                Value::Object(o) => {
                    let get = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    Ok(Mount {
                        source: get("source"),
                        target: get("target"),
                        read_only: o.get("read_only").and_then(Value::as_bool).unwrap_or(false),
                        bind: get("type") == "bind",
                    })
                }
                other => Err(self.shape(&format!("volume {other}"))),
            })
            .collect()
    }

    /// `ports`, short form (`[IP:][PUBLISHED:]TARGET[/PROTO]`) and long form.
    pub fn ports(&self) -> Result<Vec<Port>, Error> {
        let Some(list) = self.v.get("ports").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|p| match p {
                Value::Object(o) => Ok(Port {
                    host_ip: o.get("host_ip").and_then(Value::as_str).map(String::from),
                    published: o.get("published").map(scalar).and_then(|s| s.parse().ok()),
                    target: o
                        .get("target")
                        .map(scalar)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| self.shape("port without a target"))?,
                    protocol: o
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("tcp")
                        .to_string(),
                }),
                other => {
                    parse_port(&scalar(other)).ok_or_else(|| self.shape(&format!("port {other}")))
                }
            })
            .collect()
    }

    /// The static IPv4 address of this service on `network` (`ipv4_address`).
    pub fn ipv4(&self, network: &str) -> Option<&'a str> {
        self.v
            .get("networks")?
            .get(network)?
            .get("ipv4_address")?
            .as_str()
    }

    /// The host file mounted at `container_path` (or the file below a mounted directory),
    /// resolved against `compose_dir`; `None` when no bind mount covers the path.
    pub fn host_path(&self, compose_dir: &Path, container_path: &str) -> Option<PathBuf> {
        let mounts = self.mounts().ok()?;
        mounts
            .iter()
            .filter(|m| m.bind)
            .filter_map(|m| {
                let rest = container_path.strip_prefix(m.target.trim_end_matches('/'))?;
                (rest.is_empty() || rest.starts_with('/')).then_some((m, rest))
            })
            .max_by_key(|(m, _)| m.target.len())
            .map(|(m, rest)| {
                let base = compose_dir.join(&m.source);
                if rest.is_empty() {
                    base
                } else {
                    base.join(rest.trim_start_matches('/'))
                }
            })
    }

    fn shape(&self, what: &str) -> Error {
        Error::Shape(format!("service {}: {what}", self.name))
    }
}

fn is_host_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_port(s: &str) -> Option<Port> {
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.to_string()),
        None => (s, "tcp".to_string()),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, published, target) = match parts.as_slice() {
        [t] => (None, None, *t),
        [p, t] => (None, Some(*p), *t),
        [ip, p, t] => (Some((*ip).to_string()), Some(*p), *t),
        _ => return None,
    };
    Some(Port {
        host_ip,
        published: match published {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        },
        target: target.parse().ok()?,
        protocol,
    })
}

/// The host and port of `scheme://HOST:PORT[/...]` (also `HOST:PORT` alone).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (h, p) = authority.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
x-base: &base
  image: app
  command: ["run", "--config", "/etc/app/app.toml"]
services:
  a:
    <<: *base
    volumes:
      - ./conf/app.toml:/etc/app/app.toml:ro
      - ../zones:/etc/zones
      - data:/data
      - type: bind
        source: ./long
        target: /long
        read_only: true
    ports:
      - "127.0.0.1:1053:53/udp"
      - "8080"
      - target: 9000
        published: "9001"
    environment:
      A: "1"
      B:
    networks:
      n:
        ipv4_address: 10.0.0.2
  b:
    <<: *base
    command: "sh -c true"
    environment: ["X=y=z", "BARE"]
"#;

    #[test]
    fn merge_keys_commands_and_environment() {
        let doc = load(DOC).expect("load");
        let s = services(&doc).expect("services");
        let a = s.iter().find(|s| s.name == "a").expect("a");
        let b = s.iter().find(|s| s.name == "b").expect("b");
        assert_eq!(a.str("image"), Some("app"));
        assert_eq!(a.command(), ["run", "--config", "/etc/app/app.toml"]);
        assert_eq!(
            b.command(),
            ["sh", "-c", "true"],
            "the service's own key wins"
        );
        assert_eq!(
            a.environment(),
            [("A".into(), Some("1".into())), ("B".into(), None)]
        );
        assert_eq!(
            b.environment(),
            [("X".into(), Some("y=z".into())), ("BARE".into(), None)]
        );
        assert_eq!(a.ipv4("n"), Some("10.0.0.2"));
        assert_eq!(b.ipv4("n"), None);
    }

    #[test]
    fn mounts_and_host_paths() {
        let doc = load(DOC).expect("load");
        let s = services(&doc).expect("services");
        let a = s[0];
        let m = a.mounts().expect("mounts");
        assert_eq!(m.len(), 4);
        assert!(m[0].bind && m[0].read_only && m[0].target == "/etc/app/app.toml");
        assert!(m[1].bind && !m[1].read_only);
        assert!(!m[2].bind, "a named volume");
        assert!(m[3].bind && m[3].read_only && m[3].source == "./long");
        let dir = Path::new("/x/compose");
        assert_eq!(
            a.host_path(dir, "/etc/app/app.toml"),
            Some(dir.join("./conf/app.toml"))
        );
        assert_eq!(
            a.host_path(dir, "/etc/zones/db.test"),
            Some(dir.join("../zones").join("db.test"))
        );
        assert_eq!(
            a.host_path(dir, "/etc/zonesx"),
            None,
            "prefix on a path boundary"
        );
        assert_eq!(a.host_path(dir, "/data/x"), None, "named volume");
    }

    #[test]
    fn ports_both_forms() {
        let doc = load(DOC).expect("load");
        let a = services(&doc).expect("services")[0];
        let p = a.ports().expect("ports");
        assert_eq!(
            p[0],
            Port {
                host_ip: Some("127.0.0.1".into()),
                published: Some(1053),
                target: 53,
                protocol: "udp".into()
            }
        );
        assert_eq!(p[1].published, None);
        assert_eq!(p[1].target, 8080);
        assert_eq!(p[2].published, Some(9001));
        assert_eq!(p[2].target, 9000);
    }

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("nats://nats:4222"), Some(("nats".into(), 4222)));
        assert_eq!(
            host_port("jetstream://nats:4222/DNSTAP?durable=x"),
            Some(("nats".into(), 4222))
        );
        assert_eq!(
            host_port("http://u:p@mimir:9009/api/v1/push"),
            Some(("mimir".into(), 9009))
        );
        assert_eq!(host_port("tcp://[::1]:6000"), Some(("::1".into(), 6000)));
        assert_eq!(host_port("broker:6000"), Some(("broker".into(), 6000)));
        assert_eq!(host_port("unix:///run/x.sock"), None);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        assert!(load("services: [").is_err());
        let doc = load("services:\n  a:\n    volumes: 3\n").expect("load");
        assert!(services(&doc).expect("services")[0].mounts().is_err());
        assert!(services(&load("x: 1").expect("load")).is_err());
    }
}
