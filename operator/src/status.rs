//! Diagnostics -> `status` (pure), then a status patch only where it changed.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use mcpgate_crds::names::FIELD_MANAGER;
use mcpgate_crds::v1alpha1::{CommonStatus, ServerStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reasons::{
    ACCEPTED, READY, REASON_NOT_SERVED, REASON_RECONCILED, RECONCILING, RESOLVED_REFS, STALLED,
};
use crate::render::{Check, Diagnostic, Kind, Rendered};
use crate::watch::{Caches, Stores};

/// Status patches in flight at once.
const PARALLEL_PATCHES: usize = 16;

/// The conditions: Accepted, ResolvedRefs and Ready, and the two that GitOps tools read
/// (kstatus: Reconciling and Stalled, each abnormal when True). A resource that is not Ready
/// because its spec must change (not accepted, or a field this build does not serve) is
/// Stalled: nothing will fix it but an edit. One that waits for something else to appear (a
/// Secret an ExternalSecret is still writing, a target, a member server) is Reconciling: it
/// becomes Ready by itself when that arrives. `lastTransitionTime` only moves when a
/// condition's status flips.
pub fn conditions(d: &Diagnostic, existing: &[Condition], now: &Time) -> Vec<Condition> {
    let needs_an_edit = !d.accepted.ok || d.ready.reason == REASON_NOT_SERVED;
    let stalled = Check {
        ok: !d.ready.ok && needs_an_edit,
        reason: d.ready.reason,
        message: d.ready.message.clone(),
    };
    let reconciling = if !d.ready.ok && !needs_an_edit {
        Check {
            ok: true,
            reason: d.ready.reason,
            message: format!("waiting: {}", d.ready.message),
        }
    } else {
        Check {
            ok: false,
            reason: REASON_RECONCILED,
            message: match d.generation {
                Some(generation) => format!("generation {generation} is rendered"),
                None => "rendered".to_owned(),
            },
        }
    };
    [
        (ACCEPTED, &d.accepted),
        (RESOLVED_REFS, &d.resolved_refs),
        (READY, &d.ready),
        (RECONCILING, &reconciling),
        (STALLED, &stalled),
    ]
    .into_iter()
    .map(|(type_, check): (&str, &Check)| {
        let status = if check.ok { "True" } else { "False" };
        let last_transition_time = existing
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: check.reason.to_owned(),
            message: check.message.clone(),
            observed_generation: d.generation,
            last_transition_time,
        }
    })
    .collect()
}

/// The whole status of one resource, as JSON; its URL is absolute when the gateway's
/// `public_url` is known. Pure.
pub fn desired(
    kind: Kind,
    d: &Diagnostic,
    existing: &[Condition],
    now: &Time,
    public_url: Option<&str>,
) -> Value {
    let conditions = conditions(d, existing, now);
    // Serializing plain data cannot fail.
    match kind {
        Kind::McpServer | Kind::VirtualMcpServer => serde_json::to_value(ServerStatus {
            observed_generation: d.generation,
            conditions,
            url: d.url.as_ref().map(|path| match public_url {
                Some(base) => format!("{}{path}", base.trim_end_matches('/')),
                None => path.clone(),
            }),
            tool_count: d.tool_count,
            subject_count: d.subject_count,
        }),
        Kind::McpCollaborator | Kind::AuthOverride => serde_json::to_value(CommonStatus {
            observed_generation: d.generation,
            conditions,
        }),
    }
    .unwrap_or(Value::Null)
}

/// Patches the status of every resource whose status differs from the rendered one, and
/// records an Event on each resource whose Ready condition changed (status or reason).
pub async fn apply(
    client: &Client,
    caches: &Caches,
    metrics: &Metrics,
    rendered: &Rendered,
    public_url: Option<&str>,
    recorder: &Recorder,
) -> Result<()> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut ready = std::collections::BTreeMap::<(Kind, bool), i64>::new();
    let mut patches: Vec<BoxFuture<'_, Result<Option<Transition>>>> = Vec::new();
    for (resource, d) in &rendered.diagnostics {
        *ready.entry((resource.kind, d.ready.ok)).or_default() += 1;
        let (kind, key) = (resource.kind, &resource.key);
        let at = Reported {
            now: &now,
            public_url,
        };
        patches.push(match kind {
            Kind::McpServer => patch(client, &caches.servers, metrics, kind, key, d, at).boxed(),
            Kind::VirtualMcpServer => {
                patch(client, &caches.virtual_servers, metrics, kind, key, d, at).boxed()
            }
            Kind::McpCollaborator => {
                patch(client, &caches.collaborators, metrics, kind, key, d, at).boxed()
            }
            Kind::AuthOverride => {
                patch(client, &caches.overrides, metrics, kind, key, d, at).boxed()
            }
        });
    }
    // Unchanged statuses resolve at once; changed ones go to the API server a few at a time.
    let results: Vec<Result<Option<Transition>>> = futures::stream::iter(patches)
        .buffer_unordered(PARALLEL_PATCHES)
        .collect()
        .await;
    let transitions: Vec<Transition> = results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    publish(recorder, metrics, transitions).await;
    for kind in [
        Kind::McpServer,
        Kind::VirtualMcpServer,
        Kind::McpCollaborator,
        Kind::AuthOverride,
    ] {
        for ok in [true, false] {
            let n = ready.get(&(kind, ok)).copied().unwrap_or(0);
            metrics
                .resources
                .with_label_values(&[kind.as_str(), if ok { "true" } else { "false" }])
                .set(n);
        }
    }
    Ok(())
}

/// Events recorded per reconcile at most: a change that flips many resources at once (a
/// shared Secret deleted) reports the first ones, and the rest stay visible in status.
const EVENTS_PER_RECONCILE: usize = 64;

/// A resource whose Ready condition changed.
pub struct Transition {
    reference: ObjectReference,
    ready: bool,
    reason: &'static str,
    message: String,
}

/// The Event for a transition. Pure.
pub fn event(t: &Transition) -> Event {
    // The API server refuses notes over 1 kB.
    let mut note = t.message.clone();
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    Event {
        type_: if t.ready {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: t.reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    }
}

/// Records the Events: repeats of one (resource, reason, note) become one Event with a count
/// (the recorder's series), and at most [`EVENTS_PER_RECONCILE`] per reconcile. A failure is
/// logged: Events never hold up status.
async fn publish(recorder: &Recorder, metrics: &Metrics, transitions: Vec<Transition>) {
    let total = transitions.len();
    for t in transitions.iter().take(EVENTS_PER_RECONCILE) {
        match recorder.publish(&event(t), &t.reference).await {
            Ok(()) => metrics.write("Event", "create"),
            Err(error) => {
                tracing::warn!(%error, object = ?t.reference.name, "recording an Event failed")
            }
        }
    }
    if total > EVENTS_PER_RECONCILE {
        tracing::info!(
            skipped = total - EVENTS_PER_RECONCILE,
            "more resources changed than Events are recorded per reconcile; their status says why"
        );
    }
}

/// When, and with which public URL, a status is reported.
#[derive(Clone, Copy)]
struct Reported<'a> {
    now: &'a Time,
    public_url: Option<&'a str>,
}

async fn patch<K>(
    client: &Client,
    stores: &Stores<K>,
    metrics: &Metrics,
    kind: Kind,
    key: &crate::render::ObjectKey,
    d: &Diagnostic,
    at: Reported<'_>,
) -> Result<Option<Transition>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
        + 'static,
{
    // Deleted since the snapshot was taken: nothing to report on.
    let Some(object) = stores.get(key) else {
        return Ok(None);
    };
    let current = serde_json::to_value(&*object)
        .ok()
        .and_then(|mut v| v.get_mut("status").map(Value::take));
    let existing: Vec<Condition> = current
        .as_ref()
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let desired = desired(kind, d, &existing, at.now, at.public_url);
    if current.as_ref() == Some(&desired) {
        return Ok(None);
    }
    let was = existing.iter().find(|c| c.type_ == READY);
    let now_status = if d.ready.ok { "True" } else { "False" };
    let transition = (was.is_none_or(|c| c.status != now_status || c.reason != d.ready.reason))
        .then(|| Transition {
            reference: object.object_ref(&()),
            ready: d.ready.ok,
            reason: d.ready.reason,
            message: d.ready.message.clone(),
        });
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    match api
        .patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => {
            metrics.write(kind.as_str(), "status");
            Ok(transition)
        }
        // Deleted meanwhile.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("patch status", key)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasons::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn diagnostic(resolved: bool) -> Diagnostic {
        let resolved_refs = if resolved {
            Check::pass(REASON_RESOLVED, "ok")
        } else {
            Check::fail(REASON_SECRET_NOT_FOUND, "Secret ns/x not found")
        };
        Diagnostic {
            generation: Some(3),
            accepted: Check::pass(REASON_ACCEPTED, "valid"),
            ready: if resolved {
                Check::pass(REASON_READY, "in")
            } else {
                Check::fail(REASON_REFS_NOT_RESOLVED, "Secret ns/x not found")
            },
            resolved_refs,
            url: Some("/ns/mcp/x/server".into()),
            tool_count: Some(2),
            subject_count: Some(1),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = conditions(&diagnostic(false), &[], &at(100));
        assert!(
            first
                .iter()
                .all(|c| c.last_transition_time == at(100) && c.observed_generation == Some(3))
        );

        // Same statuses later: times kept, even if a message changed.
        let mut changed = diagnostic(false);
        changed.resolved_refs.message = "Secret ns/y not found".into();
        let second = conditions(&changed, &first, &at(200));
        assert!(second.iter().all(|c| c.last_transition_time == at(100)));
        assert_eq!(second[1].message, "Secret ns/y not found");

        // ResolvedRefs and Ready flip; Accepted does not.
        let third = conditions(&diagnostic(true), &second, &at(300));
        let time = |t: &str| {
            third
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(ACCEPTED), at(100));
        assert_eq!(time(RESOLVED_REFS), at(300));
        assert_eq!(time(READY), at(300));
        assert_eq!(
            time(STALLED),
            at(100),
            "waiting on a Secret was never stalled"
        );
        assert_eq!(
            time(RECONCILING),
            at(300),
            "it was reconciling until the Secret came"
        );
    }

    #[test]
    fn an_edit_is_stalled_a_wait_is_reconciling() {
        let status = |d: &Diagnostic, t: &str| {
            conditions(d, &[], &at(1))
                .into_iter()
                .find(|c| c.type_ == t)
                .unwrap()
        };
        // Waiting for a Secret: in progress, not failed.
        let waiting = diagnostic(false);
        let reconciling = status(&waiting, RECONCILING);
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", REASON_REFS_NOT_RESOLVED)
        );
        assert_eq!(reconciling.message, "waiting: Secret ns/x not found");
        assert_eq!(status(&waiting, STALLED).status, "False");

        // A spec the API server could not reject but the operator does: stalled.
        let mut invalid = diagnostic(true);
        invalid.accepted = Check::fail(REASON_INVALID_SPEC, "spec.remote.url: bad");
        invalid.ready = Check::fail(REASON_NOT_ACCEPTED, "spec.remote.url: bad");
        let stalled = status(&invalid, STALLED);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", REASON_NOT_ACCEPTED)
        );
        assert_eq!(status(&invalid, RECONCILING).status, "False");
        let mut unserved = diagnostic(true);
        unserved.ready = Check::fail(REASON_NOT_SERVED, "spec.openapi is not served");
        assert_eq!(status(&unserved, STALLED).status, "True");

        // Ready: neither.
        let ready = diagnostic(true);
        assert_eq!(status(&ready, STALLED).status, "False");
        let done = status(&ready, RECONCILING);
        assert_eq!(
            (done.status.as_str(), done.message.as_str()),
            ("False", "generation 3 is rendered")
        );
        assert_eq!(done.observed_generation, Some(3));
    }

    #[test]
    fn server_status_carries_url_and_counts_collaborator_status_does_not() {
        let server = desired(Kind::McpServer, &diagnostic(true), &[], &at(1), None);
        assert_eq!(server["url"], "/ns/mcp/x/server");
        assert_eq!(server["toolCount"], 2);
        assert_eq!(server["observedGeneration"], 3);
        let collaborator = desired(Kind::McpCollaborator, &diagnostic(true), &[], &at(1), None);
        assert!(collaborator.get("url").is_none() && collaborator.get("toolCount").is_none());
        assert_eq!(collaborator["conditions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn the_url_is_absolute_when_the_public_url_is_known() {
        for base in ["https://mcp.example.com", "https://mcp.example.com/"] {
            let server = desired(Kind::McpServer, &diagnostic(true), &[], &at(1), Some(base));
            assert_eq!(server["url"], "https://mcp.example.com/ns/mcp/x/server");
        }
    }
}
