//! Manager collaborators -> a Role and RoleBinding in their namespace allowing changes to that
//! one resource and to the McpCollaborators that target it. Removed when the grant goes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use mcpgate_crds::names::*;
use mcpgate_crds::v1alpha1::{SubjectKind, TargetKind};

use crate::apply::{delete, same_meta};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::render::{ManagerGrant, ObjectKey, Rendered};
use crate::watch::{Caches, key};

const COMPONENT_RBAC: &str = "rbac";
const VERBS: [&str; 4] = ["get", "update", "patch", "delete"];

/// The Role and RoleBinding for one grant, owned by `owner` when there is one. Pure.
pub fn desired(
    collaborator: &ObjectKey,
    grant: &ManagerGrant,
    owner: Option<&OwnerReference>,
) -> (Role, RoleBinding) {
    let name = manager_role_name(&collaborator.name);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(collaborator.namespace.clone()),
        labels: Some(BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_COMPONENT.to_owned(), COMPONENT_RBAC.to_owned()),
        ])),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_SOURCE.to_owned(),
            format!("McpCollaborator/{}", collaborator.name),
        )])),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    };
    let resource = match grant.target_kind {
        TargetKind::McpServer => "mcpservers",
        TargetKind::VirtualMcpServer => "virtualmcpservers",
    };
    let rule = |resource: &str, names: Vec<String>| PolicyRule {
        api_groups: Some(vec![GROUP.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: Some(names),
        verbs: VERBS.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![
            rule(resource, vec![grant.target_name.clone()]),
            rule("mcpcollaborators", grant.collaborators.clone()),
        ]),
    };
    let subjects = grant
        .subjects
        .iter()
        .map(|s| match s.kind {
            SubjectKind::User | SubjectKind::Group => RbacSubject {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: format!("{:?}", s.kind),
                name: s.name.clone(),
                namespace: None,
            },
            SubjectKind::ServiceAccount => RbacSubject {
                api_group: Some(String::new()),
                kind: "ServiceAccount".to_owned(),
                name: s.name.clone(),
                namespace: Some(
                    s.namespace
                        .clone()
                        .unwrap_or_else(|| collaborator.namespace.clone()),
                ),
            },
        })
        .fold(Vec::new(), |mut unique: Vec<RbacSubject>, s| {
            if !unique.contains(&s) {
                unique.push(s);
            }
            unique
        });
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(subjects),
    };
    (role, binding)
}

/// Applies changed grants and deletes grants whose collaborator is gone or no longer a Manager.
pub async fn apply(
    client: &Client,
    caches: &Caches,
    metrics: &Metrics,
    rendered: &Rendered,
    owner: Option<&OwnerReference>,
) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut wanted = BTreeSet::new();
    for (collaborator, grant) in &rendered.manager_grants {
        let (role, binding) = desired(collaborator, grant, owner);
        let ns = &collaborator.namespace;
        let name = role.name_any();
        wanted.insert(ObjectKey::new(ns, &name));
        if !caches
            .owned_roles
            .get(&key(&role))
            .is_some_and(|c| c.rules == role.rules && same_meta(&c.metadata, &role.metadata))
        {
            Api::<Role>::namespaced(client.clone(), ns)
                .patch(&name, &params, &Patch::Apply(&role))
                .await
                .map_err(Error::kube("apply Role", format!("{ns}/{name}")))?;
            metrics.write("Role", "apply");
        }
        if !caches
            .owned_role_bindings
            .get(&key(&binding))
            .is_some_and(|c| {
                c.subjects == binding.subjects
                    && c.role_ref == binding.role_ref
                    && same_meta(&c.metadata, &binding.metadata)
            })
        {
            Api::<RoleBinding>::namespaced(client.clone(), ns)
                .patch(&name, &params, &Patch::Apply(&binding))
                .await
                .map_err(Error::kube("apply RoleBinding", format!("{ns}/{name}")))?;
            metrics.write("RoleBinding", "apply");
        }
    }
    let is_ours = |labels: &BTreeMap<String, String>| {
        labels
            .get(LABEL_COMPONENT)
            .is_some_and(|c| c == COMPONENT_RBAC)
    };
    for binding in caches.owned_role_bindings.all() {
        let k = key(&*binding);
        if is_ours(binding.labels()) && !wanted.contains(&k) {
            delete(
                &Api::<RoleBinding>::namespaced(client.clone(), &k.namespace),
                &k.name,
                "delete RoleBinding",
                &k.namespace,
            )
            .await?;
            metrics.write("RoleBinding", "delete");
        }
    }
    for role in caches.owned_roles.all() {
        let k = key(&*role);
        if is_ours(role.labels()) && !wanted.contains(&k) {
            delete(
                &Api::<Role>::namespaced(client.clone(), &k.namespace),
                &k.name,
                "delete Role",
                &k.namespace,
            )
            .await?;
            metrics.write("Role", "delete");
        }
    }
    let n = i64::try_from(wanted.len()).unwrap_or(i64::MAX);
    metrics.managed_objects.with_label_values(&["Role"]).set(n);
    metrics
        .managed_objects
        .with_label_values(&["RoleBinding"])
        .set(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_crds::v1alpha1::Subject;

    #[test]
    fn grants_name_one_resource_and_its_collaborators() {
        let grant = ManagerGrant {
            target_kind: TargetKind::VirtualMcpServer,
            target_name: "bundle".into(),
            collaborators: vec!["bundle-managers".into(), "bundle-users".into()],
            subjects: vec![
                Subject {
                    kind: SubjectKind::User,
                    name: "bob".into(),
                    namespace: None,
                },
                Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "bot".into(),
                    namespace: None,
                },
                Subject {
                    kind: SubjectKind::User,
                    name: "bob".into(),
                    namespace: None,
                },
            ],
        };
        let (role, binding) = desired(&ObjectKey::new("team", "bundle-managers"), &grant, None);
        let rules = role.rules.unwrap();
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["virtualmcpservers".to_owned()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["bundle".to_owned()][..])
        );
        assert_eq!(rules[1].resource_names.as_ref().unwrap().len(), 2);
        assert!(
            !rules
                .iter()
                .any(|r| r.verbs.iter().any(|v| v == "create" || v == "list"))
        );
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 2, "duplicates removed");
        assert_eq!(
            subjects[1].namespace.as_deref(),
            Some("team"),
            "ServiceAccounts default to the collaborator's namespace"
        );
        assert_eq!(binding.role_ref.name, "mcpgate-manager.bundle-managers");
    }
}
