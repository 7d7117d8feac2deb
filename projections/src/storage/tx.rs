//! [`ReadModelTx`]: what a projection handler writes through. It holds a batch's changes
//! in memory (typed values stay typed, a failed event's changes are undone), lets the next
//! batch read them while they are written, and turns them into one sorted `WriteBatch`
//! ([`batch_of`]).

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use rocksdb::WriteBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ReadModelStore, ReadView};
use crate::error::ProjectionError;
use crate::keys::CF_DATA;

/// A value a handler stored typed with [`ReadModelTx::put_typed`]: kept as it is until
/// the batch is committed, so the next event of the batch that touches the key does not
/// parse it again, and encoded to JSON once per batch. `Sync` because a batch's changes
/// are read by the next batch's handlers while a writer thread encodes them.
trait TypedValue: Any + Send + Sync {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any + Send + Sync> TypedValue for T {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A key's state as the batch has left it. The three deleted states differ in what the
/// commit writes, which depends on whether the database holds the key ("held").
enum Slot {
    /// Deleted, and the database holds the key or may hold it (the batch had not put it):
    /// the commit writes a tombstone.
    Tombstone,
    /// Deleted, and the database does not hold the key (the batch itself had put it as
    /// new, see [`ReadModelTx::put_known_new`]): the commit writes nothing for it.
    DeletedNotHeld,
    /// Deleted after the batch had put it, and whether the database holds the key is not
    /// known: the commit looks it up and writes a tombstone only if it is held.
    DeletedMaybeHeld,
    /// Put as bytes: the commit writes them.
    Bytes(Vec<u8>),
    /// Put typed: the commit writes it encoded as JSON.
    Typed(Box<dyn TypedValue>),
}

impl Slot {
    fn bytes(&self) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(match self {
            Slot::Tombstone | Slot::DeletedNotHeld | Slot::DeletedMaybeHeld => None,
            Slot::Bytes(bytes) => Some(bytes.clone()),
            Slot::Typed(value) => Some(value.encode()?),
        })
    }
}

/// One key's change in a batch, with what the batch learnt about the database.
pub(crate) struct Change {
    slot: Slot,
    /// Whether the database holds the key (`None`: not looked up).
    in_db: Option<bool>,
}

/// A batch's accepted changes, by key inside the generation's keyspace.
pub(crate) type Changes = HashMap<Vec<u8>, Change, foldhash::fast::RandomState>;

/// The keys an event changed, each with the batch's change before the event (`None`: the
/// batch had not changed the key), to restore if its handler fails. The keys are copied
/// into one buffer that every event of the batch reuses: a catch-up changes millions of
/// keys, and an undo almost never runs, so it must not cost an allocation per change.
#[derive(Default)]
struct Undo {
    keys: Vec<u8>,
    /// Where each key ends in `keys` (it starts where the one before ends).
    entries: Vec<(usize, Option<Change>)>,
}

impl Undo {
    fn push(&mut self, key: &[u8], before: Option<Change>) {
        self.keys.extend_from_slice(key);
        self.entries.push((self.keys.len(), before));
    }

    /// Whether the event has changed `key` already (an event changes a handful of keys).
    fn has(&self, key: &[u8]) -> bool {
        let mut start = 0;
        self.entries.iter().any(|(end, _)| {
            let found = &self.keys[start..*end] == key;
            start = *end;
            found
        })
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.entries.clear();
    }
}

/// What a projection handler writes through: reads see the handler's own writes (of this
/// event and of the earlier events of the batch), and nothing reaches the database until
/// the worker commits the whole batch together with the checkpoint.
///
/// Values stored with [`Self::put_typed`] stay typed in memory until the commit, where
/// they are encoded as JSON, once per key and batch: a read model row that many events of
/// a batch touch (a product's stock, a customer's statistics) is parsed and encoded once
/// per batch rather than once per event.
pub struct ReadModelTx<'a> {
    view: ReadView<'a>,
    /// Every change of the batch: those of the events applied successfully and those of
    /// the event being applied. One map, so a change is inserted once; sorted at commit.
    /// Hashed with foldhash rather than SipHash: keys come from our own handlers, not from
    /// clients, so there is no flooding to resist, and hashing runs for every change.
    changes: Changes,
    /// How to undo the changes of the event being applied (see [`Undo`]).
    undo: Undo,
    /// The previous batch's changes while a writer thread writes them (see
    /// [`Self::with_base`]): read beneath this batch's own changes and above the database.
    base: Option<Arc<Changes>>,
}

impl<'a> ReadModelTx<'a> {
    pub(crate) fn new(view: ReadView<'a>) -> Self {
        Self::with_base(view, None)
    }

    /// A batch that starts while the previous batch of the same generation (`base`) is
    /// still being written: its reads see `base` wherever `base` changed a key, so they
    /// see what the database will hold, whether or not that write has finished. The
    /// caller must not start the batch after this one before `base` is written.
    pub(crate) fn with_base(view: ReadView<'a>, base: Option<Arc<Changes>>) -> Self {
        Self {
            view,
            changes: HashMap::with_capacity_and_hasher(1024, Default::default()),
            undo: Undo::default(),
            base,
        }
    }

    /// The change this batch, or the batch beneath it, made to `key`.
    fn lookup(&self, key: &[u8]) -> Option<&Change> {
        self.changes
            .get(key)
            .or_else(|| self.base.as_deref()?.get(key))
    }

    /// The value under `key` as this batch has left it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        match self.lookup(key) {
            Some(change) => change.slot.bytes(),
            None => self.view.get(key),
        }
    }

    /// The JSON value under `key` as this batch has left it.
    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ProjectionError> {
        match self.lookup(key).map(|c| &c.slot) {
            None => self.view.get_json(key),
            Some(Slot::Tombstone | Slot::DeletedNotHeld | Slot::DeletedMaybeHeld) => Ok(None),
            Some(Slot::Bytes(bytes)) => Ok(Some(serde_json::from_slice(bytes)?)),
            Some(Slot::Typed(value)) => Ok(Some(serde_json::from_slice(&value.encode()?)?)),
        }
    }

    /// The value under `key` as this batch has left it, read as JSON from the database or
    /// taken as it is (cloned) when this batch stored it with [`Self::put_typed`].
    pub fn get_typed<T>(&self, key: &[u8]) -> Result<Option<T>, ProjectionError>
    where
        T: DeserializeOwned + Clone + 'static,
    {
        if let Some(Change {
            slot: Slot::Typed(value),
            ..
        }) = self.lookup(key)
            && let Some(value) = value.as_any().downcast_ref::<T>()
        {
            return Ok(Some(value.clone()));
        }
        self.get_json(key)
    }

    /// Records a change with one lookup of the key (this runs for every write of every
    /// event a projection applies); the key is copied into the undo buffer only for the
    /// event's first change of it, which is what an undo restores.
    fn set(&mut self, key: Vec<u8>, slot: Slot, in_db: Option<bool>) {
        match self.changes.entry(key) {
            Entry::Occupied(mut entry) => {
                // What the batch knows about the database stays true for the whole batch.
                let in_db = in_db.or(entry.get().in_db);
                let before = std::mem::replace(entry.get_mut(), Change { slot, in_db });
                if !self.undo.has(entry.key()) {
                    self.undo.push(entry.key(), Some(before));
                }
            }
            Entry::Vacant(entry) => {
                self.undo.push(entry.key(), None);
                entry.insert(Change { slot, in_db });
            }
        }
    }

    /// Stores `value` under `key`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.set(key.into(), Slot::Bytes(value.into()), None);
    }

    /// Stores `value` under a key the caller knows the database does not hold, such as an
    /// index entry named by the position of the event being applied. A later
    /// [`Self::delete`] of the key in the same batch then writes nothing and needs no
    /// lookup (an order placed and confirmed in one batch moves its status entries without
    /// a read).
    ///
    /// **Misuse leaves stale keys behind.** The hint is trusted, never checked: called for
    /// a key the database may already hold, a later delete of that key in the same batch
    /// writes no tombstone, so the old row stays in the read model, silently and for good
    /// (until a rebuild). Call it only for keys no earlier batch can have written; when in
    /// doubt, use [`Self::put`].
    pub fn put_known_new(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.set(key.into(), Slot::Bytes(value.into()), Some(false));
    }

    /// Stores `value` as JSON under `key`.
    pub fn put_json<T: Serialize>(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Result<(), ProjectionError> {
        let bytes = serde_json::to_vec(value)?;
        self.put(key, bytes);
        Ok(())
    }

    /// Stores `value` under `key`, kept typed until the batch is committed and written as
    /// JSON then (what [`Self::put_json`] would have written). The type must always
    /// serialize (plain data with derived `Serialize`): an encoding failure at the commit
    /// fails the whole batch, not just this event.
    pub fn put_typed<T>(&mut self, key: impl Into<Vec<u8>>, value: T)
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.set(key.into(), Slot::Typed(Box::new(value)), None);
    }

    /// Removes `key`.
    ///
    /// A key this batch itself had put (an index entry that moves several times within a
    /// batch: a product's low-stock entry, an order's status entries) usually is not in the
    /// database; then nothing is written for it instead of a tombstone. Unless the batch
    /// knows (see [`Self::put_known_new`]), the commit decides: it looks up every such key of the
    /// batch at once, on the writer's thread rather than the handlers', once the batches
    /// before are written. A failed lookup writes the tombstone.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        let (put_here, in_db) = match self.changes.get(&key) {
            Some(change) => (
                matches!(
                    change.slot,
                    Slot::Bytes(_) | Slot::Typed(_) | Slot::DeletedMaybeHeld
                ),
                change.in_db,
            ),
            None => (false, None),
        };
        let slot = match (in_db, put_here) {
            (Some(false), _) => Slot::DeletedNotHeld,
            (Some(true), _) | (None, false) => Slot::Tombstone,
            (None, true) => Slot::DeletedMaybeHeld,
        };
        self.set(key, slot, in_db);
    }

    /// Keeps the changes of the event just applied.
    pub(crate) fn accept(&mut self) {
        self.undo.clear();
    }

    /// Drops the changes of an event whose handler failed.
    pub(crate) fn discard(&mut self) {
        let Undo { keys, entries } = &mut self.undo;
        let mut start = 0;
        for (end, before) in entries.drain(..) {
            let key = &keys[start..end];
            start = end;
            match before {
                Some(change) => self.changes.insert(key.to_vec(), change),
                None => self.changes.remove(key),
            };
        }
        keys.clear();
    }

    /// The accepted changes (those of an event being applied are dropped).
    pub(crate) fn into_changes(mut self) -> Changes {
        self.discard();
        self.changes
    }

    /// Turns the accepted changes into a write batch (see [`batch_of`]).
    pub(super) fn into_batch(self) -> Result<WriteBatch, ProjectionError> {
        let store = self.view.store;
        let prefix = self.view.prefix.clone();
        batch_of(store, &prefix, &self.into_changes())
    }
}

/// A batch's changes as a write batch for the keyspace `prefix`, in key order (the
/// memtable's skip list inserts a sorted batch fastest). Takes the changes by reference,
/// so the next batch's handlers can read them while a writer thread encodes them.
///
/// Looks up the keys the batch deleted without knowing whether the database holds them
/// ([`Slot::DeletedMaybeHeld`]), so it must run once the batches before this one are written.
pub(super) fn batch_of(
    store: &ReadModelStore,
    prefix: &[u8],
    changes: &Changes,
) -> Result<WriteBatch, ProjectionError> {
    // Sorting tens of thousands of keys scattered over the heap is mostly cache misses:
    // each key is sorted by its first 16 bytes held inline, and only keys that share
    // those are compared in full.
    let mut sorted: Vec<(u128, &[u8], &Slot)> = changes
        .iter()
        .filter(|(_, c)| !matches!(c.slot, Slot::DeletedNotHeld))
        .map(|(k, c)| (key_head(k), k.as_slice(), &c.slot))
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let cf = store.cf(CF_DATA);
    let full_key = |key: &[u8]| [prefix, key].concat();
    // One sorted multi-get for every unsure delete (a product's low-stock entry moves with
    // each of its events: one per product event). Made here, these lookups cost the
    // handlers' thread nothing, and a key deleted many times is looked up once.
    let unsure: Vec<Vec<u8>> = sorted
        .iter()
        .filter(|(_, _, slot)| matches!(slot, Slot::DeletedMaybeHeld))
        .map(|(_, key, _)| full_key(key))
        .collect();
    let mut held = store
        .db
        .batched_multi_get_cf(cf, &unsure, true)
        .into_iter()
        .map(|found| !matches!(found, Ok(None)));
    let estimate: usize = sorted
        .iter()
        .map(|(_, key, slot)| {
            let value = match slot {
                Slot::Bytes(v) => v.len(),
                // A guess: a typed row's JSON is not known before it is encoded.
                Slot::Typed(_) => 256,
                Slot::Tombstone | Slot::DeletedNotHeld | Slot::DeletedMaybeHeld => 0,
            };
            prefix.len() + key.len() + value + 16
        })
        .sum();
    // Reserved once: growing a batch of megabytes by doubling copied it and touched
    // fresh pages at every step.
    let mut batch = WriteBatch::with_capacity_bytes(estimate);
    let mut full = prefix.to_vec();
    let prefix_len = full.len();
    for (_, key, slot) in sorted {
        full.truncate(prefix_len);
        full.extend_from_slice(key);
        match slot {
            Slot::Tombstone => batch.delete_cf(cf, &full),
            Slot::DeletedMaybeHeld => {
                if held.next().unwrap_or(true) {
                    batch.delete_cf(cf, &full);
                }
            }
            Slot::DeletedNotHeld => {}
            Slot::Bytes(v) => batch.put_cf(cf, &full, v),
            Slot::Typed(value) => batch.put_cf(cf, &full, value.encode()?),
        }
    }
    Ok(batch)
}

/// The first 16 bytes of `key`, big-endian and zero-padded: comparing two heads orders
/// two keys as comparing the keys does, except that equal heads need the whole keys.
fn key_head(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::keys;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Stock {
        units: u64,
    }

    #[test]
    fn a_failed_event_leaves_the_batch_as_the_events_before_it_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReadModelStore::open(dir.path()).unwrap();
        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        tx.put_typed("s", Stock { units: 1 });
        tx.put("gone", b"x".to_vec());
        tx.accept();
        // The failing event changes, overwrites, deletes and adds keys, then is dropped.
        tx.put_typed("s", Stock { units: 2 });
        tx.put_typed("s", Stock { units: 3 });
        tx.delete("gone");
        tx.put_json("new", &7u64).unwrap();
        tx.discard();
        assert_eq!(
            tx.get_typed::<Stock>(b"s").unwrap(),
            Some(Stock { units: 1 })
        );
        assert_eq!(tx.get(b"gone").unwrap(), Some(b"x".to_vec()));
        assert_eq!(tx.get(b"new").unwrap(), None);
        // A typed value reads as JSON too, and is written as JSON.
        assert_eq!(
            tx.get_json::<Stock>(b"s").unwrap(),
            Some(Stock { units: 1 })
        );
        tx.put_typed("s", Stock { units: 4 });
        tx.accept();
        store.write(tx.into_batch().unwrap()).unwrap();
        let view = store.view_generation("p", 1);
        assert_eq!(view.get(b"s").unwrap(), Some(br#"{"units":4}"#.to_vec()));
        assert_eq!(view.get(b"gone").unwrap(), Some(b"x".to_vec()));
        assert_eq!(view.get(b"new").unwrap(), None);
    }

    /// A read-model database whose generation 1 of `p` holds `key` = `value`.
    fn store_holding(key: &str, value: &[u8]) -> (tempfile::TempDir, ReadModelStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ReadModelStore::open(dir.path()).unwrap();
        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        tx.put(key, value.to_vec());
        tx.accept();
        store.write(tx.into_batch().unwrap()).unwrap();
        (dir, store)
    }

    #[test]
    fn deleting_a_key_the_batch_put_writes_a_tombstone_only_if_the_database_holds_it() {
        let (_dir, store) = store_holding("old", b"1");

        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        // Put then deleted within the batch, never in the database: nothing to write.
        tx.put("new", b"2".to_vec());
        tx.delete("new");
        assert_eq!(tx.get(b"new").unwrap(), None);
        // In the database, put again by the batch, then deleted: the tombstone stays.
        tx.delete("old");
        tx.put("old", b"3".to_vec());
        tx.delete("old");
        assert_eq!(tx.get(b"old").unwrap(), None);
        // Put, deleted, put again: the last put wins.
        tx.put("again", b"4".to_vec());
        tx.delete("again");
        tx.put("again", b"5".to_vec());
        tx.accept();
        // A failed event's delete is undone with its knowledge.
        tx.delete("again");
        tx.discard();
        assert_eq!(tx.get(b"again").unwrap(), Some(b"5".to_vec()));
        let batch = tx.into_batch().unwrap();
        assert_eq!(
            batch.len(),
            2,
            "a tombstone for `old` and a put for `again`"
        );
        store.write(batch).unwrap();
        let view = store.view_generation("p", 1);
        assert_eq!(view.get(b"old").unwrap(), None);
        assert_eq!(view.get(b"new").unwrap(), None);
        assert_eq!(view.get(b"again").unwrap(), Some(b"5".to_vec()));
    }

    #[test]
    fn a_key_put_as_new_is_deleted_within_the_batch_without_a_lookup() {
        let (_dir, store) = store_holding("held", b"1");

        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        tx.put_known_new("fresh", b"2".to_vec());
        tx.delete("fresh");
        assert_eq!(tx.get(b"fresh").unwrap(), None);
        // The hint is trusted rather than checked: misused on a key the database holds,
        // the delete writes nothing either, which shows no lookup was made.
        tx.put_known_new("held", b"3".to_vec());
        tx.delete("held");
        tx.accept();
        // A key put as new and kept is written.
        tx.put_known_new("kept", b"4".to_vec());
        tx.accept();
        let batch = tx.into_batch().unwrap();
        assert_eq!(batch.len(), 1, "only the put of `kept`");
        store.write(batch).unwrap();
        let view = store.view_generation("p", 1);
        assert_eq!(view.get(b"fresh").unwrap(), None);
        assert_eq!(view.get(b"held").unwrap(), Some(b"1".to_vec()));
        assert_eq!(view.get(b"kept").unwrap(), Some(b"4".to_vec()));
    }

    #[test]
    fn a_batch_over_one_still_being_written_reads_and_deletes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReadModelStore::open(dir.path()).unwrap();
        let prefix = keys::keyspace_prefix("p", 1);
        // Batch N: puts `k` and `typed`; handled, not written yet.
        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        tx.put("k", b"1".to_vec());
        tx.put_typed("typed", Stock { units: 7 });
        tx.accept();
        let base = Arc::new(tx.into_changes());

        // Batch N + 1 runs while N is written: it reads N's values...
        let mut tx = ReadModelTx::with_base(store.view_generation("p", 1), Some(base.clone()));
        assert_eq!(tx.get(b"k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            tx.get_typed::<Stock>(b"typed").unwrap(),
            Some(Stock { units: 7 })
        );
        // ...and a key it puts and deletes again is one the database will hold once N is
        // written, so the delete must be a tombstone, although the database has no `k`
        // yet.
        tx.put("k", b"2".to_vec());
        tx.delete("k");
        tx.accept();
        store
            .write(batch_of(&store, &prefix, &base).unwrap())
            .unwrap();
        let batch = tx.into_batch().unwrap();
        assert_eq!(batch.len(), 1, "the tombstone of `k`");
        store.write(batch).unwrap();
        let view = store.view_generation("p", 1);
        assert_eq!(view.get(b"k").unwrap(), None);
        assert_eq!(
            view.get_json::<Stock>(b"typed").unwrap(),
            Some(Stock { units: 7 })
        );
    }

    #[test]
    fn changes_of_an_event_not_accepted_never_reach_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReadModelStore::open(dir.path()).unwrap();
        let mut tx = ReadModelTx::new(store.view_generation("p", 1));
        tx.put_typed("a", Stock { units: 1 });
        tx.accept();
        tx.put_typed("b", Stock { units: 2 });
        store.write(tx.into_batch().unwrap()).unwrap();
        let view = store.view_generation("p", 1);
        assert!(view.get(b"a").unwrap().is_some());
        assert_eq!(view.get(b"b").unwrap(), None);
    }
}
