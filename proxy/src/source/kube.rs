//! Configuration from the Kubernetes API: the operator's ConfigMap and credential Secrets in
//! the gateway namespace (and nothing else: the proxy never reads tenant namespaces).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mcpgate_crds::GatewayConfig;
use mcpgate_crds::names::{CONFIG_KEY, CONFIG_MAP_NAME, LABEL_MANAGED_BY, MANAGED_BY};
use secrecy::SecretString;
use tokio::sync::Notify;

use super::snapshot::{Credentials, Snapshot};
use super::{Current, apply_result};
use crate::metrics::Metrics;

/// Watches `namespace` and swaps in every complete, valid configuration, until the process
/// ends. A configuration naming credentials that have not arrived yet waits for them.
pub async fn watch(client: Client, namespace: String, current: Arc<Current>, metrics: Metrics) {
    let trigger = Arc::new(Notify::new());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let (cm_store, cm_task) = reflect(
        config_maps,
        watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")),
        trigger.clone(),
    );
    let (secret_store, secret_task) = reflect(
        secrets,
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
        trigger.clone(),
    );
    let reflectors = futures::future::join(cm_task, secret_task);
    let apply = async {
        let _ = cm_store.wait_until_ready().await;
        let _ = secret_store.wait_until_ready().await;
        loop {
            apply_result(&current, &metrics, load(&cm_store, &secret_store));
            trigger.notified().await;
            // Secrets and the ConfigMap are written one after another: let a burst settle.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    // Both run for the life of the process; dropping this future stops the watches.
    tokio::select! {
        _ = reflectors => {}
        () = apply => {}
    }
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Arc<Notify>,
) -> (Store<K>, impl Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let task = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, "configuration watch failed; retrying");
            }
            trigger.notify_one();
        }
    };
    (reader, task)
}

/// Why the API's objects could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The operator has not written the configuration yet.
    #[error("ConfigMap {CONFIG_MAP_NAME} (key {CONFIG_KEY}) not found")]
    Missing,
    /// The configuration is not JSON of the expected shape.
    #[error("ConfigMap {CONFIG_MAP_NAME}: {0}")]
    Json(#[from] serde_json::Error),
    /// The configuration is not usable.
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

fn load(config_maps: &Store<ConfigMap>, secrets: &Store<Secret>) -> Result<Snapshot, KubeError> {
    let text = config_maps
        .state()
        .into_iter()
        .find_map(|cm| cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).cloned())
        .ok_or(KubeError::Missing)?;
    let config: GatewayConfig = serde_json::from_str(&text)?;
    let mut credentials = Credentials::new();
    for secret in secrets.state() {
        let Some(name) = secret.metadata.name.clone() else {
            continue;
        };
        let entry = credentials.entry(name).or_default();
        for (key, value) in secret.data.iter().flatten() {
            let value = String::from_utf8_lossy(&value.0).into_owned();
            entry.insert(key.clone(), SecretString::from(value));
        }
    }
    Ok(Snapshot::build(config, &credentials)?)
}
