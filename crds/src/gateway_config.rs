//! The configuration the proxy runs: what the operator renders and writes into the gateway
//! namespace (or, standalone, into a directory).
//!
//! It holds no secret values: credentials are referenced by Secret name and key, and the
//! Secrets are written next to it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::{PkceMethod, SentToken, SubjectKind, Transport};

/// The schema version of [`GatewayConfig`]; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Every route the gateway serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// [`SCHEMA_VERSION`] of the renderer that wrote this.
    pub schema: u32,
    /// Content hash of everything below, so the proxy and humans can tell versions apart.
    pub version: String,
    /// McpServers, sorted by namespace and name.
    pub servers: Vec<ServerConfig>,
    /// VirtualMcpServers, sorted by namespace and name.
    pub virtual_servers: Vec<VirtualServerConfig>,
}

/// One McpServer as the proxy serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// The McpServer's namespace (the tenant).
    pub namespace: String,
    /// The McpServer's name.
    pub name: String,
    /// `/{namespace}/mcp/{name}/server`.
    pub path: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// Which credential goes upstream.
    pub auth: UpstreamAuth,
    /// Which upstream tools are exposed.
    pub tools: ToolFilter,
    /// Per-request upstream timeout.
    pub timeout_ms: u64,
    /// Retries of failed upstream requests; None: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Budgets of tool calls.
    #[serde(default, skip_serializing_if = "RateLimits::is_empty")]
    pub rate_limits: RateLimits,
    /// When to stop sending to a failing upstream; None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// No inbound authentication.
    pub public: bool,
    /// Who may list and call tools.
    pub access: AccessList,
}

/// Where a server's requests go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Upstream {
    /// A remote MCP server.
    #[serde(rename_all = "camelCase")]
    Remote {
        /// The MCP endpoint.
        url: String,
        /// Its transport.
        transport: Transport,
    },
    /// An OpenAPI document served as tools.
    #[serde(rename_all = "camelCase")]
    OpenApi {
        /// The document.
        document: OpenApiDocument,
        /// Where operations are called.
        base_url: String,
    },
}

impl Upstream {
    /// The endpoint the proxy's tool census lists (`crate::discovered`), when the gateway can
    /// list it on its own behalf: a remote server called with the gateway's own credential
    /// (none, a shared API key, OAuth 2 client credentials). One person's tools would not
    /// stand for everyone's, so servers called with each caller's credential are not listed.
    pub fn census_url(&self, auth: &UpstreamAuth) -> Option<&str> {
        let own = matches!(
            auth,
            UpstreamAuth::None
                | UpstreamAuth::SharedApiKey { .. }
                | UpstreamAuth::OAuth2ClientCredentials { .. }
        );
        match self {
            Self::Remote { url, .. } if own => Some(url),
            _ => None,
        }
    }
}

/// An OpenAPI document: its text, or a URL the proxy fetches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OpenApiDocument {
    /// JSON or YAML text (from the resource or its ConfigMap).
    Inline(String),
    /// Fetched by the proxy.
    Url(String),
}

/// A value in a credential Secret in the gateway namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// Secret name in the gateway namespace.
    pub secret: String,
    /// Key in that Secret.
    pub key: String,
}

/// The outbound credential mode of a server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum UpstreamAuth {
    /// Nothing is sent.
    None,
    /// One API key for all callers.
    #[serde(rename_all = "camelCase")]
    SharedApiKey {
        /// Header carrying the key.
        header: String,
        /// Value template with `{{API_KEY}}`, if not the bare key.
        template: Option<String>,
        /// The key.
        credential: CredentialRef,
    },
    /// Each user's own API key.
    #[serde(rename_all = "camelCase")]
    PerUserApiKey {
        /// Header carrying the key.
        header: String,
        /// Value template with `{{API_KEY}}`, if not the bare key.
        template: Option<String>,
        /// Keys pre-supplied with AuthOverrides, by user.
        overrides: Vec<UserCredential>,
    },
    /// OAuth 2 authorization code with PKCE, one token per user.
    #[serde(rename_all = "camelCase")]
    OAuth2AuthorizationCode {
        /// Authorization endpoint, unless discovered from the provider's metadata.
        authorization_url: Option<String>,
        /// Token endpoint, unless discovered from the upstream.
        token_url: Option<String>,
        /// Client id, unless the gateway registers itself.
        client_id: Option<String>,
        /// Client secret, for confidential clients.
        client_secret: Option<CredentialRef>,
        /// Requested scopes.
        scopes: Vec<String>,
        /// PKCE method.
        pkce: PkceMethod,
        /// Dynamic client registration endpoint.
        registration_url: Option<String>,
        /// Which token is sent upstream.
        send_token: SentToken,
    },
    /// OAuth 2 client credentials: one token for the gateway.
    #[serde(rename_all = "camelCase")]
    OAuth2ClientCredentials {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: CredentialRef,
        /// Requested scopes.
        scopes: Vec<String>,
        /// Requested audience.
        audience: Option<String>,
    },
    /// The caller's token exchanged (RFC 8693) for the upstream's.
    #[serde(rename_all = "camelCase")]
    TokenExchange {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Option<CredentialRef>,
        /// Requested audience.
        audience: Option<String>,
        /// Requested scopes.
        scopes: Vec<String>,
    },
    /// The caller's own token is forwarded (explicit opt-in).
    Passthrough,
}

impl UpstreamAuth {
    /// Whether each caller's own credential is sent (so the gateway needs to know who calls).
    pub fn per_user(&self) -> bool {
        matches!(
            self,
            Self::PerUserApiKey { .. } | Self::OAuth2AuthorizationCode { .. }
        )
    }
}

/// A user's own credential for a server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCredential {
    /// The user, as the gateway identifies callers.
    pub user: String,
    /// Where the value is.
    pub credential: CredentialRef,
    /// How the value is used.
    pub form: CredentialForm,
}

/// How a stored user credential is sent.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum CredentialForm {
    /// The value fills `{{API_KEY}}` in the server's header template.
    ApiKey,
    /// The value is a JSON object of header name -> value.
    Headers,
}

/// Which upstream tools are exposed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolFilter {
    /// Exposed upstream tools; empty means all.
    pub allow: Vec<String>,
    /// Never exposed.
    pub deny: Vec<String>,
}

impl ToolFilter {
    /// Whether the upstream tool `name` is exposed.
    pub fn permits(&self, name: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|a| a == name))
            && !self.deny.iter().any(|d| d == name)
    }
}

/// Retries of failed upstream requests (see `McpServer.spec.retry`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt; 0: none.
    pub attempts: u32,
    /// Wait before the first retry, doubled after each (with jitter).
    pub backoff_ms: u64,
    /// Retries may add at most this percentage of the server's requests.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
}

fn default_budget_percent() -> u32 {
    20
}

/// Budgets of tool calls (see `McpServer.spec.rateLimits`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Per caller identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<RateLimit>,
    /// For all callers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_server: Option<RateLimit>,
    /// Per upstream tool, for all callers together; sorted by tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_tool: Vec<ToolRateLimit>,
}

impl RateLimits {
    /// Whether no budget is set.
    pub fn is_empty(&self) -> bool {
        self.per_user.is_none() && self.per_server.is_none() && self.per_tool.is_empty()
    }
}

/// `requests` per `period_seconds`: a token bucket holding `requests`, refilled evenly.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per period.
    pub requests: u32,
    /// Period length.
    pub period_seconds: u32,
}

/// The budget of one upstream tool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRateLimit {
    /// The upstream tool's name.
    pub tool: String,
    /// Its budget.
    pub limit: RateLimit,
}

/// When to stop sending to a failing upstream (see `McpServer.spec.circuitBreaker`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// How long it stays open before one request probes the upstream.
    pub open_ms: u64,
}

/// Who may list and call a server's or virtual server's tools.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessList {
    /// Sorted, without duplicates. ServiceAccounts are named
    /// `system:serviceaccount:<namespace>:<name>`.
    pub subjects: Vec<AccessSubject>,
}

/// One subject with access.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AccessSubject {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// The name the caller's identity is matched against.
    pub name: String,
}

/// One VirtualMcpServer as the proxy serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServerConfig {
    /// The namespace (the tenant).
    pub namespace: String,
    /// The VirtualMcpServer's name.
    pub name: String,
    /// `/{namespace}/mcp/{name}/server`.
    pub path: String,
    /// Shown to people.
    pub description: Option<String>,
    /// Returned to clients at initialization.
    pub instructions: Option<String>,
    /// The selected tools, by server (McpServers of the same namespace).
    pub members: Vec<VirtualMember>,
    /// No inbound authentication.
    #[serde(default)]
    pub public: bool,
    /// Who may list and call tools.
    pub access: AccessList,
}

/// The tools a virtual server takes from one McpServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMember {
    /// The McpServer's name (same namespace as the virtual server).
    pub server: String,
    /// Every tool the server exposes, named `<server>_<tool>` unless in `tools`.
    pub all: bool,
    /// Upstream tool name -> exposed name.
    pub tools: BTreeMap<String, String>,
}
