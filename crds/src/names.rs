//! Names shared by the operator and the proxy: API group, labels, object names, URLs.

/// The API group of the four kinds.
pub const GROUP: &str = "mcpgate.dev";
/// The server-side apply field manager of the operator.
pub const FIELD_MANAGER: &str = "mcpgate-operator";

/// Label on every object the operator writes, so orphans can be found and pruned.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "mcpgate-operator";
/// Label saying what an operator-written object holds (`config`, `credentials`, `rbac`).
pub const LABEL_COMPONENT: &str = "mcpgate.dev/component";
/// [`LABEL_COMPONENT`] of the configuration's manifest and parts.
pub const COMPONENT_CONFIG: &str = "config";
/// [`LABEL_COMPONENT`] of the credential copies in the gateway namespace.
pub const COMPONENT_CREDENTIALS: &str = "credentials";
/// [`LABEL_COMPONENT`] of the proxy's session key Secret the operator creates.
pub const COMPONENT_SESSION_KEY: &str = "session-key";
/// Annotation naming the resource an operator-written object was rendered from.
pub const ANNOTATION_SOURCE: &str = "mcpgate.dev/source";

/// Label a Secret must carry (value `"true"`) before mcpgate reads it as a credential. The
/// operator watches only Secrets with this label.
pub const LABEL_CREDENTIAL: &str = "mcpgate.dev/credential";
/// Annotation of an opted-in Secret naming the McpServers (comma-separated, or `*`) whose
/// spec may use it, so that managing one server never reaches another server's Secret.
pub const ANNOTATION_ALLOWED_SERVERS: &str = "mcpgate.dev/allowed-servers";

/// Whether an opted-in Secret's `allowed-servers` annotation value admits `server`.
pub fn secret_allows_server(annotation: &str, server: &str) -> bool {
    annotation
        .split(',')
        .map(str::trim)
        .any(|name| name == "*" || name == server)
}

/// The ConfigMap (in the gateway namespace) holding the rendered gateway configuration.
pub const CONFIG_MAP_NAME: &str = "mcpgate-gateway-config";
/// The key of [`CONFIG_MAP_NAME`] holding the configuration as JSON.
pub const CONFIG_KEY: &str = "config.json";
/// The file name the standalone renderer writes the configuration to.
pub const CONFIG_FILE: &str = "config.json";
/// The folder (next to [`CONFIG_FILE`]) the standalone renderer writes credentials to.
pub const CREDENTIALS_DIR: &str = "credentials";

/// Path of a server or virtual server on the gateway: `/{namespace}/mcp/{name}/server`.
pub fn server_path(namespace: &str, name: &str) -> String {
    format!("/{namespace}/mcp/{name}/server")
}

/// Name of the Secret in the gateway namespace holding the credentials of one McpServer.
///
/// Namespaces cannot contain dots, so the first dot separates namespace from name and two
/// servers never share a Secret.
pub fn credential_secret_name(namespace: &str, server: &str) -> String {
    format!("mcpgate-cred.{namespace}.{server}")
}

/// Name of the Role and RoleBinding granting a Manager collaborator its rights.
pub fn manager_role_name(collaborator: &str) -> String {
    format!("mcpgate-manager.{collaborator}")
}

/// The exposed name of an upstream tool in a virtual server, when not renamed.
pub fn prefixed_tool_name(server: &str, tool: &str) -> String {
    format!("{server}_{tool}")
}

/// Whether `name` is a tool name every MCP client accepts: `[A-Za-z0-9_-]{1,64}`.
pub fn is_portable_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_do_not_collide_across_namespaces() {
        assert_ne!(
            credential_secret_name("a-b", "c"),
            credential_secret_name("a", "b-c")
        );
    }

    #[test]
    fn allowed_servers_are_names_or_a_star() {
        assert!(secret_allows_server("github, jira", "jira"));
        assert!(secret_allows_server("*", "anything"));
        assert!(!secret_allows_server("github", "git"));
        assert!(!secret_allows_server("github-*", "github-x"), "no patterns");
        assert!(!secret_allows_server("", "github"));
    }

    #[test]
    fn portable_tool_names() {
        assert!(is_portable_tool_name("github_create-issue"));
        assert!(!is_portable_tool_name("fs.read"));
        assert!(!is_portable_tool_name(""));
        assert!(!is_portable_tool_name(&"x".repeat(65)));
        assert!(is_portable_tool_name(&"x".repeat(64)));
    }
}
