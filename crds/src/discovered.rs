//! Tool discovery: which tools a server's upstream offers, as the proxy learnt them (it lists
//! them itself), written into a ConfigMap of the gateway namespace that the operator reads.
//! So the operator never calls an upstream, the proxy never reads a tenant namespace, and
//! `status.toolCount`, `kubectl get`'s TOOLS and the UnknownTool and ToolNameCollision checks
//! work for servers without an allow list.

use serde::{Deserialize, Serialize};

/// The ConfigMap key holding a [`DiscoveredTools`] as JSON.
pub const TOOLS_KEY: &str = "tools.json";
/// The `mcpgate.dev/component` label value of these ConfigMaps.
pub const COMPONENT_TOOLS: &str = "tools";
/// The `app.kubernetes.io/managed-by` label value of what the proxy writes.
pub const MANAGED_BY_PROXY: &str = "mcpgate-proxy";
/// The most tools recorded for one server; a server offering more is not recorded.
pub const MAX_TOOLS: usize = 2000;
/// The longest tool name recorded; a list with a longer one is not recorded.
pub const MAX_TOOL_NAME: usize = 256;

/// The ConfigMap of server `namespace/server`.
pub fn config_map_name(namespace: &str, server: &str) -> String {
    format!("mcpgate-tools.{namespace}.{server}")
}

/// What was learnt of one server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredTools {
    /// The McpServer's namespace.
    pub namespace: String,
    /// The McpServer.
    pub server: String,
    /// Its upstream's tool names, sorted, without duplicates.
    pub tools: Vec<String>,
}

impl DiscoveredTools {
    /// A record of `tools`, or None when there are more than [`MAX_TOOLS`] or one is empty or
    /// longer than [`MAX_TOOL_NAME`] (such lists are left unrecorded rather than cut).
    pub fn new(namespace: &str, server: &str, mut tools: Vec<String>) -> Option<Self> {
        tools.sort();
        tools.dedup();
        let usable = tools.len() <= MAX_TOOLS
            && tools
                .iter()
                .all(|t| !t.is_empty() && t.len() <= MAX_TOOL_NAME);
        usable.then(|| Self {
            namespace: namespace.to_owned(),
            server: server.to_owned(),
            tools,
        })
    }

    /// The record in `json` when it is one [`Self::new`] could have made.
    pub fn parse(json: &str) -> Option<Self> {
        let record: Self = serde_json::from_str(json).ok()?;
        Self::new(&record.namespace, &record.server, record.tools.clone())
            .filter(|checked| *checked == record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_are_sorted_bounded_and_checked_when_read() {
        let record =
            DiscoveredTools::new("team", "web", vec!["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(record.tools, ["a", "b"]);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(DiscoveredTools::parse(&json), Some(record));

        assert!(DiscoveredTools::new("t", "s", vec![String::new()]).is_none());
        assert!(DiscoveredTools::new("t", "s", vec!["x".repeat(MAX_TOOL_NAME + 1)]).is_none());
        let many = (0..=MAX_TOOLS).map(|i| format!("t{i}")).collect();
        assert!(DiscoveredTools::new("t", "s", many).is_none());
        // Written by hand, unsorted: refused.
        assert!(
            DiscoveredTools::parse(r#"{"namespace":"t","server":"s","tools":["b","a"]}"#).is_none()
        );
        assert!(DiscoveredTools::parse("not json").is_none());
    }
}
