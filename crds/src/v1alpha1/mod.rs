//! The `mcpgate.dev/v1alpha1` API.

mod auth_override;
mod common;
mod mcp_collaborator;
mod mcp_server;
pub mod rules;
mod virtual_mcp_server;

pub use auth_override::*;
pub use common::*;
pub use mcp_collaborator::*;
pub use mcp_server::*;
pub use virtual_mcp_server::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The four CustomResourceDefinitions, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        McpServer::crd(),
        VirtualMcpServer::crd(),
        McpCollaborator::crd(),
        AuthOverride::crd(),
    ]
}
