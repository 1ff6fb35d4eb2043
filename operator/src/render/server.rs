//! McpServers (and the AuthOverrides that feed them) -> server routes and credentials.

use std::collections::{BTreeMap, BTreeSet};

use mcpgate_crds::gateway_config::{
    self as gc, CredentialForm, CredentialRef, OpenApiDocument, ServerConfig, Upstream,
    UpstreamAuth, UserCredential,
};
use mcpgate_crds::names;
use mcpgate_crds::v1alpha1::{
    self as v1, ApiKeyScope, AuthMode, AuthOverride, McpServer, TargetKind,
};
use sha2::{Digest, Sha256};

use super::access::AccessLists;
use super::{
    Check, CredentialSecret, Diagnostic, Inputs, Kind, ObjectKey, Rendered, ResourceRef,
    SecretValue, key_of,
};
use crate::reasons::*;

/// What virtual servers need to know about each McpServer.
#[derive(Debug)]
pub(super) struct ServerInfo {
    /// In the configuration; otherwise why not.
    pub ready: Result<(), String>,
    /// Its tool filter.
    pub filter: gc::ToolFilter,
    /// Exposed upstream tool names, when discovered.
    pub tools: Option<Vec<String>>,
}

/// Servers by key, for [`super::virtual_server`].
pub(super) type ServerIndex = BTreeMap<ObjectKey, ServerInfo>;

pub(super) fn render(inputs: &Inputs, access: &AccessLists, out: &mut Rendered) -> ServerIndex {
    let virtual_created: BTreeMap<ObjectKey, _> = inputs
        .virtual_servers
        .iter()
        .map(|v| (key_of(&**v), v.metadata.creation_timestamp.clone()))
        .collect();
    let overrides = overrides_by_server(inputs);

    let mut sorted: Vec<_> = inputs.servers.iter().collect();
    sorted.sort_by_key(|s| key_of(&***s));

    let mut index = ServerIndex::new();
    for server in sorted {
        let key = key_of(&**server);
        let mut secret = BTreeMap::new();
        let accepted = match virtual_created.get(&key) {
            // The older of the two keeps the route; on a tie the McpServer does.
            Some(virtual_ts) if virtual_ts < &server.metadata.creation_timestamp => Check::fail(
                REASON_ROUTE_CONFLICT,
                format!(
                    "VirtualMcpServer {key} already serves {}: rename one of them",
                    names::server_path(&key.namespace, &key.name)
                ),
            ),
            _ if server.spec.auth.mode == AuthMode::Passthrough => Check::pass(
                REASON_PASSTHROUGH_ENABLED,
                "callers' bearer tokens are forwarded to this upstream (token passthrough, which the MCP specification forbids by default)",
            ),
            _ => Check::pass(REASON_ACCEPTED, "valid"),
        };

        let upstream = resolve_upstream(inputs, server, &key);
        let auth = resolve_auth(
            inputs,
            server,
            &key,
            overrides.get(&key).map(Vec::as_slice).unwrap_or_default(),
            &mut secret,
            out,
        );
        let resolved = match (&upstream, &auth) {
            (Err(c), _) | (_, Err(c)) => c.clone(),
            _ => Check::pass(REASON_RESOLVED, "all references resolved"),
        };

        let filter = gc::ToolFilter {
            allow: server
                .spec
                .tools
                .as_ref()
                .map(|t| t.allow.clone())
                .unwrap_or_default(),
            deny: server
                .spec
                .tools
                .as_ref()
                .map(|t| t.deny.clone())
                .unwrap_or_default(),
        };
        // The census's record, when it is of the endpoint and credential mode in force.
        let census_url = match (&upstream, &auth) {
            (Ok(upstream), Ok(auth)) => upstream.census_url(auth),
            _ => None,
        };
        let discovered =
            census_url.and_then(|url| inputs.discovered_tools.get(&key).and_then(|r| r.of(url)));
        let tools = discovered.map(|tools| {
            tools
                .iter()
                .filter(|t| filter.permits(t))
                .cloned()
                .collect::<Vec<_>>()
        });
        let path = names::server_path(&key.namespace, &key.name);
        let access_list = access.of(TargetKind::McpServer, &key);

        let mut diagnostic = Diagnostic::new(server.metadata.generation, accepted, resolved);
        if let (true, Some(field)) = (diagnostic.accepted.ok, not_served(server)) {
            diagnostic.ready = Check::fail(
                REASON_NOT_SERVED,
                format!("{field} is not served by this gateway build yet: {NOT_SERVED_FIX}"),
            );
        }
        diagnostic.url = Some(path.clone());
        diagnostic.subject_count = Some(len_i32(access_list.subjects.len()));
        diagnostic.tool_count = match (&tools, filter.allow.is_empty()) {
            (Some(tools), _) => Some(len_i32(tools.len())),
            (None, false) => Some(len_i32(
                filter.allow.iter().filter(|t| filter.permits(t)).count(),
            )),
            (None, true) => None,
        };

        let ready = diagnostic.ready.ok;
        if let (true, Ok(upstream), Ok(auth)) = (ready, upstream, auth) {
            let spec = &server.spec;
            out.config.servers.push(ServerConfig {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                path,
                upstream,
                auth,
                tools: filter.clone(),
                timeout_ms: u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(30) * 1000,
                retry: spec.retry.as_ref().map(retry).filter(|r| r.attempts > 0),
                rate_limits: spec
                    .rate_limits
                    .as_ref()
                    .map(rate_limits)
                    .unwrap_or_default(),
                circuit_breaker: spec.circuit_breaker.as_ref().map(|b| gc::CircuitBreaker {
                    consecutive_failures: positive(b.consecutive_failures),
                    open_ms: u64::from(positive(b.open_seconds)) * 1000,
                }),
                public: spec.public,
                access: access_list,
            });
            if !secret.is_empty() {
                out.secrets.insert(
                    names::credential_secret_name(&key.namespace, &key.name),
                    CredentialSecret {
                        source: key.clone(),
                        data: secret,
                    },
                );
            }
        }
        index.insert(
            key.clone(),
            ServerInfo {
                ready: if ready {
                    Ok(())
                } else {
                    Err(diagnostic.ready.message.clone())
                },
                filter,
                tools,
            },
        );
        out.diagnostics.insert(
            ResourceRef {
                kind: Kind::McpServer,
                key,
            },
            diagnostic,
        );
    }
    for (server, list) in &overrides {
        if index.contains_key(server) {
            continue;
        }
        for o in list {
            let resolved = Check::fail(
                REASON_TARGET_NOT_FOUND,
                format!("spec.serverRef: McpServer {server} not found: create it or fix the name"),
            );
            let diagnostic = Diagnostic::new(
                o.metadata.generation,
                Check::pass(REASON_ACCEPTED, "valid"),
                resolved,
            );
            out.diagnostics.insert(
                ResourceRef {
                    kind: Kind::AuthOverride,
                    key: key_of(*o),
                },
                diagnostic,
            );
        }
    }
    index
}

/// What to do about a field that is not served yet.
const NOT_SERVED_FIX: &str = "the server is left out of the gateway and no credential is copied; remove the field or choose a served mode";

/// The first field of `server` that the proxy does not serve yet, as a path with its value.
/// Served: `spec.remote` with every auth mode.
fn not_served(server: &McpServer) -> Option<&'static str> {
    let spec = &server.spec;
    // The HTTP+SSE bridge answers an upstream's failures itself, so neither retries nor the
    // circuit would see them.
    let sse = spec
        .remote
        .as_ref()
        .is_some_and(|r| r.transport == v1::Transport::Sse);
    if spec.openapi.is_some() {
        Some("spec.openapi (OpenAPI sources)")
    } else if sse && spec.retry.is_some() {
        Some("spec.retry (with remote.transport Sse)")
    } else if sse && spec.circuit_breaker.is_some() {
        Some("spec.circuitBreaker (with remote.transport Sse)")
    } else {
        None
    }
}

/// A count the API bounds to at least 1 (the schema's range), as the proxy takes it.
fn positive(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0).max(1)
}

fn retry(r: &v1::RetryPolicy) -> gc::Retry {
    gc::Retry {
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        backoff_ms: u64::from(positive(r.backoff_milliseconds)),
        budget_percent: positive(r.budget_percent).min(100),
    }
}

fn rate_limits(l: &v1::RateLimits) -> gc::RateLimits {
    let limit = |requests, period_seconds| gc::RateLimit {
        requests: positive(requests),
        period_seconds: positive(period_seconds),
    };
    let mut per_tool: Vec<gc::ToolRateLimit> = l
        .per_tool
        .iter()
        .map(|t| gc::ToolRateLimit {
            tool: t.tool.clone(),
            limit: limit(t.requests, t.period_seconds),
        })
        .collect();
    per_tool.sort_by(|a, b| a.tool.cmp(&b.tool));
    // Admission refuses a tool named twice; one left by a looser API server keeps its first.
    per_tool.dedup_by(|a, b| a.tool == b.tool);
    gc::RateLimits {
        per_user: l
            .per_user
            .as_ref()
            .map(|l| limit(l.requests, l.period_seconds)),
        per_server: l
            .per_server
            .as_ref()
            .map(|l| limit(l.requests, l.period_seconds)),
        per_tool,
    }
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn resolve_upstream(
    inputs: &Inputs,
    server: &McpServer,
    key: &ObjectKey,
) -> Result<Upstream, Check> {
    if let Some(remote) = &server.spec.remote {
        return Ok(Upstream::Remote {
            url: remote.url.clone(),
            transport: remote.transport,
        });
    }
    let Some(openapi) = &server.spec.openapi else {
        return Err(Check::fail(
            REASON_INVALID_SPEC,
            "set exactly one of spec.remote or spec.openapi",
        ));
    };
    let document = if let Some(text) = &openapi.inline {
        OpenApiDocument::Inline(text.clone())
    } else if let Some(r) = &openapi.config_map_key_ref {
        let text = inputs
            .config_maps
            .get(&ObjectKey::new(&key.namespace, &r.name))
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(&r.key))
            .ok_or_else(|| {
                Check::fail(
                    REASON_CONFIG_MAP_NOT_FOUND,
                    format!(
                        "spec.openapi.configMapKeyRef: ConfigMap {}/{} with key {:?} not found: create it or fix the reference",
                        key.namespace, r.name, r.key
                    ),
                )
            })?;
        OpenApiDocument::Inline(text.clone())
    } else if let Some(url) = &openapi.url {
        OpenApiDocument::Url(url.clone())
    } else {
        return Err(Check::fail(
            REASON_INVALID_SPEC,
            "spec.openapi: set one of inline, configMapKeyRef or url",
        ));
    };
    Ok(Upstream::OpenApi {
        document,
        base_url: openapi.base_url.clone(),
    })
}

/// Secret keys in the credential Secret.
const KEY_API_KEY: &str = "api-key";
const KEY_CLIENT_SECRET: &str = "client-secret";

fn resolve_auth(
    inputs: &Inputs,
    server: &McpServer,
    key: &ObjectKey,
    overrides: &[&AuthOverride],
    secret: &mut BTreeMap<String, SecretValue>,
    out: &mut Rendered,
) -> Result<UpstreamAuth, Check> {
    let auth = &server.spec.auth;
    let secret_name = names::credential_secret_name(&key.namespace, &key.name);
    let credential = |k: &str| CredentialRef {
        secret: secret_name.clone(),
        key: k.to_owned(),
    };
    let missing = |field: &str| {
        Check::fail(
            REASON_INVALID_SPEC,
            format!("spec.auth.{field} is required for this auth type"),
        )
    };
    let per_user_api_key = matches!(
        (auth.mode, auth.api_key.as_ref().map(|a| a.scope)),
        (AuthMode::ApiKey, Some(ApiKeyScope::PerUser))
    );
    // Overrides are judged whatever happens to the server, so each gets its status.
    let user_credentials = render_overrides(inputs, key, per_user_api_key, overrides, secret, out);

    match auth.mode {
        AuthMode::None => Ok(UpstreamAuth::None),
        AuthMode::Passthrough => Ok(UpstreamAuth::Passthrough),
        AuthMode::ApiKey => {
            let api_key = auth.api_key.as_ref().ok_or_else(|| missing("apiKey"))?;
            match api_key.scope {
                ApiKeyScope::Shared => {
                    let r = api_key
                        .secret_key_ref
                        .as_ref()
                        .ok_or_else(|| missing("apiKey.secretKeyRef"))?;
                    let value = inputs.secret_value(key, &r.name, &r.key)?;
                    secret.insert(KEY_API_KEY.to_owned(), SecretValue::new(value));
                    Ok(UpstreamAuth::SharedApiKey {
                        header: api_key.header_name.clone(),
                        template: api_key.value_template.clone(),
                        credential: credential(KEY_API_KEY),
                    })
                }
                ApiKeyScope::PerUser => Ok(UpstreamAuth::PerUserApiKey {
                    header: api_key.header_name.clone(),
                    template: api_key.value_template.clone(),
                    overrides: user_credentials,
                }),
            }
        }
        AuthMode::OAuth2AuthorizationCode => {
            let o = auth
                .oauth2_authorization_code
                .as_ref()
                .ok_or_else(|| missing("oauth2AuthorizationCode"))?;
            let client_secret = optional_secret(
                inputs,
                key,
                o.client_secret_ref.as_ref(),
                secret,
                credential(KEY_CLIENT_SECRET),
            )?;
            Ok(UpstreamAuth::OAuth2AuthorizationCode {
                authorization_url: o.authorization_url.clone(),
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret,
                scopes: o.scopes.clone(),
                pkce: o.pkce,
                registration_url: o.registration_url.clone(),
                send_token: o.send_token,
            })
        }
        AuthMode::OAuth2ClientCredentials => {
            let o = auth
                .oauth2_client_credentials
                .as_ref()
                .ok_or_else(|| missing("oauth2ClientCredentials"))?;
            let r = &o.client_secret_ref;
            let value = inputs.secret_value(key, &r.name, &r.key)?;
            secret.insert(KEY_CLIENT_SECRET.to_owned(), SecretValue::new(value));
            Ok(UpstreamAuth::OAuth2ClientCredentials {
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret: credential(KEY_CLIENT_SECRET),
                scopes: o.scopes.clone(),
                audience: o.audience.clone(),
            })
        }
        AuthMode::TokenExchange => {
            let o = auth
                .token_exchange
                .as_ref()
                .ok_or_else(|| missing("tokenExchange"))?;
            Ok(UpstreamAuth::TokenExchange {
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret: optional_secret(
                    inputs,
                    key,
                    o.client_secret_ref.as_ref(),
                    secret,
                    credential(KEY_CLIENT_SECRET),
                )?,
                audience: o.audience.clone(),
                scopes: o.scopes.clone(),
            })
        }
    }
}

/// An optional client secret: copied into the credential Secret as `to` when referenced.
fn optional_secret(
    inputs: &Inputs,
    key: &ObjectKey,
    reference: Option<&mcpgate_crds::v1alpha1::SecretKeyRef>,
    secret: &mut BTreeMap<String, SecretValue>,
    to: CredentialRef,
) -> Result<Option<CredentialRef>, Check> {
    let Some(r) = reference else {
        return Ok(None);
    };
    let value = inputs.secret_value(key, &r.name, &r.key)?;
    secret.insert(to.key.clone(), SecretValue::new(value));
    Ok(Some(to))
}

fn overrides_by_server(inputs: &Inputs) -> BTreeMap<ObjectKey, Vec<&AuthOverride>> {
    let mut by_server: BTreeMap<ObjectKey, Vec<&AuthOverride>> = BTreeMap::new();
    for o in &inputs.overrides {
        let key = key_of(&**o);
        by_server
            .entry(ObjectKey::new(key.namespace, &o.spec.server_ref.name))
            .or_default()
            .push(o);
    }
    // Oldest first, so the oldest of two overrides for one user wins.
    for list in by_server.values_mut() {
        list.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, key_of(*a))
                .cmp(&(&b.metadata.creation_timestamp, key_of(*b)))
        });
    }
    by_server
}

/// Judges each override of one server and returns the usable ones.
fn render_overrides(
    inputs: &Inputs,
    server: &ObjectKey,
    per_user_api_key: bool,
    overrides: &[&AuthOverride],
    secret: &mut BTreeMap<String, SecretValue>,
    out: &mut Rendered,
) -> Vec<UserCredential> {
    let secret_name = names::credential_secret_name(&server.namespace, &server.name);
    let mut seen = BTreeSet::new();
    let mut credentials = Vec::new();
    for o in overrides {
        let key = key_of(*o);
        let accepted = if !per_user_api_key {
            Check::fail(
                REASON_OVERRIDE_NOT_APPLICABLE,
                format!(
                    "McpServer {server} does not use per-user API keys (spec.auth.type ApiKey with scope PerUser): this override has no effect"
                ),
            )
        } else if !seen.insert(o.spec.subject.clone()) {
            Check::fail(
                REASON_DUPLICATE_OVERRIDE,
                format!(
                    "an older AuthOverride already sets {:?}'s credential for McpServer {server}: delete one of them",
                    o.spec.subject
                ),
            )
        } else {
            Check::pass(REASON_ACCEPTED, "valid")
        };
        let resolved = resolve_override(inputs, o, server);
        if let (true, Ok((value, form))) = (accepted.ok, &resolved) {
            let slot = format!("user.{}", short_hash(&o.spec.subject));
            secret.insert(slot.clone(), SecretValue::new(value.clone()));
            credentials.push(UserCredential {
                user: o.spec.subject.clone(),
                credential: CredentialRef {
                    secret: secret_name.clone(),
                    key: slot,
                },
                form: *form,
            });
        }
        let resolved =
            resolved.map_or_else(|c| c, |_| Check::pass(REASON_RESOLVED, "Secret found"));
        let diagnostic = Diagnostic::new(o.metadata.generation, accepted, resolved);
        out.diagnostics.insert(
            ResourceRef {
                kind: Kind::AuthOverride,
                key,
            },
            diagnostic,
        );
    }
    credentials.sort();
    credentials
}

fn resolve_override(
    inputs: &Inputs,
    o: &AuthOverride,
    server: &ObjectKey,
) -> Result<(Vec<u8>, CredentialForm), Check> {
    let r = &o.spec.secret_ref;
    if let Some(k) = &r.key {
        return Ok((
            inputs.secret_value(server, &r.name, k)?,
            CredentialForm::ApiKey,
        ));
    }
    let secret = inputs.credential_secret(server, &r.name)?;
    let mut headers = serde_json::Map::new();
    for (name, value) in secret.data.iter().flatten() {
        let value = String::from_utf8(value.0.clone()).map_err(|_| {
            Check::fail(
                REASON_INVALID_SPEC,
                format!(
                    "Secret {}/{} key {name:?} is not UTF-8: header values must be text",
                    server.namespace, r.name
                ),
            )
        })?;
        headers.insert(name.clone(), serde_json::Value::String(value));
    }
    if headers.is_empty() {
        return Err(Check::fail(
            REASON_SECRET_KEY_NOT_FOUND,
            format!(
                "Secret {}/{} is empty: add one key per header",
                server.namespace, r.name
            ),
        ));
    }
    let bytes = serde_json::to_vec(&headers).unwrap_or_default();
    Ok((bytes, CredentialForm::Headers))
}

/// A Secret-key-safe stand-in for a user name.
fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
