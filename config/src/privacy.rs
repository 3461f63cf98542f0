//! The broker's `[enrich]` table and each output's `[outputs.NAME.privacy]` table: what
//! the operator writes, and the checked form the broker builds its views from (the key
//! files and databases are opened by the broker at start, naming these keys).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_proto::event::{DropFields, QnameMode};

use crate::{ConfigError, invalid};

/// `[outputs.NAME.privacy]`: what this output shows of the client (docs/privacy.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// The client address (`query-ip`, `response-ip`, the EDNS Client Subnet, a policy
    /// CLIENT_IP value): "keep" (default), "truncate", "hash" or "cryptopan".
    pub client_ip: Option<String>,
    /// hash, cryptopan: the key file (cryptopan: exactly 32 bytes; hash: 16 or more).
    pub key_file: Option<PathBuf>,
    /// truncate: IPv4 prefix bits kept (default 24).
    pub truncate_v4: Option<u8>,
    /// truncate: IPv6 prefix bits kept (default 48).
    pub truncate_v6: Option<u8>,
    /// `dns.qname`: "keep" (default) or "registered-domain" (the resource records, which
    /// repeat the full name, are then left out).
    pub qname: Option<String>,
    /// Event fields to leave out (`dnstap.extra`, `edns`, `dns.resource-records`); a list,
    /// or one comma-separated string (the environment's form).
    #[serde(deserialize_with = "list_or_commas")]
    pub drop_fields: Option<Vec<String>>,
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(Option::<ListOrText>::deserialize(d)?.map(|v| match v {
        ListOrText::List(l) => l,
        ListOrText::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    }))
}

/// The checked client address transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIp {
    Keep,
    Truncate { v4: u8, v6: u8 },
    Hash { key_file: PathBuf },
    CryptoPan { key_file: PathBuf },
}

/// A checked privacy view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacySpec {
    pub client_ip: ClientIp,
    pub qname: QnameMode,
    pub drop: DropFields,
}

impl PrivacySpec {
    /// Shows everything (the same as no privacy table).
    pub fn is_clear(&self) -> bool {
        self.client_ip == ClientIp::Keep && self.qname == QnameMode::Keep && self.drop.is_empty()
    }
}

impl PrivacyConfig {
    /// Checks the table; `key` is where it is (`outputs.loki.privacy`).
    pub fn validate(&self, key: &str) -> Result<PrivacySpec, ConfigError> {
        let mode = self.client_ip.as_deref().map(str::trim).unwrap_or("keep");
        let needs_key = |what: &str| -> Result<PathBuf, ConfigError> {
            match &self.key_file {
                Some(p) if !p.as_os_str().is_empty() => Ok(p.clone()),
                _ => Err(invalid(
                    format!("{key}.key_file"),
                    format!(
                        "missing: client_ip = \"{what}\" needs a key file (keys never come from the command line)"
                    ),
                )),
            }
        };
        let client_ip = match mode {
            "keep" => ClientIp::Keep,
            "truncate" => {
                let v4 = self.truncate_v4.unwrap_or(24);
                let v6 = self.truncate_v6.unwrap_or(48);
                if v4 > 32 {
                    return Err(invalid(
                        format!("{key}.truncate_v4"),
                        format!("{v4}: an IPv4 prefix is 0 to 32 bits"),
                    ));
                }
                if v6 > 128 {
                    return Err(invalid(
                        format!("{key}.truncate_v6"),
                        format!("{v6}: an IPv6 prefix is 0 to 128 bits"),
                    ));
                }
                ClientIp::Truncate { v4, v6 }
            }
            "hash" => ClientIp::Hash {
                key_file: needs_key("hash")?,
            },
            "cryptopan" => ClientIp::CryptoPan {
                key_file: needs_key("cryptopan")?,
            },
            other => {
                return Err(invalid(
                    format!("{key}.client_ip"),
                    format!("unknown {other:?}: use keep, truncate, hash or cryptopan"),
                ));
            }
        };
        if mode != "truncate" {
            for (k, set) in [
                ("truncate_v4", self.truncate_v4.is_some()),
                ("truncate_v6", self.truncate_v6.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        format!("{key}.{k}"),
                        "only applies with client_ip = \"truncate\"",
                    ));
                }
            }
        }
        if matches!(mode, "keep" | "truncate") && self.key_file.is_some() {
            return Err(invalid(
                format!("{key}.key_file"),
                "only applies with client_ip = \"hash\" or \"cryptopan\"",
            ));
        }
        let qname = match self.qname.as_deref().map(str::trim).unwrap_or("keep") {
            "keep" => QnameMode::Keep,
            "registered-domain" => QnameMode::RegisteredDomain,
            other => {
                return Err(invalid(
                    format!("{key}.qname"),
                    format!("unknown {other:?}: use keep or registered-domain"),
                ));
            }
        };
        let drop = DropFields::parse(self.drop_fields.as_deref().unwrap_or_default())
            .map_err(|e| invalid(format!("{key}.drop_fields"), e.to_string()))?;
        Ok(PrivacySpec {
            client_ip,
            qname,
            drop,
        })
    }
}

/// `[enrich]`: what the broker adds to every event, once, before any privacy view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// `dns.qname-registered` and `dns.qname-tld` from the public suffix list (default
    /// true).
    pub registered_domain: bool,
    /// GeoIP and ASN from MaxMind DB files; off unless a file is given.
    pub geoip: GeoIpConfig,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            registered_domain: true,
            geoip: GeoIpConfig::default(),
        }
    }
}

/// `[enrich.geoip]` (the files are opened by the broker, through `tapbus-enrich`).
pub use tapbus_enrich::GeoIpConfig;

impl EnrichConfig {
    /// Checks the table (the files are opened by the broker).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.geoip;
        for (k, p) in [("city", &g.city), ("asn", &g.asn)] {
            if let Some(p) = p
                && p.as_os_str().is_empty()
            {
                return Err(invalid(format!("enrich.geoip.{k}"), "empty path"));
            }
        }
        if g.response && g.city.is_none() && g.asn.is_none() {
            return Err(invalid(
                "enrich.geoip.response",
                "needs enrich.geoip.city or enrich.geoip.asn",
            ));
        }
        if !g.reload_interval.is_zero() && g.reload_interval < Duration::from_millis(100) {
            return Err(invalid(
                "enrich.geoip.reload_interval",
                "must be 0s (no reloading) or at least 100ms",
            ));
        }
        Ok(())
    }

    /// GeoIP is configured.
    pub fn geoip_on(&self) -> bool {
        self.geoip.city.is_some() || self.geoip.asn.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: &PrivacyConfig) -> String {
        p.validate("outputs.x.privacy")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn modes_and_their_keys() {
        let ok = |p: PrivacyConfig| p.validate("outputs.x.privacy").expect("valid");
        assert!(ok(PrivacyConfig::default()).is_clear());
        assert_eq!(
            ok(PrivacyConfig {
                client_ip: Some("truncate".into()),
                ..Default::default()
            })
            .client_ip,
            ClientIp::Truncate { v4: 24, v6: 48 }
        );
        assert_eq!(
            ok(PrivacyConfig {
                client_ip: Some("cryptopan".into()),
                key_file: Some("/k".into()),
                qname: Some("registered-domain".into()),
                drop_fields: Some(vec!["dnstap.extra".into()]),
                ..Default::default()
            }),
            PrivacySpec {
                client_ip: ClientIp::CryptoPan {
                    key_file: "/k".into()
                },
                qname: QnameMode::RegisteredDomain,
                drop: DropFields::parse(&["dnstap.extra"]).expect("paths"),
            }
        );
        let e = err(&PrivacyConfig {
            client_ip: Some("hash".into()),
            ..Default::default()
        });
        assert!(e.starts_with("outputs.x.privacy.key_file: missing"), "{e}");
        let e = err(&PrivacyConfig {
            client_ip: Some("truncate".into()),
            truncate_v4: Some(33),
            ..Default::default()
        });
        assert!(e.starts_with("outputs.x.privacy.truncate_v4: 33"), "{e}");
        let e = err(&PrivacyConfig {
            client_ip: Some("truncate".into()),
            truncate_v6: Some(129),
            ..Default::default()
        });
        assert!(e.starts_with("outputs.x.privacy.truncate_v6: 129"), "{e}");
        let e = err(&PrivacyConfig {
            client_ip: Some("mask".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("outputs.x.privacy.client_ip: unknown \"mask\""),
            "{e}"
        );
        let e = err(&PrivacyConfig {
            truncate_v4: Some(16),
            ..Default::default()
        });
        assert!(
            e.starts_with("outputs.x.privacy.truncate_v4: only applies"),
            "{e}"
        );
        let e = err(&PrivacyConfig {
            drop_fields: Some(vec!["dns.nope".into()]),
            ..Default::default()
        });
        assert!(
            e.starts_with("outputs.x.privacy.drop_fields: \"dns.nope\""),
            "{e}"
        );
        let e = err(&PrivacyConfig {
            qname: Some("short".into()),
            ..Default::default()
        });
        assert!(e.starts_with("outputs.x.privacy.qname: unknown"), "{e}");
    }

    #[test]
    fn enrich_checks() {
        assert!(EnrichConfig::default().validate().is_ok());
        assert!(!EnrichConfig::default().geoip_on());
        let mut e = EnrichConfig::default();
        e.geoip.response = true;
        assert!(
            e.validate()
                .expect_err("refused")
                .to_string()
                .starts_with("enrich.geoip.response:")
        );
    }
}
