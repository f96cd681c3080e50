//! Optional mutual TLS on `raft_addr` and `admin_addr`, and the admin token.
//!
//! With `[security] tls_cert`, `tls_key` and `tls_ca` set, both servers
//! present the node's certificate and **require** a client certificate
//! signed by `tls_ca`; the node dials its peers over TLS with the same
//! certificate. A node or client without a certificate from the cluster's
//! CA cannot connect, so it can neither send Raft messages nor call the
//! admin API. Server names are checked against the address dialled, so
//! node certificates carry every name and IP the peers use for them.
//!
//! `/metrics` stays plain HTTP (Prometheus scrapes it inside the network).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {path} {reason}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
}

impl TlsError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Invalid { key, .. } => key,
        }
    }
}

/// Server and client TLS settings built from one node's (or ctl's) files.
#[derive(Clone, Debug)]
pub struct Tls {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

fn read_pem(key: &'static str, path: &Path, marker: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN") || !text.contains(marker) {
        return Err(TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: match marker {
                "PRIVATE KEY" => "holds no PEM private key",
                _ => "holds no PEM certificate",
            },
        });
    }
    Ok(bytes)
}

impl Tls {
    /// Reads a certificate chain, its key and the CA bundle (all PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let cert = read_pem("security.tls_cert", cert, "CERTIFICATE")?;
        let key = read_pem("security.tls_key", key, "PRIVATE KEY")?;
        let ca = Certificate::from_pem(read_pem("security.tls_ca", ca, "CERTIFICATE")?);
        let identity = Identity::from_pem(cert, key);
        Ok(Self {
            server: ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(ca.clone()),
            client: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
        })
    }

    /// Client settings for `ctl`: the CA, and a client certificate if given.
    pub fn client_only(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<ClientTlsConfig, TlsError> {
        let ca = Certificate::from_pem(read_pem("--ca", ca, "CERTIFICATE")?);
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some((cert, key)) = identity {
            let cert = read_pem("--cert", cert, "CERTIFICATE")?;
            let key = read_pem("--key", key, "PRIVATE KEY")?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

/// Reads the admin token: the file's first line, trimmed; never empty.
pub fn read_token(path: &Path) -> Result<String, TlsError> {
    let key = "security.admin_token_file";
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: "is empty (the token is its first line)",
        });
    }
    Ok(token)
}
