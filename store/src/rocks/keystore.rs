//! The key store: one RocksDB database of subjects' data keys, for crypto-shredding.
//!
//! A subject (a customer) gets a random [`SubjectRef`] and a random 256-bit data key on its
//! first use; whoever seals personal data with the key (the application) names the subject
//! by its ref. Forgetting the subject deletes the key: what was sealed with it can no
//! longer be read by anyone, while every record that holds it stays as it was.
//!
//! Layout (one column family):
//! - `m/secret` → 32 random bytes: the key of the keyed hash that names subjects here;
//! - `m/checkpoint` → a position (u64 BE) its owner keeps here (how far the erasure
//!   records of the log were applied);
//! - `s/ ‖ blake3_keyed(secret, subject id)` → the subject's ref (16 bytes);
//! - `k/ ‖ ref` → the data key (32 bytes) ‖ the subject's keyed hash (32 bytes).
//!
//! Forgetting a subject deletes both of its entries in one synced batch, then flushes and
//! compacts the database, so the key leaves the files rather than waiting in an older one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use rocksdb::{DB, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const SECRET: &[u8] = b"m/secret";
const CHECKPOINT: &[u8] = b"m/checkpoint";
/// Past this many cached entries the caches start over: they speed up the customers seen
/// lately, and a miss costs one point read.
const CACHE_LIMIT: usize = 100_000;

/// The name of a subject in sealed values and erasure records: random, not derived from
/// the subject id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SubjectRef(pub [u8; 16]);

impl SubjectRef {
    /// A new random ref.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        Self(bytes)
    }

    /// The ref as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

/// Fills `bytes` from the operating system's generator.
pub fn fill_random(bytes: &mut [u8]) {
    // The operating system's generator does not fail on Linux once booted; a failure here
    // would mean no key can be made safely at all.
    getrandom::fill(bytes).expect("the operating system's random generator works");
}

/// A subject's ref and data key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SubjectKey {
    /// The ref sealed values name the subject by.
    pub subject_ref: SubjectRef,
    /// The data key.
    pub key: [u8; 32],
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The keys of a replicated log, kept once for every node (a cluster's key-value bucket):
/// a key is created there before any node seals with it, and removed there to forget its
/// subject. Each node's [`RocksKeyStore`] follows it ([`RocksKeyStore::insert`],
/// [`RocksKeyStore::forget_hashed`]).
pub trait SharedKeys: Send + Sync + std::fmt::Debug {
    /// Records `key` for the subject whose keyed hash is `subject`, unless a key is
    /// recorded for it already; returns the key in force (the first one recorded), durable
    /// on the shared store.
    fn create(
        &self,
        subject: [u8; 32],
        key: SubjectKey,
    ) -> BoxFuture<'_, Result<SubjectKey, StoreError>>;

    /// Removes the subject's key for every node.
    fn remove(&self, subject: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The key store of a node.
pub struct RocksKeyStore {
    db: DB,
    secret: [u8; 32],
    keys: RwLock<HashMap<SubjectRef, [u8; 32]>>,
    refs: RwLock<HashMap<[u8; 32], SubjectRef>>,
    /// Serialises key creation, so two first orders of one customer share one key.
    creating: Mutex<()>,
}

impl std::fmt::Debug for RocksKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKeyStore")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

/// Every key of a store, for a backup: hex strings, never the subject ids themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDump {
    /// The keyed-hash secret.
    pub secret: String,
    /// The keys.
    pub keys: Vec<DumpedKey>,
}

/// One subject's key in a [`KeyDump`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpedKey {
    /// The subject's ref.
    #[serde(rename = "ref")]
    pub subject_ref: String,
    /// The data key.
    pub key: String,
    /// The keyed hash of the subject id.
    pub subject: String,
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn key_entry(subject: &SubjectRef) -> Vec<u8> {
    [b"k/".as_slice(), &subject.0].concat()
}

fn subject_entry(hash: &[u8; 32]) -> Vec<u8> {
    [b"s/".as_slice(), hash].concat()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::KeyStore {
        reason: what.to_string(),
    }
}

fn unhex<const N: usize>(text: &str) -> Result<[u8; N], StoreError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| corrupt("a dumped key is not hex"))?;
    Ok(out)
}

impl RocksKeyStore {
    /// Opens (or creates) the key store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let secret = match db.get(SECRET)? {
            Some(bytes) => bytes
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("the secret is not 32 bytes"))?,
            None => {
                let mut secret = [0u8; 32];
                fill_random(&mut secret);
                db.put_opt(SECRET, secret, &synced())?;
                secret
            }
        };
        Ok(Self {
            db,
            secret,
            keys: RwLock::default(),
            refs: RwLock::default(),
            creating: Mutex::new(()),
        })
    }

    /// Creates a key store in `path` holding exactly the keys of `dump`.
    pub fn restore(path: &Path, dump: &KeyDump) -> Result<Self, StoreError> {
        if path.join("CURRENT").exists() {
            return Err(StoreError::Unsupported {
                operation: "restore a key store",
                reason: format!("{} already holds one", path.display()),
            });
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let mut batch = WriteBatch::default();
        batch.put(SECRET, unhex::<32>(&dump.secret)?);
        for entry in &dump.keys {
            let subject = SubjectRef(unhex::<16>(&entry.subject_ref)?);
            let key = unhex::<32>(&entry.key)?;
            let hash = unhex::<32>(&entry.subject)?;
            batch.put(key_entry(&subject), [key.as_slice(), &hash].concat());
            batch.put(subject_entry(&hash), subject.0);
        }
        db.write_opt(batch, &synced())?;
        drop(db);
        Self::open(path)
    }

    /// The keyed hash that names `subject` in this store (and in a cluster's shared keys).
    pub fn subject_hash(&self, subject: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.secret, subject.as_bytes()).as_bytes()
    }

    /// The subject's ref, if a key is held for it.
    pub fn ref_of(&self, subject: &str) -> Result<Option<SubjectRef>, StoreError> {
        let hash = self.subject_hash(subject);
        if let Some(found) = read(&self.refs).get(&hash) {
            return Ok(Some(*found));
        }
        let Some(bytes) = self.db.get_pinned(subject_entry(&hash))? else {
            return Ok(None);
        };
        let subject = SubjectRef(
            bytes
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("a ref is not 16 bytes"))?,
        );
        remember(&self.refs, hash, subject);
        Ok(Some(subject))
    }

    /// The data key of a ref, if it is still held.
    pub fn key_of(&self, subject: &SubjectRef) -> Result<Option<[u8; 32]>, StoreError> {
        if let Some(key) = read(&self.keys).get(subject) {
            return Ok(Some(*key));
        }
        let Some(bytes) = self.db.get_pinned(key_entry(subject))? else {
            return Ok(None);
        };
        let key: [u8; 32] = bytes
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| corrupt("a key is not 32 bytes"))?;
        remember(&self.keys, *subject, key);
        Ok(Some(key))
    }

    /// The subject's ref and key, created (and synced) on first use.
    pub fn key_for(&self, subject: &str) -> Result<(SubjectRef, [u8; 32]), StoreError> {
        if let Some(found) = self.ref_of(subject)?
            && let Some(key) = self.key_of(&found)?
        {
            return Ok((found, key));
        }
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = self.ref_of(subject)?
            && let Some(key) = self.key_of(&found)?
        {
            return Ok((found, key));
        }
        let hash = self.subject_hash(subject);
        let fresh = SubjectRef::random();
        let mut key = [0u8; 32];
        fill_random(&mut key);
        let mut batch = WriteBatch::default();
        batch.put(key_entry(&fresh), [key.as_slice(), &hash].concat());
        batch.put(subject_entry(&hash), fresh.0);
        // Synced before the sealed value can reach the log: an acknowledged event never
        // names a key a crash lost. Concurrent first uses share RocksDB's group commit.
        self.db.write_opt(batch, &synced())?;
        remember(&self.refs, hash, fresh);
        remember(&self.keys, fresh, key);
        Ok((fresh, key))
    }

    /// Deletes a subject's key and its entry, and pushes them out of the files. Returns
    /// whether the key was held.
    pub fn forget(&self, subject: &SubjectRef) -> Result<bool, StoreError> {
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = self.db.get(key_entry(subject))?;
        write(&self.keys).remove(subject);
        let Some(entry) = entry else {
            return Ok(false);
        };
        let hash: [u8; 32] = entry
            .get(32..64)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| corrupt("a key entry has no subject hash"))?;
        let mut batch = WriteBatch::default();
        batch.delete(key_entry(subject));
        batch.delete(subject_entry(&hash));
        self.db.write_opt(batch, &synced())?;
        write(&self.keys).remove(subject);
        write(&self.refs).remove(&hash);
        self.db.flush()?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(true)
    }

    /// The secret of the keyed hash that names subjects.
    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    /// Opens (or creates) the key store in `path` with the keyed-hash secret of the
    /// cluster it belongs to. A store that holds keys under another secret is refused:
    /// its subjects could not be found by their ids any more.
    pub fn open_with_secret(path: &Path, secret: [u8; 32]) -> Result<Self, StoreError> {
        let store = Self::open(path)?;
        if store.secret == secret {
            return Ok(store);
        }
        if store
            .db
            .prefix_iterator(b"k/")
            .next()
            .transpose()?
            .is_some_and(|(k, _)| k.starts_with(b"k/"))
        {
            return Err(StoreError::KeyStore {
                reason: "it holds keys under another secret than its cluster's".into(),
            });
        }
        store.db.put_opt(SECRET, secret, &synced())?;
        drop(store);
        Self::open(path)
    }

    /// Records a subject's key as the shared keys hold it (a node following its cluster).
    pub fn insert(&self, subject: [u8; 32], key: SubjectKey) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(
            key_entry(&key.subject_ref),
            [key.key.as_slice(), &subject].concat(),
        );
        batch.put(subject_entry(&subject), key.subject_ref.0);
        self.db.write_opt(batch, &synced())?;
        remember(&self.refs, subject, key.subject_ref);
        remember(&self.keys, key.subject_ref, key.key);
        Ok(())
    }

    /// Forgets the subject whose keyed hash is `subject`; returns whether a key was held.
    pub fn forget_hashed(&self, subject: [u8; 32]) -> Result<bool, StoreError> {
        let found = self
            .db
            .get_pinned(subject_entry(&subject))?
            .map(|bytes| <[u8; 16]>::try_from(bytes.as_ref()).map(SubjectRef));
        match found {
            Some(Ok(subject_ref)) => self.forget(&subject_ref),
            Some(Err(_)) => Err(corrupt("a ref is not 16 bytes")),
            None => Ok(false),
        }
    }

    /// The keyed hash of the subject a ref names, while its key is held.
    pub fn hash_of(&self, subject: &SubjectRef) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .db
            .get_pinned(key_entry(subject))?
            .and_then(|v| v.get(32..64).and_then(|h| <[u8; 32]>::try_from(h).ok())))
    }

    /// A position the key store keeps for its owner (how far the erasure records were
    /// applied), 0 when never set.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self
            .db
            .get_pinned(CHECKPOINT)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Records the position [`RocksKeyStore::checkpoint`] returns.
    pub fn set_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        Ok(self
            .db
            .put_opt(CHECKPOINT, position.to_be_bytes(), &synced())?)
    }

    /// Every key, for a backup.
    pub fn dump(&self) -> Result<KeyDump, StoreError> {
        let mut keys = Vec::new();
        for item in self.db.prefix_iterator(b"k/") {
            let (name, value) = item?;
            if !name.starts_with(b"k/") {
                break;
            }
            if name.len() != 18 || value.len() != 64 {
                return Err(corrupt("a key entry has the wrong length"));
            }
            keys.push(DumpedKey {
                subject_ref: hex::encode(&name[2..]),
                key: hex::encode(&value[..32]),
                subject: hex::encode(&value[32..]),
            });
        }
        Ok(KeyDump {
            secret: hex::encode(self.secret),
            keys,
        })
    }
}

fn read<K, V>(map: &RwLock<HashMap<K, V>>) -> std::sync::RwLockReadGuard<'_, HashMap<K, V>> {
    map.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<K, V>(map: &RwLock<HashMap<K, V>>) -> std::sync::RwLockWriteGuard<'_, HashMap<K, V>> {
    map.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember<K: std::hash::Hash + Eq, V>(map: &RwLock<HashMap<K, V>>, k: K, v: V) {
    let mut map = write(map);
    if map.len() >= CACHE_LIMIT {
        map.clear();
    }
    map.insert(k, v);
}
