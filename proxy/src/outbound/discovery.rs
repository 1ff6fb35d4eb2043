//! How the gateway learns an upstream's authorization server, as an MCP client does (MCP
//! authorization, 2025-11-25):
//! - it asks the upstream without a token and reads its `401` challenge (RFC 6750
//!   `WWW-Authenticate`: where the protected resource metadata is, which scopes it wants);
//! - it reads that metadata (RFC 9728) from the challenge's URL, else from the well-known
//!   URLs beside the upstream (path inserted, then the root), and refuses one whose
//!   `resource` is not the upstream (another server's metadata, replayed);
//! - it reads the first authorization server's metadata (RFC 8414 then OpenID discovery, with
//!   the issuer's path inserted then appended) and refuses a document whose `issuer` is not
//!   exactly the one it asked for (no URL normalisation: RFC 8414 section 3.3);
//! - an upstream of the 2025-03-26 era without resource metadata has its authorization
//!   server at its own origin, and the default endpoints there when that has no metadata.
//!
//! When the McpServer names the token endpoint, only metadata on that URL's origin that
//! names it is used, and only endpoints on that origin are taken from it. Every URL the
//! gateway follows must be https (http only on loopback), so a document cannot point it at
//! plain-text hosts.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;

use crate::upstream::HttpClient;

/// Largest metadata document read.
const MAX_METADATA: usize = 64 * 1024;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many authorization server metadata URLs are tried for one server.
const MAX_METADATA_TRIES: usize = 8;

/// What an upstream's `401` (or `403`) challenge says (RFC 6750 section 3, RFC 9728
/// section 5.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Where its protected resource metadata is.
    pub resource_metadata: Option<String>,
    /// The scopes it asks for.
    pub scope: Option<Vec<String>>,
    /// `invalid_token`, `insufficient_scope`...
    pub error: Option<String>,
}

impl Challenge {
    /// The `Bearer` challenge among `headers`' `WWW-Authenticate` values, if there is one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(bearer_params)
            .map(|params| {
                let get = |name: &str| {
                    params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                Self {
                    resource_metadata: get("resource_metadata"),
                    scope: get("scope").map(|s| words(&s)),
                    error: get("error"),
                }
            })
    }
}

/// The auth-params of the `Bearer` challenge in one `WWW-Authenticate` value (RFC 9110
/// section 11.6.1), which may hold several challenges.
fn bearer_params(value: &str) -> Option<Vec<(String, String)>> {
    let mut rest = value.trim_start();
    let mut in_bearer = false;
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return in_bearer.then_some(params);
        }
        let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        if end == 0 {
            return in_bearer.then_some(params);
        }
        let name = &rest[..end];
        let after = rest[end..].trim_start_matches([' ', '\t']);
        if let Some(value) = after.strip_prefix('=') {
            // An auth-param (or a token68 ending in '=' we do not use).
            let value = value.trim_start_matches([' ', '\t']);
            let (parsed, remaining) = if let Some(quoted) = value.strip_prefix('"') {
                quoted_string(quoted)?
            } else {
                let end = value
                    .find(|c: char| !is_token_char(c) && c != '/' && c != '=')
                    .unwrap_or(value.len());
                (value[..end].to_owned(), &value[end..])
            };
            if in_bearer {
                params.push((name.to_owned(), parsed));
            }
            rest = remaining;
        } else {
            // A new challenge: its scheme.
            if in_bearer {
                return Some(params);
            }
            in_bearer = name.eq_ignore_ascii_case("bearer");
            rest = after;
        }
    }
}

/// A quoted-string's value (after its opening quote) and what follows its closing quote.
fn quoted_string(input: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &input[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The strings in the JSON array `value` (none when it is not one).
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The space-separated words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split_ascii_whitespace().map(str::to_owned).collect()
}

/// What the gateway learnt about an upstream's authorization server.
#[derive(Debug, Default)]
pub struct Learnt {
    /// The authorization server's issuer, when its metadata was found.
    pub issuer: Option<String>,
    /// Its metadata, when found (and, with a configured token URL, naming it).
    pub metadata: Option<Value>,
    /// Endpoints it names that the gateway may use.
    pub authorization: Option<String>,
    pub token: Option<String>,
    pub registration: Option<String>,
    pub revocation: Option<String>,
    /// The resource to ask tokens for (RFC 8707): the upstream's metadata's `resource`, or
    /// the upstream's URL.
    pub resource: String,
    /// The scopes the upstream asks for: its challenge's, else its metadata's list.
    pub scopes: Vec<String>,
}

/// Learns where `upstream`'s users authorize the gateway; `token_url` is the token
/// endpoint the McpServer names, if it does.
pub async fn learn(
    http: &HttpClient,
    upstream: &str,
    token_url: Option<&str>,
) -> Result<Learnt, String> {
    let challenge = probe(http, upstream).await.unwrap_or_default();
    let resource_metadata = match protected_resource(http, upstream, &challenge).await {
        Ok(found) => found,
        // The McpServer names the provider: metadata that does not fit only goes unused
        // (an in-cluster URL and a public one name the same server, say).
        Err(why) if token_url.is_some() => {
            tracing::warn!(%upstream, %why, "ignoring the upstream's protected resource metadata");
            None
        }
        Err(why) => return Err(why),
    };
    let resource = match &resource_metadata {
        Some(document) => document["resource"].as_str().unwrap_or(upstream).to_owned(),
        None => upstream.to_owned(),
    };
    let listed = |name: &str| {
        resource_metadata
            .as_ref()
            .map(|m| strings(&m[name]))
            .unwrap_or_default()
    };
    let scopes = challenge
        .scope
        .clone()
        .unwrap_or_else(|| listed("scopes_supported"));
    let servers = listed("authorization_servers");
    let mut learnt = match token_url {
        Some(token_url) => configured(http, token_url, &servers).await,
        None => discovered(http, upstream, resource_metadata.is_some(), &servers).await?,
    };
    learnt.resource = resource;
    learnt.scopes = scopes;
    Ok(learnt)
}

/// The upstream's challenge to a request without a token: a harmless `tools/list`, which
/// an upstream that lets `initialize` through without a token still refuses.
async fn probe(http: &HttpClient, upstream: &str) -> Option<Challenge> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(upstream)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(crate::error::full(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"mcpgate-discovery","method":"tools/list"}"#,
        )))
        .ok()?;
    let response = tokio::time::timeout(TIMEOUT, http.request(request))
        .await
        .ok()?
        .ok()?;
    let challenged = matches!(
        response.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    );
    challenged
        .then(|| Challenge::of(response.headers()))
        .flatten()
}

/// The upstream's protected resource metadata, if it has any; `Err` when it names another
/// resource.
async fn protected_resource(
    http: &HttpClient,
    upstream: &str,
    challenge: &Challenge,
) -> Result<Option<Value>, String> {
    let urls = match &challenge.resource_metadata {
        Some(url) if secure(url, upstream) => vec![url.clone()],
        Some(url) => {
            return Err(format!(
                "the upstream's challenge names resource metadata at {url}, which is neither https nor loopback"
            ));
        }
        None => well_known(upstream, "oauth-protected-resource"),
    };
    for url in urls {
        let Ok(document) = crate::upstream::get_json(http, &url, MAX_METADATA, TIMEOUT).await
        else {
            continue;
        };
        let Some(resource) = document["resource"].as_str() else {
            return Err(format!(
                "the protected resource metadata at {url} names no resource"
            ));
        };
        if !covers(resource, upstream) {
            return Err(format!(
                "the protected resource metadata at {url} is for {resource}, not {upstream}: refusing to authorize for another resource"
            ));
        }
        return Ok(Some(document));
    }
    Ok(None)
}

/// Whether the protected resource `resource` covers the MCP endpoint `upstream`: the same
/// origin, and a path that is `upstream`'s or a whole-segment prefix of it.
fn covers(resource: &str, upstream: &str) -> bool {
    let (Ok(resource), Ok(upstream)) = (url::Url::parse(resource), url::Url::parse(upstream))
    else {
        return false;
    };
    if resource.origin() != upstream.origin() || resource.fragment().is_some() {
        return false;
    }
    let prefix = resource.path().trim_end_matches('/');
    let path = upstream.path().trim_end_matches('/');
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// With the token endpoint configured: the metadata on its origin that names it, found
/// through the resource metadata's `servers` on that origin or guessed from the URL.
async fn configured(http: &HttpClient, token_url: &str, servers: &[String]) -> Learnt {
    let mut issuers: Vec<String> = servers
        .iter()
        .filter(|issuer| same_origin(issuer, token_url))
        .take(2)
        .cloned()
        .collect();
    issuers.extend(issuers_of(token_url));
    let mut tried = 0;
    for issuer in dedup(issuers) {
        for url in metadata_urls(&issuer) {
            if tried == MAX_METADATA_TRIES {
                return Learnt::default();
            }
            tried += 1;
            let Ok(found) = crate::upstream::get_json(http, &url, MAX_METADATA, TIMEOUT).await
            else {
                continue;
            };
            if found["issuer"].as_str() == Some(issuer.as_str())
                && found["token_endpoint"].as_str() == Some(token_url)
            {
                // Endpoints only on the token endpoint's origin: a document cannot send
                // people, codes, tokens or the client secret anywhere else.
                let endpoint = |name: &str| {
                    found[name]
                        .as_str()
                        .filter(|url| same_origin(url, token_url))
                        .map(str::to_owned)
                };
                return Learnt {
                    issuer: Some(issuer),
                    authorization: endpoint("authorization_endpoint"),
                    token: Some(token_url.to_owned()),
                    registration: endpoint("registration_endpoint"),
                    revocation: endpoint("revocation_endpoint"),
                    metadata: Some(found),
                    ..Learnt::default()
                };
            }
        }
    }
    tracing::info!(%token_url, "no authorization server metadata names this token endpoint");
    Learnt {
        token: Some(token_url.to_owned()),
        ..Learnt::default()
    }
}

/// Without a configured token endpoint: the first authorization server the resource
/// metadata names, or (no resource metadata: the 2025-03-26 era) the upstream's origin.
async fn discovered(
    http: &HttpClient,
    upstream: &str,
    has_resource_metadata: bool,
    servers: &[String],
) -> Result<Learnt, String> {
    let issuer = match servers.first() {
        Some(issuer) => issuer.clone(),
        None if has_resource_metadata => {
            return Err(format!(
                "the protected resource metadata of {upstream} names no authorization server"
            ));
        }
        None => url::Url::parse(upstream)
            .map_err(|e| format!("{upstream}: {e}"))?
            .origin()
            .ascii_serialization(),
    };
    if !secure(&issuer, upstream) {
        return Err(format!(
            "authorization server {issuer} is neither https nor loopback"
        ));
    }
    let Some(found) = issuer_metadata(http, &issuer).await? else {
        if has_resource_metadata {
            return Err(format!(
                "authorization server {issuer} publishes no metadata (RFC 8414 or OpenID discovery)"
            ));
        }
        // The 2025-03-26 defaults, at the upstream's origin.
        return Ok(Learnt {
            authorization: Some(format!("{issuer}/authorize")),
            token: Some(format!("{issuer}/token")),
            registration: Some(format!("{issuer}/register")),
            ..Learnt::default()
        });
    };
    let endpoint = |name: &str| -> Result<Option<String>, String> {
        match found[name].as_str() {
            None => Ok(None),
            Some(url) if secure(url, upstream) => Ok(Some(url.to_owned())),
            Some(url) => Err(format!(
                "authorization server {issuer} names {name} {url}, which is neither https nor loopback"
            )),
        }
    };
    // MCP clients must refuse a provider that does not say it takes PKCE with S256.
    if !strings(&found["code_challenge_methods_supported"])
        .iter()
        .any(|m| m == "S256")
    {
        return Err(format!(
            "authorization server {issuer} does not list S256 in code_challenge_methods_supported: PKCE is required"
        ));
    }
    let authorization = endpoint("authorization_endpoint")?;
    let token = endpoint("token_endpoint")?;
    if authorization.is_none() || token.is_none() {
        return Err(format!(
            "authorization server {issuer} names no authorization_endpoint or token_endpoint"
        ));
    }
    Ok(Learnt {
        authorization,
        token,
        registration: endpoint("registration_endpoint")?,
        revocation: endpoint("revocation_endpoint")?,
        issuer: Some(issuer),
        metadata: Some(found),
        ..Learnt::default()
    })
}

/// The metadata `issuer` publishes, if any; `Err` when a document claims another issuer
/// (it cannot be trusted, and neither can the other locations of a server that serves it).
async fn issuer_metadata(http: &HttpClient, issuer: &str) -> Result<Option<Value>, String> {
    for url in metadata_urls(issuer) {
        let Ok(found) = crate::upstream::get_json(http, &url, MAX_METADATA, TIMEOUT).await else {
            continue;
        };
        return match found["issuer"].as_str() {
            Some(claimed) if claimed == issuer => Ok(Some(found)),
            claimed => Err(format!(
                "the metadata at {url} claims issuer {}, not {issuer}: refusing it (mix-up attack?)",
                claimed.unwrap_or("(none)")
            )),
        };
    }
    Ok(None)
}

/// Whether the gateway may follow `url`, which a document about the upstream `near` named:
/// https, or plain http on loopback when `near` is on loopback too (a development setup),
/// so a document cannot point the gateway at a local port of its own host otherwise.
pub fn secure(url: &str, near: &str) -> bool {
    let loopback = |url: &str| {
        url::Url::parse(url).is_ok_and(|url| crate::signin::clients::is_loopback_host(&url))
    };
    url::Url::parse(url).is_ok_and(|parsed| match parsed.scheme() {
        "https" => !loopback(url) || loopback(near),
        "http" => loopback(url) && loopback(near),
        _ => false,
    })
}

/// Where RFC 8414 and OpenID discovery put an issuer's metadata: for an issuer with a path,
/// RFC 8414 (path inserted), OpenID (path inserted), OpenID (path appended); without one,
/// RFC 8414 then OpenID at the root.
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let mut urls = well_known(issuer, "oauth-authorization-server");
    urls.truncate(1);
    let mut openid = well_known(issuer, "openid-configuration");
    openid.truncate(1);
    let appended = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    urls.extend(openid);
    if !urls.contains(&appended) {
        urls.push(appended);
    }
    urls
}

/// `/.well-known/{name}` inserted before `url`'s path, and at its root when it has one.
pub fn well_known(url: &str, name: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let origin = parsed.origin().ascii_serialization();
    let path = parsed.path().trim_end_matches('/');
    let mut urls = vec![format!("{origin}/.well-known/{name}{path}")];
    if !path.is_empty() {
        urls.push(format!("{origin}/.well-known/{name}"));
    }
    urls
}

/// The issuers a token URL may belong to: its origin with each shorter prefix of its path,
/// longest first (`https://h/realms/x/protocol/openid-connect/token` has issuer
/// `https://h/realms/x`), at most four.
fn issuers_of(token_url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(token_url) else {
        return Vec::new();
    };
    let origin = parsed.origin().ascii_serialization();
    let segments: Vec<&str> = parsed.path().split('/').filter(|s| !s.is_empty()).collect();
    let mut issuers: Vec<String> = (0..segments.len())
        .rev()
        .map(|n| {
            let prefix = segments[..n].join("/");
            if prefix.is_empty() {
                origin.clone()
            } else {
                format!("{origin}/{prefix}")
            }
        })
        .collect();
    // The origin is the likeliest; always try it.
    if issuers.len() > 4 {
        let root = issuers.pop();
        issuers.truncate(3);
        issuers.extend(root);
    }
    issuers
}

/// Whether two URLs share scheme, host and port.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(values: &[&str]) -> Option<Challenge> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::WWW_AUTHENTICATE, v.parse().unwrap());
        }
        Challenge::of(&headers)
    }

    #[test]
    fn bearer_challenges_are_read_among_others() {
        assert_eq!(
            challenge(&[
                r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp""#
            ]),
            Some(Challenge {
                resource_metadata: Some(
                    "https://mcp.example/.well-known/oauth-protected-resource/mcp".into()
                ),
                scope: Some(vec!["mcp:basic".into(), "mcp:write".into()]),
                error: Some("insufficient_scope".into()),
            })
        );
        // Other schemes first, in one value or several; token values; escapes.
        assert_eq!(
            challenge(&[
                r#"DPoP algs="ES256 PS256", Basic realm="x", bearer realm="a \"b\"",error=invalid_token"#
            ]),
            Some(Challenge {
                error: Some("invalid_token".into()),
                ..Challenge::default()
            })
        );
        assert_eq!(
            challenge(&[r#"Basic realm="x""#, "Bearer"]),
            Some(Challenge::default())
        );
        assert_eq!(challenge(&[r#"Basic realm="x""#]), None);
        assert_eq!(challenge(&[]), None);
        // An unterminated quoted string is no challenge at all.
        assert_eq!(challenge(&[r#"Bearer scope="a"#]), None);
    }

    #[test]
    fn resource_metadata_must_cover_the_upstream() {
        for (resource, upstream, covered) in [
            ("https://mcp.example/mcp", "https://mcp.example/mcp", true),
            ("https://mcp.example/mcp/", "https://mcp.example/mcp", true),
            ("https://mcp.example", "https://mcp.example/mcp", true),
            ("https://mcp.example/v1", "https://mcp.example/v1/mcp", true),
            ("https://mcp.example/v", "https://mcp.example/v1/mcp", false),
            ("https://evil.example/mcp", "https://mcp.example/mcp", false),
            ("http://mcp.example/mcp", "https://mcp.example/mcp", false),
            (
                "https://mcp.example:444/mcp",
                "https://mcp.example/mcp",
                false,
            ),
            (
                "https://mcp.example/other",
                "https://mcp.example/mcp",
                false,
            ),
            (
                "https://mcp.example/mcp#x",
                "https://mcp.example/mcp",
                false,
            ),
            ("not a url", "https://mcp.example/mcp", false),
        ] {
            assert_eq!(
                covers(resource, upstream),
                covered,
                "{resource} for {upstream}"
            );
        }
    }

    #[test]
    fn only_https_and_loopback_http_beside_a_loopback_upstream_are_followed() {
        let remote = "https://mcp.example/mcp";
        let local = "http://127.0.0.1:8080/mcp";
        for (url, from_remote, from_local) in [
            ("https://as.example/x", true, true),
            ("http://127.0.0.1:9/x", false, true),
            ("http://localhost:9/x", false, true),
            ("http://[::1]:9/x", false, true),
            ("https://127.0.0.1:15000/quitquitquit", false, true),
            ("http://as.example/x", false, false),
            ("http://10.0.0.1/x", false, false),
            ("file:///etc/passwd", false, false),
            ("javascript:alert(1)", false, false),
        ] {
            assert_eq!(secure(url, remote), from_remote, "{url} near {remote}");
            assert_eq!(secure(url, local), from_local, "{url} near {local}");
        }
    }

    #[test]
    fn issuers_are_guessed_from_the_token_url_longest_first() {
        assert_eq!(
            issuers_of("https://kc.example/realms/x/protocol/openid-connect/token"),
            [
                "https://kc.example/realms/x/protocol/openid-connect",
                "https://kc.example/realms/x/protocol",
                "https://kc.example/realms/x",
                "https://kc.example"
            ]
        );
        assert_eq!(
            issuers_of("http://127.0.0.1:9/token"),
            ["http://127.0.0.1:9"]
        );
        assert_eq!(
            issuers_of("https://github.example/login/oauth/access_token"),
            [
                "https://github.example/login/oauth",
                "https://github.example/login",
                "https://github.example"
            ]
        );
        assert!(issuers_of("not a url").is_empty());
    }

    #[test]
    fn metadata_is_looked_for_where_the_rfcs_put_it() {
        assert_eq!(
            well_known("https://mcp.example/v1/mcp/", "oauth-protected-resource"),
            [
                "https://mcp.example/.well-known/oauth-protected-resource/v1/mcp",
                "https://mcp.example/.well-known/oauth-protected-resource"
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example/tenant"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant",
                "https://as.example/.well-known/openid-configuration/tenant",
                "https://as.example/tenant/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("http://127.0.0.1:9"),
            [
                "http://127.0.0.1:9/.well-known/oauth-authorization-server",
                "http://127.0.0.1:9/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn endpoints_are_taken_only_on_the_token_url_origin() {
        assert!(same_origin(
            "https://as.example/authorize",
            "https://as.example/token"
        ));
        assert!(!same_origin(
            "https://evil.example/revoke",
            "https://as.example/token"
        ));
        assert!(!same_origin(
            "http://as.example/revoke",
            "https://as.example/token"
        ));
        assert!(!same_origin(
            "https://as.example:8443/x",
            "https://as.example/token"
        ));
        assert!(!same_origin("not a url", "https://as.example/token"));
    }
}
