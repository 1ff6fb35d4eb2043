//! Which MCP clients may ask for authorization, and where codes may be sent:
//! - Client ID Metadata Documents: a `client_id` that is an HTTPS URL with a path names the
//!   client's own metadata document, fetched through [`super::fetch`] (SSRF guard, size and
//!   time limits) and cached;
//! - Dynamic Client Registration (RFC 7591): registrations are rate-limited per address and
//!   overall, and expire when no token was issued to them within a day.
//!
//! Redirect URIs match exactly, except that a loopback `http` redirect matches on any port
//! (RFC 8252 §7.3: native clients listen on a port chosen at run time).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::fetch::{FetchError, Fetcher};
use super::keys::random_id;
use super::store::{Kind, Store, StoreError, Write};
use super::tokens::{constant_time_eq, sha256_hex};
use crate::auth::now;

/// Redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 10;
/// Longest client name shown on the consent page.
const MAX_NAME: usize = 100;
/// A registration no token was issued to is deleted after this long.
pub const UNUSED_REGISTRATION: Duration = Duration::from_secs(24 * 3600);
/// Metadata documents are fetched again after this long.
const METADATA_AGE: Duration = Duration::from_secs(300);
/// A failed fetch is not retried before this.
const METADATA_FAILURE_AGE: Duration = Duration::from_secs(30);
/// Longest redirect URI accepted.
const MAX_REDIRECT_URI: usize = 2000;
/// Metadata documents fetched at once, at most.
const CONCURRENT_FETCHES: usize = 16;
/// How long a registration lookup (found or not) is remembered.
const LOOKUP_AGE: Duration = Duration::from_secs(30);
/// A registration's last use is written again at most this often.
const USE_RECORDED_EVERY: u64 = 86_400;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A public client (PKCE only).
    None,
    /// `client_secret` in HTTP Basic.
    ClientSecretBasic,
    /// `client_secret` in the form.
    ClientSecretPost,
}

/// A registered client, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// Its name, as it says.
    #[serde(default)]
    pub name: Option<String>,
    /// Where codes may go.
    pub redirect_uris: Vec<String>,
    /// `web` or `native`.
    pub application_type: String,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// SHA-256 of the secret, for confidential clients (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// When a token was last issued to it.
    #[serde(default)]
    pub last_used: Option<u64>,
}

/// A client the gateway knows, however it learned of it.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its `client_id`.
    pub id: String,
    /// Its name, self-asserted.
    pub name: Option<String>,
    /// Where codes may go.
    pub redirect_uris: Vec<String>,
    /// How it authenticates at the token endpoint.
    pub auth_method: AuthMethod,
    /// SHA-256 of its secret (hex), for confidential clients.
    pub secret_sha256: Option<String>,
    /// Whether it registered dynamically (its name is then unverified by anyone).
    pub registered: bool,
}

impl Client {
    /// Whether codes may be sent to `requested`.
    pub fn redirect_allowed(&self, requested: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| redirect_matches(registered, requested))
    }

    /// Whether `secret` is this client's (always true for a public client).
    pub fn authenticates(&self, secret: Option<&str>) -> bool {
        match (&self.secret_sha256, secret) {
            (None, _) => true,
            (Some(hash), Some(secret)) => {
                constant_time_eq(sha256_hex(secret).as_bytes(), hash.as_bytes())
            }
            (Some(_), None) => false,
        }
    }
}

/// Whether `requested` is `registered`, or both are loopback `http` URLs that differ only
/// in the port.
pub fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(a), Ok(b)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    a.scheme() == "http"
        && b.scheme() == "http"
        && is_loopback_host(&a)
        && a.host() == b.host()
        && a.path() == b.path()
        && a.query() == b.query()
        && a.fragment().is_none()
        && b.fragment().is_none()
        && a.username().is_empty()
        && b.username().is_empty()
}

/// Whether `url`'s host is `localhost` or a loopback address.
pub(crate) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why a redirect URI may not be registered, or `None` when it may.
fn redirect_problem(uri: &str, native: bool) -> Option<String> {
    if uri.len() > MAX_REDIRECT_URI {
        return Some(format!(
            "a redirect URI is over {MAX_REDIRECT_URI} characters"
        ));
    }
    let Ok(url) = Url::parse(uri) else {
        return Some(format!("redirect URI {uri:?} is not an absolute URI"));
    };
    if url.fragment().is_some() {
        return Some(format!("redirect URI {uri:?} must not have a fragment"));
    }
    match url.scheme() {
        "https" => None,
        "http" if is_loopback_host(&url) => None,
        "http" => Some(format!(
            "redirect URI {uri:?} must use https (http only on a loopback address)"
        )),
        "javascript" | "data" | "file" | "vbscript" => {
            Some(format!("redirect URI {uri:?} uses a forbidden scheme"))
        }
        _ if native => None,
        _ => Some(format!(
            "redirect URI {uri:?} uses a private scheme: register with application_type \"native\""
        )),
    }
}

/// Why a registration request was refused (RFC 7591 §3.2.2).
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// `invalid_redirect_uri`.
    #[error("{0}")]
    RedirectUri(String),
    /// `invalid_client_metadata`.
    #[error("{0}")]
    Metadata(String),
    /// Too many registrations.
    #[error("too many client registrations: try again in {0} seconds")]
    Limited(u64),
    /// Too many registrations no token was issued to yet.
    #[error("too many client registrations are waiting for their first use: try again later")]
    Full,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistrationError {
    /// The RFC 7591 error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RedirectUri(_) => "invalid_redirect_uri",
            Self::Metadata(_) => "invalid_client_metadata",
            Self::Limited(_) | Self::Full => "slow_down",
            Self::Store(_) => "server_error",
        }
    }
}

/// Fixed-window counters: registrations per address and overall.
pub struct RateLimit {
    per_address: u32,
    overall: u32,
    window: Duration,
    counts: Mutex<(Instant, HashMap<IpAddr, u32>, u32)>,
}

impl RateLimit {
    /// At most `per_address` per address and `overall` in total per `window`.
    pub fn new(per_address: u32, overall: u32, window: Duration) -> Self {
        Self {
            per_address,
            overall,
            window,
            counts: Mutex::new((Instant::now(), HashMap::new(), 0)),
        }
    }

    /// Counts one from `address`; Err(seconds to wait) when over a limit.
    pub fn take(&self, address: IpAddr) -> Result<(), u64> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (started, per_address, overall) = &mut *counts;
        if started.elapsed() >= self.window {
            per_address.clear();
            *overall = 0;
        }
        // A window opens with its first registration.
        if *overall == 0 {
            *started = Instant::now();
        }
        let wait = self
            .window
            .saturating_sub(started.elapsed())
            .as_secs()
            .max(1);
        let mine = per_address.entry(address).or_insert(0);
        if *mine >= self.per_address || *overall >= self.overall {
            return Err(wait);
        }
        *mine += 1;
        *overall += 1;
        Ok(())
    }
}

/// The clients the gateway knows.
pub struct Clients {
    store: Arc<Store>,
    fetcher: Fetcher,
    /// Registrations per address and overall.
    limit: RateLimit,
    /// Metadata document fetches (cache misses) per address and overall.
    fetch_limit: RateLimit,
    fetching: tokio::sync::Semaphore,
    /// Registrations waiting for their first use, at most.
    max_pending: usize,
    /// How many there are, as of the last sweep plus this replica's registrations since.
    pending: std::sync::atomic::AtomicUsize,
    /// Metadata documents by URL, and failures, with when they were fetched.
    documents: moka::sync::Cache<String, (Instant, Result<Client, String>)>,
    /// Registrations looked up recently (None: there is none by that id).
    registrations: moka::sync::Cache<String, Option<Client>>,
}

impl Clients {
    /// Clients registered in `store` (registrations limited by `limit`, at most
    /// `max_pending` waiting for their first use) or described by metadata documents
    /// `fetcher` reaches.
    pub fn new(store: Arc<Store>, fetcher: Fetcher, limit: RateLimit, max_pending: usize) -> Self {
        Self {
            store,
            fetcher,
            limit,
            fetch_limit: RateLimit::new(30, 300, Duration::from_secs(60)),
            fetching: tokio::sync::Semaphore::new(CONCURRENT_FETCHES),
            max_pending,
            pending: std::sync::atomic::AtomicUsize::new(0),
            documents: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(METADATA_AGE)
                .build(),
            registrations: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOOKUP_AGE)
                .build(),
        }
    }

    /// The client `client_id` names, asked for by `peer`, or what is wrong with it (a message
    /// for the person at the browser; never sent to the redirect URI, which is not trusted
    /// yet).
    pub async fn resolve(&self, client_id: &str, peer: IpAddr) -> Result<Client, String> {
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            return self.metadata_document(client_id, peer).await;
        }
        let unknown = || format!("unknown client_id {client_id:?}: the client must register again");
        if let Some(known) = self.registrations.get(client_id) {
            return known.ok_or_else(unknown);
        }
        let client = self
            .store
            .get::<Registration>(Kind::Client, client_id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading a client registration failed");
                "the gateway could not read its client registrations".to_owned()
            })?
            .map(|found| Client {
                id: client_id.to_owned(),
                name: found.value.name,
                redirect_uris: found.value.redirect_uris,
                auth_method: found.value.auth_method,
                secret_sha256: found.value.secret_sha256,
                registered: true,
            });
        self.registrations
            .insert(client_id.to_owned(), client.clone());
        client.ok_or_else(unknown)
    }

    async fn metadata_document(&self, url: &str, peer: IpAddr) -> Result<Client, String> {
        if let Some((at, known)) = self.documents.get(url)
            && (known.is_ok() || at.elapsed() < METADATA_FAILURE_AGE)
        {
            return known;
        }
        if let Err(wait) = self.fetch_limit.take(peer) {
            return Err(format!(
                "too many client metadata documents to fetch: try again in {wait} seconds"
            ));
        }
        let result = match self.fetching.try_acquire() {
            Ok(_one) => self.fetch_document(url).await,
            Err(_) => {
                return Err("too many client metadata documents are being fetched: try again in a few seconds".into());
            }
        };
        let result = result.map_err(|error| {
            tracing::info!(client_id = %url, error = %error.detail(), "client metadata document refused");
            error.public(url)
        });
        self.documents
            .insert(url.to_owned(), (Instant::now(), result.clone()));
        result
    }

    async fn fetch_document(&self, url: &str) -> Result<Client, FetchError> {
        use FetchError::Refused;
        let parsed =
            Url::parse(url).map_err(|e| Refused(format!("client_id {url:?} is not a URL: {e}")))?;
        let dotted = url.split(['?', '#']).next().unwrap_or(url).contains("/.");
        if parsed.path() == "/"
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
            || dotted
        {
            return Err(Refused(format!(
                "client_id {url:?} must be an https URL with a path, without dot segments, fragment or credentials"
            )));
        }
        let document = self.fetcher.get_json(&parsed).await?;
        if document["client_id"].as_str() != Some(url) {
            return Err(Refused(format!(
                "the metadata document at {url} must name itself as client_id"
            )));
        }
        let auth_method = document["token_endpoint_auth_method"]
            .as_str()
            .unwrap_or("none");
        if auth_method != "none" {
            return Err(Refused(format!(
                "the metadata document at {url} asks for token_endpoint_auth_method {auth_method:?}; this gateway accepts only \"none\" for metadata-document clients"
            )));
        }
        let redirect_uris = string_list(&document["redirect_uris"])
            .filter(|uris| !uris.is_empty() && uris.len() <= MAX_REDIRECT_URIS)
            .ok_or_else(|| {
                Refused(format!(
                    "the metadata document at {url} must list 1 to {MAX_REDIRECT_URIS} redirect_uris"
                ))
            })?;
        let native = document["application_type"].as_str() != Some("web");
        if let Some(problem) = redirect_uris
            .iter()
            .find_map(|u| redirect_problem(u, native))
        {
            return Err(Refused(format!(
                "the metadata document at {url}: {problem}"
            )));
        }
        Ok(Client {
            id: url.to_owned(),
            name: document["client_name"].as_str().map(short_name),
            redirect_uris,
            auth_method: AuthMethod::None,
            secret_sha256: None,
            registered: false,
        })
    }

    /// Registers a client from RFC 7591 metadata sent from `address`; the response body.
    pub async fn register(
        &self,
        metadata: &Value,
        address: IpAddr,
    ) -> Result<Value, RegistrationError> {
        use RegistrationError::{Metadata, RedirectUri};
        let object = metadata
            .as_object()
            .ok_or_else(|| Metadata("the registration must be a JSON object".into()))?;
        let redirect_uris = string_list(&metadata["redirect_uris"])
            .filter(|uris| !uris.is_empty() && uris.len() <= MAX_REDIRECT_URIS)
            .ok_or_else(|| {
                RedirectUri(format!(
                    "redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs"
                ))
            })?;
        let application_type = match object.get("application_type").and_then(Value::as_str) {
            Some(kind @ ("web" | "native")) => kind.to_owned(),
            Some(other) => {
                return Err(Metadata(format!(
                    "application_type {other:?} is not \"web\" or \"native\""
                )));
            }
            // Unsaid: a client that redirects to loopback or a private scheme is native.
            None if redirect_uris.iter().all(|u| u.starts_with("https://")) => "web".into(),
            None => "native".into(),
        };
        let native = application_type == "native";
        if let Some(problem) = redirect_uris
            .iter()
            .find_map(|u| redirect_problem(u, native))
        {
            return Err(RedirectUri(problem));
        }
        for (field, allowed) in [
            ("grant_types", &["authorization_code", "refresh_token"][..]),
            ("response_types", &["code"][..]),
        ] {
            if let Some(values) = object.get(field) {
                let values = string_list(values)
                    .ok_or_else(|| Metadata(format!("{field} must be a list of strings")))?;
                if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
                    return Err(Metadata(format!(
                        "{field} {bad:?} is not supported (supported: {})",
                        allowed.join(", ")
                    )));
                }
            }
        }
        let auth_method = match object
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
        {
            // RFC 7591's default.
            None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
            Some("client_secret_post") => AuthMethod::ClientSecretPost,
            Some("none") => AuthMethod::None,
            Some(other) => {
                return Err(Metadata(format!(
                    "token_endpoint_auth_method {other:?} is not supported (none, client_secret_basic, client_secret_post)"
                )));
            }
        };
        let name = object
            .get("client_name")
            .and_then(Value::as_str)
            .map(short_name);
        if self.pending.load(std::sync::atomic::Ordering::Relaxed) >= self.max_pending {
            return Err(RegistrationError::Full);
        }
        self.limit
            .take(address)
            .map_err(RegistrationError::Limited)?;
        let id = random_id::<16>().map_err(|e| Metadata(e.to_string()))?;
        let secret = match auth_method {
            AuthMethod::None => None,
            _ => Some(random_id::<32>().map_err(|e| Metadata(e.to_string()))?),
        };
        let created = now().as_secs();
        let registration = Registration {
            name: name.clone(),
            redirect_uris: redirect_uris.clone(),
            application_type: application_type.clone(),
            auth_method,
            secret_sha256: secret.as_deref().map(sha256_hex),
            created,
            last_used: None,
        };
        if self.store.create(Kind::Client, &id, &registration).await? == Write::Conflict {
            return Err(Metadata("a client id collided: register again".into()));
        }
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut response = json!({
            "client_id": id,
            "client_id_issued_at": created,
            "redirect_uris": redirect_uris,
            "application_type": application_type,
            "token_endpoint_auth_method": auth_method,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        });
        if let Some(name) = name {
            response["client_name"] = Value::String(name);
        }
        if let Some(secret) = secret {
            response["client_secret"] = Value::String(secret);
            response["client_secret_expires_at"] = json!(0);
        }
        Ok(response)
    }

    /// Records that a token was issued to registered client `id` (written at most daily):
    /// it expires only once unused for the idle time.
    pub async fn used(&self, id: &str) -> Result<(), StoreError> {
        let Some(current) = self.store.get::<Registration>(Kind::Client, id).await? else {
            return Ok(());
        };
        let now = now().as_secs();
        if current
            .value
            .last_used
            .is_some_and(|at| at + USE_RECORDED_EVERY > now)
        {
            return Ok(());
        }
        let mut registration = current.value;
        registration.last_used = Some(now);
        self.store
            .replace(Kind::Client, id, &registration, &current.version)
            .await?;
        Ok(())
    }

    /// Deletes registrations no token was issued to within [`UNUSED_REGISTRATION`], and
    /// those unused for `idle`.
    pub async fn sweep(&self, idle: Duration) -> Result<usize, StoreError> {
        let now = now().as_secs();
        let (mut removed, mut pending) = (0, 0);
        for (id, registration) in self.store.list::<Registration>(Kind::Client).await? {
            let expired = match registration.value.last_used {
                None => registration.value.created + UNUSED_REGISTRATION.as_secs() < now,
                Some(used) => used + idle.as_secs() < now,
            };
            if expired {
                // Only as read: a use recorded meanwhile (by any replica) keeps it.
                self.store
                    .delete_if(Kind::Client, &id, &registration.version)
                    .await?;
                removed += 1;
            } else if registration.value.last_used.is_none() {
                pending += 1;
            }
        }
        self.pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
        Ok(removed)
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn short_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port_and_nothing_else_bends() {
        let r = "http://127.0.0.1/callback";
        assert!(redirect_matches(r, "http://127.0.0.1:53127/callback"));
        assert!(redirect_matches(
            "http://127.0.0.1:1000/callback",
            "http://127.0.0.1:2000/callback"
        ));
        assert!(redirect_matches(
            "http://localhost:1/cb",
            "http://localhost:2/cb"
        ));
        assert!(redirect_matches("http://[::1]:1/cb", "http://[::1]:2/cb"));
        for (registered, requested) in [
            (r, "http://127.0.0.1:53127/callback/x"),
            (r, "http://127.0.0.1:53127/callback?x=1"),
            (r, "http://127.0.0.2:53127/callback"),
            (r, "http://localhost:53127/callback"),
            (r, "https://127.0.0.1:53127/callback"),
            (r, "http://127.0.0.1:53127/callback#x"),
            (r, "http://user@127.0.0.1:53127/callback"),
            (
                "https://app.example.com/cb",
                "https://app.example.com:444/cb",
            ),
            ("https://app.example.com/cb", "https://app.example.com/cb/"),
            ("https://app.example.com/cb", "https://evil.example.com/cb"),
            (
                "https://app.example.com/cb",
                "https://app.example.com.evil.com/cb",
            ),
        ] {
            assert!(
                !redirect_matches(registered, requested),
                "{registered} vs {requested}"
            );
        }
        assert!(redirect_matches(
            "https://app.example.com/cb",
            "https://app.example.com/cb"
        ));
    }

    #[test]
    fn registrable_redirects() {
        assert_eq!(redirect_problem("https://vscode.dev/redirect", false), None);
        assert_eq!(redirect_problem("http://127.0.0.1:33418", false), None);
        assert_eq!(
            redirect_problem("cursor://anysphere.cursor-mcp/oauth/callback", true),
            None
        );
        for (uri, native) in [
            ("http://example.com/cb", true),
            ("cursor://x/cb", false),
            ("javascript:alert(1)", true),
            ("https://a.example.com/cb#frag", true),
            ("/relative", true),
        ] {
            assert!(redirect_problem(uri, native).is_some(), "{uri}");
        }
    }

    #[test]
    fn registrations_are_limited_per_address_and_overall() {
        let limit = RateLimit::new(2, 3, Duration::from_secs(60));
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        assert!(limit.take(a).is_ok());
        assert!(limit.take(a).is_ok());
        let wait = limit.take(a).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limit.take(b).is_ok());
        assert!(limit.take(c).is_err(), "the overall limit holds");
        let short = RateLimit::new(1, 10, Duration::from_millis(1));
        assert!(short.take(a).is_ok());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.take(a).is_ok(), "a new window");
    }
}
