//! Throwaway TLS material, generated at test time with `rcgen` (no `openssl` CLI needed).
//!
//! One [`TlsMaterial`] holds, as PEM files in its own temporary directory:
//! - a CA, and signed by it a server certificate for `localhost`, `127.0.0.1` and `::1`
//!   and a client certificate (for `tls-auth-clients yes`);
//! - an unrelated second CA with its own client certificate, for "wrong CA" tests: a
//!   client trusting it must reject the server, and a server requiring client
//!   certificates must reject its client certificate.
//!
//! Keys are ECDSA P-256, which both OpenSSL (Redis, `redis-cli`) and rustls accept.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// PEM files for TLS tests; the directory is removed when this is dropped, so keep it
/// alive (e.g. in an `Arc`) as long as a server uses it.
#[derive(Debug)]
pub struct TlsMaterial {
    dir: TempDir,
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca_cert: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

impl TlsMaterial {
    /// Generates both CAs and all certificates. Takes milliseconds.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tflock-testkit-tls-")
            .tempdir()
            .expect("cannot create a temporary directory for TLS material");
        let write = |name: &str, pem: &str| -> PathBuf {
            let path = dir.path().join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        };

        let (ca_pem, ca) = certificate_authority("tflock testkit CA");
        let (server_pem, server_key) = leaf(&ca, "localhost", Role::Server);
        let (client_pem, client_key) = leaf(&ca, "tflock-testkit-client", Role::Client);
        let (other_ca_pem, other_ca) = certificate_authority("tflock testkit unrelated CA");
        let (other_client_pem, other_client_key) =
            leaf(&other_ca, "tflock-testkit-stranger", Role::Client);

        Self {
            ca_cert: write("ca.crt", &ca_pem),
            server_cert: write("server.crt", &server_pem),
            server_key: write("server.key", &server_key),
            client_cert: write("client.crt", &client_pem),
            client_key: write("client.key", &client_key),
            other_ca_cert: write("other-ca.crt", &other_ca_pem),
            other_client_cert: write("other-client.crt", &other_client_pem),
            other_client_key: write("other-client.key", &other_client_key),
            dir,
        }
    }

    /// The directory holding every file below.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The CA that signed the server and client certificates.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }
    /// Server certificate; subject alternative names `localhost`, `127.0.0.1`, `::1`.
    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }
    pub fn server_key(&self) -> &Path {
        &self.server_key
    }
    /// Client certificate signed by [`ca_cert`](Self::ca_cert).
    pub fn client_cert(&self) -> &Path {
        &self.client_cert
    }
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }
    /// An unrelated CA: it signed neither the server nor the client certificate.
    pub fn other_ca_cert(&self) -> &Path {
        &self.other_ca_cert
    }
    /// A client certificate signed by [`other_ca_cert`](Self::other_ca_cert), which a
    /// server trusting only [`ca_cert`](Self::ca_cert) must reject.
    pub fn other_client_cert(&self) -> &Path {
        &self.other_client_cert
    }
    pub fn other_client_key(&self) -> &Path {
        &self.other_client_key
    }
}

enum Role {
    Server,
    Client,
}

/// A self-signed CA: its PEM certificate and the issuer that signs leaves with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("no names to validate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generating a CA key");
    let cert = params.self_signed(&key).expect("self-signing the CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `ca`: its PEM and its PEM private key.
fn leaf(ca: &Issuer<'static, KeyPair>, name: &str, role: Role) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("a valid DNS name");
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    match role {
        Role::Server => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names.extend([
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ]);
        }
        Role::Client => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let key = KeyPair::generate().expect("generating a leaf key");
    let cert = params.signed_by(&key, ca).expect("signing a leaf");
    (cert.pem(), key.serialize_pem())
}
