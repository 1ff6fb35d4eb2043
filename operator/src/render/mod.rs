//! PURE: mcpgate resources (and the Secrets and ConfigMaps they reference) in; one gateway
//! configuration, the credential Secrets it needs and one diagnostic per resource out.
//!
//! No I/O, no clock, no randomness: the same inputs always give byte-identical output, so
//! the operator can skip writes when nothing changed and tests can snapshot the result.

mod access;
mod inputs;
mod server;
mod virtual_server;

use std::collections::BTreeMap;

use mcpgate_crds::gateway_config::{GatewayConfig, SCHEMA_VERSION};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

pub use access::ManagerGrant;
pub use inputs::{Inputs, ObjectKey, ParseError};

/// What [`render`] produces.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The configuration the proxy runs.
    pub config: GatewayConfig,
    /// Credential Secrets for the gateway namespace, by name.
    pub secrets: BTreeMap<String, CredentialSecret>,
    /// One entry per input resource.
    pub diagnostics: BTreeMap<ResourceRef, Diagnostic>,
    /// RBAC for each Manager collaborator whose target exists, by collaborator.
    pub manager_grants: BTreeMap<ObjectKey, ManagerGrant>,
}

/// Which resource a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    /// `McpServer`, `VirtualMcpServer`, `McpCollaborator` or `AuthOverride`.
    pub kind: Kind,
    /// Namespace and name.
    pub key: ObjectKey,
}

/// The four kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `McpServer`.
    McpServer,
    /// `VirtualMcpServer`.
    VirtualMcpServer,
    /// `McpCollaborator`.
    McpCollaborator,
    /// `AuthOverride`.
    AuthOverride,
}

impl Kind {
    /// The kind's name as in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::McpServer => "McpServer",
            Kind::VirtualMcpServer => "VirtualMcpServer",
            Kind::McpCollaborator => "McpCollaborator",
            Kind::AuthOverride => "AuthOverride",
        }
    }
}

/// A Secret the operator writes into the gateway namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSecret {
    /// The McpServer the credentials belong to.
    pub source: ObjectKey,
    /// Key -> value.
    pub data: BTreeMap<String, SecretValue>,
}

/// A credential value: never printed.
#[derive(Clone)]
pub struct SecretValue(SecretSlice<u8>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
    /// The bytes, for writing them out.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The outcome of one check: fine, or a reason and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether the check passed.
    pub ok: bool,
    /// CamelCase reason from [`crate::reasons`].
    pub reason: &'static str,
    /// Human-readable, names the field and the fix; never a secret value.
    pub message: String,
}

impl Check {
    /// A passed check.
    pub fn pass(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }
    /// A failed check.
    pub fn fail(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// The rendered state of one resource, turned into status by `status.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The generation this was rendered from.
    pub generation: Option<i64>,
    /// Is the spec valid and in effect.
    pub accepted: Check,
    /// Do its references resolve.
    pub resolved_refs: Check,
    /// Is it served.
    pub ready: Check,
    /// Gateway path, for servers and virtual servers.
    pub url: Option<String>,
    /// Tools exposed, when known.
    pub tool_count: Option<i32>,
    /// Subjects granted access, for servers and virtual servers.
    pub subject_count: Option<i32>,
}

impl Diagnostic {
    fn new(generation: Option<i64>, accepted: Check, resolved_refs: Check) -> Self {
        use crate::reasons::*;
        let ready = if !accepted.ok {
            Check::fail(REASON_NOT_ACCEPTED, accepted.message.clone())
        } else if !resolved_refs.ok {
            Check::fail(REASON_REFS_NOT_RESOLVED, resolved_refs.message.clone())
        } else {
            Check::pass(REASON_READY, "in the gateway configuration")
        };
        Self {
            generation,
            accepted,
            resolved_refs,
            ready,
            url: None,
            tool_count: None,
            subject_count: None,
        }
    }
}

/// Renders everything. Pure.
pub fn render(inputs: &Inputs) -> Rendered {
    let mut rendered = Rendered::default();
    let access = access::render(
        inputs,
        &mut rendered.diagnostics,
        &mut rendered.manager_grants,
    );

    let servers = server::render(inputs, &access, &mut rendered);
    virtual_server::render(inputs, &servers, &access, &mut rendered);

    rendered.config.schema = SCHEMA_VERSION;
    rendered.config.version = content_hash(&rendered.config);
    rendered
}

/// Hash of the configuration with an empty version field.
fn content_hash(config: &GatewayConfig) -> String {
    let mut unversioned = config.clone();
    unversioned.version.clear();
    // Serializing our own plain data types cannot fail; an empty hash input would only make
    // every version equal, never leak or lose anything.
    let bytes = serde_json::to_vec(&unversioned).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Namespace and name of any of the four kinds.
fn key_of<K: kube::Resource>(object: &K) -> ObjectKey {
    ObjectKey::new(
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default(),
    )
}
