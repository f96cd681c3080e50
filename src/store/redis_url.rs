//! Redis addresses as Deckard's operators write them.
//!
//! A single Redis is a plain `redis://[user:password@]host:port[/db]` URL,
//! passed to the `redis` crate unchanged (it also reads `?protocol=`), or
//! `rediss://` for TLS, as Deckard (go-redis) reads them.
//!
//! A Redis Cluster is Deckard's own form (`DECKARD_CACHE_URI` with
//! `DECKARD_REDIS_CLUSTER_MODE=true`, parsed by go-redis's
//! `ParseClusterURL`): the URL's host is the first seed node and every
//! `addr=host:port` query parameter adds one more, all sharing the URL's
//! scheme and credentials, e.g.
//! `redis://node-1:6379?addr=node-2:6379&addr=node-3:6379`. A cluster has
//! no database number, so a path other than `/` or `/0` is refused, as is
//! any other query parameter (go-redis refuses unknown ones too), so a typo
//! is an error at start, not a silently ignored setting.
//!
//! `rediss://` is TLS, for every node of a cluster alike. The server's
//! certificate is checked against the system's roots (and
//! `SSL_CERT_FILE`, as Go's TLS does for Deckard) and the host name or IP
//! address in the URL; see `docs/deckard-compat.md`.
//!
//! Pure: no I/O, so every rule is unit-tested below.

/// Where the Redis store connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: the URL as written.
    Single(String),
    /// A Redis Cluster: one `redis://` URL per seed node, the first one the
    /// URL's own host.
    Cluster(Vec<String>),
}

/// `url` with its credentials (what lies between `://` and the last `@`)
/// replaced by `***`, for error messages and logs.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Whether the URL asks for TLS (`rediss://`).
pub fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The credentials of a URL (between `://` and the last `@`), if any.
pub fn userinfo(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    rest.rfind('@').map(|at| rest[..at].to_string())
}

/// Parses a store URL; `cluster` is the `store.cluster` switch. Errors show
/// the URL without its credentials.
pub fn parse(url: &str, cluster: bool) -> Result<RedisTarget, String> {
    let shown = redacted(url);
    parse_shown(url, &shown, cluster)
}

fn parse_shown(url: &str, shown: &str, cluster: bool) -> Result<RedisTarget, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{shown:?} is not a URL (expected redis://host:port)"))?;
    match scheme {
        "redis" | "rediss" => {}
        other => {
            return Err(format!(
                "{shown:?}: unknown scheme {other:?}; expected redis:// or rediss:// (TLS)"
            ))
        }
    }
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let mut seeds = Vec::new();
    let mut others = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("addr", addr)) => seeds.push(checked_addr(shown, addr)?),
            _ => others.push(pair),
        }
    }
    if !cluster {
        if !seeds.is_empty() {
            return Err(format!(
                "{shown:?} lists cluster nodes (addr=) but store.cluster is false; \
                 set store.cluster = true (DECKHAND_STORE_CLUSTER=true) as Deckard's \
                 DECKARD_REDIS_CLUSTER_MODE=true"
            ));
        }
        return Ok(RedisTarget::Single(url.to_string()));
    }
    if let Some(first) = others.first() {
        return Err(format!(
            "{shown:?}: unknown cluster URL parameter {first:?} (a cluster URL takes only addr=host:port)"
        ));
    }
    let (authority, path) = match authority_and_path.split_once('/') {
        Some((a, p)) => (a, p),
        None => (authority_and_path, ""),
    };
    if !(path.is_empty() || path == "0") {
        return Err(format!(
            "{shown:?}: a Redis Cluster has no database number (only db 0); drop /{path}"
        ));
    }
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let first = checked_addr(shown, host)?;
    let node = |addr: &str| match userinfo {
        Some(u) => format!("{scheme}://{u}@{addr}"),
        None => format!("{scheme}://{addr}"),
    };
    let mut nodes = vec![node(&first)];
    for seed in &seeds {
        let seed = node(seed);
        if !nodes.contains(&seed) {
            nodes.push(seed);
        }
    }
    Ok(RedisTarget::Cluster(nodes))
}

/// `host:port` with a non-empty host and a port in range (IPv6 in brackets).
fn checked_addr(shown: &str, addr: &str) -> Result<String, String> {
    let bad = || format!("{shown:?}: {addr:?} is not host:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty()
        || host.contains(['/', '@', '?', '&'])
        || host.contains(char::is_whitespace)
        || (host.contains(':') && !bracketed)
    {
        return Err(bad());
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_url_is_passed_as_written() {
        assert_eq!(
            parse("redis://127.0.0.1:6379/2", false),
            Ok(RedisTarget::Single("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            parse("redis://h:1/0?protocol=resp3", false),
            Ok(RedisTarget::Single("redis://h:1/0?protocol=resp3".into()))
        );
    }

    #[test]
    fn deckards_cluster_form_gives_every_seed_with_the_credentials() {
        assert_eq!(
            parse(
                "redis://node-1:6379?addr=node-2:6379&addr=node-3:6379",
                true
            ),
            Ok(RedisTarget::Cluster(vec![
                "redis://node-1:6379".into(),
                "redis://node-2:6379".into(),
                "redis://node-3:6379".into(),
            ]))
        );
        assert_eq!(
            parse("redis://u:p@a:1/?addr=b:2&addr=a:1", true),
            Ok(RedisTarget::Cluster(vec![
                "redis://u:p@a:1".into(),
                "redis://u:p@b:2".into(),
            ]))
        );
        assert_eq!(
            parse("redis://[::1]:7000/0", true),
            Ok(RedisTarget::Cluster(vec!["redis://[::1]:7000".into()]))
        );
    }

    #[test]
    fn tls_urls_keep_their_scheme_on_every_node() {
        assert_eq!(
            parse("rediss://u:p@a:1?addr=b:2", true),
            Ok(RedisTarget::Cluster(vec![
                "rediss://u:p@a:1".into(),
                "rediss://u:p@b:2".into(),
            ]))
        );
        assert_eq!(
            parse("rediss://a:1/0", false),
            Ok(RedisTarget::Single("rediss://a:1/0".into()))
        );
        assert!(is_tls("rediss://a:1") && !is_tls("redis://a:1"));
    }

    #[test]
    fn bad_urls_name_what_is_wrong() {
        let err = |url: &str, cluster: bool| parse(url, cluster).unwrap_err();
        assert!(err("redis://a:1?addr=b:2", false).contains("store.cluster"));
        assert!(err("redis://a:1/3", true).contains("no database number"));
        assert!(err("redis://a:1?addr=b", true).contains("\"b\" is not host:port"));
        assert!(err("redis://a:1?addr=b:0", true).contains("is not host:port"));
        assert!(err("redis://a:1?dial_timeout=3s", true).contains("dial_timeout"));
        assert!(err("redis://a", true).contains("is not host:port"));
        assert!(err("rediss://a:1/2", true).contains("no database number"));
        assert!(err("http://a:1", false).contains("unknown scheme"));
        assert!(err("a:1", false).contains("not a URL"));
        assert!(err("redis://a:1?addr=::1:2", true).contains("is not host:port"));
        assert!(err("redis://a:1?addr= b:2", true).contains("is not host:port"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = parse("redis://user:s3cret@a:1/4", true).unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("***@a:1"), "{e}");
        let e = parse("redis://:p@ss@a:1?addr=b", true).unwrap_err();
        assert!(!e.contains("p@ss"), "{e}");
        assert_eq!(redacted("redis://a:1/0"), "redis://a:1/0");
        assert_eq!(userinfo("redis://u:p@ss@a:1").as_deref(), Some("u:p@ss"));
        assert_eq!(userinfo("redis://a:1"), None);
    }
}
