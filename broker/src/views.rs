//! Enrichment and privacy views: session -> **encode(enrich, views)** -> fanout.
//!
//! The outputs' `[outputs.NAME.privacy]` tables become a list of distinct views: view 0 is
//! the clear event (what outputs without a privacy table publish, and what every output's
//! `filter` reads), and outputs with the same privacy settings share one view, so each
//! event is encoded once per distinct view, not once per output. Key files and GeoIP
//! databases are opened here, at start, with errors naming their key.

use std::sync::Arc;

use arc_swap::ArcSwap;

use tapbus_config::{BrokerSettings, ClientIp, ConfigError, PrivacySpec};
use tapbus_proto::event::{AddrMap, Enrich, View};

/// What every session encodes with: the shared enrichment and the distinct views.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub enrich: Enrich,
    /// View 0 is the clear event.
    pub views: Vec<View>,
}

impl Default for Encoder {
    /// The standard enrichment, one clear view.
    fn default() -> Self {
        Encoder {
            enrich: tapbus_proto::event::STANDARD.clone(),
            views: vec![View::default()],
        }
    }
}

/// The encoder and, for each output in order, the index of its view.
#[derive(Debug)]
pub struct Built {
    /// Swapped whole when the keys are reloaded; sessions read it per frame.
    pub encoder: Arc<ArcSwap<Encoder>>,
    pub output_views: Vec<usize>,
    /// Lines for the start-up log and `--check`: each view, its outputs, its key's
    /// fingerprint (never the key).
    pub summary: Vec<String>,
    /// The GeoIP databases, for their reload task and counters.
    pub geo: Option<tapbus_enrich::GeoIp>,
}

/// Builds the views of `settings` (reads key files).
pub fn build(settings: &BrokerSettings) -> Result<Built, ConfigError> {
    let cfg = &settings.enrich;
    let geo = if cfg.geoip_on() {
        let g = tapbus_enrich::GeoIp::open(&cfg.geoip).map_err(|e| match e {
            tapbus_enrich::Error::Open { key, path, reason } => {
                ConfigError::invalid(key, format!("{}: {reason}", path.display()))
            }
        })?;
        Some(g)
    } else {
        None
    };
    let enrich = Enrich {
        geo: geo
            .clone()
            .map(|g| Arc::new(g) as Arc<dyn tapbus_proto::event::GeoWriter>),
        geo_response: cfg.geoip.response,
        registered: cfg
            .registered_domain
            .then_some(tapbus_proto::event::view::registered_domain as _),
    };
    let mut summary = Vec::new();
    if geo.is_some() {
        let g = &cfg.geoip;
        summary.push(format!(
            "GeoIP: city {}, asn {}, response {}, reload every {:?}",
            g.city
                .as_ref()
                .map_or("-".to_string(), |p| p.display().to_string()),
            g.asn
                .as_ref()
                .map_or("-".to_string(), |p| p.display().to_string()),
            g.response,
            g.reload_interval,
        ));
    }
    let (views, output_views, lines) = build_views(settings)?;
    summary.extend(lines);
    Ok(Built {
        encoder: Arc::new(ArcSwap::from_pointee(Encoder { enrich, views })),
        output_views,
        summary,
        geo,
    })
}

/// The distinct views (key files read now), each output's view, and the log lines.
type Views = (Vec<View>, Vec<usize>, Vec<String>);

fn build_views(settings: &BrokerSettings) -> Result<Views, ConfigError> {
    let mut summary = Vec::new();
    let mut specs: Vec<PrivacySpec> = Vec::new();
    let mut views = vec![View::default()];
    let mut output_views = Vec::with_capacity(settings.outputs.len());
    for o in &settings.outputs {
        let Some(p) = &o.privacy else {
            output_views.push(0);
            continue;
        };
        if let Some(i) = specs.iter().position(|s| s == p) {
            output_views.push(i + 1);
            continue;
        }
        let key = format!("outputs.{}.privacy", o.name);
        let (addr, fingerprint) = addr_map(&key, &p.client_ip)?;
        specs.push(p.clone());
        views.push(View {
            addr,
            qname: p.qname,
            drop: p.drop.clone(),
        });
        output_views.push(views.len() - 1);
        summary.push(format!(
            "privacy view {} (first used by output {}): client_ip {}{}, qname {:?}, drop_fields [{}]",
            views.len() - 1,
            o.name,
            describe(&p.client_ip),
            fingerprint
                .map(|f| format!(" (key fingerprint {f})"))
                .unwrap_or_default(),
            p.qname,
            p.drop.paths().collect::<Vec<_>>().join(", "),
        ));
    }
    // The clear view is encoded only when something reads it: an output without a privacy
    // view that publishes JSON, or any output's filter (filters read the clear event).
    let clear_read = settings
        .outputs
        .iter()
        .zip(&output_views)
        .any(|(o, &v)| (v == 0 && !o.kind.is_raw()) || o.filter.is_some());
    if !clear_read && views.len() > 1 {
        views.remove(0);
        for v in &mut output_views {
            *v = v.saturating_sub(1);
        }
    }
    Ok((views, output_views, summary))
}

/// Reads the key files again (SIGHUP: a rotated key) and swaps the views every session
/// encodes with; the enrichment stays. On an error the views in use stay, and the error
/// is returned for the log.
pub fn reload_keys(
    settings: &BrokerSettings,
    encoder: &ArcSwap<Encoder>,
) -> Result<Vec<String>, ConfigError> {
    let (views, _, summary) = build_views(settings)?;
    let enrich = encoder.load().enrich.clone();
    encoder.store(Arc::new(Encoder { enrich, views }));
    Ok(summary)
}

fn describe(c: &ClientIp) -> String {
    match c {
        ClientIp::Keep => "keep".into(),
        ClientIp::Truncate { v4, v6 } => format!("truncate /{v4} /{v6}"),
        ClientIp::Hash { key_file } => format!("hash ({})", key_file.display()),
        ClientIp::CryptoPan { key_file } => format!("cryptopan ({})", key_file.display()),
    }
}

/// A view's address transform, with its key's fingerprint for the log.
type AddrMapOf = (Option<Arc<dyn AddrMap>>, Option<String>);

/// The address transform of a view and its key's fingerprint.
fn addr_map(key: &str, c: &ClientIp) -> Result<AddrMapOf, ConfigError> {
    use tapbus_privacy::{Mode, Settings};
    let mut s = Settings::default();
    match c {
        ClientIp::Keep => return Ok((None, None)),
        ClientIp::Truncate { v4, v6 } => {
            s.client_ip = Mode::Truncate;
            s.truncate_v4 = *v4;
            s.truncate_v6 = *v6;
        }
        ClientIp::Hash { key_file } => {
            s.client_ip = Mode::Hash;
            s.key_file = Some(key_file.clone());
        }
        ClientIp::CryptoPan { key_file } => {
            s.client_ip = Mode::CryptoPan;
            s.key_file = Some(key_file.clone());
        }
    }
    let p = tapbus_privacy::Pseudonymizer::new(&s).map_err(|e| {
        // The crate's message names the setting (`key_file`, `truncate_v4`) and the path.
        let text = e.to_string();
        let (k, msg) = match text.split_once(' ') {
            Some((k, m)) if ["key_file", "truncate_v4", "truncate_v6"].contains(&k) => {
                (k.to_string(), m.trim_start_matches("= ").to_string())
            }
            _ => ("client_ip".to_string(), text.clone()),
        };
        ConfigError::invalid(format!("{key}.{k}"), msg)
    })?;
    let fingerprint = p.fingerprint();
    Ok((Some(Arc::new(Pseudonymised(p))), fingerprint))
}

/// [`tapbus_privacy::Pseudonymizer`] as the encoder's address transform.
#[derive(Debug)]
struct Pseudonymised(tapbus_privacy::Pseudonymizer);

impl AddrMap for Pseudonymised {
    fn addr(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        self.0.addr(ip)
    }

    fn prefix(&self, ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
        self.0.prefix(ip, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapbus_config::{BrokerConfig, InputConfig, OutputConfig, PrivacyConfig};

    fn settings(outputs: &[(&str, Option<&str>, Option<&str>)]) -> BrokerSettings {
        let mut c = BrokerConfig::default();
        c.inputs.insert(
            "f".into(),
            InputConfig {
                url: "file:///dev/null".into(),
                ..Default::default()
            },
        );
        for (name, mode, filter) in outputs {
            let mut o = OutputConfig::from_url("stdout");
            o.privacy = mode.map(|m| PrivacyConfig {
                client_ip: Some(m.into()),
                ..Default::default()
            });
            o.filter = filter.map(str::to_string);
            c.outputs.insert((*name).into(), o);
        }
        c.validate().expect("valid")
    }

    fn layout(s: &BrokerSettings) -> (usize, Vec<usize>) {
        let b = build(s).expect("built");
        let n = b.encoder.load().views.len();
        (n, b.output_views)
    }

    #[test]
    fn one_encoding_per_distinct_view_and_the_clear_one_only_when_read() {
        // Two outputs with the same view share it; nobody reads the clear event.
        assert_eq!(
            layout(&settings(&[
                ("a", Some("truncate"), None),
                ("b", Some("truncate"), None)
            ])),
            (1, vec![0, 0])
        );
        // A clear output: view 0 is the clear event, the truncated one view 1.
        assert_eq!(
            layout(&settings(&[
                ("a", Some("truncate"), None),
                ("b", None, None)
            ])),
            (2, vec![1, 0])
        );
        // A filter reads the clear event, so it is encoded even if no output publishes it.
        assert_eq!(
            layout(&settings(&[(
                "a",
                Some("truncate"),
                Some("operation=CLIENT_QUERY")
            )])),
            (2, vec![1])
        );
        // Nothing private: one view.
        assert_eq!(layout(&settings(&[("a", None, None)])), (1, vec![0]));
    }
}
