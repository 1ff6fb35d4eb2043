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
    /// The OAuth tokens the user's authorization gave the gateway.
    #[serde(rename = "oauth")]
    OAuth,
}

impl CredentialKind {
    /// The kind a server's auth mode takes, if it takes users' own credentials.
    pub fn of(auth: &UpstreamAuth) -> Option<Self> {
        match auth {
            UpstreamAuth::PerUserApiKey { .. } => Some(Self::ApiKey),
            UpstreamAuth::OAuth2AuthorizationCode { .. } => Some(Self::OAuth),
            _ => None,
        }
    }
}

/// A user's OAuth tokens for one server, as sealed in the store.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TokenSet {
    /// The access token.
    pub access_token: String,
    /// The refresh token, if the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The OpenID Connect ID token, if the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// When the access token expires, in seconds since the epoch, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the gateway obtained it, in seconds since the epoch.
    pub obtained_at: u64,
    /// The token endpoint that issued them, the only one they are refreshed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// The scopes granted (space-separated), as far as the gateway knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl TokenSet {
    /// The scopes granted.
    pub fn granted(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(super::discovery::words)
            .unwrap_or_default()
    }
}

/// A user's OAuth tokens, opened: the headers they give, ready to send.
pub struct Tokens {
    /// `Authorization: Bearer <access token>`.
    pub access: Headers,
    /// `Authorization: Bearer <ID token>`, if there is one.
    pub id: Option<Headers>,
    /// Digests of the two headers, to recognise the one the upstream refused.
    pub access_digest: [u8; 32],
    /// See `access_digest`.
    pub id_digest: Option<[u8; 32]>,
    /// When to stop using the access token (renew it first), seconds since the epoch.
    pub renew_at: Option<u64>,
    /// The tokens themselves, to refresh or revoke them.
    pub set: TokenSet,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("id_token", &self.id_token.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
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

/// A stored credential, opened.
enum Opened {
    Key(SecretString),
    OAuth(Arc<Tokens>),
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
    /// Ids of records just stored, here or by another replica.
    stored: tokio::sync::broadcast::Sender<String>,
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
            stored: tokio::sync::broadcast::channel(256).0,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// Where records live, and what seals them.
    pub fn parts(&self) -> (Arc<Store>, Arc<SessionKeys>) {
        (self.store.clone(), self.keys.clone())
    }

    /// Forgets cached records as other replicas change them; runs until the watch ends.
    pub async fn listen(self: Arc<Self>) {
        let mut changes = self.store.changes(Kind::Credential);
        while let Some(id) = changes.next().await {
            let had = self.cache.get(&id).flatten().is_some();
            self.cache.invalidate(&id);
            // Another replica stored what this one did not know of.
            if self.stored.receiver_count() > 0 && !had && self.opened(&id).await.is_some() {
                let _ = self.stored.send(id);
            }
        }
    }

    /// The ids of records as they are stored (by any replica, when the store is shared): a
    /// user just supplied a credential, and sessions waiting for it can say so.
    pub fn stored(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.stored.subscribe()
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
        let Opened::Key(key) = &*self.opened(&id).await? else {
            return None;
        };
        match super::api_key::header(header, template.as_deref(), key.expose_secret()) {
            Ok(pair) => Some(Arc::new([pair])),
            Err(why) => {
                tracing::warn!(server = %route.key(), %why, "a stored API key cannot be sent");
                None
            }
        }
    }

    /// `caller`'s OAuth tokens for `route`, if the gateway holds them; `fresh` reads the
    /// store rather than what this replica last read.
    pub async fn oauth(
        &self,
        route: &ServerRoute,
        caller: &Identity,
        fresh: bool,
    ) -> Option<Arc<Tokens>> {
        self.oauth_at(&record_id(caller, &route.key())?, fresh)
            .await
    }

    /// [`Self::oauth`] by record id.
    pub async fn oauth_at(&self, id: &str, fresh: bool) -> Option<Arc<Tokens>> {
        if fresh {
            self.cache.invalidate(id);
        }
        match &*self.opened(id).await? {
            Opened::OAuth(tokens) => Some(tokens.clone()),
            Opened::Key(_) => None,
        }
    }

    async fn opened(&self, id: &str) -> Option<Arc<Opened>> {
        if let Some(hit) = self.cache.get(id) {
            return hit;
        }
        let opened = match self.store.get::<Record>(Kind::Credential, id).await {
            Ok(Some(record)) => self
                .open(id, record.value.kind, &record.value.sealed)
                .map(Arc::new),
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

    fn open(&self, id: &str, kind: CredentialKind, sealed: &str) -> Option<Opened> {
        let plain = self.keys.open_for(&purpose(id), sealed);
        if plain.is_none() {
            tracing::warn!(
                "a stored credential does not open with the gateway's session keys (rotated past, or not this record's)"
            );
        }
        let plain = plain?;
        match kind {
            CredentialKind::ApiKey => Some(Opened::Key(SecretString::from(
                String::from_utf8(plain).ok()?,
            ))),
            CredentialKind::OAuth => {
                let set: TokenSet = serde_json::from_slice(&plain).ok()?;
                match tokens(set) {
                    Some(tokens) => Some(Opened::OAuth(Arc::new(tokens))),
                    None => {
                        tracing::warn!("stored OAuth tokens are not valid header values");
                        None
                    }
                }
            }
        }
    }

    /// Stores `key` as `caller`'s API key for `route`, replacing theirs.
    pub async fn store_api_key(
        &self,
        route: &ServerRoute,
        caller: &Identity,
        key: &str,
    ) -> Result<(), VaultError> {
        self.store(route.key(), caller, CredentialKind::ApiKey, key.as_bytes())
            .await
    }

    /// Stores `set` as `caller`'s OAuth tokens for `route`, replacing what they had.
    pub async fn store_oauth(
        &self,
        route: &ServerRoute,
        caller: &Identity,
        set: &TokenSet,
    ) -> Result<(), VaultError> {
        self.store_oauth_for(route.key(), caller, set).await
    }

    /// [`Self::store_oauth`] for the McpServer `namespace/name` (`server`).
    pub async fn store_oauth_for(
        &self,
        server: String,
        caller: &Identity,
        set: &TokenSet,
    ) -> Result<(), VaultError> {
        let plain = serde_json::to_vec(set).map_err(|e| VaultError::Seal(e.to_string()))?;
        self.store(server, caller, CredentialKind::OAuth, &plain)
            .await
    }

    async fn store(
        &self,
        server: String,
        caller: &Identity,
        kind: CredentialKind,
        plain: &[u8],
    ) -> Result<(), VaultError> {
        let person = Person::of(caller).ok_or(VaultError::NotAPerson)?;
        let id = record_id(caller, &server).ok_or(VaultError::NotAPerson)?;
        let sealed = self
            .keys
            .seal_for(&purpose(&id), plain)
            .map_err(|e| VaultError::Seal(e.to_string()))?;
        let record = Record {
            person,
            server,
            kind,
            sealed,
            updated: crate::auth::now().as_secs(),
        };
        for _ in 0..3 {
            let (written, created) = match self.store.get::<Record>(Kind::Credential, &id).await? {
                Some(current) => (
                    self.store
                        .replace(Kind::Credential, &id, &record, &current.version)
                        .await?,
                    false,
                ),
                None => (
                    self.store.create(Kind::Credential, &id, &record).await?,
                    true,
                ),
            };
            if written == Write::Done {
                self.cache.invalidate(&id);
                if created {
                    // A user supplied what they had not (a refresh replaces, and says nothing).
                    let _ = self.stored.send(id);
                }
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
                    CredentialKind::of(&route.config.auth) == Some(record.value.kind)
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
pub fn record_id(caller: &Identity, server: &str) -> Option<String> {
    use sha2::Digest;
    caller.method.issuer()?;
    let owner = crate::session::owner(Some(caller))?;
    let server = sha2::Sha256::digest(server.as_bytes());
    Some(format!(
        "{owner}-{}",
        base16ct::lower::encode_string(&server[..12])
    ))
}

/// Opened tokens, with the headers they give.
fn tokens(set: TokenSet) -> Option<Tokens> {
    use sha2::Digest;
    let bearer = |token: &str| {
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        let digest: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        Some((
            Arc::new([(http::header::AUTHORIZATION, value)]) as Headers,
            digest,
        ))
    };
    let (access, access_digest) = bearer(&set.access_token)?;
    let (id, id_digest) = match &set.id_token {
        Some(token) => {
            let (headers, digest) = bearer(token)?;
            (Some(headers), Some(digest))
        }
        None => (None, None),
    };
    let lifetime = set.expires_at.map(|at| at.saturating_sub(set.obtained_at));
    Some(Tokens {
        access,
        id,
        access_digest,
        id_digest,
        // Renewed a minute early, or at nine tenths of a short life.
        renew_at: set
            .expires_at
            .zip(lifetime)
            .map(|(at, life)| at.saturating_sub(60.min(life / 10))),
        set,
    })
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
        let Some(Opened::Key(key)) = vault.open(&alice, CredentialKind::ApiKey, &sealed) else {
            panic!("alice's key does not open");
        };
        assert_eq!(key.expose_secret(), "alice-key");
        assert!(vault.open(&bob, CredentialKind::ApiKey, &sealed).is_none());
        assert!(!sealed.contains("alice-key"));
    }
}
