//! The tool census: the proxy lists the tools of every server it can list on its own behalf
//! and writes what it learnt into a ConfigMap per server in the gateway namespace
//! (`mcpgate_crds::discovered`), where the operator reads it for `status.toolCount` and the
//! UnknownTool and ToolNameCollision checks. The operator never calls an upstream; the proxy
//! needs nothing more than to create and patch ConfigMaps of its own namespace.
//!
//! Listable are the servers whose upstream credential is the gateway's own (none, a shared API
//! key, OAuth 2 client credentials). Servers whose every call carries a person's credential
//! are not listed: no one's tools would stand for everyone's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use mcpgate_crds::discovered::{
    COMPONENT_TOOLS, DiscoveredTools, MANAGED_BY_PROXY, MAX_TOOL_NAME, MAX_TOOLS, TOOLS_KEY,
    config_map_name,
};
use mcpgate_crds::names::{CONFIG_MAP_NAME, LABEL_COMPONENT, LABEL_MANAGED_BY};
use serde_json::{Value, json};

use crate::mcp::shared::Shared;
use crate::mcp::upstream::era::gateway_meta;
use crate::mcp::upstream::hop::{HopError, gateway_id};
use crate::server::App;
use crate::source::{Route, ServerRoute};

/// How long a server's list stands before it is listed again.
pub const PERIOD: Duration = Duration::from_secs(300);
/// How soon a server whose listing or record failed is tried again.
const RETRY: Duration = Duration::from_secs(60);
/// The longest one server's listing (every page) may take.
const DEADLINE: Duration = Duration::from_secs(120);
/// Servers listed at once.
const CONCURRENCY: usize = 8;
/// How often the census looks for servers that are due, besides configuration changes.
const TICK: Duration = Duration::from_secs(30);
/// The longest object name the Kubernetes API accepts.
const MAX_NAME: usize = 253;

/// Why a server's tools were not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    /// The upstream could not be asked, or answered something else than a tool list.
    #[error(transparent)]
    Hop(#[from] HopError),
    /// All pages took longer than [`DEADLINE`].
    #[error("listing the tools of {0} took longer than {secs}s", secs = DEADLINE.as_secs())]
    Deadline(String),
    /// The record could not be written.
    #[error("writing the record {name}: {source}")]
    Write {
        /// The record's ConfigMap.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
}

/// Whether the gateway can list `route`'s tools without a caller (see
/// `mcpgate_crds::gateway_config::Upstream::census_url`), and the record's name fits the API.
pub fn listable(route: &ServerRoute) -> bool {
    route.upstream.is_some()
        && route
            .config
            .upstream
            .census_url(&route.config.auth)
            .is_some()
        && config_map_name(&route.config.namespace, &route.config.name).len() <= MAX_NAME
}

/// Every tool name `route`'s upstream lists, all pages (at most the forwarder's page limit and
/// [`MAX_TOOLS`] + 1 names, enough to know the list is too long to record), asked in the era
/// the upstream speaks with the gateway's own credential for it.
pub async fn list_tools(forwarder: &Shared, route: &ServerRoute) -> Result<Vec<String>, HopError> {
    let no_caller = HeaderMap::new();
    let hop = forwarder.hop(route, &no_caller, None, None);
    let wrong = |why: String| HopError::Answer(hop.server(), why);
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..forwarder.read_limits.list_pages {
        let mut params = json!({"_meta": gateway_meta()});
        if let Some(cursor) = &cursor {
            params["cursor"] = Value::String(cursor.clone());
        }
        let request = json!({
            "jsonrpc": "2.0", "id": gateway_id("census"), "method": "tools/list", "params": params,
        });
        let reply = forwarder.eras.call(&hop, &request).await?;
        if let Some(error) = reply.get("error") {
            return Err(wrong(format!("tools/list with an error: {error:.200}")));
        }
        let result = &reply["result"];
        let page = result["tools"]
            .as_array()
            .ok_or_else(|| wrong("tools/list without a tools array".into()))?;
        if let Some(policy) = &hop.policy {
            policy.learn(page);
        }
        for tool in page {
            let name = tool["name"]
                .as_str()
                .ok_or_else(|| wrong("tools/list with a tool without a name".into()))?;
            names.push(name.to_owned());
        }
        if names.len() > MAX_TOOLS {
            // Too many to record: what there is says so.
            return Ok(names);
        }
        match result["nextCursor"].as_str().filter(|c| !c.is_empty()) {
            Some(next) if cursor.as_deref() == Some(next) => {
                return Err(wrong("tools/list gave the same cursor twice".into()));
            }
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(names),
        }
    }
    Err(wrong(format!(
        "more than the gateway's limit of {} pages of tools/list",
        forwarder.read_limits.list_pages
    )))
}

/// By `namespace/name`: each server's configuration as last listed, and when it is next due.
#[derive(Default)]
struct Ledger {
    due: HashMap<String, (ServerFingerprint, Instant)>,
}

/// A server's rendered configuration, serialized: a change (upstream, credential mode,
/// headers) makes the server due at once.
type ServerFingerprint = String;

/// Lists the servers that are due and writes what changed, until the process ends: at start,
/// whenever the configuration changes, and every [`PERIOD`] per server. Every replica takes
/// part; they write the same records.
pub async fn run(app: Arc<App>, client: Client, namespace: String) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut changes = app.forwarder.current.subscribe();
    let mut ledger = Ledger::default();
    loop {
        round(&app, &api, &mut ledger).await;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

#[tracing::instrument(name = "tool_census", skip_all)]
async fn round(app: &App, api: &Api<ConfigMap>, ledger: &mut Ledger) {
    let forwarder = &app.forwarder;
    let Some(snapshot) = forwarder.current.load() else {
        return;
    };
    let now = Instant::now();
    let due: Vec<(Arc<ServerRoute>, ServerFingerprint)> = snapshot
        .routes()
        .filter_map(|(_, route)| match route {
            Route::Server(server) if listable(server) => Some(server.clone()),
            _ => None,
        })
        .filter_map(|server| {
            let fingerprint = serde_json::to_string(&server.config).unwrap_or_default();
            let is_due = ledger
                .due
                .get(&server.key())
                .is_none_or(|(seen, at)| *seen != fingerprint || *at <= now);
            is_due.then_some((server, fingerprint))
        })
        .collect();
    // Forget servers that left the configuration (the operator deletes their records).
    ledger.due.retain(|key, _| snapshot.server(key).is_some());
    if due.is_empty() {
        return;
    }
    // The records are owned by the configuration's manifest, so they go when it goes
    // (uninstall); without it there is nothing to attach them to yet.
    let owner = match api.get_opt(CONFIG_MAP_NAME).await {
        Ok(manifest) => manifest.as_ref().and_then(manifest_owner),
        Err(error) => {
            tracing::warn!(%error, "tool census: reading the configuration manifest failed");
            None
        }
    };
    let Some(owner) = owner else {
        return;
    };
    // What is recorded now (by another replica, or deleted since): written only where it
    // differs.
    let selector =
        format!("{LABEL_MANAGED_BY}={MANAGED_BY_PROXY},{LABEL_COMPONENT}={COMPONENT_TOOLS}");
    let recorded: HashMap<String, ConfigMap> =
        match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items.into_iter().map(|c| (c.name_any(), c)).collect(),
            Err(error) => {
                tracing::warn!(%error, "tool census: reading the records failed");
                return;
            }
        };
    // Each server is recorded as soon as it is listed; a slow one holds up only itself.
    let mut listings = futures::stream::iter(due)
        .map(|(server, fingerprint)| {
            let (recorded, owner) = (&recorded, &owner);
            async move {
                let outcome = census(forwarder, api, &server, recorded, owner).await;
                (server, fingerprint, outcome)
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((server, fingerprint, outcome)) = listings.next().await {
        let next = match outcome {
            Ok(outcome) => {
                app.metrics.tool_census.with_label_values(&[outcome]).inc();
                PERIOD
            }
            Err(error) => {
                app.metrics.tool_census.with_label_values(&["failed"]).inc();
                tracing::info!(server = %server.key(), %error, "tool census: not recorded; the last record stands");
                RETRY
            }
        };
        ledger
            .due
            .insert(server.key(), (fingerprint, Instant::now() + next));
    }
}

/// Lists one server and records what it offers; the outcome's metric label.
async fn census(
    forwarder: &Shared,
    api: &Api<ConfigMap>,
    server: &ServerRoute,
    recorded: &HashMap<String, ConfigMap>,
    owner: &OwnerReference,
) -> Result<&'static str, CensusError> {
    let tools = tokio::time::timeout(DEADLINE, list_tools(forwarder, server))
        .await
        .map_err(|_| CensusError::Deadline(server.key()))??;
    let url = server
        .config
        .upstream
        .census_url(&server.config.auth)
        .unwrap_or_default();
    let record = DiscoveredTools::new(&server.config.namespace, &server.config.name, url, tools);
    let name = config_map_name(&record.namespace, &record.server);
    let unchanged = recorded.get(&name).is_some_and(|current| {
        current
            .owner_references()
            .iter()
            .any(|o| o.uid == owner.uid)
            && DiscoveredTools::read(current).is_some_and(|current| current == record)
    });
    if unchanged {
        return Ok("unchanged");
    }
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY_PROXY.to_owned()),
                (LABEL_COMPONENT.to_owned(), COMPONENT_TOOLS.to_owned()),
            ])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        // Serializing plain data cannot fail.
        data: Some(BTreeMap::from([(
            TOOLS_KEY.to_owned(),
            serde_json::to_string(&record).unwrap_or_default(),
        )])),
        ..Default::default()
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGED_BY_PROXY).force(),
        &Patch::Apply(&config_map),
    )
    .await
    .map_err(|source| CensusError::Write {
        name: name.clone(),
        source,
    })?;
    match &record.tools {
        Some(tools) => tracing::info!(record = %name, tools = tools.len(), "tool census: recorded"),
        None => tracing::warn!(
            record = %name,
            "tool census: more than {MAX_TOOLS} tools, or a name empty or longer than {MAX_TOOL_NAME}: recorded as unknown"
        ),
    }
    Ok(if record.tools.is_some() {
        "recorded"
    } else {
        "unrecordable"
    })
}

/// An owner reference to the configuration manifest.
fn manifest_owner(manifest: &ConfigMap) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: manifest.name_any(),
        uid: manifest.uid()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::source::Snapshot;

    #[test]
    fn servers_that_carry_a_caller_s_credential_are_not_listed() {
        let server = |name: &str, auth: Value| {
            json!({"namespace": "t", "name": name, "path": format!("/t/mcp/{name}/server"),
                "upstream": {"type": "remote", "url": "http://127.0.0.1:9/mcp", "transport": "StreamableHttp"},
                "auth": auth, "tools": {"allow": [], "deny": []}, "timeoutMs": 1000,
                "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
                "public": true, "access": {"subjects": []}})
        };
        let config = json!({
            "schema": mcpgate_crds::gateway_config::SCHEMA_VERSION, "version": "v1",
            "servers": [
                server("open", json!({"type": "none"})),
                server("forwarded", json!({"type": "passthrough"})),
            ],
            "virtualServers": [],
        });
        let snapshot =
            Snapshot::build(serde_json::from_value(config).unwrap(), &Default::default()).unwrap();
        assert!(listable(snapshot.server("t/open").unwrap()));
        assert!(!listable(snapshot.server("t/forwarded").unwrap()));
    }
}
