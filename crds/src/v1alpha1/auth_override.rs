//! `AuthOverride`: one user's own credential for one McpServer.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::CommonStatus;

/// A user's own credential for an McpServer whose API key is per user, pre-supplied by a
/// tenant admin instead of entered by the user on the gateway's `/-/connections` page. It
/// wins over a key the user entered. The oldest AuthOverride for one user and server wins.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mcpgate.dev",
    version = "v1alpha1",
    kind = "AuthOverride",
    namespaced,
    status = "CommonStatus",
    shortname = "authov",
    category = "mcpgate",
    doc = "A user's own credential (API key or headers) for one McpServer",
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.serverRef.name"),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
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
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuthOverrideSpec {
    /// The McpServer, in this namespace. Immutable: to give the user a credential for
    /// another server, create another AuthOverride.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.serverRef is immutable: delete this AuthOverride and create a new one for the other server"))]
    pub server_ref: ServerRef,
    /// The user this credential belongs to, as identified by the gateway (subject or email).
    #[schemars(length(min = 1, max = 512))]
    pub subject: String,
    /// The credential. With `key`, that value fills `{{API_KEY}}` in the server's header
    /// template. Without `key`, every key of the Secret is sent as a header of that name.
    /// The Secret must opt in: label `mcpgate.dev/credential: "true"` and annotation
    /// `mcpgate.dev/allowed-servers` naming the server (comma-separated, or `*`).
    pub secret_ref: OverrideSecretRef,
}

/// An McpServer in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    /// The McpServer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Secret in the same namespace, whole or one key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the API key; omit to send every key as a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}
