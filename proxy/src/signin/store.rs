//! Where sign-in state lives so that every replica sees it: registered clients, refresh-token
//! families, redeemed authorization codes, personal access tokens and the signing keys. Each
//! record is one JSON document with a version; writers compare-and-swap on the version, so
//! two replicas rotating one refresh token cannot both win. Standalone, records are 0600
//! files under a directory of the gateway's (one process writes them); no record holds a
//! token or a secret in the clear, only hashes and MACs.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a record is; each kind is a folder (or a label value) of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The signing keys (one record, `signing`).
    Keys,
    /// A dynamically registered client.
    Client,
    /// A refresh-token family: one authorization and its rotations.
    Family,
    /// A personal access token.
    PersonalToken,
    /// A user's own credential for one upstream server, sealed.
    Credential,
    /// The gateway's own registration as an OAuth client at an upstream's authorization
    /// server (dynamic client registration), one per server.
    Registration,
    /// Which replica is refreshing a user's tokens for a server, until when.
    Lease,
    /// The scopes an upstream asked a user for beyond those they granted.
    StepUp,
}

impl Kind {
    /// The folder or label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Keys => "keys",
            Self::Client => "clients",
            Self::Family => "families",
            Self::PersonalToken => "tokens",
            Self::Credential => "credentials",
            Self::Registration => "registrations",
            Self::Lease => "leases",
            Self::StepUp => "stepups",
        }
    }
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state directory failed.
    #[error("sign-in state {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A record is not what this gateway writes.
    #[error("sign-in state {path} is not valid: {error}")]
    Corrupt {
        /// The file or Secret.
        path: String,
        /// Why.
        error: String,
    },
    /// The Kubernetes API refused or failed.
    #[error("sign-in state in Secret {name}: {source}")]
    Api {
        /// The Secret.
        name: String,
        /// Why.
        source: Box<kube::Error>,
    },
}

/// Sign-in state, in Secrets or files.
pub enum Store {
    /// Secrets of the gateway namespace.
    Secrets(Box<SecretStore>),
    /// Files under a directory.
    Files(FileStore),
}

impl Store {
    /// The record `id` of `kind`, if there is one.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self {
            Self::Secrets(s) => s.get(kind, id).await,
            Self::Files(f) => f.get(kind, id).await,
        }
    }

    /// Writes a new record; [`Write::Conflict`] when `id` exists.
    pub async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<Write, StoreError> {
        match self {
            Self::Secrets(s) => s.create(kind, id, value).await,
            Self::Files(f) => f.create(kind, id, value).await,
        }
    }

    /// Replaces record `id` if it is still at `version`.
    pub async fn replace<T: Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
        version: &str,
    ) -> Result<Write, StoreError> {
        match self {
            Self::Secrets(s) => s.replace(kind, id, value, version).await,
            Self::Files(f) => f.replace::<T>(kind, id, value, version).await,
        }
    }

    /// Removes record `id` (gone already is fine).
    pub async fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        match self {
            Self::Secrets(s) => s.delete(kind, id, None).await,
            Self::Files(f) => f.delete(kind, id, None).await,
        }
    }

    /// Removes record `id` if it is still at `version` (changed or gone: left alone).
    pub async fn delete_if(&self, kind: Kind, id: &str, version: &str) -> Result<(), StoreError> {
        match self {
            Self::Secrets(s) => s.delete(kind, id, Some(version)).await,
            Self::Files(f) => f.delete(kind, id, Some(version)).await,
        }
    }

    /// Every record of `kind`, with its id.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        match self {
            Self::Secrets(s) => s.list(kind, None).await,
            Self::Files(f) => f.list(kind).await,
        }
    }

    /// Ids of records of `kind` that another process changed, as they change (Secrets are
    /// watched; files belong to this process alone, so there is nothing to hear).
    pub fn changes(&self, kind: Kind) -> futures::stream::BoxStream<'static, String> {
        use futures::StreamExt;
        match self {
            Self::Secrets(s) => s.changes(kind),
            Self::Files(_) => futures::stream::pending().boxed(),
        }
    }

    /// The records of `kind` that belong to `user` (whose `person.user` is theirs).
    pub async fn list_owned<T: DeserializeOwned>(
        &self,
        kind: Kind,
        user: &str,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        let all: Vec<(String, Versioned<serde_json::Value>)> = match self {
            Self::Secrets(s) => s.list(kind, Some(user)).await?,
            Self::Files(f) => f.list(kind).await?,
        };
        all.into_iter()
            .filter(|(_, record)| owner(&record.value) == Some(user))
            .map(|(id, record)| {
                let value =
                    serde_json::from_value(record.value).map_err(|e| StoreError::Corrupt {
                        path: format!("{}/{id}", kind.name()),
                        error: e.to_string(),
                    })?;
                Ok((
                    id,
                    Versioned {
                        value,
                        version: record.version,
                    },
                ))
            })
            .collect()
    }
}

/// The person a record belongs to: records about a person carry it as `person.user`.
fn owner(record: &serde_json::Value) -> Option<&str> {
    record.get("person")?.get("user")?.as_str()
}

/// Label on a record Secret naming its owner (a digest of the user: label values are short
/// and plain), so one person's records are listed, or deleted, by label.
pub const LABEL_OWNER: &str = "mcpgate.dev/owner";

/// The [`LABEL_OWNER`] value of `user`.
pub fn owner_label(user: &str) -> String {
    short_digest(user)
}

/// The first 20 bytes of the SHA-256 of `text`, in hex: fits a label value and a name part.
fn short_digest(text: &str) -> String {
    use sha2::Digest;
    base16ct::lower::encode_string(&sha2::Sha256::digest(text.as_bytes())[..20])
}

/// Ids are the gateway's own base64url; anything else never reaches the disk or the API.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Label naming the kind of a sign-in record Secret.
pub const LABEL_SIGNIN: &str = "mcpgate.dev/signin";
/// The key of a record Secret holding the record.
const RECORD_KEY: &str = "record";
/// The key of a record Secret holding its id (names are lower-case; ids are not).
const ID_KEY: &str = "id";

/// Records as Secrets of one namespace.
pub struct SecretStore {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
}

impl SecretStore {
    /// Records in Secrets of `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
        }
    }

    /// The Secret name of a record: ids are mixed-case, names may not be, so the name carries
    /// a digest of the id.
    fn name(kind: Kind, id: &str) -> String {
        format!("mcpgate-signin.{}.{}", kind.name(), short_digest(id))
    }

    fn api_error(name: &str, source: kube::Error) -> StoreError {
        StoreError::Api {
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    fn secret<T: Serialize>(
        kind: Kind,
        id: &str,
        value: &T,
        version: Option<&str>,
    ) -> Result<k8s_openapi::api::core::v1::Secret, StoreError> {
        let name = Self::name(kind, id);
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            path: name.clone(),
            error: e.to_string(),
        };
        let value = serde_json::to_value(value).map_err(corrupt)?;
        let record = serde_json::to_vec(&value).map_err(corrupt)?;
        let mut labels: std::collections::BTreeMap<String, String> = [
            (
                mcpgate_crds::names::LABEL_MANAGED_BY.to_owned(),
                "mcpgate-proxy".to_owned(),
            ),
            (LABEL_SIGNIN.to_owned(), kind.name().to_owned()),
        ]
        .into();
        if let Some(user) = owner(&value) {
            labels.insert(LABEL_OWNER.to_owned(), owner_label(user));
        }
        Ok(k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name),
                resource_version: version.map(str::to_owned),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some(
                [
                    (RECORD_KEY.to_owned(), k8s_openapi::ByteString(record)),
                    (
                        ID_KEY.to_owned(),
                        k8s_openapi::ByteString(id.as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        })
    }

    fn record<T: DeserializeOwned>(
        secret: &k8s_openapi::api::core::v1::Secret,
    ) -> Result<(String, Versioned<T>), StoreError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let corrupt = |error: String| StoreError::Corrupt {
            path: name.clone(),
            error,
        };
        let data = secret
            .data
            .as_ref()
            .ok_or_else(|| corrupt("no data".into()))?;
        let id = data
            .get(ID_KEY)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| corrupt("no id".into()))?;
        let value = data
            .get(RECORD_KEY)
            .ok_or_else(|| corrupt("no record".into()))
            .and_then(|v| serde_json::from_slice(&v.0).map_err(|e| corrupt(e.to_string())))?;
        Ok((
            id,
            Versioned {
                value,
                version: secret.metadata.resource_version.clone().unwrap_or_default(),
            },
        ))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        if !plain_id(id) {
            return Ok(None);
        }
        let name = Self::name(kind, id);
        match self.api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let (stored, record) = Self::record(&secret)?;
                // A digest collision would be another record: not this one.
                Ok((stored == id).then_some(record))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Self::api_error(&name, e)),
        }
    }

    async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<Write, StoreError> {
        if !plain_id(id) {
            return Ok(Write::Conflict);
        }
        let secret = Self::secret(kind, id, value, None)?;
        match self.api.create(&Default::default(), &secret).await {
            Ok(_) => Ok(Write::Done),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Write::Conflict),
            Err(e) => Err(Self::api_error(&Self::name(kind, id), e)),
        }
    }

    async fn replace<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
        version: &str,
    ) -> Result<Write, StoreError> {
        if !plain_id(id) {
            return Ok(Write::Conflict);
        }
        let name = Self::name(kind, id);
        let secret = Self::secret(kind, id, value, Some(version))?;
        match self.api.replace(&name, &Default::default(), &secret).await {
            Ok(_) => Ok(Write::Done),
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                Ok(Write::Conflict)
            }
            Err(e) => Err(Self::api_error(&name, e)),
        }
    }

    async fn delete(&self, kind: Kind, id: &str, version: Option<&str>) -> Result<(), StoreError> {
        if !plain_id(id) {
            return Ok(());
        }
        let name = Self::name(kind, id);
        let params = kube::api::DeleteParams {
            preconditions: version.map(|v| kube::api::Preconditions {
                resource_version: Some(v.to_owned()),
                uid: None,
            }),
            ..Default::default()
        };
        match self.api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(e) => Err(Self::api_error(&name, e)),
        }
    }

    fn changes(&self, kind: Kind) -> futures::stream::BoxStream<'static, String> {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{self, Event};
        let config = watcher::Config::default().labels(&format!("{LABEL_SIGNIN}={}", kind.name()));
        watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .filter_map(|event| async move {
                let secrets = match event {
                    Ok(Event::Apply(secret) | Event::Delete(secret) | Event::InitApply(secret)) => {
                        vec![secret]
                    }
                    Ok(_) => Vec::new(),
                    Err(error) => {
                        tracing::warn!(%error, "watching sign-in state failed; retrying");
                        Vec::new()
                    }
                };
                let ids: Vec<String> = secrets
                    .iter()
                    .filter_map(|s| s.data.as_ref()?.get(ID_KEY))
                    .filter_map(|id| String::from_utf8(id.0.clone()).ok())
                    .collect();
                Some(futures::stream::iter(ids))
            })
            .flatten()
            .boxed()
    }

    async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
        owner: Option<&str>,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        let mut selector = format!("{LABEL_SIGNIN}={}", kind.name());
        if let Some(user) = owner {
            selector.push_str(&format!(",{LABEL_OWNER}={}", owner_label(user)));
        }
        let mut records = Vec::new();
        let mut params = kube::api::ListParams::default()
            .labels(&selector)
            .limit(500);
        loop {
            let page = self
                .api
                .list(&params)
                .await
                .map_err(|e| Self::api_error(&selector, e))?;
            for secret in &page.items {
                records.push(Self::record(secret)?);
            }
            match page.metadata.continue_ {
                Some(next) if !next.is_empty() => params = params.continue_token(&next),
                _ => return Ok(records),
            }
        }
    }
}

/// A record and the version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Pass back to [`Store::replace`].
    pub version: String,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written.
    Done,
    /// Someone else got there first (it exists, or changed since it was read).
    Conflict,
}

/// Records in a directory, one file per record.
pub struct FileStore {
    root: PathBuf,
    /// One writer at a time (the directory belongs to this process).
    writing: tokio::sync::Mutex<()>,
}

#[derive(Serialize, serde::Deserialize)]
struct Envelope<T> {
    version: u64,
    value: T,
}

impl FileStore {
    /// The store under `root`, created (0700) if missing.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        create_private_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    fn path(&self, kind: Kind, id: &str) -> Option<PathBuf> {
        plain_id(id).then(|| self.root.join(kind.name()).join(format!("{id}.json")))
    }

    /// The record `id` of `kind`, if there is one.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let Some(path) = self.path(kind, id) else {
            return Ok(None);
        };
        read(&path).await
    }

    /// Writes a new record; [`Write::Conflict`] when `id` exists.
    pub async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<Write, StoreError> {
        let Some(path) = self.path(kind, id) else {
            return Ok(Write::Conflict);
        };
        let _one = self.writing.lock().await;
        // Exclusive across processes too (replicas sharing the directory).
        if write(&path, &Envelope { version: 1, value }, true).await? {
            Ok(Write::Done)
        } else {
            Ok(Write::Conflict)
        }
    }

    /// Replaces record `id` if it is still at `version`.
    pub async fn replace<T: Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
        version: &str,
    ) -> Result<Write, StoreError> {
        let Some(path) = self.path(kind, id) else {
            return Ok(Write::Conflict);
        };
        let _one = self.writing.lock().await;
        let next = match (read::<T>(&path).await?, version.parse::<u64>()) {
            (Some(current), Ok(asked)) if current.version == version => asked + 1,
            _ => return Ok(Write::Conflict),
        };
        write(
            &path,
            &Envelope {
                version: next,
                value,
            },
            false,
        )
        .await?;
        Ok(Write::Done)
    }

    /// Removes record `id` (at `version`, if given); gone or changed is fine.
    pub async fn delete(
        &self,
        kind: Kind,
        id: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(path) = self.path(kind, id) else {
            return Ok(());
        };
        let _one = self.writing.lock().await;
        if let Some(version) = version {
            let current = read::<serde_json::Value>(&path).await?;
            if current.is_none_or(|c| c.version != version) {
                return Ok(());
            }
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io(&path, source)),
        }
    }

    /// Every record of `kind`, with its id.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        let dir = self.root.join(kind.name());
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io(&dir, source)),
        };
        let mut records = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| io(&dir, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(record) = read(&entry.path()).await? {
                records.push((id.to_owned(), record));
            }
        }
        Ok(records)
    }
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

async fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<Versioned<T>>, StoreError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(path, source)),
    };
    let envelope: Envelope<T> =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
    Ok(Some(Versioned {
        value: envelope.value,
        version: envelope.version.to_string(),
    }))
}

/// Writes `path` whole or not at all: a 0600 temporary file renamed into place.
/// Writes `envelope` at `path` whole (readers see the old record or the new one); when
/// `exclusive`, only if there is none yet (`Ok(false)` otherwise), even against other
/// processes.
async fn write<T: Serialize>(
    path: &Path,
    envelope: &Envelope<T>,
    exclusive: bool,
) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(envelope).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write_private(&path, &bytes, exclusive))
        .await
        .map_err(|e| StoreError::Corrupt {
            path: String::new(),
            error: e.to_string(),
        })?
}

fn write_private(path: &Path, bytes: &[u8], exclusive: bool) -> Result<bool, StoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    // A name of its own per process and write: writers never share a temporary file.
    let temporary = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| io(&temporary, e))?;
    file.write_all(bytes).map_err(|e| io(&temporary, e))?;
    file.sync_all().map_err(|e| io(&temporary, e))?;
    if !exclusive {
        std::fs::rename(&temporary, path).map_err(|e| io(path, e))?;
        return Ok(true);
    }
    // A hard link fails if the name exists, atomically.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_create_wins_among_replicas_sharing_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        // Two stores on one directory: two processes, as far as locks go.
        let stores: Vec<Arc<Store>> = (0..2)
            .map(|_| Arc::new(Store::Files(FileStore::open(dir.path()).unwrap())))
            .collect();
        for round in 0..20 {
            let id = format!("lease-{round}");
            let attempts: Vec<_> = (0..8)
                .map(|n| {
                    let store = stores[n % 2].clone();
                    let id = id.clone();
                    tokio::spawn(async move { store.create(Kind::Lease, &id, &n).await.unwrap() })
                })
                .collect();
            let mut done = 0;
            for attempt in attempts {
                if attempt.await.unwrap() == Write::Done {
                    done += 1;
                }
            }
            assert_eq!(done, 1, "round {round}");
            let stored = stores[0].get::<usize>(Kind::Lease, &id).await.unwrap();
            assert!(stored.is_some(), "the winner's record is whole");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("leases"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files are left behind");
    }

    #[tokio::test]
    async fn create_replace_and_delete_compare_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Files(FileStore::open(&dir.path().join("state")).unwrap());
        assert_eq!(
            store.create(Kind::Family, "f1", &1u32).await.unwrap(),
            Write::Done
        );
        assert_eq!(
            store.create(Kind::Family, "f1", &2u32).await.unwrap(),
            Write::Conflict,
            "exists"
        );
        let read = store.get::<u32>(Kind::Family, "f1").await.unwrap().unwrap();
        assert_eq!((read.value, read.version.as_str()), (1, "1"));
        assert_eq!(
            store.replace(Kind::Family, "f1", &3u32, "1").await.unwrap(),
            Write::Done
        );
        assert_eq!(
            store.replace(Kind::Family, "f1", &4u32, "1").await.unwrap(),
            Write::Conflict,
            "a stale version loses"
        );
        let listed = store.list::<u32>(Kind::Family).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].1.value), ("f1", 3));
        store.delete_if(Kind::Family, "f1", "1").await.unwrap();
        assert!(
            store
                .get::<u32>(Kind::Family, "f1")
                .await
                .unwrap()
                .is_some(),
            "a changed record is not deleted"
        );
        store.delete_if(Kind::Family, "f1", "2").await.unwrap();
        store.delete(Kind::Family, "f1").await.unwrap();
        assert!(
            store
                .get::<u32>(Kind::Family, "f1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.list::<u32>(Kind::Client).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn files_are_private_and_ids_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let store = Store::Files(FileStore::open(&root).unwrap());
        store.create(Kind::Client, "c1", &"x").await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("clients/c1.json")), 0o600);
        for id in ["../escape", "a/b", "", ".", "x y"] {
            assert_eq!(
                store.create(Kind::Client, id, &"x").await.unwrap(),
                Write::Conflict,
                "{id:?}"
            );
            assert!(
                store
                    .get::<String>(Kind::Client, id)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert!(!dir.path().join("escape.json").exists());
    }
}
