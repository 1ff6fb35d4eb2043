//! Sealing session state into `Mcp-Session-Id` values: AES-256-GCM with a random 96-bit
//! nonce, base64url without padding. The key is raw (no key derivation on the request path);
//! a previous key is still accepted for opening, so keys rotate without ending sessions.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Session ids start with this, so a future format can be told apart.
const PREFIX: &str = "g1.";
/// Bound into every session id: values sealed for another purpose never open as sessions.
const AAD: &[u8] = b"mcpgate session v1";
const KEY_LEN: usize = 32;

/// Why a session key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading session key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a 256-bit key.
    #[error(
        "session key {path} must hold 32 bytes: raw, 64 hex digits or base64 (for example `openssl rand 32 > key`)"
    )]
    Length {
        /// The file.
        path: String,
    },
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
}

/// The keys sessions are sealed and opened with.
pub struct SessionKeys {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Keys from 32-byte values.
    pub fn new(current: [u8; KEY_LEN], previous: Option<[u8; KEY_LEN]>) -> Self {
        Self {
            current: key(&current),
            previous: previous.as_ref().map(key),
            rng: SystemRandom::new(),
        }
    }

    /// A random key: sessions then live only as long as this process.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self::new(bytes, None))
    }

    /// Keys from files (a mounted Secret's keys, for example).
    pub fn load(current: &Path, previous: Option<&Path>) -> Result<Self, KeyError> {
        let current = read_key(current)?;
        let previous = previous.map(read_key).transpose()?;
        Ok(Self::new(current, previous))
    }

    /// Seals `plaintext` into a session id.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, KeyError> {
        self.seal_for(AAD, plaintext)
    }

    /// The plaintext sealed in session id `id`, if one of the keys sealed it and nobody
    /// changed it.
    pub fn open(&self, id: &str) -> Option<Vec<u8>> {
        self.open_for(AAD, id)
    }

    /// Seals `plaintext` for one `purpose` (bound in as associated data): a value sealed for
    /// one purpose (a sign-in cookie, an authorization code) never opens as another.
    pub fn seal_for(&self, purpose: &[u8], plaintext: &[u8]) -> Result<String, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut in_out = plaintext.to_vec();
        self.current
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose),
                &mut in_out,
            )
            .map_err(|_| KeyError::Random)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// The plaintext sealed for `purpose` in `id`, if one of the keys sealed it and nobody
    /// changed it.
    pub fn open_for(&self, purpose: &[u8], id: &str) -> Option<Vec<u8>> {
        let sealed = URL_SAFE_NO_PAD.decode(id.strip_prefix(PREFIX)?).ok()?;
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| {
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut buffer = ciphertext.to_vec();
                let plain = key
                    .open_in_place(nonce, Aad::from(purpose), &mut buffer)
                    .ok()?;
                Some(plain.to_vec())
            })
    }
}

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // 32 bytes is always a valid AES-256 key.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key"))
}

fn read_key(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: display.clone(),
        source,
    })?;
    parse_key(&bytes).ok_or(KeyError::Length { path: display })
}

/// 32 raw bytes, 64 hex digits or base64 of 32 bytes (surrounding whitespace ignored for
/// the text forms).
fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; KEY_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(out);
    }
    let decoded = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .ok()?;
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_ids_differ() {
        let keys = SessionKeys::new([7; 32], None);
        let a = keys.seal(b"state").unwrap();
        let b = keys.seal(b"state").unwrap();
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(a.starts_with("g1."));
        assert!(
            a.bytes().all(|c| (0x21..=0x7e).contains(&c)),
            "visible ASCII"
        );
        assert_eq!(keys.open(&a).unwrap(), b"state");
    }

    #[test]
    fn tampered_foreign_and_garbage_ids_do_not_open() {
        let keys = SessionKeys::new([7; 32], None);
        let id = keys.seal(b"state").unwrap();
        let mut bytes = id.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(keys.open(&String::from_utf8(bytes).unwrap()).is_none());
        assert!(SessionKeys::new([8; 32], None).open(&id).is_none());
        for garbage in ["", "g1.", "g1.!!", "x1.AAAA", "g1.AAAA"] {
            assert!(keys.open(garbage).is_none(), "{garbage}");
        }
    }

    #[test]
    fn rotation_opens_ids_sealed_with_the_previous_key() {
        let old = SessionKeys::new([1; 32], None);
        let id = old.seal(b"before rotation").unwrap();
        let rotated = SessionKeys::new([2; 32], Some([1; 32]));
        assert_eq!(rotated.open(&id).unwrap(), b"before rotation");
        let new_id = rotated.seal(b"after").unwrap();
        assert!(old.open(&new_id).is_none(), "new ids use the new key");
    }

    #[test]
    fn a_value_sealed_for_one_purpose_never_opens_as_another() {
        let keys = SessionKeys::new([7; 32], None);
        let cookie = keys.seal_for(b"sign-in", b"alice").unwrap();
        assert_eq!(keys.open_for(b"sign-in", &cookie).unwrap(), b"alice");
        assert!(keys.open(&cookie).is_none(), "not a session id");
        assert!(keys.open_for(b"code", &cookie).is_none());
        let session = keys.seal(b"state").unwrap();
        assert!(keys.open_for(b"sign-in", &session).is_none());
    }

    #[test]
    fn key_files_in_every_documented_form() {
        let raw = [0xabu8; 32];
        assert_eq!(parse_key(&raw), Some(raw));
        assert_eq!(
            parse_key(format!("{}\n", "ab".repeat(32)).as_bytes()),
            Some(raw)
        );
        assert_eq!(parse_key(STANDARD.encode(raw).as_bytes()), Some(raw));
        assert_eq!(parse_key(b"too short"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"short").unwrap();
        let error = SessionKeys::load(&path, None).unwrap_err().to_string();
        assert!(error.contains("must hold 32 bytes"), "{error}");
    }
}
