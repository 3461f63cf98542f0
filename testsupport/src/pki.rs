//! A throw-away test PKI (rcgen): a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate (`dns-server.test`), all signed by the CA, written
//! as PEM files.

use std::path::{Path, PathBuf};

/// The files [`write_test_pki`] wrote.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// `ca.pem`: the CA certificate (trust anchor for both sides).
    pub ca: PathBuf,
    /// `server.pem` / `server.key`: for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `client.pem` / `client.key`: a client certificate (`dns-server.test`).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a new PKI into `dir`: `ca.pem`, `server.pem` + `server.key` (for `localhost` and
/// `127.0.0.1`) and `client.pem` + `client.key`, all signed by the CA.
pub fn write_test_pki(dir: &Path) -> PkiFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    // Every certificate has a subject of its own: with rcgen's default subject on all of
    // them, a leaf's subject equals its issuer's, and OpenSSL (the TLS of mqtts://) takes
    // it for a self-signed certificate.
    let named = |mut p: CertificateParams, cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p
    };
    let mut ca_params = named(
        CertificateParams::new(Vec::<String>::new()).expect("params"),
        "tapbus test CA",
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let skey = KeyPair::generate().expect("key");
    let server = named(
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params"),
        "localhost",
    )
    .signed_by(&skey, &ca)
    .expect("server cert");
    let ckey = KeyPair::generate().expect("key");
    let client = named(
        CertificateParams::new(vec!["dns-server.test".to_string()]).expect("params"),
        "dns-server.test",
    )
    .signed_by(&ckey, &ca)
    .expect("client cert");
    for (f, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", skey.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", ckey.serialize_pem()),
    ] {
        std::fs::write(dir.join(f), pem).expect("write pki file");
    }
    PkiFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// A test PKI in a temporary directory of its own (removed on drop).
#[derive(Debug)]
pub struct TestPki {
    pub files: PkiFiles,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_test_pki(dir.path());
        TestPki { files, dir }
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The text of one of the files (`"ca.pem"`, `"client.key"`, ...).
    pub fn read(&self, file: &str) -> String {
        let p = self.dir.path().join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files_for_every_role() {
        let pki = TestPki::generate();
        let f = &pki.files;
        for p in [&f.ca, &f.server_cert, &f.client_cert] {
            let t = std::fs::read_to_string(p).expect("read");
            assert!(
                t.starts_with("-----BEGIN CERTIFICATE-----"),
                "{}",
                p.display()
            );
        }
        for p in [&f.server_key, &f.client_key] {
            let t = std::fs::read_to_string(p).expect("read");
            assert!(t.contains("PRIVATE KEY-----"), "{}", p.display());
        }
        assert_ne!(pki.read("server.pem"), pki.read("client.pem"));
        assert_ne!(pki.read("ca.pem"), pki.read("server.pem"));
        // A second PKI is a different one.
        assert_ne!(TestPki::generate().read("ca.pem"), pki.read("ca.pem"));
    }
}
