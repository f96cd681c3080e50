//! Deckard's Redis key layout (DESIGN.md §3), plus the one key deckhand adds.
//!
//! For queue `q1` and prefix `deckard_v1`:
//!
//! | set | key |
//! |---|---|
//! | active pool | `deckard_v1:queue:{q1}` |
//! | processing | `deckard_v1:queue:{q1}:tmp` |
//! | ack lock / its restore scores | `deckard_v1:queue:{q1}:lock_ack`, `...:lock_ack:score` |
//! | nack lock / its restore scores | `deckard_v1:queue:{q1}:lock_nack`, `...:lock_nack:score` |
//! | deckhand's fence (highest epoch that wrote) | `deckard_v1:queue:{q1}:deckhand_fence` |
//!
//! Every key of a queue carries the hash tag `{q1}`, so all of them live in
//! one Redis Cluster slot and one Lua script may touch them together.

/// Deckard's smallest and largest scores.
pub const SCORE_MIN: f64 = 0.0;
pub const SCORE_MAX: f64 = 9_007_199_254_740_992.0; // 2^53

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    pub active: String,
    pub processing: String,
    pub lock_ack: String,
    pub lock_ack_score: String,
    pub lock_nack: String,
    pub lock_nack_score: String,
    pub fence: String,
}

impl QueueKeys {
    /// Deckard's six sets of the queue (not the fence), in layout order.
    pub fn sets(&self) -> [&str; 6] {
        [
            &self.active,
            &self.processing,
            &self.lock_ack,
            &self.lock_ack_score,
            &self.lock_nack,
            &self.lock_nack_score,
        ]
    }
}

/// Trims a configured prefix the way Deckard does (spaces and `:`).
pub fn normalize_prefix(prefix: &str) -> String {
    prefix
        .trim_matches(|c: char| c == ':' || c.is_whitespace())
        .to_string()
}

impl QueueKeys {
    /// The keys of `queue` under `prefix` (already normalized).
    pub fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:queue:{{{queue}}}");
        Self {
            processing: format!("{base}:tmp"),
            lock_ack: format!("{base}:lock_ack"),
            lock_ack_score: format!("{base}:lock_ack:score"),
            lock_nack: format!("{base}:lock_nack"),
            lock_nack_score: format!("{base}:lock_nack:score"),
            fence: format!("{base}:deckhand_fence"),
            active: base,
        }
    }
}

/// The `SCAN MATCH` pattern that finds every key of every queue (active
/// pools included, so a queue stays known while it holds messages at all).
pub fn discovery_pattern(prefix: &str) -> String {
    format!("{prefix}:queue:{{*}}*")
}

/// `SCAN` pattern for every queue's fence under `prefix`.
pub fn fence_pattern(prefix: &str) -> String {
    format!("{prefix}:queue:{{*}}:deckhand_fence")
}

/// The queue name inside a key of the layout, if the key belongs to it.
pub fn queue_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":queue:{")?;
    let end = rest.find('}')?;
    let queue = &rest[..end];
    // A name Deckard would reject (e.g. `a{b`, from a key another program
    // wrote) would fail every call: never adopt or list it.
    super::validate_queue_name(queue).ok()?;
    Some(queue)
}

/// The queue name inside the key of one of Deckard's four sets that make a
/// queue exist (active pool, `:tmp`, `:lock_ack`, `:lock_nack`); `None` for
/// the restore-score sets, deckhand's fence and anything else.
pub fn queue_of_set_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let queue = queue_of_key(prefix, key)?;
    let rest = key.strip_prefix(prefix)?.strip_prefix(":queue:{")?;
    let suffix = &rest[queue.len() + 1..];
    matches!(suffix, "" | ":tmp" | ":lock_ack" | ":lock_nack").then_some(queue)
}

/// Deckard's `queue` metrics label: the part before `::`, or the whole name.
pub fn queue_label(queue: &str) -> &str {
    queue.split_once("::").map_or(queue, |(prefix, _)| prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_deckards_layout_with_hash_tags() {
        let k = QueueKeys::new("deckard_v1", "q1");
        assert_eq!(k.active, "deckard_v1:queue:{q1}");
        assert_eq!(k.processing, "deckard_v1:queue:{q1}:tmp");
        assert_eq!(k.lock_ack, "deckard_v1:queue:{q1}:lock_ack");
        assert_eq!(k.lock_ack_score, "deckard_v1:queue:{q1}:lock_ack:score");
        assert_eq!(k.lock_nack, "deckard_v1:queue:{q1}:lock_nack");
        assert_eq!(k.lock_nack_score, "deckard_v1:queue:{q1}:lock_nack:score");
        assert_eq!(k.fence, "deckard_v1:queue:{q1}:deckhand_fence");
    }

    #[test]
    fn prefix_is_trimmed_and_queue_names_are_parsed_back() {
        assert_eq!(normalize_prefix(" deckard_v1: "), "deckard_v1");
        assert_eq!(
            queue_of_key("deckard_v1", "deckard_v1:queue:{a::b}:tmp"),
            Some("a::b")
        );
        assert_eq!(queue_of_key("deckard_v1", "deckard_v1:queue:{}:tmp"), None);
        assert_eq!(
            queue_of_key("deckard_v1", "deckard_v1:queue:{a{b}:lock_ack"),
            None,
            "a name with a brace is not a queue"
        );
        assert_eq!(queue_of_key("deckard_v1", "other:queue:{a}:tmp"), None);
        for (key, queue) in [
            ("deckard_v1:queue:{a}", Some("a")),
            ("deckard_v1:queue:{a}:tmp", Some("a")),
            ("deckard_v1:queue:{a}:lock_ack", Some("a")),
            ("deckard_v1:queue:{a}:lock_nack", Some("a")),
            ("deckard_v1:queue:{a}:lock_ack:score", None),
            ("deckard_v1:queue:{a}:deckhand_fence", None),
            ("deckard_v1:queue:{a}x", None),
        ] {
            assert_eq!(queue_of_set_key("deckard_v1", key), queue, "{key}");
        }
        assert_eq!(queue_label("orders::eu"), "orders");
        assert_eq!(queue_label("orders"), "orders");
    }
}
