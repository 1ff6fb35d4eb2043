//! Sessions the gateway terminates. A client's `Mcp-Session-Id` is the sealed
//! [`SessionState`]: which route it belongs to, what the client said at `initialize` (so an
//! upstream session can be re-opened for it) and the upstream sessions opened for it. Any
//! replica holding the key, and a restarted proxy, continues the session.
//!
//! An upstream session re-opened after the upstream forgot it (404) cannot be written back
//! into the client's id; the replacement is remembered by this replica, and another replica
//! re-opens its own the same way. Likewise a session the client ended with DELETE is
//! refused (404) by the replica that ended it; another replica finds the upstream sessions
//! gone and opens fresh ones.

pub mod keys;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use keys::{KeyError, SessionKeys};

/// Re-opened upstream sessions remembered per replica, at most this many (the oldest are
/// forgotten first; forgetting one only costs another re-open).
const REOPENED_CAPACITY: usize = 65_536;

/// Ended sessions remembered per replica, at most this many (8 bytes each).
const ENDED_CAPACITY: usize = 262_144;
/// Open GET streams tracked before closed ones are swept out.
const STREAMS_SWEEP: usize = 4_096;

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
#[derive(Debug)]
pub struct Sessions {
    keys: SessionKeys,
    local: Mutex<Local>,
    /// Hashes ended ids (keyed per process, so ids cannot be chosen to collide).
    hasher: std::collections::hash_map::RandomState,
}

/// What this replica remembers beyond the sealed ids.
#[derive(Debug, Default)]
struct Local {
    reopened: HashMap<(String, String), UpstreamSession>,
    reopened_order: VecDeque<(String, String)>,
    ended: HashSet<u64>,
    ended_order: VecDeque<u64>,
    /// The open GET stream of each session, ended when a new one replaces it.
    streams: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl Sessions {
    /// Sessions sealed with `keys`.
    pub fn new(keys: SessionKeys) -> Self {
        Self {
            keys,
            local: Mutex::default(),
            hasher: Default::default(),
        }
    }

    /// A new session id holding `state`.
    pub fn mint(&self, state: &SessionState) -> Result<String, KeyError> {
        let plaintext = serde_json::to_vec(state).map_err(|_| KeyError::Random)?;
        self.keys.seal(&plaintext)
    }

    /// The state in `id`, if this gateway minted it for `route` and it was not ended here.
    pub fn open(&self, id: &str, route: &str) -> Option<SessionState> {
        let state: SessionState = serde_json::from_slice(&self.keys.open(id)?).ok()?;
        let ended = self.lock().ended.contains(&self.hasher.hash_one(id));
        (state.route == route && !ended).then_some(state)
    }

    /// The upstream session to use for `server` in client session `id`: a replacement this
    /// replica opened, else the sealed one.
    pub fn upstream(
        &self,
        id: &str,
        state: &SessionState,
        server: &str,
    ) -> Option<UpstreamSession> {
        let key = (id.to_owned(), server.to_owned());
        if let Some(found) = self.lock().reopened.get(&key) {
            return Some(found.clone());
        }
        state.upstream(server).cloned()
    }

    /// Remembers that `server`'s session for client session `id` is now `session`.
    pub fn reopened(&self, id: &str, session: UpstreamSession) {
        let key = (id.to_owned(), session.server.clone());
        let mut local = self.lock();
        if local.reopened.insert(key.clone(), session).is_none() {
            local.reopened_order.push_back(key);
        }
        while local.reopened_order.len() > REOPENED_CAPACITY {
            if let Some(old) = local.reopened_order.pop_front() {
                local.reopened.remove(&old);
            }
        }
    }

    /// Registers a new GET stream for client session `id`, ending the one it had on this
    /// replica; the returned receiver fires when this stream is replaced in turn or the
    /// session ends.
    pub fn open_stream(&self, id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (replaced, receiver) = tokio::sync::oneshot::channel();
        let mut local = self.lock();
        if let Some(previous) = local.streams.insert(self.hasher.hash_one(id), replaced) {
            let _ = previous.send(());
        }
        if local.streams.len() >= STREAMS_SWEEP && local.streams.len().is_power_of_two() {
            local.streams.retain(|_, s| !s.is_closed());
        }
        receiver
    }

    /// Ends client session `id`: this replica refuses it from now on, ends its GET stream
    /// and forgets what it re-opened for it.
    pub fn end(&self, id: &str) {
        let hash = self.hasher.hash_one(id);
        let mut local = self.lock();
        if let Some(stream) = local.streams.remove(&hash) {
            let _ = stream.send(());
        }
        local.reopened.retain(|(sid, _), _| sid != id);
        local.reopened_order.retain(|(sid, _)| sid != id);
        if local.ended.insert(hash) {
            local.ended_order.push_back(hash);
        }
        while local.ended_order.len() > ENDED_CAPACITY {
            if let Some(old) = local.ended_order.pop_front() {
                local.ended.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn a_session_opens_only_on_its_own_route() {
        let sessions = Sessions::new(SessionKeys::new([3; 32], None));
        let id = sessions.mint(&state()).unwrap();
        assert_eq!(sessions.open(&id, "/team/mcp/tools/server"), Some(state()));
        assert_eq!(sessions.open(&id, "/other/mcp/tools/server"), None);
    }

    #[test]
    fn a_second_replica_with_the_key_opens_it() {
        let a = Sessions::new(SessionKeys::new([3; 32], None));
        let b = Sessions::new(SessionKeys::new([3; 32], None));
        let id = a.mint(&state()).unwrap();
        assert_eq!(b.open(&id, "/team/mcp/tools/server"), Some(state()));
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
        assert_eq!(sessions.open(&id, "/team/mcp/tools/server"), None);
        assert_eq!(
            sessions.open(&other, "/team/mcp/tools/server"),
            Some(state())
        );
    }
}
