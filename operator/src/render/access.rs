//! McpCollaborators -> who may use each server and virtual server.

use std::collections::{BTreeMap, BTreeSet};

use mcpgate_crds::gateway_config::{AccessList, AccessSubject};
use mcpgate_crds::v1alpha1::{SubjectKind, TargetKind};

use super::{Check, Diagnostic, Inputs, Kind, ObjectKey, ResourceRef, key_of};
use crate::reasons::*;

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
) -> AccessLists {
    let servers: BTreeSet<ObjectKey> = inputs.servers.iter().map(|s| key_of(&**s)).collect();
    let virtuals: BTreeSet<ObjectKey> = inputs
        .virtual_servers
        .iter()
        .map(|s| key_of(&**s))
        .collect();

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
            let subjects = lists.0.entry((spec.target_ref.kind, target)).or_default();
            for subject in &spec.subjects {
                subjects.insert(access_subject(subject, &key.namespace));
            }
            Check::pass(REASON_RESOLVED, "target found")
        } else {
            Check::fail(
                REASON_TARGET_NOT_FOUND,
                format!(
                    "spec.targetRef: {:?} {:?} not found in namespace {}: create it or fix the name",
                    spec.target_ref.kind, spec.target_ref.name, key.namespace
                ),
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
fn access_subject(subject: &mcpgate_crds::v1alpha1::Subject, namespace: &str) -> AccessSubject {
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
