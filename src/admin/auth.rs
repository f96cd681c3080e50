//! The optional bearer token that every admin mutation must carry.
//!
//! Reads (`Status`, `Members`, `Shards`, `Tasks`), health and reflection
//! stay open; every mutation checks `authorization: Bearer <token>` when a
//! token is configured. The comparison takes the same time wherever the
//! first differing byte is, so response times do not reveal a prefix.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;

/// gRPC metadata key of the token (HTTP's `Authorization` header).
pub const AUTHORIZATION: &str = "authorization";

/// The configured token, if any.
#[derive(Clone, Default)]
pub struct Auth {
    /// `None`: mutations are open (no token configured).
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token itself.
        f.debug_struct("Auth")
            .field("token_set", &self.token.is_some())
            .finish()
    }
}

impl Auth {
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
        }
    }

    /// `Ok` if no token is configured or `metadata` carries it.
    pub fn check(&self, metadata: &MetadataMap, what: &str) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(value) = metadata.get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(format!(
                "{what} needs the admin token: pass --token or set DECKHAND_TOKEN"
            )));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), expected) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "{what}: the admin token is wrong"
            )))
        }
    }
}

/// Equality whose running time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(x ^ y));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(AUTHORIZATION, value.parse().expect("ascii"));
        m
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn mutations_need_the_bearer_token_when_one_is_set() {
        let open = Auth::new(None);
        assert!(open.check(&MetadataMap::new(), "drain").is_ok());
        let auth = Auth::new(Some("s3cret".into()));
        let missing = auth.check(&MetadataMap::new(), "drain").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(auth.check(&with("Bearer wrong"), "drain").is_err());
        assert!(
            auth.check(&with("s3cret"), "drain").is_err(),
            "scheme required"
        );
        assert!(auth.check(&with("Bearer s3cret"), "drain").is_ok());
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
