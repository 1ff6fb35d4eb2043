//! `VirtualMcpServer`: a curated bundle of tools from several McpServers.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::ServerStatus;
use super::rules;

/// A bundle of tools taken from McpServers in the same namespace, served at its own URL
/// `/{namespace}/mcp/{name}/server`. Tools are exposed as `<server>_<tool>` unless renamed;
/// each call goes to its own upstream with that upstream's credentials.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mcpgate.dev",
    version = "v1alpha1",
    kind = "VirtualMcpServer",
    namespaced,
    status = "ServerStatus",
    shortname = "vmcps",
    category = "mcpgate",
    doc = "A curated bundle of tools from several McpServers, served at its own gateway URL",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.toolCount"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(rules::SERVER_NAME).message(rules::SERVER_NAME_MESSAGE),
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMcpServerSpec {
    /// What this bundle is for, shown to people browsing the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Instructions returned to MCP clients at initialization, in place of the upstreams'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub instructions: Option<String>,
    /// The tools in the bundle, by server; each server appears once.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["server"]))]
    pub tools: Vec<ToolSelection>,
    /// Serve this bundle without inbound authentication: anyone who can reach the gateway
    /// can list and call its tools. Independent of its servers' own `public`. Defaults to
    /// false.
    #[serde(default)]
    pub public: bool,
}

/// Tools taken from one McpServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.tools.all(t, t == '*' || (has(self.rename) && t in self.rename) || (size(self.server) + size(t) < 64 && t.matches('^[A-Za-z0-9_-]+$')))").message("a selected tool's exposed name <server>_<tool> must match [A-Za-z0-9_-] and be at most 64 characters: add it to rename").field_path(".tools").reason(kube::core::Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct ToolSelection {
    /// Name of an McpServer in this namespace.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub server: String,
    /// Upstream tool names to include, or `"*"` for every tool the server exposes.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 128),
            regex(pattern = r"^(\*|[A-Za-z0-9_./-]+)$")
        )
    )]
    pub tools: Vec<String>,
    /// Exposed names for upstream tools: upstream name -> full exposed name (replacing
    /// `<server>_<tool>`), matching `[A-Za-z0-9_-]{1,64}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rename_schema")]
    pub rename: BTreeMap<String, String>,
}

fn rename_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 256,
        "additionalProperties": {
            "type": "string",
            "maxLength": 64,
            "pattern": rules::TOOL_NAME_PATTERN,
        },
    })
}
