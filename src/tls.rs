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
//!
//! # Which node sent an RPC
//!
//! A certificate from the cluster's CA lets its holder in, but says nothing
//! about which node it is; a heartbeat or hand-back names its sender in the
//! message. So a node's certificate carries its id as a URI SAN,
//! `deckhand://node/<id>` ([`NODE_URI_PREFIX`], made by
//! `scripts/make-certs.sh`), and with TLS on, every worker RPC (heartbeat,
//! hand-back, statistics) and every Raft RPC (append, vote, pre-vote,
//! snapshot, leader transfer) is refused with `PERMISSION_DENIED` unless the
//! id it claims is the one in the caller's certificate ([`SenderCheck`]).
//! A node refuses to start with a certificate that does not name its own id.
//! Operators' certificates name no node: they reach the admin API, never
//! act as a node. Without TLS nothing is checked: plaintext trusts the
//! network (the docs say to firewall `raft_addr`).
//!
//! Invariant: with TLS on, no RPC that names a sender reaches the
//! coordinator or openraft unless the caller's certificate names that
//! sender.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::raft::NodeId;

/// A node's certificate names it with one URI SAN `deckhand://node/<id>`.
pub const NODE_URI_PREFIX: &str = "deckhand://node/";

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
    #[error(
        "security.tls_cert: {path} names {found} but this is node {node_id}: a node's \
         certificate must carry the URI SAN {NODE_URI_PREFIX}{node_id} (scripts/make-certs.sh \
         node{node_id} makes one)"
    )]
    WrongNode {
        path: PathBuf,
        found: String,
        node_id: NodeId,
    },
}

impl TlsError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Invalid { key, .. } => key,
            TlsError::WrongNode { .. } => "security.tls_cert",
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

/// The node id a certificate names (see the module doc): `None` without
/// exactly one id in `deckhand://node/<id>` URI SANs, or if unparsable.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut named = cert
        .valid_uri_names()
        .filter_map(|uri| uri.strip_prefix(NODE_URI_PREFIX))
        .map(|id| id.parse::<NodeId>().ok());
    let first = named.next()??;
    named.all(|id| id == Some(first)).then_some(first)
}

/// Refuses to run node `node_id` with a certificate that names another
/// node or none: its peers would refuse every RPC it sends.
pub fn check_node_certificate(path: &Path, node_id: NodeId) -> Result<(), TlsError> {
    let cert = CertificateDer::from_pem_file(path).map_err(|_| TlsError::Invalid {
        key: "security.tls_cert",
        path: path.to_path_buf(),
        reason: "holds no PEM certificate that can be parsed",
    })?;
    match node_id_of(&cert) {
        Some(id) if id == node_id => Ok(()),
        found => Err(TlsError::WrongNode {
            path: path.to_path_buf(),
            found: found.map_or("no node id".to_string(), |id| format!("node {id}")),
            node_id,
        }),
    }
}

/// Why an RPC's claimed sender was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("the client certificate names no node (it claims node {claimed})")]
    NotANode { claimed: NodeId },
    #[error(
        "the client certificate is node {certificate}'s but the request claims node {claimed}"
    )]
    Mismatch {
        certificate: NodeId,
        claimed: NodeId,
    },
}

/// Whether `certs` (the caller's chain, its own certificate first) may
/// send an RPC as node `claimed`.
pub fn check_sender(
    certs: Option<&[CertificateDer<'_>]>,
    claimed: NodeId,
) -> Result<(), SenderError> {
    let own = certs
        .and_then(|c| c.first())
        .ok_or(SenderError::NoCertificate)?;
    match node_id_of(own) {
        Some(id) if id == claimed => Ok(()),
        Some(certificate) => Err(SenderError::Mismatch {
            certificate,
            claimed,
        }),
        None => Err(SenderError::NotANode { claimed }),
    }
}

/// The check every sender-naming RPC handler runs (module doc), on when the
/// node serves TLS.
#[derive(Debug, Clone)]
pub struct SenderCheck {
    tls: bool,
    /// Refusals are logged at warn at most once per [`REFUSAL_WARN_EVERY`]:
    /// a misconfigured or hostile peer retries many times a second, and one
    /// line per RPC would flood the log. Shared by the node's services.
    warnings: Arc<WarnLimiter>,
}

/// How often a refused sender is logged at warn level (with the count of
/// refusals logged at debug level in between).
pub const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

impl SenderCheck {
    pub fn new(tls: bool) -> Self {
        Self {
            tls,
            warnings: Arc::new(WarnLimiter::new(REFUSAL_WARN_EVERY)),
        }
    }

    /// `Ok` if TLS is off or the caller's certificate names `claimed`.
    pub fn check<T>(
        &self,
        request: &tonic::Request<T>,
        claimed: NodeId,
    ) -> Result<(), tonic::Status> {
        if !self.tls {
            return Ok(());
        }
        self.check_certs(request.peer_certs().as_deref().map(Vec::as_slice), claimed)
    }

    /// [`Self::check`] for a stream's messages: `certs` are the caller's,
    /// read once from the stream's opening request.
    pub fn check_certs(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        claimed: NodeId,
    ) -> Result<(), tonic::Status> {
        if !self.tls {
            return Ok(());
        }
        check_sender(certs, claimed).map_err(|e| {
            match self.warnings.allow(Instant::now()) {
                Some(suppressed) => tracing::warn!(
                    claimed,
                    error = %e,
                    suppressed,
                    "refused an RPC: the sender is not who it claims"
                ),
                None => tracing::debug!(claimed, error = %e, "refused an RPC"),
            }
            match e {
                SenderError::NoCertificate => tonic::Status::unauthenticated(e.to_string()),
                _ => tonic::Status::permission_denied(e.to_string()),
            }
        })
    }
}

/// Lets one warning through per period and counts the ones held back.
/// Invariant: `suppressed` counts exactly the refusals since the last
/// warning let through.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    /// When the last warning went out; `None` before the first.
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last warning)` when a warning may go out
    /// at `now`; `None` (and one more held back) otherwise.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut last = crate::locks::lock(&self.last);
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    #[test]
    fn refusal_warnings_are_limited_and_count_what_they_held_back() {
        let limiter = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(11)), None);
        // A clock that goes backwards holds warnings back; it never panics.
        assert_eq!(limiter.allow(t0), None);
    }

    fn cert_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".into()]).expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("ia5 uri")));
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn a_certificate_names_a_node_by_exactly_one_uri_san() {
        assert_eq!(node_id_of(&cert_with_uris(&["deckhand://node/3"])), Some(3));
        assert_eq!(node_id_of(&cert_with_uris(&[])), None, "an operator's");
        assert_eq!(
            node_id_of(&cert_with_uris(&["spiffe://x/y", "deckhand://node/7"])),
            Some(7),
            "other URIs are ignored"
        );
        assert_eq!(
            node_id_of(&cert_with_uris(&["deckhand://node/1", "deckhand://node/2"])),
            None,
            "two different ids name no node"
        );
        assert_eq!(node_id_of(&cert_with_uris(&["deckhand://node/x"])), None);
        assert_eq!(node_id_of(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn a_sender_must_be_the_node_its_certificate_names() {
        let node2 = [cert_with_uris(&["deckhand://node/2"])];
        let operator = [cert_with_uris(&[])];
        assert_eq!(check_sender(Some(&node2), 2), Ok(()));
        assert_eq!(
            check_sender(Some(&node2), 3),
            Err(SenderError::Mismatch {
                certificate: 2,
                claimed: 3
            })
        );
        assert_eq!(
            check_sender(Some(&operator), 2),
            Err(SenderError::NotANode { claimed: 2 })
        );
        assert_eq!(check_sender(None, 2), Err(SenderError::NoCertificate));
        assert_eq!(check_sender(Some(&[]), 2), Err(SenderError::NoCertificate));
    }

    #[test]
    fn a_node_refuses_a_certificate_of_another_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.subject_alt_names.push(SanType::URI(
            "deckhand://node/2".try_into().expect("ia5 uri"),
        ));
        let key = KeyPair::generate().expect("key");
        let path = dir.path().join("node2.pem");
        std::fs::write(&path, params.self_signed(&key).expect("cert").pem()).expect("write");
        check_node_certificate(&path, 2).expect("its own");
        let err = check_node_certificate(&path, 1).expect_err("another node's");
        let text = err.to_string();
        assert!(text.contains("names node 2 but this is node 1"), "{text}");
        assert!(text.contains("deckhand://node/1"), "{text}");
        assert_eq!(err.key(), "security.tls_cert");
    }
}
