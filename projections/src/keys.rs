//! Column families and key encodings of the read-model database, in one place.
//!
//! The read models live in their own RocksDB instance (`<data-dir>/read`), never in the
//! event log's. Each projection writes into a *keyspace*: the projection's name and a
//! generation number prefix every key it writes, so a rebuild can fill generation N+1 next
//! to the generation N that keeps serving, and dropping a generation is one range delete.

use annals_store::Position;

/// Read-model rows of every projection and generation: `keyspace_prefix ‖ user key`.
pub const CF_DATA: &str = "data";
/// Checkpoints, active generations, rebuild states, parked events, the format version.
pub const CF_META: &str = "meta";
/// Every column family, in the order they are opened.
pub const ALL_CFS: [&str; 2] = [CF_DATA, CF_META];

/// Version of the layout described here; a directory with a newer one is refused.
pub const FORMAT_VERSION: u8 = 1;
/// Meta key of the format version.
pub const FORMAT_KEY: &[u8] = b"format";

/// The generation a projection's keyspace was built as; bumped by every rebuild.
pub type Generation = u32;

/// Prefix of every key of one projection generation: `name ‖ 0x00 ‖ generation (BE u32)`.
/// Names never contain 0x00, so no prefix is a prefix of another projection's.
pub fn keyspace_prefix(name: &str, generation: Generation) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 5);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

/// The first key after every key that starts with `prefix` (for range deletes and upper
/// bounds); `None` when no such key exists (all bytes 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn meta_key(kind: &str, name: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(kind.len() + name.len() + 2 + suffix.len());
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

/// Meta key of the generation that serves a projection's readers (JSON `ActiveRecord`).
pub fn active_key(name: &str) -> Vec<u8> {
    meta_key("active", name, &[])
}

/// Meta key of the rebuild in progress of a projection, if any (JSON `RebuildRecord`).
pub fn rebuild_key(name: &str) -> Vec<u8> {
    meta_key("rebuild", name, &[])
}

/// Meta key of the checkpoint of one generation: the last position applied (BE u64).
pub fn checkpoint_key(name: &str, generation: Generation) -> Vec<u8> {
    meta_key("ckpt", name, &generation.to_be_bytes())
}

/// Meta key of a generation waiting to be dropped (written in the take-over's batch).
pub fn drop_key(name: &str, generation: Generation) -> Vec<u8> {
    meta_key("drop", name, &generation.to_be_bytes())
}

/// The generation named by a pending-drop key of `name` (`None` for any other key).
pub fn decode_drop_key(name: &str, key: &[u8]) -> Option<Generation> {
    let bytes = key.strip_prefix(drop_prefix(name).as_slice())?;
    Some(Generation::from_be_bytes(bytes.try_into().ok()?))
}

/// Prefix of every pending drop of a projection.
pub fn drop_prefix(name: &str) -> Vec<u8> {
    meta_key("drop", name, &[])
}

/// Meta key of a parked (dead-lettered) event: big-endian position, so they list in order.
pub fn parked_key(name: &str, position: Position) -> Vec<u8> {
    meta_key("parked", name, &position.0.to_be_bytes())
}

/// Prefix of every parked event of a projection.
pub fn parked_prefix(name: &str) -> Vec<u8> {
    meta_key("parked", name, &[])
}

/// Keys of a process manager's rows inside its projection keyspace (see
/// [`crate::process`]). Every key starts with a one-byte kind and ends with fixed-width
/// big-endian numbers, so a scan of one kind lists its rows in the order they are due.
pub mod process {
    use annals_store::{Position, Timestamp};

    /// Kind byte of an instance's state: `i ‖ instance`.
    pub const INSTANCE: u8 = b'i';
    /// Kind byte of a command waiting to be sent: `o ‖ position ‖ index`.
    pub const OUTBOX: u8 = b'o';
    /// Kind byte of a pending deadline: `d ‖ due ‖ instance ‖ 0x00 ‖ name`.
    pub const DEADLINE: u8 = b'd';
    /// Kind byte of a parked command: `p ‖ position ‖ index`.
    pub const PARKED: u8 = b'p';

    /// The key of an instance's state.
    pub fn instance(instance: &str) -> Vec<u8> {
        [&[INSTANCE][..], instance.as_bytes()].concat()
    }

    /// The key of the `index`-th command decided on the event at `position`, in the
    /// outbox (`kind` [`OUTBOX`]) or among the parked commands ([`PARKED`]).
    pub fn command(kind: u8, position: Position, index: u16) -> Vec<u8> {
        let mut key = Vec::with_capacity(11);
        key.push(kind);
        key.extend_from_slice(&position.0.to_be_bytes());
        key.extend_from_slice(&index.to_be_bytes());
        key
    }

    /// The position and index a command key names.
    pub fn decode_command(key: &[u8]) -> Option<(Position, u16)> {
        let position = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
        let index = u16::from_be_bytes(key.get(9..11)?.try_into().ok()?);
        Some((Position(position), index))
    }

    /// The key of a pending deadline. Due times are stored offset so that they sort as
    /// unsigned numbers (times before 1970 stay before later ones).
    pub fn deadline(due: Timestamp, instance: &str, name: &str) -> Vec<u8> {
        let mut key = deadline_until(due);
        key.extend_from_slice(instance.as_bytes());
        key.push(0);
        key.extend_from_slice(name.as_bytes());
        key
    }

    /// The prefix of every deadline due at `due`: the bound of a scan of the deadlines
    /// due up to then.
    pub fn deadline_until(due: Timestamp) -> Vec<u8> {
        let mut key = Vec::with_capacity(16);
        key.push(DEADLINE);
        key.extend_from_slice(&((due.0 as u64) ^ (1 << 63)).to_be_bytes());
        key
    }
}

/// Encodes a checkpoint value.
pub fn encode_position(position: Position) -> [u8; 8] {
    position.0.to_be_bytes()
}

/// Decodes a checkpoint value.
pub fn decode_position(bytes: &[u8]) -> Option<Position> {
    Some(Position(u64::from_be_bytes(bytes.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspaces_of_different_projections_never_nest() {
        let a = keyspace_prefix("orders", 1);
        let b = keyspace_prefix("orders2", 1);
        assert!(!b.starts_with(&a));
        assert!(!a.starts_with(&b));
        assert!(keyspace_prefix("orders", 2) > a);
    }

    #[test]
    fn drop_keys_round_trip_whatever_bytes_the_generation_has() {
        for generation in [1, 2, 256, 0x0100_0000, u32::MAX] {
            let key = drop_key("orders", generation);
            assert_eq!(decode_drop_key("orders", &key), Some(generation));
        }
        assert_eq!(decode_drop_key("other", &drop_key("orders", 1)), None);
    }

    #[test]
    fn process_keys_sort_by_due_time_and_position() {
        use annals_store::Timestamp;
        let early = process::deadline(Timestamp(-5), "b", "x");
        let late = process::deadline(Timestamp(7), "a", "x");
        assert!(early < late);
        assert!(late < process::deadline_until(Timestamp(8)));
        let key = process::command(process::OUTBOX, Position(258), 3);
        assert_eq!(process::decode_command(&key), Some((Position(258), 3)));
        assert!(key < process::command(process::OUTBOX, Position(259), 0));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}

/// Keys of the stream catalog ([`crate::catalog`]).
pub mod catalog {
    /// Kind byte of a stream's summary: `s ‖ stream id`, so streams sort by id and a
    /// prefix of ids is a prefix of keys.
    pub const STREAM: u8 = b's';
    /// Kind byte of the category index: `c ‖ category ‖ 0x00 ‖ stream id` → empty.
    pub const IN_CATEGORY: u8 = b'c';
    /// Kind byte of a category's summary: `k ‖ category`.
    pub const CATEGORY: u8 = b'k';

    /// The key of a stream's summary, or with a partial id the prefix of every stream id
    /// that starts with it.
    pub fn stream(id_prefix: &str) -> Vec<u8> {
        [&[STREAM][..], id_prefix.as_bytes()].concat()
    }

    /// The category index key of a stream, or with a partial id the prefix of the
    /// category's stream ids that start with it. Categories never hold 0x00 (stream ids
    /// are printable), so one category's keys never run into another's.
    pub fn in_category(category: &str, id_prefix: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(2 + category.len() + id_prefix.len());
        key.push(IN_CATEGORY);
        key.extend_from_slice(category.as_bytes());
        key.push(0);
        key.extend_from_slice(id_prefix.as_bytes());
        key
    }

    /// The key of a category's summary (with `""`, the prefix of all of them).
    pub fn category(category: &str) -> Vec<u8> {
        [&[CATEGORY][..], category.as_bytes()].concat()
    }
}
