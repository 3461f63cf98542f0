//! Connecting to MQTT (rumqttc): TLS with a CA file or the system's roots, options for
//! MQTT 3.1.1 and 5 (client id, keep-alive, credentials, packet size) shared by the
//! publishing and subscribing sides.

use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tapbus_config::MqttConnect;

/// TCP, or TLS verified against `tls_ca` (else the system's roots).
pub fn transport(spec: &MqttConnect) -> Result<Transport, String> {
    if spec.tls {
        Ok(Transport::tls_with_config(tls_config(spec)?))
    } else {
        Ok(Transport::tcp())
    }
}

/// MQTT 3.1.1 options. `clean` starts a fresh session (publishers); a subscriber that wants
/// its unacknowledged messages kept across reconnects passes `false`.
pub fn options_v4(spec: &MqttConnect, transport: Transport, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
    o.set_keep_alive(spec.keep_alive)
        .set_clean_session(clean)
        .set_max_packet_size(spec.max_packet_size, spec.max_packet_size)
        .set_transport(transport);
    if let Some(u) = &spec.username {
        o.set_credentials(u, spec.password.clone().unwrap_or_default());
    }
    o
}

/// MQTT 5 options (see [`options_v4`]).
pub fn options_v5(
    spec: &MqttConnect,
    transport: Transport,
    clean: bool,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
    // rumqttc's v5 options refuse a keep-alive under 5 s (they assert).
    o.set_keep_alive(spec.keep_alive.max(Duration::from_secs(5)))
        .set_clean_start(clean)
        .set_max_packet_size(Some(
            u32::try_from(spec.max_packet_size).unwrap_or(u32::MAX),
        ))
        .set_transport(transport);
    if !clean {
        // Keep the session (and the unacknowledged messages) for a day after a disconnect.
        o.set_session_expiry_interval(Some(86_400));
    }
    if let Some(u) = &spec.username {
        o.set_credentials(u, spec.password.clone().unwrap_or_default());
    }
    o
}

/// The TLS of mqtts://, through rumqttc's native-tls backend (OpenSSL on Linux): rumqttc's
/// rustls backend pulls in rustls-webpki 0.102 and rustls-pemfile, which RustSec flags
/// (see .cargo/audit.toml and docs/supply-chain.md). The roots are the same as before: the
/// certificates of `tls_ca`, else the platform's bundle (SSL_CERT_FILE / SSL_CERT_DIR
/// honoured), and nothing else: OpenSSL's built-in default paths are not added on top.
fn tls_config(spec: &MqttConnect) -> Result<TlsConfiguration, String> {
    use rumqttc::tokio_native_tls::native_tls::{Certificate, Protocol, TlsConnector};
    let certs: Vec<CertificateDer<'static>> = match &spec.tls_ca {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect())
            .map_err(|e| format!("tls_ca {}: {e}", path.display()))?,
        None => {
            // The platform's roots (SSL_CERT_FILE / SSL_CERT_DIR honoured), as openssl finds them.
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(format!(
                    "no system CA certificates found ({}): set tls_ca",
                    found
                        .errors
                        .first()
                        .map_or_else(|| "none installed".to_string(), |e| e.to_string())
                ));
            }
            found.certs
        }
    };
    let what = spec.tls_ca.as_ref().map_or_else(
        || "system CA bundle".to_string(),
        |p| format!("tls_ca {}", p.display()),
    );
    let mut builder = TlsConnector::builder();
    builder
        .disable_built_in_roots(true)
        .min_protocol_version(Some(Protocol::Tlsv12));
    let mut added = 0usize;
    for c in &certs {
        // Like rustls' add_parsable_certificates: a certificate OpenSSL cannot parse is
        // skipped; none at all is an error.
        if let Ok(cert) = Certificate::from_der(c.as_ref()) {
            builder.add_root_certificate(cert);
            added += 1;
        }
    }
    if added == 0 {
        return Err(format!("{what}: no usable CA certificate"));
    }
    let connector = builder
        .build()
        .map_err(|e| format!("{what}: cannot set up TLS: {e}"))?;
    Ok(TlsConfiguration::NativeConnector(connector))
}
