//! A throwaway certificate authority for tests of TLS (the nodes' mutual
//! TLS, Redis over TLS).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A throwaway CA and certificates signed by it, written as PEM files.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_pem = cert.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write ca");
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// `(cert, key)` paths of a certificate for loopback names; a name
    /// `node<N>` also gets node N's URI SAN, as `scripts/make-certs.sh` does.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue_for(name, &["localhost", "127.0.0.1"])
    }

    /// Like [`Self::issue`], naming only `sans` (DNS names or IP addresses).
    pub fn issue_for(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(id) = name.strip_prefix("node") {
            let uri = format!("{}{id}", deckhand::tls::NODE_URI_PREFIX);
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().expect("ia5 uri")));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}
