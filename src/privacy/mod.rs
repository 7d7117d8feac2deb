//! Personal data and its erasure by crypto-shredding.
//!
//! A personal field (for the reference domain, an order's `customer_id`) is stored
//! **sealed**: encrypted with XChaCha20-Poly1305 under a data key of its subject (the
//! customer), as the JSON string `pii:1:<base64url(ref ‖ nonce ‖ ciphertext)>`. The hash
//! chain covers the sealed text, so forgetting a subject deletes only its key: every record
//! stays and verifies, and the field reads as [`ERASED`] everywhere from then on.
//!
//! - A subject is named in sealed values and in the log by a [`SubjectRef`]: 16 random
//!   bytes that say nothing of the person. The key store maps a keyed hash of the subject
//!   id to its ref, and the ref to its key, so it holds no subject id in clear either.
//! - Read models keep the sealed text and index by ref ([`index_id`]); the API reveals
//!   through the key store ([`Privacy::reveal`]) when it answers. Nothing needs a rebuild
//!   after an erasure.
//! - Exports and webhooks carry the stored (sealed) form: a copy that leaves the node never
//!   holds personal data in clear, and the key that could open it is gone once the subject
//!   is forgotten.
//!
//! The key store is its own RocksDB database, `<data-dir>/keys`. A key is written (synced)
//! before the first value sealed with it can be appended, so an acknowledged event never
//! names a key that a crash lost.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::Value;

pub use annals_store::{KeyDump, RocksKeyStore, SharedKeys, SubjectKey, SubjectRef, fill_random};

/// What a personal field reads as once its subject is forgotten.
pub const ERASED: &str = "[erased]";

/// The prefix of a sealed value (format 1).
pub const SEALED_PREFIX: &str = "pii:1:";

const NONCE_LEN: usize = 24;

/// Why a personal-data operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// No key is held for this subject: it never had personal data here, or it was
    /// forgotten already.
    #[error("no personal data is held for this subject")]
    UnknownSubject,
    /// The subject id is empty.
    #[error("the subject id must not be empty")]
    EmptySubject,
    /// Erasure needs a key store, which this node does not have (sealing is off).
    #[error("personal data is not sealed on this node: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The key store could not be read or written, or is damaged.
    #[error(transparent)]
    Store(#[from] annals_store::StoreError),
}

/// Seals personal fields for the command side and reveals them for the API.
#[derive(Clone, Debug)]
pub struct Privacy {
    keys: Option<Arc<RocksKeyStore>>,
    /// A cluster's keys, which the local key store follows: keys are created and removed
    /// there.
    shared: Option<Arc<dyn SharedKeys>>,
}

impl Privacy {
    /// Sealing over a node's own key store.
    pub fn new(keys: Arc<RocksKeyStore>) -> Self {
        Self {
            keys: Some(keys),
            shared: None,
        }
    }

    /// Sealing over a cluster's keys, followed by this node's key store.
    pub fn replicated(keys: Arc<RocksKeyStore>, shared: Arc<dyn SharedKeys>) -> Self {
        Self {
            keys: Some(keys),
            shared: Some(shared),
        }
    }

    /// No sealing: personal fields are stored in clear, and sealed values read as erased.
    pub fn disabled() -> Self {
        Self {
            keys: None,
            shared: None,
        }
    }

    /// The cluster's keys, when the node belongs to one.
    pub fn shared(&self) -> Option<&Arc<dyn SharedKeys>> {
        self.shared.as_ref()
    }

    /// The key store, when sealing is on.
    pub fn keys(&self) -> Option<&Arc<RocksKeyStore>> {
        self.keys.as_ref()
    }

    /// Seals `value` as personal data of `subject`, creating the subject's key on its first
    /// use (in a cluster, on the cluster's shared keys first). With sealing off, returns
    /// `value` as it is.
    pub async fn seal(&self, subject: &str, value: &str) -> Result<String, PrivacyError> {
        let Some(keys) = &self.keys else {
            return Ok(value.to_string());
        };
        if subject.is_empty() {
            return Err(PrivacyError::EmptySubject);
        }
        let held = match keys.ref_of(subject)? {
            Some(found) => keys.key_of(&found)?.map(|key| (found, key)),
            None => None,
        };
        let (subject_ref, key) = match (held, &self.shared) {
            (Some(held), _) => held,
            (None, None) => keys.key_for(subject)?,
            (None, Some(shared)) => {
                {
                    let hash = keys.subject_hash(subject);
                    let mut key = [0u8; 32];
                    fill_random(&mut key);
                    let fresh = SubjectKey {
                        subject_ref: SubjectRef::random(),
                        key,
                    };
                    // The cluster's copy first: two nodes sealing for a new subject at
                    // once agree on the first key recorded.
                    let held = shared.create(hash, fresh).await?;
                    keys.insert(hash, held)?;
                    (held.subject_ref, held.key)
                }
            }
        };
        Ok(seal_with(&subject_ref, &key, value))
    }

    /// The clear text of a field: a sealed value opened with its key, [`ERASED`] when the
    /// key is gone, anything else as it is.
    pub fn reveal<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(sealed) = Sealed::parse(text) else {
            return Cow::Borrowed(text);
        };
        let key = self
            .keys
            .as_ref()
            .and_then(|keys| keys.key_of(&sealed.subject).ok().flatten());
        match key.and_then(|key| sealed.open(&key)) {
            Some(clear) => Cow::Owned(clear),
            None => Cow::Borrowed(ERASED),
        }
    }

    /// Reveals every sealed string inside a JSON value, in place.
    pub fn reveal_json(&self, value: &mut Value) {
        match value {
            Value::String(s) if s.starts_with(SEALED_PREFIX) => {
                let clear = self.reveal(s).into_owned();
                *s = clear;
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.reveal_json(v)),
            Value::Object(members) => members.values_mut().for_each(|v| self.reveal_json(v)),
            _ => {}
        }
    }

    /// The ref a subject's personal data is sealed under, if any is held.
    pub fn subject_ref(&self, subject: &str) -> Result<Option<SubjectRef>, PrivacyError> {
        match &self.keys {
            Some(keys) => Ok(keys.ref_of(subject)?),
            None => Ok(None),
        }
    }
}

/// The id a read model files a personal field under: the subject's ref for a sealed
/// value (so the index holds no personal data), the text itself otherwise.
pub fn index_id(text: &str) -> Cow<'_, str> {
    match Sealed::parse(text) {
        Some(sealed) => Cow::Owned(format!("~{}", sealed.subject.to_hex())),
        None => Cow::Borrowed(text),
    }
}

/// The id a read model files `subject`'s data under, given its ref (see [`index_id`]).
pub fn index_id_of(subject: &SubjectRef) -> String {
    format!("~{}", subject.to_hex())
}

/// A parsed sealed value.
struct Sealed {
    subject: SubjectRef,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Sealed {
    fn parse(text: &str) -> Option<Self> {
        let body = text.strip_prefix(SEALED_PREFIX)?;
        let bytes = B64.decode(body).ok()?;
        if bytes.len() < 16 + NONCE_LEN + 16 {
            return None;
        }
        let (subject, rest) = bytes.split_at(16);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Some(Self {
            subject: SubjectRef(subject.try_into().ok()?),
            nonce: nonce.try_into().ok()?,
            ciphertext: ciphertext.to_vec(),
        })
    }

    fn open(&self, key: &[u8; 32]) -> Option<String> {
        let cipher = XChaCha20Poly1305::new(key.into());
        let clear = cipher
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &self.subject.0,
                },
            )
            .ok()?;
        String::from_utf8(clear).ok()
    }
}

/// A nonce never used before under any key: 16 random bytes drawn once per process,
/// then a counter. XChaCha's 192-bit nonces make a random prefix safe, and the counter
/// saves a system call per sealed value on the command path.
fn next_nonce() -> [u8; NONCE_LEN] {
    static PREFIX: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        bytes
    });
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(&count.to_be_bytes());
    nonce
}

fn seal_with(subject: &SubjectRef, key: &[u8; 32], value: &str) -> String {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = next_nonce();
    // Encryption into a Vec fails only for messages longer than the cipher allows (2^38
    // bytes), far above any payload the store accepts.
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: &subject.0,
            },
        )
        .expect("a field is far below the cipher's message limit");
    let mut bytes = Vec::with_capacity(16 + NONCE_LEN + ciphertext.len());
    bytes.extend_from_slice(&subject.0);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ciphertext);
    let mut out = String::with_capacity(SEALED_PREFIX.len() + bytes.len() * 4 / 3 + 4);
    out.push_str(SEALED_PREFIX);
    B64.encode_string(&bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(p: &Privacy, subject: &str, value: &str) -> String {
        futures::executor::block_on(p.seal(subject, value)).unwrap()
    }

    fn privacy() -> (tempfile::TempDir, Privacy) {
        let dir = tempfile::tempdir().unwrap();
        let keys = RocksKeyStore::open(&dir.path().join("keys")).unwrap();
        (dir, Privacy::new(Arc::new(keys)))
    }

    #[test]
    fn sealed_values_reveal_until_their_subject_is_forgotten() {
        let (_dir, p) = privacy();
        let sealed = seal(&p, "alice", "alice");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("alice"));
        assert_eq!(p.reveal(&sealed), "alice");
        // The same subject keeps its key and ref; each sealing has its own nonce.
        let again = seal(&p, "alice", "alice");
        assert_ne!(again, sealed);
        assert_eq!(index_id(&again), index_id(&sealed));
        let bob = seal(&p, "bob", "bob");
        assert_ne!(index_id(&bob), index_id(&sealed));

        let subject = p.subject_ref("alice").unwrap().unwrap();
        assert_eq!(index_id(&sealed), index_id_of(&subject));
        let key = p.keys().unwrap().key_of(&subject).unwrap().unwrap();
        assert!(p.keys().unwrap().forget(&subject).unwrap());
        // The key's bytes left the key store's files (log and tables).
        for entry in std::fs::read_dir(_dir.path().join("keys"))
            .unwrap()
            .flatten()
        {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            assert!(
                !bytes.windows(32).any(|w| w == key),
                "{} still holds the key",
                entry.path().display()
            );
        }
        assert_eq!(p.reveal(&sealed), ERASED);
        assert_eq!(p.reveal(&again), ERASED);
        assert_eq!(p.reveal(&bob), "bob");
        assert_eq!(p.subject_ref("alice").unwrap(), None);
        // Unsealed text and damaged sealed text are left alone or erased, never a panic.
        assert_eq!(p.reveal("plain"), "plain");
        assert_eq!(p.reveal("pii:1:???"), "pii:1:???");
        // A changed byte of the ciphertext fails authentication: it never reads as text.
        let at = bob.len() - 8;
        let flipped = if &bob[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &bob[..at], &bob[at + 1..]);
        assert_eq!(p.reveal(&tampered), ERASED);
    }

    #[test]
    fn a_new_key_after_forgetting_does_not_open_old_values() {
        let (_dir, p) = privacy();
        let old = seal(&p, "carol", "carol");
        let subject = p.subject_ref("carol").unwrap().unwrap();
        p.keys().unwrap().forget(&subject).unwrap();
        let new = seal(&p, "carol", "carol");
        assert_eq!(p.reveal(&new), "carol");
        assert_eq!(p.reveal(&old), ERASED);
    }

    #[test]
    fn json_payloads_are_revealed_in_place() {
        let (_dir, p) = privacy();
        let sealed = seal(&p, "dave", "dave@example.com");
        let mut v = serde_json::json!({"customer_id": sealed, "lines": [{"note": sealed}], "n": 1});
        p.reveal_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"customer_id": "dave@example.com", "lines": [{"note": "dave@example.com"}], "n": 1})
        );
    }

    #[test]
    fn keys_survive_a_reopen_and_a_dump() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = {
            let keys = RocksKeyStore::open(&dir.path().join("keys")).unwrap();
            seal(&Privacy::new(Arc::new(keys)), "erin", "erin")
        };
        let keys = Arc::new(RocksKeyStore::open(&dir.path().join("keys")).unwrap());
        let p = Privacy::new(keys.clone());
        assert_eq!(p.reveal(&sealed), "erin");
        let dump = keys.dump().unwrap();
        let copy = RocksKeyStore::restore(&dir.path().join("copy"), &dump).unwrap();
        let q = Privacy::new(Arc::new(copy));
        assert_eq!(q.reveal(&sealed), "erin");
        assert!(q.subject_ref("erin").unwrap().is_some());
    }
}
