//! [`ReadView`]: reads of one projection generation's rows (point lookups, prefix scans
//! and the merged scan of an index kept in parts), and the raw scans beneath them.

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, ReadOptions, Snapshot};
use serde::de::DeserializeOwned;

use super::{ReadModelStore, Row};
use crate::error::ProjectionError;
use crate::keys::{self, CF_DATA};

/// Up to `limit` rows whose keys start with `prefix` and sort after `after` (exclusive,
/// a full key), keys returned whole.
pub(super) fn scan_raw(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Row>, ProjectionError> {
    scan_at(db, cf, prefix, after, limit, None)
}

/// [`scan_raw`], reading the database as of `snapshot` when one is given.
fn scan_at(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    snapshot: Option<&Snapshot<'_>>,
) -> Result<Vec<Row>, ProjectionError> {
    let mut opts = ReadOptions::default();
    if let Some(snapshot) = snapshot {
        opts.set_snapshot(snapshot);
    }
    if let Some(end) = keys::prefix_end(prefix) {
        opts.set_iterate_upper_bound(end);
    }
    let start = match after {
        Some(after) if after >= prefix => after.to_vec(),
        _ => prefix.to_vec(),
    };
    let mut rows = Vec::new();
    for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        if after.is_some_and(|a| key.as_ref() <= a) {
            continue;
        }
        rows.push((key.into_vec(), value.into_vec()));
        if rows.len() >= limit {
            break;
        }
    }
    Ok(rows)
}

/// A reader over one projection generation. Keys are the projection's own keys, without
/// the keyspace prefix.
pub struct ReadView<'a> {
    pub(super) store: &'a ReadModelStore,
    pub(super) prefix: Vec<u8>,
}

impl ReadView<'_> {
    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self
            .store
            .db
            .get_pinned_cf(self.store.cf(CF_DATA), self.full_key(key))?
            .map(|v| v.to_vec()))
    }

    /// The JSON value stored under `key`.
    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ProjectionError> {
        match self
            .store
            .db
            .get_pinned_cf(self.store.cf(CF_DATA), self.full_key(key))?
        {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    /// Up to `limit` rows under any of `prefixes`, as one list ordered by what follows
    /// the prefix in each key (the suffix), after the suffix `after` (exclusive) when
    /// given; rows are returned keyed by their suffix. All prefixes are read from one
    /// snapshot, so a row that moves from one prefix to another while they are read is
    /// seen exactly once.
    ///
    /// This reads an index kept in parts as a whole: orders are indexed by status, each
    /// entry's suffix is the order's position, and all orders in placement order are the
    /// merge of the parts. Costs up to `limit` rows per prefix.
    pub fn scan_merged(
        &self,
        prefixes: &[Vec<u8>],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, ProjectionError> {
        let snapshot = self.store.db.snapshot();
        let mut rows = Vec::new();
        for prefix in prefixes {
            let full_prefix = self.full_key(prefix);
            let after = after.map(|suffix| [full_prefix.as_slice(), suffix].concat());
            let part = scan_at(
                &self.store.db,
                self.store.cf(CF_DATA),
                &full_prefix,
                after.as_deref(),
                limit,
                Some(&snapshot),
            )?;
            rows.extend(strip_keys(part, full_prefix.len()));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Up to `limit` rows whose keys start with `prefix`, in key order, after the key
    /// `after` (exclusive) when given: the building block of cursor pagination.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, ProjectionError> {
        let full_prefix = self.full_key(prefix);
        let after = after.map(|a| self.full_key(a));
        let rows = scan_raw(
            &self.store.db,
            self.store.cf(CF_DATA),
            &full_prefix,
            after.as_deref(),
            limit,
        )?;
        Ok(strip_keys(rows, self.prefix.len()).collect())
    }
}

/// `rows` with the first `len` bytes of every key cut off.
fn strip_keys(rows: Vec<Row>, len: usize) -> impl Iterator<Item = Row> {
    rows.into_iter().map(move |(mut key, value)| {
        key.drain(..len);
        (key, value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ReadModelTx;

    #[test]
    fn a_merged_scan_orders_the_parts_by_suffix_and_resumes_after_a_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReadModelStore::open(dir.path()).unwrap();
        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        for (key, value) in [
            ("a/3", "x"),
            ("a/1", "y"),
            ("b/2", "z"),
            ("b/4", "w"),
            ("c/0", "not asked for"),
        ] {
            tx.put(key, value);
        }
        tx.accept();
        store.write(tx.into_batch().unwrap()).unwrap();
        let view = store.view_generation("p", 1);
        let parts = [b"a/".to_vec(), b"b/".to_vec()];
        let suffixes = |rows: Vec<Row>| -> Vec<String> {
            rows.into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(
            suffixes(view.scan_merged(&parts, None, 10).unwrap()),
            ["1", "2", "3", "4"]
        );
        assert_eq!(
            suffixes(view.scan_merged(&parts, None, 3).unwrap()),
            ["1", "2", "3"]
        );
        assert_eq!(
            suffixes(view.scan_merged(&parts, Some(b"2"), 10).unwrap()),
            ["3", "4"]
        );
        assert_eq!(
            view.scan_merged(&parts, Some(b"1"), 1).unwrap(),
            [(b"2".to_vec(), b"z".to_vec())]
        );
    }
}
