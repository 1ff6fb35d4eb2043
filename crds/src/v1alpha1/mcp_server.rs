//! `McpServer`: one upstream MCP server and how the gateway reaches it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ConfigMapKeyRef, SecretKeyRef, ServerStatus};
use super::rules;

/// An upstream MCP server served by the gateway at `/{namespace}/mcp/{name}/server`.
///
/// The upstream is either a remote MCP server (`spec.remote`) or an OpenAPI document whose
/// operations become tools (`spec.openapi`). `spec.auth` says which credential the gateway
/// sends upstream; callers never see it.
///
/// Served today: `spec.remote` with auth `None`, `ApiKey` (shared or per user),
/// `OAuth2AuthorizationCode`, `OAuth2ClientCredentials` or `Passthrough`, with `retry`,
/// `rateLimits` and `circuitBreaker`. A server that sets a field still being built
/// (`spec.openapi`) is accepted but not served: it reports `Ready=False` with reason
/// `NotServed` naming the field, and no credential is copied.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mcpgate.dev",
    version = "v1alpha1",
    kind = "McpServer",
    namespaced,
    status = "ServerStatus",
    shortname = "mcps",
    category = "mcpgate",
    doc = "An upstream MCP server (remote URL or OpenAPI document) served by the gateway",
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
    printcolumn(name = "Auth", type_ = "string", json_path = ".spec.auth.type", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(rules::SERVER_NAME).message(rules::SERVER_NAME_MESSAGE),
)]
#[x_kube(validation = Rule::new("has(self.remote) != has(self.openapi)").message("set exactly one of spec.remote (an MCP server URL) or spec.openapi (an OpenAPI document)").field_path(".remote").reason(kube::core::Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct McpServerSpec {
    /// What this server offers, shown to people browsing the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// A remote MCP server reached over Streamable HTTP (or legacy HTTP+SSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteSource>,

    /// An OpenAPI 3 document whose operations become MCP tools. Not served yet: reports
    /// `Ready=False` with reason `NotServed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiSource>,

    /// The credential the gateway sends upstream. Defaults to `type: None`.
    #[serde(default)]
    pub auth: OutboundAuth,

    /// Which upstream tools the gateway exposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolFilter>,

    /// Seconds the gateway waits for the upstream to answer one request before it returns a
    /// JSON-RPC error naming this server.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,

    /// Retries of upstream requests that failed before the upstream could act on them. Off
    /// when absent. Not served with `remote.transport: Sse` (reports `NotServed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Budgets of tool calls, answered HTTP 429 with `Retry-After` when spent. Each gateway
    /// replica keeps its own budgets: with N replicas, up to N times the budget is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,

    /// Stop sending to an upstream that keeps failing, for a while: calls fail at once with
    /// an error naming this server, and a virtual server serves its other members. Off when
    /// absent. Not served with `remote.transport: Sse` (reports `NotServed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,

    /// Serve this server without inbound authentication. Anyone who can reach the gateway
    /// can list and call its tools. Defaults to false.
    #[serde(default)]
    pub public: bool,
}

fn default_timeout_seconds() -> i32 {
    30
}

/// A remote MCP server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteSource {
    /// The server's MCP endpoint, e.g. `https://mcp.example.com/mcp` or
    /// `http://github-mcp.tools.svc:8080/mcp`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::HTTP_URL).message(rules::HTTP_URL_MESSAGE))]
    pub url: String,
    /// `StreamableHttp` (default) or `Sse` for servers that only speak the legacy HTTP+SSE
    /// transport.
    #[serde(default)]
    pub transport: Transport,
}

/// The MCP transport an upstream speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Transport {
    /// Streamable HTTP (MCP 2025-03-26 and later).
    #[default]
    StreamableHttp,
    /// The legacy HTTP+SSE transport (MCP 2024-11-05).
    Sse,
}

/// An OpenAPI 3 document and the API it describes (not served yet).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.inline), has(self.configMapKeyRef), has(self.url)].filter(x, x).size() == 1").message("set exactly one of spec.openapi.inline, spec.openapi.configMapKeyRef or spec.openapi.url").reason(kube::core::Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct OpenApiSource {
    /// The document itself, as JSON or YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub inline: Option<String>,
    /// A ConfigMap key holding the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    /// A URL the gateway fetches the document from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(rules::HTTP_URL).message(rules::HTTP_URL_MESSAGE))]
    pub url: Option<String>,
    /// Base URL of the API the operations are called on, e.g. `https://api.example.com/v1`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::HTTP_URL).message(rules::HTTP_URL_MESSAGE))]
    pub base_url: String,
}

/// The outbound credential mode. Exactly the block named by `type` is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.type == 'ApiKey' ? has(self.apiKey) : !has(self.apiKey)").message("spec.auth.apiKey is required when spec.auth.type is ApiKey and must be absent otherwise").field_path(".apiKey").reason(kube::core::Reason::FieldValueInvalid),
    validation = Rule::new("self.type == 'OAuth2AuthorizationCode' ? has(self.oauth2AuthorizationCode) : !has(self.oauth2AuthorizationCode)").message("spec.auth.oauth2AuthorizationCode is required when spec.auth.type is OAuth2AuthorizationCode and must be absent otherwise").field_path(".oauth2AuthorizationCode").reason(kube::core::Reason::FieldValueInvalid),
    validation = Rule::new("self.type == 'OAuth2ClientCredentials' ? has(self.oauth2ClientCredentials) : !has(self.oauth2ClientCredentials)").message("spec.auth.oauth2ClientCredentials is required when spec.auth.type is OAuth2ClientCredentials and must be absent otherwise").field_path(".oauth2ClientCredentials").reason(kube::core::Reason::FieldValueInvalid),
    validation = Rule::new("self.type == 'TokenExchange' ? has(self.tokenExchange) : !has(self.tokenExchange)").message("spec.auth.tokenExchange is required when spec.auth.type is TokenExchange and must be absent otherwise").field_path(".tokenExchange").reason(kube::core::Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct OutboundAuth {
    /// `None`, `ApiKey`, `OAuth2AuthorizationCode`, `OAuth2ClientCredentials`,
    /// `TokenExchange` or `Passthrough`. Passthrough forwards the caller's own token upstream, which the MCP
    /// specification forbids (token passthrough); choose it only for upstreams that
    /// validate the gateway's audience themselves.
    #[serde(rename = "type", default)]
    pub mode: AuthMode,
    /// Settings for `type: ApiKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// Settings for `type: OAuth2AuthorizationCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_authorization_code: Option<OAuth2AuthorizationCode>,
    /// Settings for `type: OAuth2ClientCredentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<OAuth2ClientCredentials>,
    /// Settings for `type: TokenExchange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
}

/// How the gateway authenticates to an upstream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AuthMode {
    /// No credential is sent.
    #[default]
    None,
    /// An API key in a header: one shared key, or each user's own key (from an
    /// AuthOverride, or entered by the user on the gateway's `/-/connections` page).
    ApiKey,
    /// Each user authorizes the gateway once (OAuth 2 authorization code with PKCE) on the
    /// gateway's `/-/connections` page (which needs sign-in at the gateway); the gateway
    /// stores their tokens sealed, refreshes them, and answers a call that needs a missing
    /// authorization with HTTP 401 `McpAuthRequiredError` naming that page.
    OAuth2AuthorizationCode,
    /// The gateway obtains its own token with the OAuth 2 client credentials grant, keeps it
    /// until shortly before it expires, and renews it once when the upstream answers 401.
    OAuth2ClientCredentials,
    /// The caller's own bearer token is exchanged (RFC 8693) for one meant for this upstream,
    /// kept per caller until shortly before it expires: the safe alternative to
    /// `Passthrough`.
    TokenExchange,
    /// The caller's own bearer token is forwarded (explicit opt-in; see `type`).
    Passthrough,
}

/// An API key sent in a request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.scope == 'Shared' ? has(self.secretKeyRef) : !has(self.secretKeyRef)").message("spec.auth.apiKey.secretKeyRef is required for scope Shared and must be absent for scope PerUser (each user's key comes from an AuthOverride or the gateway's prompt)").field_path(".secretKeyRef").reason(kube::core::Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.valueTemplate) || self.valueTemplate.contains('{{API_KEY}}')").message("spec.auth.apiKey.valueTemplate must contain {{API_KEY}}, e.g. 'Bearer {{API_KEY}}'").field_path(".valueTemplate").reason(kube::core::Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// `Shared`: every caller uses the key in `secretKeyRef`. `PerUser`: each user's own key,
    /// from an AuthOverride or entered on the gateway's `/-/connections` page (which needs
    /// sign-in at the gateway); a call without one is answered HTTP 401
    /// `McpAuthRequiredError` naming that page.
    #[serde(default)]
    pub scope: ApiKeyScope,
    /// Header that carries the key, e.g. `Authorization` or `X-API-Key`.
    #[serde(default = "default_header_name")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header_name: String,
    /// How the header value is built from the key; `{{API_KEY}}` is replaced by the key,
    /// e.g. `Bearer {{API_KEY}}`. Defaults to the bare key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value_template: Option<String>,
    /// The shared key (scope `Shared` only). The Secret must opt in: label
    /// `mcpgate.dev/credential: "true"` and annotation `mcpgate.dev/allowed-servers` naming
    /// this server (comma-separated names, or `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

fn default_header_name() -> String {
    "Authorization".to_owned()
}

/// Whose API key is sent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ApiKeyScope {
    /// One key for all callers.
    #[default]
    Shared,
    /// Each user's own key.
    PerUser,
}

/// OAuth 2 authorization code grant with PKCE, one token per user: each user authorizes the
/// gateway at the provider once (on the gateway's connections page, which calls that need it
/// link to), and the gateway keeps their tokens, refreshes them and sends them upstream.
///
/// Every field may be left out for an upstream that follows the MCP authorization
/// specification: the gateway then learns the provider as an MCP client would, from the
/// upstream's `401` challenge and protected resource metadata (RFC 9728) and the provider's
/// metadata (RFC 8414 or OpenID discovery), picks the scopes the upstream asks for, and
/// registers itself (a client ID metadata document when the provider accepts one, else
/// dynamic client registration).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.clientSecretRef) || has(self.clientId)").message("spec.auth.oauth2AuthorizationCode.clientSecretRef needs the clientId it belongs to").field_path(".clientId").reason(kube::core::Reason::FieldValueRequired),
    validation = Rule::new("!has(self.clientSecretRef) || has(self.tokenUrl)").message("spec.auth.oauth2AuthorizationCode.clientSecretRef needs tokenUrl: the client secret is only ever sent to the token endpoint named here, never to one an upstream's metadata names").field_path(".tokenUrl").reason(kube::core::Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2AuthorizationCode {
    /// The provider's authorization endpoint (https, or http on loopback). When absent, the
    /// gateway reads it from the provider's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::OAUTH_URL).message(rules::OAUTH_URL_MESSAGE))]
    pub authorization_url: Option<String>,
    /// The provider's token endpoint (https, or http on loopback). When set, the provider's
    /// metadata is looked for on this URL's origin and must name it; when absent, the
    /// provider is the first authorization server the upstream's protected resource
    /// metadata names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::OAUTH_URL).message(rules::OAUTH_URL_MESSAGE))]
    pub token_url: Option<String>,
    /// The gateway's client id at the provider (pre-registered). When absent, the gateway
    /// registers itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub client_id: Option<String>,
    /// The client secret, for confidential clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// Scopes requested from the provider. When empty, the gateway asks for the scopes the
    /// upstream's challenge names, else those its protected resource metadata lists, plus
    /// `offline_access` when the provider offers it; a call the upstream refuses for want of
    /// a scope (`403 insufficient_scope`) asks the user to authorize again with it added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// PKCE method; only `S256` is allowed.
    #[serde(default)]
    pub pkce: PkceMethod,
    /// RFC 7591 dynamic client registration endpoint, used when no `clientId` is given;
    /// when absent too, the one the provider's metadata names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(rules::OAUTH_URL).message(rules::OAUTH_URL_MESSAGE))]
    pub registration_url: Option<String>,
    /// Which of the user's tokens goes upstream as `Authorization: Bearer`: the access
    /// token (the default), or the ID token for upstreams that take one (the scopes must then
    /// include `openid`).
    #[serde(default)]
    pub send_token: SentToken,
}

/// Which of a user's tokens is sent upstream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SentToken {
    /// The access token.
    #[default]
    AccessToken,
    /// The OpenID Connect ID token.
    IdToken,
}

/// OAuth 2 token exchange (RFC 8693): the caller's bearer token, as the subject token, is
/// exchanged at `tokenUrl` for a token whose audience is the upstream; the authorization
/// server must trust the caller's token issuer. Callers without a bearer token (a public
/// route) get an error saying so.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The provider's token endpoint (https, or http on loopback).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::OAUTH_URL).message(rules::OAUTH_URL_MESSAGE))]
    pub token_url: String,
    /// The gateway's client id there.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// The client secret, for a confidential client (HTTP Basic, or in the form when the
    /// server refuses Basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// The `audience` asked for; the `resource` asked for is always the upstream's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,
    /// Scopes asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
}

/// PKCE code challenge method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PkceMethod {
    /// SHA-256 code challenge (RFC 7636).
    #[default]
    S256,
}

/// OAuth 2 client credentials grant: one token for the gateway itself. The client
/// authenticates with HTTP Basic, or with the secret in the form when the server refuses
/// Basic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientCredentials {
    /// The provider's token endpoint (https, or http on loopback).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(rules::OAUTH_URL).message(rules::OAUTH_URL_MESSAGE))]
    pub token_url: String,
    /// The gateway's client id.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// The client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// Audience (resource indicator) requested for the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub audience: Option<String>,
}

/// Which upstream tools are exposed. A tool is exposed when `allow` is empty or names it,
/// and `deny` does not name it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolFilter {
    /// Upstream tool names to expose; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_./-]+$"))
    )]
    pub allow: Vec<String>,
    /// Upstream tool names never exposed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_./-]+$"))
    )]
    pub deny: Vec<String>,
}

/// Retries of failed upstream requests. A request is sent again only when it cannot have
/// been acted on twice: the connection failed before it was sent, or the upstream answered
/// 502, 503 or 504 to a request that reads (lists, reads, `initialize`, ...) or to a
/// `tools/call` of a tool the upstream annotates `idempotentHint` or `readOnlyHint`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Wait before the first retry; doubled for each further retry, with jitter.
    #[serde(default = "default_backoff_milliseconds")]
    #[schemars(range(min = 1, max = 60000))]
    pub backoff_milliseconds: i32,
    /// Retries may add at most this share of the server's requests (plus one retry a
    /// second), so retries cannot multiply the load on a failing upstream. Defaults to 20.
    #[serde(default = "default_budget_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub budget_percent: i32,
}

fn default_backoff_milliseconds() -> i32 {
    100
}

fn default_budget_percent() -> i32 {
    20
}

/// Budgets of tool calls (`tools/call`) on this server, through its own route and every
/// virtual server that bundles it. Each is a token bucket: `requests` at once, refilled
/// evenly over `periodSeconds`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Budget for each caller identity (each client address on a public server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<RateLimit>,
    /// Budget for all callers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_server: Option<RateLimit>,
    /// Budgets of single tools (upstream names), for all callers together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tool"]))]
    pub per_tool: Vec<ToolRateLimit>,
}

/// `requests` per `periodSeconds`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed in one period.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// Length of the period.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub period_seconds: i32,
}

/// The budget of one tool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRateLimit {
    /// The upstream tool's name.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_./-]+$"))]
    pub tool: String,
    /// Calls allowed in one period.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// Length of the period.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub period_seconds: i32,
}

/// When the gateway stops sending to a failing upstream. A failure is a connection that
/// fails, an answer that does not come within `timeoutSeconds`, or an HTTP 5xx answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failures in a row that open the circuit. Defaults to 5.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: i32,
    /// Seconds the circuit stays open; then one request probes the upstream, and its success
    /// closes the circuit. Defaults to 30.
    #[serde(default = "default_open_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub open_seconds: i32,
}

fn default_consecutive_failures() -> i32 {
    5
}

fn default_open_seconds() -> i32 {
    30
}

fn default_period_seconds() -> i32 {
    60
}
