//! Reflectors for everything the renderer reads and everything the operator writes, and the
//! trigger that wakes the reconcile loop when any of them changes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use mcpgate_crds::discovered::{COMPONENT_TOOLS, DiscoveredTools, MANAGED_BY_PROXY};
use mcpgate_crds::names::{LABEL_COMPONENT, LABEL_CREDENTIAL, LABEL_MANAGED_BY, MANAGED_BY};
use mcpgate_crds::v1alpha1::{AuthOverride, McpCollaborator, McpServer, VirtualMcpServer};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::render::{Inputs, ObjectKey};

/// One kind, watched in one or more namespaces.
pub struct Stores<K: Resource<DynamicType = ()> + 'static>(Vec<Store<K>>);

impl<K> Stores<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Every object, across namespaces.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    /// One object by namespace and name.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        let r = reflector::ObjectRef::new(&key.name).within(&key.namespace);
        self.0.iter().find_map(|s| s.get(&r))
    }

    async fn wait_until_ready(&self) {
        for s in &self.0 {
            // Only fails when the writer is dropped, i.e. at shutdown.
            let _ = s.wait_until_ready().await;
        }
    }
}

/// Where the operator looks.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every namespace.
    All,
    /// These namespaces only.
    Namespaces(Vec<String>),
}

/// All reflector caches.
pub struct Caches {
    /// Input kinds.
    pub servers: Stores<McpServer>,
    /// Input kinds.
    pub virtual_servers: Stores<VirtualMcpServer>,
    /// Input kinds.
    pub collaborators: Stores<McpCollaborator>,
    /// Input kinds.
    pub overrides: Stores<AuthOverride>,
    /// Secrets opted in as credentials (label `mcpgate.dev/credential=true`), in watched
    /// namespaces. No other Secret is ever fetched or cached.
    pub secrets: Stores<Secret>,
    /// Referenced ConfigMaps (in watched namespaces).
    pub config_maps: Stores<ConfigMap>,
    /// What the operator wrote into the gateway namespace.
    pub owned_config_maps: Stores<ConfigMap>,
    /// What the operator wrote into the gateway namespace.
    pub owned_secrets: Stores<Secret>,
    /// Manager RBAC the operator wrote.
    pub owned_roles: Stores<Role>,
    /// Manager RBAC the operator wrote.
    pub owned_role_bindings: Stores<RoleBinding>,
    /// What the proxy learnt of each server's tools (`mcpgate_crds::discovered`), in the
    /// gateway namespace.
    pub discovered: Stores<ConfigMap>,
}

impl Caches {
    /// Starts every reflector. The returned futures drive them and must be polled; `trigger`
    /// is notified on every change.
    pub fn start(
        client: &Client,
        scope: &Scope,
        gateway_namespace: &str,
        trigger: Arc<Notify>,
    ) -> (Self, Vec<BoxFuture<'static, ()>>) {
        let mut tasks = Vec::new();
        let mut t = Tasks {
            client,
            trigger: &trigger,
            tasks: &mut tasks,
        };
        let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        let caches = Self {
            servers: t.watch(scope, watcher::Config::default()),
            virtual_servers: t.watch(scope, watcher::Config::default()),
            collaborators: t.watch(scope, watcher::Config::default()),
            overrides: t.watch(scope, watcher::Config::default()),
            secrets: t.watch(
                scope,
                watcher::Config::default().labels(&format!("{LABEL_CREDENTIAL}=true")),
            ),
            config_maps: t.watch(scope, watcher::Config::default()),
            owned_config_maps: t.watch(
                &Scope::Namespaces(vec![gateway_namespace.to_owned()]),
                owned.clone(),
            ),
            owned_secrets: t.watch(
                &Scope::Namespaces(vec![gateway_namespace.to_owned()]),
                owned.clone(),
            ),
            owned_roles: t.watch(scope, owned.clone()),
            owned_role_bindings: t.watch(scope, owned),
            discovered: t.watch(
                &Scope::Namespaces(vec![gateway_namespace.to_owned()]),
                watcher::Config::default().labels(&format!(
                    "{LABEL_MANAGED_BY}={MANAGED_BY_PROXY},{LABEL_COMPONENT}={COMPONENT_TOOLS}"
                )),
            ),
        };
        (caches, tasks)
    }

    /// Resolves once every cache has its initial list: before that, an empty cache would
    /// look like "everything was deleted".
    pub async fn wait_until_ready(&self) {
        self.servers.wait_until_ready().await;
        self.virtual_servers.wait_until_ready().await;
        self.collaborators.wait_until_ready().await;
        self.overrides.wait_until_ready().await;
        self.secrets.wait_until_ready().await;
        self.config_maps.wait_until_ready().await;
        self.owned_config_maps.wait_until_ready().await;
        self.owned_secrets.wait_until_ready().await;
        self.owned_roles.wait_until_ready().await;
        self.owned_role_bindings.wait_until_ready().await;
        self.discovered.wait_until_ready().await;
    }

    /// A consistent-enough snapshot for one render.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            servers: self.servers.all(),
            virtual_servers: self.virtual_servers.all(),
            collaborators: self.collaborators.all(),
            overrides: self.overrides.all(),
            secrets: by_key(self.secrets.all()),
            config_maps: by_key(self.config_maps.all()),
            discovered_tools: self
                .discovered_tools()
                .into_iter()
                .map(|(_, record)| (ObjectKey::new(&record.namespace, &record.server), record))
                .collect(),
        }
    }

    /// The proxy's tool records that read well and sit under the name of the server they
    /// describe, with the name of the ConfigMap each is in.
    pub fn discovered_tools(&self) -> Vec<(String, DiscoveredTools)> {
        self.discovered
            .all()
            .iter()
            .filter_map(|config_map| {
                DiscoveredTools::read(config_map).map(|record| (config_map.name_any(), record))
            })
            .collect()
    }
}

fn by_key<K: Resource>(objects: Vec<Arc<K>>) -> BTreeMap<ObjectKey, Arc<K>> {
    objects.into_iter().map(|o| (key(&*o), o)).collect()
}

/// Namespace and name of a cached object.
pub fn key<K: Resource>(object: &K) -> ObjectKey {
    ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

struct Tasks<'a> {
    client: &'a Client,
    trigger: &'a Arc<Notify>,
    tasks: &'a mut Vec<BoxFuture<'static, ()>>,
}

impl Tasks<'_> {
    fn watch<K>(&mut self, scope: &Scope, config: watcher::Config) -> Stores<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        let apis: Vec<Api<K>> = match scope {
            Scope::All => vec![Api::all(self.client.clone())],
            Scope::Namespaces(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect(),
        };
        let mut stores = Vec::new();
        for api in apis {
            let (reader, writer) = reflector::store();
            let trigger = self.trigger.clone();
            let stream = watcher(api, config.clone())
                .default_backoff()
                // Nothing reads managed fields; dropping them halves the cache.
                .modify(|o| o.managed_fields_mut().clear())
                .reflect(writer)
                .touched_objects();
            self.tasks.push(Box::pin(async move {
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    if let Err(error) = event {
                        tracing::warn!(%error, kind = %K::kind(&()), "watch failed; retrying");
                    }
                    trigger.notify_one();
                }
            }));
            stores.push(reader);
        }
        Stores(stores)
    }
}
