//! What each member of each virtual server last listed, kept for callers a member cannot
//! list for yet (see `virtual_server::listing`).

use std::time::Duration;

use serde_json::Value;

use crate::source::Member;

/// The tools each member of each virtual server last listed (as the virtual server exposes
/// them), by virtual server and member configuration: what a caller sees of a member that
/// needs a credential they have not supplied yet. Upstreams that list tools differently per
/// user show such a caller the last lister's tool names until they connect.
pub struct Listed(moka::sync::Cache<String, std::sync::Arc<Vec<Value>>>);

impl Default for Listed {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        )
    }
}

impl Listed {
    /// The key of `member`'s `method` list on virtual server `route`, under the member's
    /// current configuration (a changed member starts afresh).
    pub fn key(&self, route: &str, member: &Member, method: &str) -> String {
        let config = crate::outbound::config_key(&member.server);
        format!(
            "{route}\0{}\0{method}\0{}",
            member.name(),
            base16ct::lower::encode_string(&config)
        )
    }

    /// Keeps what the member listed (unless it is what is kept already).
    pub fn keep(&self, key: String, items: &[Value]) {
        let same = self
            .0
            .get(&key)
            .is_some_and(|kept| kept.as_slice() == items);
        if !same {
            self.0.insert(key, std::sync::Arc::new(items.to_vec()));
        }
    }

    /// What was kept under `key`.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<Vec<Value>>> {
        self.0.get(key)
    }
}
