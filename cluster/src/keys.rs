//! The subjects' keys of a cluster: one key-value bucket every node follows.
//!
//! Sealed values name their subject's key by ref, and any node may seal or reveal, so the
//! keys are kept once for the cluster, in the bucket `annals_{cluster}_keys` (R3, file
//! storage, history 1):
//!
//! - `secret` → the 32 bytes of the keyed hash that names subjects, created by the first
//!   node that joins and adopted by every node's key store;
//! - `s.{keyed hash of the subject, hex}` → ref (16 bytes) ‖ key (32 bytes), created with
//!   `create` (only the first of two concurrent creations wins) before any node seals with
//!   it, and purged to forget the subject (the purge removes every revision).
//!
//! Each node's [`RocksKeyStore`] follows the bucket through a watch from its history on:
//! a put is inserted, a delete or purge forgets the subject. A node that seals takes its key
//! from the bucket's answer, so it never waits for its own watch.

use std::sync::Arc;
use std::time::Instant;

use annals_store::{RocksKeyStore, SharedKeys, StoreError, SubjectKey, SubjectRef};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::stream::StorageType;
use futures::StreamExt;
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::names;
use crate::options::ClusterOptions;
use crate::store::{SETUP_PATIENCE, open_bucket, until};

const SECRET: &str = "secret";

/// The cluster's keys, in its bucket.
#[derive(Clone, Debug)]
pub(crate) struct BucketKeys {
    bucket: kv::Store,
}

fn entry_key(subject: &[u8; 32]) -> String {
    let mut key = String::with_capacity(66);
    key.push_str("s.");
    for byte in subject {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

fn parse_subject(key: &str) -> Option<[u8; 32]> {
    let hex = key.strip_prefix("s.")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_value(value: &[u8]) -> Option<SubjectKey> {
    if value.len() != 48 {
        return None;
    }
    Some(SubjectKey {
        subject_ref: SubjectRef(value[..16].try_into().ok()?),
        key: value[16..].try_into().ok()?,
    })
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        reason: format!("the cluster's keys: {what}: {error}"),
    }
}

impl SharedKeys for BucketKeys {
    fn create(
        &self,
        subject: [u8; 32],
        key: SubjectKey,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<SubjectKey, StoreError>> + Send + '_>> {
        Box::pin(async move {
            let name = entry_key(&subject);
            let value = [key.subject_ref.0.as_slice(), &key.key].concat();
            match self.bucket.create(&name, value.into()).await {
                Ok(_) => Ok(key),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    let held = self
                        .bucket
                        .get(name)
                        .await
                        .map_err(|e| unavailable("read a key", e))?;
                    held.as_deref().and_then(parse_value).ok_or_else(|| {
                        unavailable("read a key", "the key created first is gone or damaged")
                    })
                }
                Err(e) => Err(unavailable("create a key", e)),
            }
        })
    }

    fn remove(
        &self,
        subject: [u8; 32],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(async move {
            self.bucket
                .purge(entry_key(&subject))
                .await
                .map_err(|e| unavailable("purge a key", e))
        })
    }
}

/// Opens (or creates) the cluster's key bucket, agrees on the keyed-hash secret, opens
/// the node's key store in `path` with it, and starts following the bucket until `stop`.
pub(crate) async fn share(
    jetstream: &async_nats::jetstream::Context,
    options: &ClusterOptions,
    path: &std::path::Path,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<RocksKeyStore>, BucketKeys, tokio::task::JoinHandle<()>), ClusterError> {
    // Right after the bucket is made, JetStream may not answer at once: retried a while.
    let deadline = Instant::now() + SETUP_PATIENCE;
    let bucket = until(deadline, || open_keys_bucket(jetstream, options)).await?;
    let mut candidate = [0u8; 32];
    annals_store::fill_random(&mut candidate);
    let secret = until(deadline, || agree_on_secret(&bucket, candidate)).await?;
    let local = Arc::new(RocksKeyStore::open_with_secret(path, secret)?);
    let watch = until(deadline, || async {
        bucket
            .watch_with_history("s.>")
            .await
            .map_err(|e| failed("follow the keys", e.to_string()))
    })
    .await?;
    let follower = tokio::spawn(follow(watch, local.clone(), stop));
    Ok((local, BucketKeys { bucket }, follower))
}

fn failed(what: &'static str, reason: String) -> ClusterError {
    ClusterError::JetStream { what, reason }
}

/// The cluster's keyed-hash secret: `candidate` if this node records it first, else the
/// one recorded.
async fn agree_on_secret(
    bucket: &kv::Store,
    candidate: [u8; 32],
) -> Result<[u8; 32], ClusterError> {
    match bucket.create(SECRET, candidate.to_vec().into()).await {
        Ok(_) => Ok(candidate),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => bucket
            .get(SECRET)
            .await
            .map_err(|e| failed("read the keys' secret", e.to_string()))?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
            .ok_or_else(|| failed("read the keys' secret", "missing or not 32 bytes".into())),
        Err(e) => Err(failed("create the keys' secret", e.to_string())),
    }
}

/// Applies the bucket's changes to the node's key store.
async fn follow(mut watch: kv::Watch, local: Arc<RocksKeyStore>, mut stop: watch::Receiver<bool>) {
    loop {
        let entry = tokio::select! {
            entry = watch.next() => entry,
            _ = stop.changed() => return,
        };
        let Some(entry) = entry else {
            tracing::warn!(
                "the keys' watch ended: keys created elsewhere arrive with their first use here"
            );
            return;
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "following the cluster's keys");
                continue;
            }
        };
        let Some(subject) = parse_subject(&entry.key) else {
            continue;
        };
        let applied = match entry.operation {
            Operation::Put => match parse_value(&entry.value) {
                Some(key) => local.insert(subject, key),
                None => Ok(()),
            },
            Operation::Delete | Operation::Purge => local.forget_hashed(subject).map(|_| ()),
        };
        if let Err(error) = applied {
            tracing::error!(%error, "applying a change of the cluster's keys");
        }
    }
}

async fn open_keys_bucket(
    jetstream: &async_nats::jetstream::Context,
    options: &ClusterOptions,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: names::keys_bucket(&options.name),
        description: "Annals subject keys".into(),
        history: 1,
        num_replicas: options.replicas,
        storage: StorageType::File,
        ..kv::Config::default()
    };
    open_bucket(jetstream, config, "create the keys bucket").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_and_values_round_trip() {
        let subject = [0xab; 32];
        let name = entry_key(&subject);
        assert_eq!(name.len(), 66);
        assert_eq!(parse_subject(&name), Some(subject));
        assert_eq!(parse_subject("s.zz"), None);
        assert_eq!(parse_subject("secret"), None);
        let key = SubjectKey {
            subject_ref: SubjectRef([1; 16]),
            key: [2; 32],
        };
        let value = [key.subject_ref.0.as_slice(), &key.key].concat();
        assert_eq!(parse_value(&value), Some(key));
        assert_eq!(parse_value(&value[1..]), None);
    }
}
