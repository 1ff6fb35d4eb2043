//! Sessions the gateway terminates. A client's `Mcp-Session-Id` is the sealed
//! [`SessionState`]: which route it belongs to, who opened it (a hash of the caller's issuer
//! and subject) and when, what the client said at `initialize` (so an upstream session can be
//! re-opened for it) and the upstream sessions opened for it. Any replica holding the key,
//! and a restarted proxy, continues the session, for the caller who opened it only, until
//! it is older than the maximum age. The sealed state has a size cap, so a client cannot make
//! the gateway mint (and later decrypt) ids of any size.
//!
//! An upstream session re-opened after the upstream forgot it (404) cannot be written back
//! into the client's id; the replacement is remembered by this replica, and another replica
//! re-opens its own the same way. Likewise a session the client ended with DELETE is
//! refused (404) by the replica that ended it; another replica finds the upstream sessions
//! gone and opens fresh ones.

pub mod keys;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Identity;

pub use keys::{KeyError, SessionKeys};

/// Re-opened upstream sessions remembered per replica, at most this many (the oldest are
/// forgotten first; forgetting one only costs another re-open).
const REOPENED_CAPACITY: usize = 65_536;

/// Ended sessions remembered per replica, at most this many (8 bytes each).
const ENDED_CAPACITY: usize = 262_144;
/// Open GET streams tracked before closed ones are swept out.
const STREAMS_SWEEP: usize = 4_096;
/// The largest session state sealed into an id, in bytes (the id is about 4/3 of it).
pub const MAX_STATE_BYTES: usize = 16 * 1024;
/// The longest id opened: a sealed [`MAX_STATE_BYTES`] state; longer ones are refused
/// without decrypting anything.
const MAX_ID_LEN: usize = 3 + (MAX_STATE_BYTES + 12 + 16).div_ceil(3) * 4;
/// How long a session lives by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What is sealed into a client's session id. Short field names keep ids short.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SessionState {
    /// The route path the session was opened on; the id is refused on any other.
    #[serde(rename = "r")]
    pub route: String,
    /// The protocol version agreed with the client.
    #[serde(rename = "v")]
    pub version: String,
    /// The client's `capabilities` at `initialize`, as sent.
    #[serde(rename = "c", default)]
    pub capabilities: Value,
    /// The client's `clientInfo` at `initialize`, as sent.
    #[serde(rename = "i", default)]
    pub client_info: Value,
    /// Upstream sessions, by McpServer name.
    #[serde(rename = "u", default)]
    pub upstreams: Vec<UpstreamSession>,
    /// Who opened it ([`owner`] of the caller); None on a public route without a caller.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When it was opened, in seconds since the epoch.
    #[serde(rename = "t", default)]
    pub issued: u64,
}

/// The owner a session of `caller` is bound to: 16 bytes of SHA-256 over how the caller
/// authenticated, the issuer and the subject (base64url), so the id carries no name and a
/// subject of one issuer never matches another's.
pub fn owner(caller: Option<&Identity>) -> Option<String> {
    let caller = caller?;
    let mut hash = Sha256::new();
    // A person is the same owner whether their token came from the identity provider or
    // from the gateway's sign-in with it.
    match caller.method.issuer() {
        Some(issuer) => {
            hash.update(b"oidc\0");
            hash.update(issuer.as_bytes());
        }
        None => hash.update(b"serviceaccount\0"),
    }
    hash.update(b"\0");
    hash.update(caller.user.as_bytes());
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.finalize()[..16]))
}

/// Why a session could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The state is over [`MAX_STATE_BYTES`] (the client's `initialize` parameters, mostly).
    #[error(
        "the session state would be {0} bytes, over the gateway's limit of {MAX_STATE_BYTES}: send smaller initialize capabilities and clientInfo"
    )]
    TooLarge(usize),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] KeyError),
}

/// One upstream session of a client session.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UpstreamSession {
    /// The McpServer's name.
    #[serde(rename = "m")]
    pub server: String,
    /// The upstream's `Mcp-Session-Id`; None when the upstream issues none or could not be
    /// reached at `initialize` (it is then opened when first needed).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The protocol version the upstream agreed to.
    #[serde(rename = "v")]
    pub version: String,
}

impl SessionState {
    /// The upstream session opened on `server`, if any.
    pub fn upstream(&self, server: &str) -> Option<&UpstreamSession> {
        self.upstreams.iter().find(|u| u.server == server)
    }
}

/// Mints and opens session ids; remembers re-opened upstream sessions and ended sessions.
///
/// A session's requests do not decrypt and parse its id again each time: ids opened
/// recently are kept, opened, by a hash of the id (keyed per process, so ids cannot be
/// chosen to collide) and checked against the whole id. What this replica remembers sits in
/// bounded maps split across locks, each held for one lookup, so requests of different
/// sessions rarely wait on each other and never on a scan.
pub struct Sessions {
    keys: Arc<SessionKeys>,
    max_age: Duration,
    hasher: std::collections::hash_map::RandomState,
    /// Recently opened ids and their state.
    opened: Bounded<Arc<(String, Arc<SessionState>)>>,
    /// Upstream sessions re-opened for a client session (its id, then by server).
    reopened: Bounded<Arc<(String, HashMap<String, UpstreamSession>)>>,
    /// Sessions ended here.
    ended: Bounded<()>,
    /// The open GET stream of each session, ended when a new one replaces it.
    streams: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// Opened ids kept, at most.
const OPENED_CAPACITY: usize = 8_192;
/// Ids longer than this are opened afresh each time, so the opened ids kept hold at most
/// about [`OPENED_CAPACITY`] x 2 x this many bytes (ids and states), whatever clients send.
const OPENED_MAX_ID: usize = 2_048;

/// Lock shards of the maps below: requests of different sessions rarely share one.
const SHARDS: usize = 16;

/// A map by id hash holding at most `capacity` entries, the oldest insertions forgotten
/// first, split into [`SHARDS`] locks held only for a lookup or an insert.
struct Bounded<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

struct Shard<V> {
    map: HashMap<u64, V>,
    order: std::collections::VecDeque<u64>,
}

impl<V: Clone> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: std::collections::VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard<V>> {
        // The keys are keyed hashes already: their low bits spread evenly.
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: u64) -> Option<V> {
        self.shard(key).map.get(&key).cloned()
    }

    fn contains(&self, key: u64) -> bool {
        self.shard(key).map.contains_key(&key)
    }

    fn insert(&self, key: u64, value: V) {
        let mut shard = self.shard(key);
        if shard.map.insert(key, value).is_none() {
            shard.order.push_back(key);
        }
        while shard.order.len() > self.per_shard {
            if let Some(old) = shard.order.pop_front() {
                shard.map.remove(&old);
            }
        }
    }

    fn remove(&self, key: u64) {
        // Its place in the order goes with the next eviction (a missing key is skipped).
        self.shard(key).map.remove(&key);
    }
}

impl Sessions {
    /// Sessions sealed with `keys`.
    pub fn new(keys: impl Into<Arc<SessionKeys>>) -> Self {
        Self {
            keys: keys.into(),
            max_age: DEFAULT_MAX_AGE,
            hasher: Default::default(),
            opened: Bounded::new(OPENED_CAPACITY),
            reopened: Bounded::new(REOPENED_CAPACITY),
            ended: Bounded::new(ENDED_CAPACITY),
            streams: Mutex::default(),
        }
    }

    /// The same sessions, living at most `max_age`.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// A new session id holding `state`, issued now.
    pub fn mint(&self, state: &SessionState) -> Result<String, MintError> {
        let mut state = state.clone();
        state.issued = crate::auth::now().as_secs();
        let plaintext = serde_json::to_vec(&state).map_err(|_| KeyError::Random)?;
        if plaintext.len() > MAX_STATE_BYTES {
            return Err(MintError::TooLarge(plaintext.len()));
        }
        Ok(self.keys.seal(&plaintext)?)
    }

    /// The state in `id`, if this gateway minted it for `route` and for `owner` (see
    /// [`owner`]), it is younger than the maximum age and it was not ended here.
    pub fn open(&self, id: &str, route: &str, owner: Option<&str>) -> Option<Arc<SessionState>> {
        if id.len() > MAX_ID_LEN {
            return None;
        }
        let hash = self.hasher.hash_one(id);
        if self.ended.contains(hash) {
            return None;
        }
        let state = match self.opened.get(hash).filter(|kept| kept.0 == id) {
            Some(kept) => kept.1.clone(),
            None => {
                let state: SessionState = serde_json::from_slice(&self.keys.open(id)?).ok()?;
                let state = Arc::new(state);
                if id.len() <= OPENED_MAX_ID {
                    self.opened
                        .insert(hash, Arc::new((id.to_owned(), state.clone())));
                }
                state
            }
        };
        let age = crate::auth::now().as_secs().saturating_sub(state.issued);
        (state.route == route && state.owner.as_deref() == owner && age <= self.max_age.as_secs())
            .then_some(state)
    }

    /// The upstream session to use for `server` in client session `id`: a replacement this
    /// replica opened, else the sealed one.
    pub fn upstream(
        &self,
        id: &str,
        state: &SessionState,
        server: &str,
    ) -> Option<UpstreamSession> {
        if let Some(reopened) = self.reopened.get(self.hasher.hash_one(id))
            && reopened.0 == id
            && let Some(found) = reopened.1.get(server)
        {
            return Some(found.clone());
        }
        state.upstream(server).cloned()
    }

    /// Remembers that `server`'s session for client session `id` is now `session`.
    pub fn reopened(&self, id: &str, session: UpstreamSession) {
        let hash = self.hasher.hash_one(id);
        // Re-opens of one session are rare and happen one at a time; a lost race only costs
        // another re-open.
        let mut all = self
            .reopened
            .get(hash)
            .filter(|kept| kept.0 == id)
            .map(|kept| kept.1.clone())
            .unwrap_or_default();
        all.insert(session.server.clone(), session);
        self.reopened.insert(hash, Arc::new((id.to_owned(), all)));
    }

    /// Registers a new GET stream for client session `id`, ending the one it had on this
    /// replica; the returned receiver fires when this stream is replaced in turn or the
    /// session ends.
    pub fn open_stream(&self, id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (replaced, receiver) = tokio::sync::oneshot::channel();
        let mut streams = self.streams();
        if let Some(previous) = streams.insert(self.hasher.hash_one(id), replaced) {
            let _ = previous.send(());
        }
        if streams.len() >= STREAMS_SWEEP && streams.len().is_power_of_two() {
            streams.retain(|_, s| !s.is_closed());
        }
        receiver
    }

    /// Ends client session `id`: this replica refuses it from now on, ends its GET stream
    /// and forgets what it re-opened for it.
    pub fn end(&self, id: &str) {
        let hash = self.hasher.hash_one(id);
        self.ended.insert(hash, ());
        self.opened.remove(hash);
        self.reopened.remove(hash);
        if let Some(stream) = self.streams().remove(&hash) {
            let _ = stream.send(());
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::sync::oneshot::Sender<()>>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Method;

    fn state() -> SessionState {
        SessionState {
            route: "/team/mcp/tools/server".into(),
            version: "2025-11-25".into(),
            capabilities: serde_json::json!({"elicitation": {}}),
            client_info: serde_json::json!({"name": "ide", "version": "1"}),
            upstreams: vec![UpstreamSession {
                server: "github".into(),
                id: Some("abc".into()),
                version: "2025-06-18".into(),
            }],
            owner: Some("alice".into()),
            issued: 0,
        }
    }

    /// What `open` gives back: the state as minted, with its issue time.
    fn opened(
        sessions: &Sessions,
        id: &str,
        route: &str,
        owner: Option<&str>,
    ) -> Option<SessionState> {
        sessions.open(id, route, owner).map(|s| {
            let mut s = (*s).clone();
            assert!(s.issued > 0);
            s.issued = 0;
            s
        })
    }

    #[test]
    fn a_session_opens_only_on_its_own_route() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let id = sessions.mint(&state()).unwrap();
        let alice = Some("alice");
        assert_eq!(
            opened(&sessions, &id, "/team/mcp/tools/server", alice),
            Some(state())
        );
        assert_eq!(
            opened(&sessions, &id, "/other/mcp/tools/server", alice),
            None
        );
    }

    #[test]
    fn a_second_replica_with_the_key_opens_it() {
        let a = Sessions::new(SessionKeys::new([3; 32], None));
        let b = Sessions::new(SessionKeys::new([3; 32], None));
        let id = a.mint(&state()).unwrap();
        assert_eq!(
            opened(&b, &id, "/team/mcp/tools/server", Some("alice")),
            Some(state())
        );
    }

    #[test]
    fn reopened_upstream_sessions_replace_the_sealed_one_until_the_session_ends() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let state = state();
        let id = sessions.mint(&state).unwrap();
        let upstream_id = || sessions.upstream(&id, &state, "github").unwrap().id;
        assert_eq!(upstream_id().as_deref(), Some("abc"));
        sessions.reopened(
            &id,
            UpstreamSession {
                server: "github".into(),
                id: Some("new".into()),
                version: "2025-06-18".into(),
            },
        );
        assert_eq!(upstream_id().as_deref(), Some("new"));
        sessions.end(&id);
        assert_eq!(upstream_id().as_deref(), Some("abc"));
    }

    #[test]
    fn a_new_stream_ends_the_previous_one_and_ending_the_session_ends_the_last() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let mut first = sessions.open_stream("a");
        let mut other = sessions.open_stream("b");
        assert!(first.try_recv().is_err(), "open until replaced");
        let mut second = sessions.open_stream("a");
        assert!(first.try_recv().is_ok(), "replaced");
        assert!(second.try_recv().is_err());
        sessions.end("a");
        assert!(second.try_recv().is_ok(), "ended with the session");
        assert!(other.try_recv().is_err(), "other sessions keep theirs");
    }

    #[test]
    fn an_ended_session_no_longer_opens_here() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let id = sessions.mint(&state()).unwrap();
        let other = sessions.mint(&state()).unwrap();
        sessions.end(&id);
        assert_eq!(
            sessions.open(&id, "/team/mcp/tools/server", Some("alice")),
            None
        );
        assert_eq!(
            opened(&sessions, &other, "/team/mcp/tools/server", Some("alice")),
            Some(state())
        );
    }

    #[test]
    fn a_session_opens_only_for_its_owner() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let id = sessions.mint(&state()).unwrap();
        let route = "/team/mcp/tools/server";
        assert!(sessions.open(&id, route, Some("alice")).is_some());
        assert!(sessions.open(&id, route, Some("bob")).is_none());
        assert!(
            sessions.open(&id, route, None).is_none(),
            "not without a caller"
        );
        let public = SessionState {
            owner: None,
            ..state()
        };
        let id = sessions.mint(&public).unwrap();
        assert!(sessions.open(&id, route, None).is_some());
        assert!(sessions.open(&id, route, Some("alice")).is_none());
    }

    #[test]
    fn owners_are_issuer_and_subject_and_name_nobody() {
        let who = |issuer: &str, user: &str| {
            owner(Some(&Identity {
                user: user.into(),
                email: None,
                groups: vec![],
                method: Method::Oidc {
                    issuer: issuer.into(),
                },
                audience: crate::auth::Audience::Gateway,
            }))
            .unwrap()
        };
        assert_eq!(who("https://a", "alice"), who("https://a", "alice"));
        assert_ne!(who("https://a", "alice"), who("https://b", "alice"));
        assert_ne!(who("https://a", "alice"), who("https://a", "bob"));
        assert!(!who("https://a", "alice").contains("alice"));
        assert_eq!(owner(None), None);
    }

    #[test]
    fn sessions_expire_and_their_state_is_bounded() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None)).with_max_age(Duration::ZERO);
        let mut old = state();
        old.issued = 1;
        let plaintext = serde_json::to_vec(&old).unwrap();
        let id = sessions.keys.seal(&plaintext).unwrap();
        assert!(
            sessions
                .open(&id, "/team/mcp/tools/server", Some("alice"))
                .is_none()
        );

        let mut big = state();
        big.client_info = Value::String("x".repeat(MAX_STATE_BYTES));
        assert!(matches!(sessions.mint(&big), Err(MintError::TooLarge(_))));
        let mut largest = state();
        largest.client_info = Value::String("x".repeat(MAX_STATE_BYTES - 400));
        let id = sessions.mint(&largest).unwrap();
        assert!(id.len() <= MAX_ID_LEN, "{} > {MAX_ID_LEN}", id.len());
    }
}
