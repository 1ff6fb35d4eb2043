//! Tool discovery: which tools a server's upstream offers, as the proxy learnt them (it lists
//! them itself), written into a ConfigMap of the gateway namespace that the operator reads.
//! So the operator never calls an upstream, the proxy never reads a tenant namespace, and
//! `status.toolCount`, `kubectl get`'s TOOLS and the UnknownTool and ToolNameCollision checks
//! work for servers without an allow list.

use k8s_openapi::api::core::v1::ConfigMap;
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
    /// The endpoint that was listed: a record of another endpoint than the server's now is
    /// not used.
    pub upstream: String,
    /// Its upstream's tool names, sorted, without duplicates; None when the list could not be
    /// recorded (more than [`MAX_TOOLS`], or a name empty or longer than [`MAX_TOOL_NAME`]),
    /// which makes the tools unknown rather than cut.
    pub tools: Option<Vec<String>>,
}

impl DiscoveredTools {
    /// A record of `tools` listed at `upstream`.
    pub fn new(namespace: &str, server: &str, upstream: &str, mut tools: Vec<String>) -> Self {
        tools.sort();
        tools.dedup();
        let usable = tools.len() <= MAX_TOOLS
            && tools
                .iter()
                .all(|t| !t.is_empty() && t.len() <= MAX_TOOL_NAME);
        Self {
            namespace: namespace.to_owned(),
            server: server.to_owned(),
            upstream: upstream.to_owned(),
            tools: usable.then_some(tools),
        }
    }

    /// The record in `json` when it is one [`Self::new`] could have made.
    pub fn parse(json: &str) -> Option<Self> {
        let record: Self = serde_json::from_str(json).ok()?;
        let well_formed = match &record.tools {
            None => true,
            Some(tools) => {
                Self::new(
                    &record.namespace,
                    &record.server,
                    &record.upstream,
                    tools.clone(),
                ) == record
            }
        };
        well_formed.then_some(record)
    }

    /// The record `config_map` holds, when it reads well and the ConfigMap bears the name of
    /// the server it describes (a record cannot speak for another server).
    pub fn read(config_map: &ConfigMap) -> Option<Self> {
        let record = Self::parse(config_map.data.as_ref()?.get(TOOLS_KEY)?)?;
        (config_map.metadata.name.as_deref()
            == Some(config_map_name(&record.namespace, &record.server).as_str()))
        .then_some(record)
    }

    /// The tools, when this record is of `upstream` and holds them.
    pub fn of(&self, upstream: &str) -> Option<&[String]> {
        self.tools.as_deref().filter(|_| self.upstream == upstream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_are_sorted_bounded_and_checked_when_read() {
        let url = "https://mcp.example.com/mcp";
        let record =
            DiscoveredTools::new("team", "web", url, vec!["b".into(), "a".into(), "b".into()]);
        assert_eq!(record.of(url).unwrap(), ["a", "b"]);
        assert!(record.of("https://elsewhere.example.com/mcp").is_none());
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(DiscoveredTools::parse(&json), Some(record));

        // Lists that cannot be recorded make the tools unknown.
        assert!(
            DiscoveredTools::new("t", "s", url, vec![String::new()])
                .tools
                .is_none()
        );
        let long = DiscoveredTools::new("t", "s", url, vec!["x".repeat(MAX_TOOL_NAME + 1)]);
        assert!(long.of(url).is_none());
        let many = (0..=MAX_TOOLS).map(|i| format!("t{i}")).collect();
        let many = DiscoveredTools::new("t", "s", url, many);
        assert!(many.tools.is_none());
        assert_eq!(
            DiscoveredTools::parse(&serde_json::to_string(&many).unwrap()),
            Some(many)
        );
        // Written by hand, unsorted: refused.
        assert!(
            DiscoveredTools::parse(
                r#"{"namespace":"t","server":"s","upstream":"u","tools":["b","a"]}"#
            )
            .is_none()
        );
        assert!(DiscoveredTools::parse("not json").is_none());
    }

    #[test]
    fn a_record_counts_only_under_its_own_server_s_name() {
        let config_map = |name: &str, json: &str| ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(std::collections::BTreeMap::from([(
                TOOLS_KEY.to_owned(),
                json.to_owned(),
            )])),
            ..Default::default()
        };
        let json = r#"{"namespace":"team","server":"web","upstream":"u","tools":["a","b"]}"#;
        let record = DiscoveredTools::read(&config_map("mcpgate-tools.team.web", json)).unwrap();
        assert_eq!(record.of("u").unwrap(), ["a", "b"]);
        assert!(DiscoveredTools::read(&config_map("mcpgate-tools.team.other", json)).is_none());
        assert!(DiscoveredTools::read(&config_map("mcpgate-tools.team.web", "{}")).is_none());
    }
}
