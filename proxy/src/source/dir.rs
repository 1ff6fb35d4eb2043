//! Configuration from a directory: `config.json` plus `credentials/<secret>/<key>`, as the
//! operator's standalone mode writes it (or a mounted ConfigMap and Secrets).

use std::path::{Path, PathBuf};

use mcpgate_crds::GatewayConfig;
use mcpgate_crds::names::{CONFIG_FILE, CREDENTIALS_DIR};
use secrecy::SecretString;

use super::snapshot::{Credentials, Snapshot};

/// Why the directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `config.json` is not a configuration.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The configuration is not usable.
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

/// Reads and validates the whole directory.
pub fn load(dir: &Path) -> Result<Snapshot, DirError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(|source| DirError::Io {
        path: path.clone(),
        source,
    })?;
    let config: GatewayConfig =
        serde_json::from_slice(&bytes).map_err(|source| DirError::Json { path, source })?;
    let credentials = read_credentials(&dir.join(CREDENTIALS_DIR))?;
    Ok(Snapshot::build(config, &credentials)?)
}

fn read_credentials(dir: &Path) -> Result<Credentials, DirError> {
    let mut credentials = Credentials::new();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DirError::Io { path, source }
    };
    if !dir.is_dir() {
        return Ok(credentials);
    }
    for secret in std::fs::read_dir(dir).map_err(io(dir))? {
        let secret = secret.map_err(io(dir))?.path();
        if !secret.is_dir() {
            continue;
        }
        let name = secret
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let entry = credentials.entry(name).or_default();
        for key in std::fs::read_dir(&secret).map_err(io(&secret))? {
            let key = key.map_err(io(&secret))?.path();
            // Kubernetes Secret volumes add dot-folders and symlinks: skip hidden names.
            let Some(file) = key
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| !n.starts_with('.'))
            else {
                continue;
            };
            if key.is_dir() {
                continue;
            }
            let value = std::fs::read_to_string(&key).map_err(io(&key))?;
            entry.insert(file.to_owned(), SecretString::from(value));
        }
    }
    Ok(credentials)
}
