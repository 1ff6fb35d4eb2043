//! Condition types and reasons, in one place. Reasons are CamelCase and say what to fix.

/// The spec is valid and takes effect.
pub const ACCEPTED: &str = "Accepted";
/// Every object the resource references exists and holds what it needs.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// The resource is in the gateway configuration, complete.
pub const READY: &str = "Ready";
/// Not Ready yet, and expected to become Ready without an edit: it waits for something it
/// references to appear (kstatus, Flux, Argo CD: in progress). An absent or older
/// `observedGeneration` says the operator has not seen the current generation at all.
pub const RECONCILING: &str = "Reconciling";
/// Cannot become Ready until its spec is changed (kstatus and Flux: failed; Argo CD:
/// Degraded). Carries the Ready condition's reason and message.
pub const STALLED: &str = "Stalled";

/// Positive reasons.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Accepted, but forwards callers' tokens upstream (the MCP spec forbids it by default).
pub const REASON_PASSTHROUGH_ENABLED: &str = "AcceptedWithTokenPassthrough";
/// Every reference resolved.
pub const REASON_RESOLVED: &str = "ResolvedRefs";
/// In the configuration.
pub const REASON_READY: &str = "Ready";
/// The current generation is rendered and its status written.
pub const REASON_RECONCILED: &str = "Reconciled";

/// An McpServer and a VirtualMcpServer share a name in one namespace.
pub const REASON_ROUTE_CONFLICT: &str = "RouteConflict";
/// Two tools of a virtual server get the same exposed name.
pub const REASON_TOOL_NAME_COLLISION: &str = "ToolNameCollision";
/// An exposed tool name breaks the `[A-Za-z0-9_-]{1,64}` rule.
pub const REASON_INVALID_TOOL_NAME: &str = "InvalidToolName";
/// A spec value the schema could not check is invalid.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// An AuthOverride names a server whose credentials are not per-user API keys.
pub const REASON_OVERRIDE_NOT_APPLICABLE: &str = "ServerNotPerUserApiKey";

/// A referenced Secret does not exist.
pub const REASON_SECRET_NOT_FOUND: &str = "SecretNotFound";
/// A referenced Secret exists but has not opted in for this server (label
/// `mcpgate.dev/credential` and annotation `mcpgate.dev/allowed-servers`).
pub const REASON_SECRET_NOT_OPTED_IN: &str = "SecretNotOptedIn";
/// A referenced Secret lacks the key.
pub const REASON_SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
/// A referenced ConfigMap (or its key) does not exist.
pub const REASON_CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
/// A collaborator's or override's target does not exist.
pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
/// A virtual server names an McpServer that does not exist.
pub const REASON_UNKNOWN_SERVER: &str = "UnknownServer";
/// A virtual server names a tool its server does not expose.
pub const REASON_UNKNOWN_TOOL: &str = "UnknownTool";
/// A virtual server's member server is not ready.
pub const REASON_SERVER_NOT_READY: &str = "ServerNotReady";

/// Valid, but uses a field this gateway build does not serve yet.
pub const REASON_NOT_SERVED: &str = "NotServed";
/// Not ready because the spec was not accepted.
pub const REASON_NOT_ACCEPTED: &str = "NotAccepted";
/// Not ready because references did not resolve.
pub const REASON_REFS_NOT_RESOLVED: &str = "RefsNotResolved";
/// A virtual server serves some of its members only.
pub const REASON_DEGRADED: &str = "Degraded";
/// Two AuthOverrides give the same user a credential for the same server.
pub const REASON_DUPLICATE_OVERRIDE: &str = "DuplicateOverride";
