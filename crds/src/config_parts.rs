//! How the gateway configuration travels through ConfigMaps, which hold at most 1 MiB each:
//! gzip-compressed, cut into parts of at most [`PART_LIMIT`] bytes, each part in a ConfigMap
//! named after its content, and a manifest (the ConfigMap [`CONFIG_MAP_NAME`]) listing them.
//! The operator writes the parts first and the manifest last, and removes old parts after, so
//! a reader that finds every part the manifest names has one whole configuration, never half
//! of two. Pure: bytes in, bytes out.
//!
//! [`CONFIG_MAP_NAME`]: crate::names::CONFIG_MAP_NAME

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's key (JSON: [`Manifest`]).
pub const MANIFEST_KEY: &str = "manifest.json";
/// A part's `binaryData` key.
pub const PART_KEY: &str = "part";
/// Bytes per part: a ConfigMap holds 1 MiB, less room for metadata.
pub const PART_LIMIT: usize = 1_000_000;
/// The largest configuration a reader inflates (a bound against a corrupt manifest).
pub const MAX_CONFIG_BYTES: u64 = 512 * 1024 * 1024;

/// What the manifest ConfigMap says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The configuration's version (as in the configuration itself).
    pub version: String,
    /// Always `gzip`.
    pub encoding: String,
    /// Size of the configuration JSON, inflated.
    pub bytes: u64,
    /// The parts, in order.
    pub parts: Vec<PartRef>,
}

/// One part: the ConfigMap holding it and the SHA-256 of its bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartRef {
    /// ConfigMap name (in the gateway namespace).
    pub config_map: String,
    /// Hex SHA-256 of the part's bytes.
    pub sha256: String,
}

/// One part's ConfigMap name and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `<prefix>.<first 16 hex digits of the part's SHA-256>`.
    pub config_map: String,
    /// Compressed bytes.
    pub bytes: Vec<u8>,
}

/// Why the parts do not make a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// A part the manifest names has not arrived (the operator is still writing).
    #[error("waiting for ConfigMap {0}, a part of the configuration")]
    Missing(String),
    /// A part's bytes are not the ones the manifest names.
    #[error("ConfigMap {0} does not hold the part the manifest names (SHA-256 differs)")]
    Corrupt(String),
    /// The manifest is not one this version reads.
    #[error("configuration manifest: {0}")]
    Manifest(String),
    /// The parts do not inflate to the size the manifest gives.
    #[error("the configuration does not inflate: {0}")]
    Inflate(String),
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compresses `config` (JSON of version `version`) into parts named `<prefix>.<digest>`.
pub fn split(config: &[u8], version: &str, prefix: &str) -> (Manifest, Vec<Part>) {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(config);
    let compressed = encoder.finish().unwrap_or_default();
    let parts: Vec<Part> = compressed
        .chunks(PART_LIMIT)
        .map(|chunk| Part {
            config_map: format!("{prefix}.{}", &sha256_hex(chunk)[..16]),
            bytes: chunk.to_vec(),
        })
        .collect();
    let manifest = Manifest {
        version: version.to_owned(),
        encoding: "gzip".to_owned(),
        bytes: config.len() as u64,
        parts: parts
            .iter()
            .map(|p| PartRef {
                config_map: p.config_map.clone(),
                sha256: sha256_hex(&p.bytes),
            })
            .collect(),
    };
    (manifest, parts)
}

/// The configuration JSON the manifest describes, from the parts `part` finds by ConfigMap
/// name; each part is checked against its digest before anything is inflated.
pub fn join<'a>(
    manifest: &Manifest,
    part: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Vec<u8>, JoinError> {
    if manifest.encoding != "gzip" {
        return Err(JoinError::Manifest(format!(
            "encoding {:?} is not gzip",
            manifest.encoding
        )));
    }
    if manifest.bytes > MAX_CONFIG_BYTES {
        return Err(JoinError::Manifest(format!(
            "{} bytes is over the {MAX_CONFIG_BYTES} a proxy reads",
            manifest.bytes
        )));
    }
    let mut compressed = Vec::new();
    for p in &manifest.parts {
        let bytes = part(&p.config_map).ok_or_else(|| JoinError::Missing(p.config_map.clone()))?;
        if sha256_hex(bytes) != p.sha256 {
            return Err(JoinError::Corrupt(p.config_map.clone()));
        }
        compressed.extend_from_slice(bytes);
    }
    let mut config = Vec::with_capacity(usize::try_from(manifest.bytes).unwrap_or(0));
    flate2::read::GzDecoder::new(compressed.as_slice())
        .take(manifest.bytes + 1)
        .read_to_end(&mut config)
        .map_err(|e| JoinError::Inflate(e.to_string()))?;
    if config.len() as u64 != manifest.bytes {
        return Err(JoinError::Inflate(format!(
            "{} bytes, the manifest says {}",
            config.len(),
            manifest.bytes
        )));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    /// Text that compresses poorly, so it needs several parts.
    fn noisy(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b'a' + (state % 26) as u8
            })
            .collect()
    }

    fn store(parts: &[Part]) -> BTreeMap<String, Vec<u8>> {
        parts
            .iter()
            .map(|p| (p.config_map.clone(), p.bytes.clone()))
            .collect()
    }

    #[test]
    fn a_large_configuration_splits_and_joins_back() {
        let config = noisy(3 * PART_LIMIT);
        let (manifest, parts) = split(&config, "v1", "cfg");
        assert!(parts.len() >= 2, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.bytes.len() <= PART_LIMIT));
        assert!(parts.iter().all(|p| p.config_map.starts_with("cfg.")));
        let stored = store(&parts);
        let joined = join(&manifest, |name| stored.get(name).map(Vec::as_slice)).unwrap();
        assert_eq!(joined, config);
    }

    #[test]
    fn a_small_configuration_is_one_part_and_names_follow_content() {
        let (manifest, parts) = split(br#"{"version":"a"}"#, "a", "cfg");
        assert_eq!(parts.len(), 1);
        let (_, same) = split(br#"{"version":"a"}"#, "a", "cfg");
        assert_eq!(parts, same, "the same configuration gives the same names");
        let (_, other) = split(br#"{"version":"b"}"#, "b", "cfg");
        assert_ne!(parts[0].config_map, other[0].config_map);
        assert_eq!(manifest.parts[0].config_map, parts[0].config_map);
    }

    #[test]
    fn missing_altered_or_oversized_parts_are_refused() {
        let config = noisy(2 * PART_LIMIT);
        let (manifest, parts) = split(&config, "v", "cfg");
        let mut stored = store(&parts);
        let first = parts[0].config_map.clone();

        let mut partial = stored.clone();
        partial.remove(&first);
        assert_eq!(
            join(&manifest, |n| partial.get(n).map(Vec::as_slice)),
            Err(JoinError::Missing(first.clone()))
        );

        stored.get_mut(&first).unwrap()[10] ^= 1;
        assert_eq!(
            join(&manifest, |n| stored.get(n).map(Vec::as_slice)),
            Err(JoinError::Corrupt(first))
        );

        let stored = store(&parts);
        let mut lying = manifest.clone();
        lying.bytes -= 1;
        assert!(matches!(
            join(&lying, |n| stored.get(n).map(Vec::as_slice)),
            Err(JoinError::Inflate(_))
        ));
        lying.bytes = MAX_CONFIG_BYTES + 1;
        assert!(matches!(
            join(&lying, |n| stored.get(n).map(Vec::as_slice)),
            Err(JoinError::Manifest(_))
        ));
        let mut other = manifest;
        other.encoding = "zstd".into();
        assert!(matches!(
            join(&other, |n| stored.get(n).map(Vec::as_slice)),
            Err(JoinError::Manifest(_))
        ));
    }
}
