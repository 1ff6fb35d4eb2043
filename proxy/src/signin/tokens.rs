//! The tokens the gateway issues and checks itself, without a network call:
//! - access tokens: ES256 JWTs, `iss` the gateway, `aud` the route(s) they were asked for
//!   (RFC 8707) or the gateway, carrying the person's user, email and groups as their identity
//!   provider named them, plus the grant they were issued under;
//! - refresh tokens: `gr1.<family>.<generation>.<mac>`; each use moves the family on one
//!   generation, and presenting an older one revokes the whole family (reuse detection);
//! - personal access tokens: `gpat1.<id>.<secret>`, stored as the secret's SHA-256.
//!
//! Revoking a family or a personal token ends its access tokens too: every request checks
//! its grant against a short-lived cache of the store ([`LIVENESS_AGE`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::keys::{KeyDocument, KeyError, SigningKeys, random_id};
use super::store::{Kind, Store, StoreError, Write};
use crate::auth::{Audience, AuthError, Grant, Identity, Method, now};

/// How long a grant's revocation may take to reach a replica that did not revoke it.
pub const LIVENESS_AGE: Duration = Duration::from_secs(10);
/// Refresh tokens start with this.
const REFRESH_PREFIX: &str = "gr1.";
/// Personal access tokens start with this.
pub const PERSONAL_PREFIX: &str = "gpat1.";
/// The one record of [`Kind::Keys`].
const KEYS_ID: &str = "signing";

/// The person a token speaks for, as their identity provider named them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Person {
    /// The user, as access lists name it.
    pub user: String,
    /// Verified email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The identity provider that vouched for them.
    pub issuer: String,
}

impl Person {
    /// The person behind a verified identity (one from an identity provider).
    pub fn of(identity: &Identity) -> Option<Self> {
        Some(Self {
            user: identity.user.clone(),
            email: identity.email.clone(),
            groups: identity.groups.clone(),
            issuer: identity.method.issuer()?.to_owned(),
        })
    }

    /// The person as a caller from their identity provider (for access checks of what they
    /// stored).
    pub fn identity(&self) -> Identity {
        Identity {
            user: self.user.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            method: crate::auth::Method::Oidc {
                issuer: self.issuer.clone(),
            },
            audience: crate::auth::Audience::Gateway,
        }
    }
}

/// One MCP client's authorization and its refresh-token rotations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Family {
    /// Who authorized.
    pub person: Person,
    /// The client authorized.
    pub client_id: String,
    /// The audiences its tokens carry.
    pub resources: Vec<String>,
    /// Scope, as granted.
    #[serde(default)]
    pub scope: String,
    /// The generation of the only refresh token that may be used next.
    pub generation: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// After this, refresh tokens of the family are refused.
    pub expires: u64,
    /// Set on revocation or detected reuse.
    #[serde(default)]
    pub revoked: bool,
}

/// A personal access token, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersonalToken {
    /// Whose it is.
    pub person: Person,
    /// Its owner's name for it.
    pub name: String,
    /// SHA-256 of the secret part (hex).
    pub secret_sha256: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch.
    pub expires: u64,
    /// The one route (its canonical URL) it may be used on, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// Issues and checks the gateway's tokens.
pub struct Tokens {
    /// The gateway's issuer: its public URL.
    pub issuer: String,
    /// How long access tokens live.
    pub access_lifetime: Duration,
    /// How long a family's refresh tokens may be used after the authorization.
    pub refresh_lifetime: Duration,
    keys: ArcSwap<SigningKeys>,
    store: Arc<Store>,
    /// Grants known to be live (true) or ended (false), briefly.
    /// Families known to stand (true) or to have ended (false), briefly, by id.
    families: moka::sync::Cache<String, bool>,
    /// Personal tokens likewise.
    personal: moka::sync::Cache<String, bool>,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keys failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The grant is not (or no longer) valid; the message is for the client.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// A resource outside the grant was asked for.
    #[error("resource was not part of the authorization")]
    InvalidTarget,
}

/// An access token and, for client authorizations, the refresh token that comes with it.
#[derive(Debug)]
pub struct Issued {
    /// The JWT.
    pub access_token: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The next refresh token.
    pub refresh_token: String,
}

impl Tokens {
    /// Loads the signing keys from `store`, creating them on first start.
    pub async fn open(
        issuer: String,
        store: Arc<Store>,
        access_lifetime: Duration,
        refresh_lifetime: Duration,
    ) -> Result<Self, IssueError> {
        let document = match store.get::<KeyDocument>(Kind::Keys, KEYS_ID).await? {
            Some(found) => found.value,
            None => {
                let fresh = KeyDocument::generate(now().as_secs())?;
                match store.create(Kind::Keys, KEYS_ID, &fresh).await? {
                    Write::Done => fresh,
                    // Another replica created them first: use theirs.
                    Write::Conflict => store
                        .get::<KeyDocument>(Kind::Keys, KEYS_ID)
                        .await?
                        .map(|found| found.value)
                        .ok_or(IssueError::InvalidGrant("the signing keys vanished"))?,
                }
            }
        };
        Ok(Self {
            issuer,
            access_lifetime,
            refresh_lifetime,
            keys: ArcSwap::from_pointee(SigningKeys::try_from(&document)?),
            store,
            families: liveness_cache(),
            personal: liveness_cache(),
        })
    }

    /// Re-reads the keys (another replica may have rotated them) and rotates them when the
    /// newest is older than `period`.
    pub async fn refresh_keys(&self, period: Duration) -> Result<(), IssueError> {
        let Some(current) = self.store.get::<KeyDocument>(Kind::Keys, KEYS_ID).await? else {
            return Ok(());
        };
        let mut document = current.value;
        if let Some(rotated) = document.rotated(now().as_secs(), period.as_secs())?
            && self
                .store
                .replace(Kind::Keys, KEYS_ID, &rotated, &current.version)
                .await?
                == Write::Done
        {
            tracing::info!("rotated the gateway's token signing key");
            document = rotated;
        }
        self.keys.store(Arc::new(SigningKeys::try_from(&document)?));
        Ok(())
    }

    /// The public keys.
    pub fn jwks(&self) -> Value {
        self.keys.load().jwks().clone()
    }

    /// A MAC only this gateway can make (see [`SigningKeys::mac`]).
    pub fn mac(&self, purpose: &str, data: &str) -> String {
        self.keys.load().mac(purpose, data)
    }

    /// Starts a family for an authorization code `code_id` (the family takes the code's id,
    /// so a replayed code names the family to revoke) and issues its first tokens.
    pub async fn authorize(
        &self,
        code_id: &str,
        person: Person,
        client_id: &str,
        resources: Vec<String>,
        scope: String,
    ) -> Result<Issued, IssueError> {
        let now = now().as_secs();
        let family = Family {
            person,
            client_id: client_id.to_owned(),
            resources,
            scope,
            generation: 1,
            created: now,
            expires: now + self.refresh_lifetime.as_secs(),
            revoked: false,
        };
        if self.store.create(Kind::Family, code_id, &family).await? == Write::Conflict {
            // A replayed code: whoever holds it may have stolen it, so what it gave ends too.
            self.revoke_family(code_id).await?;
            tracing::warn!(family = %code_id, client = %client_id, "an authorization code was used twice; revoked its tokens");
            return Err(IssueError::InvalidGrant(
                "the authorization code was already used: the tokens issued for it are revoked",
            ));
        }
        self.issue(code_id, &family)
    }

    /// New tokens for a refresh token of `client_id`. An older generation than the family's
    /// current one is a replay: the family is revoked, and with it every token issued under it.
    /// `resources`, when given, narrows the new access token to some of the grant's
    /// resources (RFC 8707); one outside the grant is refused.
    pub async fn refresh(
        &self,
        token: &str,
        client_id: &str,
        resources: &[String],
    ) -> Result<Issued, IssueError> {
        const INVALID: IssueError = IssueError::InvalidGrant("the refresh token is not valid");
        let (id, generation) = self.parse_refresh(token).ok_or(INVALID)?;
        for _ in 0..5 {
            let current = self
                .store
                .get::<Family>(Kind::Family, &id)
                .await?
                .ok_or(INVALID)?;
            let mut family = current.value;
            if family.client_id != client_id {
                return Err(IssueError::InvalidGrant(
                    "the refresh token was issued to another client",
                ));
            }
            if family.revoked {
                return Err(IssueError::InvalidGrant(
                    "the authorization was revoked: authorize again",
                ));
            }
            if family.expires < now().as_secs() {
                return Err(IssueError::InvalidGrant(
                    "the authorization has expired: authorize again",
                ));
            }
            if generation != family.generation {
                self.revoke_family(&id).await?;
                tracing::warn!(family = %id, client = %client_id, "a refresh token was used twice; revoked its authorization");
                return Err(IssueError::InvalidGrant(
                    "the refresh token was already used: its authorization is revoked, authorize again",
                ));
            }
            if resources.iter().any(|r| !family.resources.contains(r)) {
                return Err(IssueError::InvalidTarget);
            }
            family.generation += 1;
            if self
                .store
                .replace(Kind::Family, &id, &family, &current.version)
                .await?
                == Write::Done
            {
                if !resources.is_empty() {
                    family.resources = resources.to_vec();
                }
                return self.issue(&id, &family);
            }
            // Changed under us: read again (a concurrent use is then seen as reuse).
        }
        Err(IssueError::InvalidGrant(
            "the authorization is changing too often: try again",
        ))
    }

    /// Revokes a family (idempotent); its tokens stop working within [`LIVENESS_AGE`]
    /// everywhere, at once here.
    pub async fn revoke_family(&self, id: &str) -> Result<(), IssueError> {
        for _ in 0..5 {
            let Some(current) = self.store.get::<Family>(Kind::Family, id).await? else {
                break;
            };
            if current.value.revoked {
                break;
            }
            let mut family = current.value;
            family.revoked = true;
            if self
                .store
                .replace(Kind::Family, id, &family, &current.version)
                .await?
                == Write::Done
            {
                break;
            }
        }
        self.families.insert(id.to_owned(), false);
        Ok(())
    }

    /// Revokes the grant of `token` (a refresh or access token of the gateway), if it belongs
    /// to `client_id` when one is named. Other tokens are ignored (RFC 7009); personal access
    /// tokens are revoked by their owner on the tokens page.
    pub async fn revoke(&self, token: &str, client_id: Option<&str>) -> Result<(), IssueError> {
        let family = if let Some((id, _)) = self.parse_refresh(token) {
            Some(id)
        } else if let Ok(claims) = self.keys.load().verify(token, &self.issuer) {
            claims["fam"].as_str().map(str::to_owned)
        } else {
            None
        };
        let Some(id) = family else {
            return Ok(());
        };
        let owner = self.store.get::<Family>(Kind::Family, &id).await?;
        let matches = owner.is_some_and(|f| client_id.is_none_or(|c| f.value.client_id == c));
        if matches {
            self.revoke_family(&id).await?;
        }
        Ok(())
    }

    fn issue(&self, family_id: &str, family: &Family) -> Result<Issued, IssueError> {
        let now = now().as_secs();
        // Never outliving the grant it was issued under.
        let lifetime = self
            .access_lifetime
            .as_secs()
            .min(family.expires.saturating_sub(now))
            .max(1);
        let audience = match family.resources.as_slice() {
            [one] => Value::String(one.clone()),
            many => json!(many),
        };
        let mut claims = json!({
            "iss": self.issuer,
            "sub": family.person.user,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": random_id::<16>()?,
            "client_id": family.client_id,
            "fam": family_id,
            "idp": family.person.issuer,
            "groups": family.person.groups,
        });
        if let Some(email) = &family.person.email {
            claims["email"] = Value::String(email.clone());
        }
        if !family.scope.is_empty() {
            claims["scope"] = Value::String(family.scope.clone());
        }
        let data = format!("{family_id}.{}", family.generation);
        Ok(Issued {
            access_token: self.keys.load().sign(&claims)?,
            expires_in: lifetime,
            refresh_token: format!(
                "{REFRESH_PREFIX}{data}.{}",
                self.keys.load().mac("refresh", &data)
            ),
        })
    }

    /// The family and generation of a refresh token the gateway made.
    fn parse_refresh(&self, token: &str) -> Option<(String, u64)> {
        let rest = token.strip_prefix(REFRESH_PREFIX)?;
        let (data, tag) = rest.rsplit_once('.')?;
        if !self.keys.load().mac_matches("refresh", data, tag) {
            return None;
        }
        let (id, generation) = data.split_once('.')?;
        Some((id.to_owned(), generation.parse().ok()?))
    }

    /// The identity in a gateway access token, or why it is refused. Audiences are the
    /// gateway (its issuer URL) or route URLs.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = self.keys.load().verify(token, &self.issuer)?;
        let text = |name: &str| {
            claims[name]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| AuthError::Claim(name.to_owned()))
        };
        let audiences = crate::auth::audiences(&claims["aud"])?;
        let audience = if audiences.iter().any(|a| a == &self.issuer) {
            Audience::Gateway
        } else {
            Audience::Resources(audiences.into())
        };
        Ok(Identity {
            user: text("sub")?,
            email: claims["email"].as_str().map(str::to_owned),
            groups: claims["groups"]
                .as_array()
                .map(|groups| {
                    groups
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            method: Method::Gateway {
                issuer: text("idp")?,
                grant: Grant::Client {
                    client_id: text("client_id")?,
                    family: text("fam")?,
                },
            },
            audience,
        })
    }

    /// Creates a personal access token; the token is returned once and stored only hashed.
    pub async fn create_personal(
        &self,
        person: Person,
        name: String,
        lifetime: Duration,
        route: Option<String>,
    ) -> Result<(String, String), IssueError> {
        let id = random_id::<12>()?;
        let secret = random_id::<32>()?;
        let now = now().as_secs();
        let record = PersonalToken {
            person,
            name,
            secret_sha256: sha256_hex(&secret),
            created: now,
            expires: now + lifetime.as_secs(),
            route,
        };
        if self.store.create(Kind::PersonalToken, &id, &record).await? == Write::Conflict {
            return Err(IssueError::InvalidGrant("a token id collided: try again"));
        }
        Ok((id.clone(), format!("{PERSONAL_PREFIX}{id}.{secret}")))
    }

    /// `user`'s personal access tokens (id and record), newest first.
    pub async fn personal_tokens(
        &self,
        user: &str,
    ) -> Result<Vec<(String, PersonalToken)>, IssueError> {
        let mut mine: Vec<(String, PersonalToken)> = self
            .store
            .list_owned::<PersonalToken>(Kind::PersonalToken, user)
            .await?
            .into_iter()
            .map(|(id, t)| (id, t.value))
            .collect();
        mine.sort_by_key(|(_, token)| std::cmp::Reverse(token.created));
        Ok(mine)
    }

    /// The MCP client authorizations `user` has given that still stand, newest first.
    pub async fn grants(&self, user: &str) -> Result<Vec<(String, Family)>, IssueError> {
        let now = now().as_secs();
        let mut live: Vec<(String, Family)> = self
            .store
            .list_owned::<Family>(Kind::Family, user)
            .await?
            .into_iter()
            .filter(|(_, f)| !f.value.revoked && f.value.expires > now)
            .map(|(id, f)| (id, f.value))
            .collect();
        live.sort_by_key(|(_, family)| std::cmp::Reverse(family.created));
        Ok(live)
    }

    /// Revokes `user`'s authorization `id`; false when they have none by that id.
    pub async fn revoke_grant(&self, user: &str, id: &str) -> Result<bool, IssueError> {
        let owned = self
            .store
            .get::<Family>(Kind::Family, id)
            .await?
            .is_some_and(|f| f.value.person.user == user);
        if owned {
            self.revoke_family(id).await?;
        }
        Ok(owned)
    }

    /// Deletes `user`'s personal token `id`; false when they have none by that id.
    pub async fn revoke_personal(&self, user: &str, id: &str) -> Result<bool, IssueError> {
        let Some(found) = self
            .store
            .get::<PersonalToken>(Kind::PersonalToken, id)
            .await?
        else {
            return Ok(false);
        };
        if found.value.person.user != user {
            return Ok(false);
        }
        self.store.delete(Kind::PersonalToken, id).await?;
        self.personal.insert(id.to_owned(), false);
        Ok(true)
    }

    /// The identity of a personal access token, the expiry to cache it until, or why it is
    /// refused. `resource` names routes by canonical URL.
    pub async fn verify_personal(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let rest = token
            .strip_prefix(PERSONAL_PREFIX)
            .ok_or(AuthError::Malformed)?;
        let (id, secret) = rest.split_once('.').ok_or(AuthError::Malformed)?;
        let record = self
            .store
            .get::<PersonalToken>(Kind::PersonalToken, id)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "could not read personal access tokens");
                AuthError::Unavailable
            })?
            .ok_or(AuthError::Revoked)?
            .value;
        let presented = sha256_hex(secret);
        if !constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes()) {
            return Err(AuthError::Signature);
        }
        if record.expires < now().as_secs() {
            return Err(AuthError::Expired);
        }
        // Just read: the liveness check that follows need not read it again.
        self.personal.insert(id.to_owned(), true);
        let audience = match &record.route {
            Some(route) => Audience::Resources(vec![route.clone()].into()),
            None => Audience::Gateway,
        };
        Ok((
            Identity {
                user: record.person.user,
                email: record.person.email,
                groups: record.person.groups,
                method: Method::Gateway {
                    issuer: record.person.issuer,
                    grant: Grant::Personal { id: id.to_owned() },
                },
                audience,
            },
            record.expires,
        ))
    }

    /// Whether `grant` still stands (not revoked), from a cache at most [`LIVENESS_AGE`] old
    /// (a hash lookup on the request path; the store is read on a miss).
    pub async fn live(&self, grant: &Grant) -> Result<(), AuthError> {
        let (cache, id) = match grant {
            Grant::Client { family, .. } => (&self.families, family),
            Grant::Personal { id } => (&self.personal, id),
        };
        let live = match cache.get(id.as_str()) {
            Some(live) => live,
            None => {
                let read = match grant {
                    Grant::Client { .. } => self
                        .store
                        .get::<Family>(Kind::Family, id)
                        .await
                        .map(|f| f.is_some_and(|f| !f.value.revoked)),
                    Grant::Personal { .. } => self
                        .store
                        .get::<PersonalToken>(Kind::PersonalToken, id)
                        .await
                        .map(|t| t.is_some()),
                };
                let live = read.map_err(|error| {
                    tracing::warn!(%error, "could not check whether a gateway token was revoked");
                    AuthError::Unavailable
                })?;
                cache.insert(id.clone(), live);
                live
            }
        };
        if live {
            Ok(())
        } else {
            Err(AuthError::Revoked)
        }
    }

    /// Deletes what has expired: families past their refresh lifetime (a family also marks
    /// its code as redeemed, and codes expire long before), personal tokens past their expiry.
    pub async fn sweep(&self) -> Result<usize, IssueError> {
        let now = now().as_secs();
        let mut removed = 0;
        for (id, family) in self.store.list::<Family>(Kind::Family).await? {
            if family.value.expires < now {
                self.store.delete(Kind::Family, &id).await?;
                removed += 1;
            }
        }
        for (id, token) in self
            .store
            .list::<PersonalToken>(Kind::PersonalToken)
            .await?
        {
            if token.value.expires < now {
                self.store.delete(Kind::PersonalToken, &id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn liveness_cache() -> moka::sync::Cache<String, bool> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(LIVENESS_AGE)
        .build()
}

/// Hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    base16ct::lower::encode_string(&Sha256::digest(text.as_bytes()))
}

/// Equality that takes as long whatever differs.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
