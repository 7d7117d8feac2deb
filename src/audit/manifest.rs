//! The manifest that closes every export, and its optional ed25519 signature.
//!
//! **Where it is.** NDJSON: the last line, `{"manifest": {…}}` (an event line never has a
//! `manifest` key). CSV and CloudEvents: a sidecar file `FILE.manifest.json` holding the
//! same `{"manifest": {…}}` object, because a consumer of those formats must not find a
//! foreign row or event in them.
//!
//! **What is signed.** The signature covers the *canonical bytes* of the manifest: the
//! UTF-8 text `annals-manifest-v1\n` followed by the compact JSON serialization (no
//! whitespace) of the manifest object **without** its `signature` member, with members in
//! the order they are declared in [`Manifest`] (`version, tool, tool_version, format,
//! filters, contiguous, head_at_start, count, first_position, last_position, last_hash,
//! exported_at`) and the filters in the order of [`ExportFilters`]. Verification parses
//! the manifest (unknown members are refused, so nothing can hide beside the signed ones),
//! rebuilds these bytes and checks them with `ed25519` (`verify_strict`).
//!
//! Keys are 32 bytes written as 64 hex digits: the private key is the ed25519 seed, the
//! public key the compressed point (`annals keys new-signing` prints a fresh pair).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::AuditError;
use super::export::{ExportFilters, Format};

/// The manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// The prefix of the signed bytes: names what the signature is about, so it cannot be
/// replayed as a signature over anything else.
pub const SIGNING_CONTEXT: &[u8] = b"annals-manifest-v1\n";

/// What an export contains, written after its last event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Always `annals`.
    pub tool: String,
    /// The version of the `annals` build that wrote the export.
    pub tool_version: String,
    /// The export's layout.
    pub format: Format,
    /// The filters the export was made with.
    pub filters: ExportFilters,
    /// True when no filter but the position range was used: every event from the first to
    /// the last position is in the file and each links to the one before.
    pub contiguous: bool,
    /// The log's head when the export started; nothing after it was exported.
    pub head_at_start: u64,
    /// How many events the export holds.
    pub count: u64,
    /// The position of the first exported event (`None` when nothing matched).
    pub first_position: Option<u64>,
    /// The position of the last exported event.
    pub last_position: Option<u64>,
    /// The hash of the last exported event, hex.
    pub last_hash: Option<String>,
    /// When the export was made, RFC 3339 UTC.
    pub exported_at: String,
    /// The signature, when the export was made with `--sign-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
}

/// An ed25519 signature over the manifest's canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's public key, hex (informative: verifiers should pin the key they
    /// trust with `--public-key`).
    pub public_key: String,
    /// The 64-byte signature, hex.
    pub value: String,
}

/// The `{"manifest": …}` wrapper that marks the manifest line and sidecar.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestLine {
    pub manifest: Manifest,
}

impl Manifest {
    /// The bytes the signature covers (see the module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let unsigned = Manifest {
            signature: None,
            ..self.clone()
        };
        let mut out = SIGNING_CONTEXT.to_vec();
        // A struct of strings, numbers and vectors always serializes.
        serde_json::to_writer(&mut out, &unsigned).expect("manifests serialize");
        out
    }

    /// Signs the manifest with `key`, replacing any earlier signature.
    pub fn sign(&mut self, key: &SigningKey) {
        let signature = key.sign(&self.canonical_bytes());
        self.signature = Some(ManifestSignature {
            algorithm: "ed25519".into(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
            value: hex::encode(signature.to_bytes()),
        });
    }

    /// Checks the signature against `key`, or against the embedded public key when `key`
    /// is `None` (which proves integrity, not who signed). `Err` says what is wrong.
    pub fn check_signature(&self, key: Option<&VerifyingKey>) -> Result<(), String> {
        let Some(sig) = &self.signature else {
            return Err("the manifest is not signed".into());
        };
        if sig.algorithm != "ed25519" {
            return Err(format!("unknown signature algorithm {:?}", sig.algorithm));
        }
        let embedded = parse_public_key(&sig.public_key)
            .map_err(|_| "the embedded public key is not an ed25519 key".to_string())?;
        let key = match key {
            Some(k) if k != &embedded => {
                return Err("signed with another key than the given public key".into());
            }
            Some(k) => *k,
            None => embedded,
        };
        let bytes: [u8; 64] = hex::decode(&sig.value)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        key.verify_strict(&self.canonical_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| "the signature does not match the manifest".to_string())
    }

    /// The manifest as its one-line JSON form `{"manifest": …}`.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&ManifestLine {
            manifest: self.clone(),
        })
        .expect("manifests serialize")
    }

    /// Parses the one-line or sidecar form `{"manifest": …}`.
    pub fn from_line(text: &str) -> Result<Self, String> {
        serde_json::from_str::<ManifestLine>(text)
            .map(|l| l.manifest)
            .map_err(|e| e.to_string())
    }
}

fn key_bytes(text: &str) -> Result<[u8; 32], AuditError> {
    let text = text.trim();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| AuditError::InvalidKey("expected 64 hex digits".into()))?;
    Ok(out)
}

/// Reads a private key: 64 hex digits, or the path of a file holding them (so the secret
/// need not be on the command line).
pub fn parse_signing_key(text_or_path: &str) -> Result<SigningKey, AuditError> {
    let text = read_key_text(text_or_path)?;
    Ok(SigningKey::from_bytes(&key_bytes(&text)?))
}

/// Reads a public key: 64 hex digits, or the path of a file holding them.
pub fn parse_public_key(text_or_path: &str) -> Result<VerifyingKey, AuditError> {
    let text = read_key_text(text_or_path)?;
    VerifyingKey::from_bytes(&key_bytes(&text)?)
        .map_err(|_| AuditError::InvalidKey("not a valid ed25519 public key".into()))
}

fn read_key_text(text_or_path: &str) -> Result<String, AuditError> {
    let t = text_or_path.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t.to_string());
    }
    std::fs::read_to_string(t).map_err(|e| {
        AuditError::InvalidKey(format!(
            "{t} is neither 64 hex digits nor a readable key file ({e})"
        ))
    })
}

/// A fresh signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, AuditError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        AuditError::io(
            "no randomness for a key",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}
