//! McpCollaborators -> who may use each server and virtual server.

use std::collections::{BTreeMap, BTreeSet};

use mcpgate_crds::gateway_config::{AccessList, AccessSubject};
use mcpgate_crds::v1alpha1::{Role, Subject, SubjectKind, TargetKind};

use super::{Check, Diagnostic, Inputs, Kind, ObjectKey, ResourceRef, key_of};
use crate::reasons::*;

/// What a Manager collaborator is granted in Kubernetes RBAC, in its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerGrant {
    /// McpServer or VirtualMcpServer.
    pub target_kind: TargetKind,
    /// The resource they may change.
    pub target_name: String,
    /// The McpCollaborators targeting it, which they may change too.
    pub collaborators: Vec<String>,
    /// Who is granted.
    pub subjects: Vec<Subject>,
}

/// Subjects by target.
#[derive(Debug, Default)]
pub(super) struct AccessLists(BTreeMap<(TargetKind, ObjectKey), BTreeSet<AccessSubject>>);

impl AccessLists {
    /// The access list of one target (empty when nobody is granted access).
    pub(super) fn of(&self, kind: TargetKind, key: &ObjectKey) -> AccessList {
        AccessList {
            subjects: self
                .0
                .get(&(kind, key.clone()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

pub(super) fn render(
    inputs: &Inputs,
    diagnostics: &mut BTreeMap<ResourceRef, Diagnostic>,
    grants: &mut BTreeMap<ObjectKey, ManagerGrant>,
) -> AccessLists {
    let servers: BTreeSet<ObjectKey> = inputs.servers.iter().map(|s| key_of(&**s)).collect();
    let virtuals: BTreeSet<ObjectKey> = inputs
        .virtual_servers
        .iter()
        .map(|s| key_of(&**s))
        .collect();

    // Collaborators by target, so a Manager may also edit the collaborators of its target.
    let mut collaborators_of: BTreeMap<(TargetKind, ObjectKey), BTreeSet<String>> = BTreeMap::new();
    for c in &inputs.collaborators {
        let key = key_of(&**c);
        collaborators_of
            .entry((
                c.spec.target_ref.kind,
                ObjectKey::new(&key.namespace, &c.spec.target_ref.name),
            ))
            .or_default()
            .insert(key.name);
    }

    let mut lists = AccessLists::default();
    for collaborator in &inputs.collaborators {
        let key = key_of(&**collaborator);
        let spec = &collaborator.spec;
        let target = ObjectKey::new(&key.namespace, &spec.target_ref.name);
        let exists = match spec.target_ref.kind {
            TargetKind::McpServer => servers.contains(&target),
            TargetKind::VirtualMcpServer => virtuals.contains(&target),
        };
        let resolved = if exists {
            let subjects = lists
                .0
                .entry((spec.target_ref.kind, target.clone()))
                .or_default();
            for subject in &spec.subjects {
                subjects.insert(access_subject(subject, &key.namespace));
            }
            if spec.role == Role::Manager {
                let collaborators = collaborators_of
                    .get(&(spec.target_ref.kind, target))
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                grants.insert(
                    key.clone(),
                    ManagerGrant {
                        target_kind: spec.target_ref.kind,
                        target_name: spec.target_ref.name.clone(),
                        collaborators,
                        subjects: spec.subjects.clone(),
                    },
                );
            }
            Check::pass(REASON_RESOLVED, "target found")
        } else {
            // The other kind of the same name is the likely mistake: say so.
            let (other_kind, other_exists) = match spec.target_ref.kind {
                TargetKind::McpServer => (TargetKind::VirtualMcpServer, virtuals.contains(&target)),
                TargetKind::VirtualMcpServer => (TargetKind::McpServer, servers.contains(&target)),
            };
            Check::fail(
                REASON_TARGET_NOT_FOUND,
                if other_exists {
                    format!(
                        "spec.targetRef: {:?} {:?} not found in namespace {}, but a {other_kind:?} of that name exists: set spec.targetRef.kind to {other_kind:?} (targetRef is immutable: delete this McpCollaborator and create it again)",
                        spec.target_ref.kind, spec.target_ref.name, key.namespace
                    )
                } else {
                    format!(
                        "spec.targetRef: {:?} {:?} not found in namespace {}: create it or fix the name",
                        spec.target_ref.kind, spec.target_ref.name, key.namespace
                    )
                },
            )
        };
        let mut diagnostic = Diagnostic::new(
            collaborator.metadata.generation,
            Check::pass(REASON_ACCEPTED, "valid"),
            resolved,
        );
        diagnostic.subject_count = Some(spec.subjects.len().try_into().unwrap_or(i32::MAX));
        diagnostics.insert(
            ResourceRef {
                kind: Kind::McpCollaborator,
                key,
            },
            diagnostic,
        );
    }
    lists
}

/// How the proxy matches a subject: ServiceAccounts by their Kubernetes user name.
fn access_subject(subject: &Subject, namespace: &str) -> AccessSubject {
    let name = match subject.kind {
        SubjectKind::ServiceAccount => format!(
            "system:serviceaccount:{}:{}",
            subject.namespace.as_deref().unwrap_or(namespace),
            subject.name
        ),
        SubjectKind::User | SubjectKind::Group => subject.name.clone(),
    };
    AccessSubject {
        kind: subject.kind,
        name,
    }
}
