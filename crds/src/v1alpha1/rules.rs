//! CEL rules and their messages, shared by the kinds that embed them in their schemas.

/// Names of McpServers and VirtualMcpServers prefix tool names (`<server>_<tool>`, at most
/// 64 characters), so they are kept short.
pub const SERVER_NAME: &str = "self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// Message for [`SERVER_NAME`].
pub const SERVER_NAME_MESSAGE: &str = "metadata.name must be a DNS label of at most 40 characters (lowercase letters, digits, '-'): it prefixes tool names, which MCP clients limit to 64";

/// An absolute http or https URL.
pub const HTTP_URL: &str =
    "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''";
/// Message for [`HTTP_URL`].
pub const HTTP_URL_MESSAGE: &str = "must be an absolute http:// or https:// URL";

/// OAuth endpoints must use TLS, except on loopback for development.
pub const OAUTH_URL: &str = "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && (url(self).getHostname() == 'localhost' || url(self).getHostname() == '::1' || url(self).getHostname().startsWith('127.'))))";
/// Message for [`OAUTH_URL`].
pub const OAUTH_URL_MESSAGE: &str =
    "must be an https:// URL (http:// is accepted only for localhost and 127.0.0.0/8)";

/// A tool name the gateway exposes: what MCP clients accept everywhere.
pub const TOOL_NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
