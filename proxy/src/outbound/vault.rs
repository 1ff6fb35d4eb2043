//! Users' own credentials for upstream servers, one record per (user, McpServer): in Secrets
//! of the gateway namespace (every replica hears each write through its watch) or in 0600
//! files standalone. Each value is sealed (AES-256-GCM) with the gateway's session key and
//! bound to its record's id, so a copy of the Secrets alone is useless and a value moved to
//! another user's record does not open. Users are keyed by identity provider and user, never
//! by email alone. A record goes when its server leaves the configuration or its user is no
//! longer granted the server.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcpgate_crds::gateway_config::UpstreamAuth;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::Headers;
use crate::auth::Identity;
use crate::session::SessionKeys;
use crate::signin::store::{Kind, Store, StoreError, Write};
use crate::signin::tokens::Person;
use crate::source::{ServerRoute, Snapshot};

/// How long a record read from the store is trusted without hearing of a change (the watch
/// normally says sooner).
const CACHE_TTL: Duration = Duration::from_secs(300);

/// One stored credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Whose it is.
    person: Person,
    /// `namespace/name` of the McpServer.
    server: String,
    /// What it is.
    kind: CredentialKind,
    /// The value, sealed for this record.
    sealed: String,
    /// Seconds since the epoch.
    updated: u64,
}

/// What a stored credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialKind {
    /// An API key the user entered.
    ApiKey,
}

/// A credential as the pages show it: never its value.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `namespace/name` of the McpServer.
    pub server: String,
    /// What it is.
    pub kind: CredentialKind,
    /// Seconds since the epoch.
    pub updated: u64,
}

/// A user's key, opened.
struct Opened {
    key: SecretString,
}

/// The vault.
pub struct Vault {
    store: Arc<Store>,
    keys: Arc<SessionKeys>,
    /// Opened values by record id (None: no record).
    cache: moka::sync::Cache<String, Option<Arc<Opened>>>,
    /// How long a record may be unused by the configuration before it is deleted.
    grace: Duration,
    /// Since when each such record has been unused.
    unused: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Vault {
    /// A vault in `store`, sealed with `keys`; `listen` follows other replicas' writes. A
    /// record the configuration stops using (its server gone, its user no longer granted)
    /// is deleted once that has lasted `grace`, so a server briefly out of the configuration
    /// (its Secret being replaced, say) does not cost its users their credentials.
    pub fn new(store: Arc<Store>, keys: Arc<SessionKeys>, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            keys,
            grace,
            unused: Default::default(),
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// Forgets cached records as other replicas change them; runs until the watch ends.
    pub async fn listen(self: Arc<Self>) {
        let mut changes = self.store.changes(Kind::Credential);
        while let Some(id) = changes.next().await {
            self.cache.invalidate(&id);
        }
    }

    /// The headers `caller`'s own API key gives for `route`, if they stored one.
    pub async fn api_key(&self, route: &ServerRoute, caller: &Identity) -> Option<Headers> {
        let UpstreamAuth::PerUserApiKey {
            header, template, ..
        } = &route.config.auth
        else {
            return None;
        };
        let id = record_id(caller, &route.key())?;
        let opened = self.opened(&id).await?;
        match super::api_key::header(header, template.as_deref(), opened.key.expose_secret()) {
            Ok(pair) => Some(Arc::new([pair])),
            Err(why) => {
                tracing::warn!(server = %route.key(), %why, "a stored API key cannot be sent");
                None
            }
        }
    }

    async fn opened(&self, id: &str) -> Option<Arc<Opened>> {
        if let Some(hit) = self.cache.get(id) {
            return hit;
        }
        let opened = match self.store.get::<Record>(Kind::Credential, id).await {
            Ok(Some(record)) => self.open(id, &record.value.sealed).map(Arc::new),
            Ok(None) => None,
            Err(error) => {
                // Not cached: the next call asks again.
                tracing::warn!(%error, "reading a stored credential failed");
                return None;
            }
        };
        self.cache.insert(id.to_owned(), opened.clone());
        opened
    }

    fn open(&self, id: &str, sealed: &str) -> Option<Opened> {
        let plain = self.keys.open_for(&purpose(id), sealed);
        if plain.is_none() {
            tracing::warn!(
                "a stored credential does not open with the gateway's session keys (rotated past, or not this record's)"
            );
        }
        let key = String::from_utf8(plain?).ok()?;
        Some(Opened {
            key: SecretString::from(key),
        })
    }

    /// Stores `key` as `caller`'s API key for `route`, replacing theirs.
    pub async fn store_api_key(
        &self,
        route: &ServerRoute,
        caller: &Identity,
        key: &str,
    ) -> Result<(), VaultError> {
        let person = Person::of(caller).ok_or(VaultError::NotAPerson)?;
        let server = route.key();
        let id = record_id(caller, &server).ok_or(VaultError::NotAPerson)?;
        let sealed = self
            .keys
            .seal_for(&purpose(&id), key.as_bytes())
            .map_err(|e| VaultError::Seal(e.to_string()))?;
        let record = Record {
            person,
            server,
            kind: CredentialKind::ApiKey,
            sealed,
            updated: jiff::Timestamp::now().as_second().max(0).unsigned_abs(),
        };
        for _ in 0..3 {
            let written = match self.store.get::<Record>(Kind::Credential, &id).await? {
                Some(current) => {
                    self.store
                        .replace(Kind::Credential, &id, &record, &current.version)
                        .await?
                }
                None => self.store.create(Kind::Credential, &id, &record).await?,
            };
            if written == Write::Done {
                self.cache.invalidate(&id);
                return Ok(());
            }
        }
        Err(VaultError::Busy)
    }

    /// Deletes `caller`'s credential for `route`.
    pub async fn delete(&self, route: &ServerRoute, caller: &Identity) -> Result<(), VaultError> {
        let id = record_id(caller, &route.key()).ok_or(VaultError::NotAPerson)?;
        self.store.delete(Kind::Credential, &id).await?;
        self.cache.invalidate(&id);
        Ok(())
    }

    /// What `caller` has stored, by server.
    pub async fn list(&self, caller: &Identity) -> Result<Vec<Summary>, VaultError> {
        let issuer = caller.method.issuer().ok_or(VaultError::NotAPerson)?;
        let records = self
            .store
            .list_owned::<Record>(Kind::Credential, &caller.user)
            .await?;
        Ok(records
            .into_iter()
            .filter(|(_, r)| r.value.person.issuer == issuer)
            .map(|(_, r)| Summary {
                server: r.value.server,
                kind: r.value.kind,
                updated: r.value.updated,
            })
            .collect())
    }

    /// Deletes the records whose server has been gone from the configuration (or has not
    /// taken per-user credentials) for the grace period, or whose user it has not granted for
    /// as long; `snapshot` is the configuration now. Returns how many were deleted.
    pub async fn sweep(&self, snapshot: &Snapshot) -> Result<usize, VaultError> {
        let mut removed = 0;
        let records = self.store.list::<Record>(Kind::Credential).await?;
        let now = std::time::Instant::now();
        let mut doomed = Vec::new();
        {
            let mut unused = self.unused.lock().unwrap_or_else(|p| p.into_inner());
            let mut still = std::collections::HashMap::new();
            for (id, record) in records {
                let used = snapshot.server(&record.value.server).is_some_and(|route| {
                    matches!(route.config.auth, UpstreamAuth::PerUserApiKey { .. })
                        && (route.config.public
                            || route.access.permits(&record.value.person.identity()))
                });
                if used {
                    continue;
                }
                let since = unused.get(&id).copied().unwrap_or(now);
                if now.duration_since(since) >= self.grace {
                    doomed.push((id, record.version));
                } else {
                    still.insert(id, since);
                }
            }
            *unused = still;
        }
        for (id, version) in doomed {
            {
                self.store
                    .delete_if(Kind::Credential, &id, &version)
                    .await?;
                self.cache.invalidate(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Why the vault could not do something.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Only people (signed in with an identity provider) have stored credentials.
    #[error("only a person signed in with an identity provider can store credentials")]
    NotAPerson,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing failed.
    #[error("sealing the credential failed: {0}")]
    Seal(String),
    /// Writers kept conflicting.
    #[error("the credential changed while it was being saved: try again")]
    Busy,
}

/// The record id of `caller`'s credential for `server`: the session owner (a digest of
/// identity provider and user) and a digest of the server.
fn record_id(caller: &Identity, server: &str) -> Option<String> {
    use sha2::Digest;
    caller.method.issuer()?;
    let owner = crate::session::owner(Some(caller))?;
    let server = sha2::Sha256::digest(server.as_bytes());
    Some(format!(
        "{owner}-{}",
        base16ct::lower::encode_string(&server[..12])
    ))
}

/// What a record's value is sealed for: its own id.
fn purpose(id: &str) -> Vec<u8> {
    [b"mcpgate upstream credential\0".as_slice(), id.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Audience, Method};

    fn person(user: &str, issuer: &str) -> Identity {
        Identity {
            user: user.into(),
            email: None,
            groups: vec![],
            method: Method::Oidc {
                issuer: issuer.into(),
            },
            audience: Audience::Gateway,
        }
    }

    #[test]
    fn ids_differ_by_issuer_user_and_server_and_machines_have_none() {
        let a = record_id(&person("alice", "https://a"), "t/s").unwrap();
        assert_ne!(a, record_id(&person("alice", "https://b"), "t/s").unwrap());
        assert_ne!(a, record_id(&person("bob", "https://a"), "t/s").unwrap());
        assert_ne!(
            a,
            record_id(&person("alice", "https://a"), "t/other").unwrap()
        );
        let mut machine = person("system:serviceaccount:t:bot", "x");
        machine.method = Method::ServiceAccount;
        assert!(record_id(&machine, "t/s").is_none());
    }

    #[tokio::test]
    async fn a_value_moved_to_another_record_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::Files(
            crate::signin::store::FileStore::open(dir.path()).unwrap(),
        ));
        let vault = Vault::new(
            store,
            Arc::new(SessionKeys::new([3; 32], None)),
            Duration::ZERO,
        );
        let alice = record_id(&person("alice", "https://a"), "t/s").unwrap();
        let bob = record_id(&person("bob", "https://a"), "t/s").unwrap();
        let sealed = vault.keys.seal_for(&purpose(&alice), b"alice-key").unwrap();
        assert_eq!(
            vault.open(&alice, &sealed).unwrap().key.expose_secret(),
            "alice-key"
        );
        assert!(vault.open(&bob, &sealed).is_none());
        assert!(!sealed.contains("alice-key"));
    }
}
