//! What the renderer reads: the four kinds plus the Secrets and ConfigMaps they reference.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use mcpgate_crds::v1alpha1::{AuthOverride, McpCollaborator, McpServer, VirtualMcpServer};
use serde::Deserialize;

/// Namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything [`super::render`] reads.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// McpServers.
    pub servers: Vec<Arc<McpServer>>,
    /// VirtualMcpServers.
    pub virtual_servers: Vec<Arc<VirtualMcpServer>>,
    /// McpCollaborators.
    pub collaborators: Vec<Arc<McpCollaborator>>,
    /// AuthOverrides.
    pub overrides: Vec<Arc<AuthOverride>>,
    /// Secrets that may be referenced, by namespace and name.
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
    /// ConfigMaps that may be referenced, by namespace and name.
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    /// What the proxy's tool census recorded of each McpServer's upstream.
    pub discovered_tools: BTreeMap<ObjectKey, mcpgate_crds::discovered::DiscoveredTools>,
}

/// A manifest that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not YAML, or not the shape of its kind.
    #[error("document {index}: {source}")]
    Yaml {
        /// 0-based position in the stream.
        index: usize,
        /// What serde said.
        source: serde_yaml::Error,
    },
    /// A kind the renderer does not read.
    #[error(
        "document {index}: unsupported {api_version}/{kind}: expected mcpgate.dev/v1alpha1 kinds, v1 Secret or v1 ConfigMap"
    )]
    UnsupportedKind {
        /// 0-based position in the stream.
        index: usize,
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
    },
    /// A document without a name.
    #[error("document {index}: metadata.name is required")]
    MissingName {
        /// 0-based position in the stream.
        index: usize,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

impl Inputs {
    /// Adds every document of a multi-document YAML stream. Objects without a namespace get
    /// `default_namespace`, as `kubectl apply` would. Empty documents are skipped.
    pub fn add_yaml(&mut self, text: &str, default_namespace: &str) -> Result<(), ParseError> {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|source| ParseError::Yaml { index, source })?;
            if value.is_null() {
                continue;
            }
            let meta: TypeMeta = serde_yaml::from_value(value.clone())
                .map_err(|source| ParseError::Yaml { index, source })?;
            let yaml = |source| ParseError::Yaml { index, source };
            match (meta.api_version.as_str(), meta.kind.as_str()) {
                ("mcpgate.dev/v1alpha1", "McpServer") => {
                    let o = serde_yaml::from_value(value).map_err(yaml)?;
                    self.servers
                        .push(Arc::new(place(o, default_namespace, index)?));
                }
                ("mcpgate.dev/v1alpha1", "VirtualMcpServer") => {
                    let o = serde_yaml::from_value(value).map_err(yaml)?;
                    self.virtual_servers
                        .push(Arc::new(place(o, default_namespace, index)?));
                }
                ("mcpgate.dev/v1alpha1", "McpCollaborator") => {
                    let o = serde_yaml::from_value(value).map_err(yaml)?;
                    self.collaborators
                        .push(Arc::new(place(o, default_namespace, index)?));
                }
                ("mcpgate.dev/v1alpha1", "AuthOverride") => {
                    let o = serde_yaml::from_value(value).map_err(yaml)?;
                    self.overrides
                        .push(Arc::new(place(o, default_namespace, index)?));
                }
                ("v1", "Secret") => {
                    let mut secret: Secret = serde_yaml::from_value(value).map_err(yaml)?;
                    // The API server folds stringData into data; do the same for files.
                    if let Some(strings) = secret.string_data.take() {
                        let data = secret.data.get_or_insert_with(BTreeMap::new);
                        for (k, v) in strings {
                            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
                        }
                    }
                    let secret = place(secret, default_namespace, index)?;
                    self.secrets
                        .insert(super::key_of(&secret), Arc::new(secret));
                }
                ("v1", "ConfigMap") => {
                    let cm: ConfigMap = serde_yaml::from_value(value).map_err(yaml)?;
                    let cm = place(cm, default_namespace, index)?;
                    self.config_maps.insert(super::key_of(&cm), Arc::new(cm));
                }
                (api_version, kind) => {
                    return Err(ParseError::UnsupportedKind {
                        index,
                        api_version: api_version.to_owned(),
                        kind: kind.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Moves everything of `other` into `self`.
    pub fn extend(&mut self, other: Inputs) {
        self.servers.extend(other.servers);
        self.virtual_servers.extend(other.virtual_servers);
        self.collaborators.extend(other.collaborators);
        self.overrides.extend(other.overrides);
        self.secrets.extend(other.secrets);
        self.config_maps.extend(other.config_maps);
        self.discovered_tools.extend(other.discovered_tools);
    }

    /// An opted-in Secret of `server`'s namespace that `server` may use: labelled
    /// `mcpgate.dev/credential: "true"` and annotated with `mcpgate.dev/allowed-servers`
    /// naming it. `Err` says how to fix the reference or opt the Secret in.
    pub(crate) fn credential_secret(
        &self,
        server: &ObjectKey,
        name: &str,
    ) -> Result<&Secret, crate::render::Check> {
        use crate::reasons::*;
        use mcpgate_crds::names::{
            ANNOTATION_ALLOWED_SERVERS, LABEL_CREDENTIAL, secret_allows_server,
        };
        let ObjectKey {
            namespace,
            name: server_name,
        } = server;
        let opt_in = format!(
            "label it {LABEL_CREDENTIAL}=true and annotate it {ANNOTATION_ALLOWED_SERVERS}={server_name:?} (comma-separated server names, or \"*\")"
        );
        let secret = self
            .secrets
            .get(&ObjectKey::new(namespace, name))
            .ok_or_else(|| {
                super::Check::fail(
                    REASON_SECRET_NOT_FOUND,
                    format!(
                        "Secret {namespace}/{name} not found among the Secrets opted in to mcpgate: create it or fix the reference; if it exists, {opt_in}"
                    ),
                )
            })?;
        let labelled = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_CREDENTIAL))
            .is_some_and(|v| v == "true");
        let allowed = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ALLOWED_SERVERS))
            .is_some_and(|servers| secret_allows_server(servers, server_name));
        if !labelled || !allowed {
            return Err(super::Check::fail(
                REASON_SECRET_NOT_OPTED_IN,
                format!(
                    "Secret {namespace}/{name} is not opted in for McpServer {server_name}: {opt_in}"
                ),
            ));
        }
        Ok(secret)
    }

    /// One key of an opted-in Secret `server` may use (see [`Self::credential_secret`]).
    pub(crate) fn secret_value(
        &self,
        server: &ObjectKey,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, crate::render::Check> {
        use crate::reasons::*;
        let secret = self.credential_secret(server, name)?;
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone())
            .ok_or_else(|| {
                super::Check::fail(
                    REASON_SECRET_KEY_NOT_FOUND,
                    format!(
                        "Secret {}/{name} has no key {key:?}: add it or fix the reference",
                        server.namespace
                    ),
                )
            })
    }
}

fn place<K: kube::Resource>(
    mut object: K,
    default_namespace: &str,
    index: usize,
) -> Result<K, ParseError> {
    let meta = object.meta_mut();
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(ParseError::MissingName { index });
    }
    if meta.namespace.is_none() {
        meta.namespace = Some(default_namespace.to_owned());
    }
    Ok(object)
}
