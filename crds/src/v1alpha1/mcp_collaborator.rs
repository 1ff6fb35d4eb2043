//! `McpCollaborator`: who may use or manage a server or virtual server.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::CommonStatus;

/// Grants subjects a role on one McpServer or VirtualMcpServer in the same namespace.
/// `User` may list and call its tools; `Manager` may also change it and its collaborators
/// (the operator grants Kubernetes RBAC on that one resource).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mcpgate.dev",
    version = "v1alpha1",
    kind = "McpCollaborator",
    namespaced,
    status = "CommonStatus",
    shortname = "mcpcollab",
    category = "mcpgate",
    doc = "Grants users, groups or ServiceAccounts a role on an McpServer or VirtualMcpServer",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".spec.targetRef.kind",
        priority = 1
    ),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct McpCollaboratorSpec {
    /// The server or virtual server, in this namespace. Immutable: to grant a role on
    /// another server, create another McpCollaborator.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.targetRef is immutable: delete this McpCollaborator and create a new one for the other target"))]
    pub target_ref: TargetRef,
    /// `User` or `Manager`.
    pub role: Role,
    /// Who is granted the role.
    #[schemars(length(min = 1, max = 256))]
    pub subjects: Vec<Subject>,
}

/// A server or virtual server in the collaborator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `McpServer` or `VirtualMcpServer`.
    pub kind: TargetKind,
    /// The target's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What a collaborator targets.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum TargetKind {
    /// An McpServer.
    McpServer,
    /// A VirtualMcpServer.
    VirtualMcpServer,
}

/// A collaborator role.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Role {
    /// May list and call the target's tools.
    User,
    /// May also update or delete the target and its collaborators.
    Manager,
}

/// A user, group or Kubernetes ServiceAccount.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, KubeSchema,
)]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' || !has(self.namespace)").message("subjects[].namespace is only valid for kind ServiceAccount").field_path(".namespace").reason(kube::core::Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `User` (matched against the token's subject or email claim), `Group` (the groups
    /// claim) or `ServiceAccount`.
    pub kind: SubjectKind,
    /// The user, group or ServiceAccount name.
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
    /// The ServiceAccount's namespace; defaults to the collaborator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Kinds of subject.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum SubjectKind {
    /// A person, identified by their identity token.
    User,
    /// Everyone in a group of the identity token's groups claim.
    Group,
    /// An in-cluster workload.
    ServiceAccount,
}
