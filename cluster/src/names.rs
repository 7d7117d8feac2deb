//! The names a cluster uses in NATS: every stream, subject, bucket and header it touches.
//!
//! All of them derive from the cluster's name, so several Annals clusters can share one
//! NATS system.

/// The header that fences a writer: the stream's last sequence the publish builds on.
pub const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
/// The header that names a publish for JetStream's de-duplication of retries.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";
/// The key of the lease bucket that holds the writer's node id.
pub const LEASE_KEY: &str = "writer";

/// The JetStream stream that holds the log's commit groups.
pub fn log_stream(cluster: &str) -> String {
    format!("ANNALS_{}_LOG", cluster.to_ascii_uppercase())
}

/// The subject commit groups are published on.
pub fn log_subject(cluster: &str) -> String {
    format!("annals.{cluster}.log")
}

/// The subject the writer answers forwarded appends on.
pub fn append_subject(cluster: &str) -> String {
    format!("annals.{cluster}.append")
}

/// The key-value bucket that holds the write lease.
pub fn lease_bucket(cluster: &str) -> String {
    format!("annals_{cluster}_lease")
}

/// The key-value bucket that holds the subjects' keys (crypto-shredding).
pub fn keys_bucket(cluster: &str) -> String {
    format!("annals_{cluster}_keys")
}

/// Whether `name` can be a cluster name: it becomes part of subjects and stream names,
/// so only `[a-z0-9_-]`, 1 to 32 characters.
pub fn is_valid_cluster_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_cluster_name() {
        assert_eq!(log_stream("shop"), "ANNALS_SHOP_LOG");
        assert_eq!(log_subject("shop"), "annals.shop.log");
        assert_eq!(append_subject("shop"), "annals.shop.append");
        assert_eq!(lease_bucket("shop"), "annals_shop_lease");
        assert_eq!(keys_bucket("shop"), "annals_shop_keys");
        assert!(is_valid_cluster_name("shop-eu_1"));
        for bad in ["", "Shop", "a.b", "a b", "a*", &"x".repeat(33)] {
            assert!(!is_valid_cluster_name(bad), "{bad}");
        }
    }
}
