//! Configuration from the Kubernetes API: the operator's ConfigMap and credential Secrets in
//! the gateway namespace (and nothing else: the proxy never reads tenant namespaces).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mcpgate_crds::GatewayConfig;
use mcpgate_crds::config_parts::{self, JoinError, Manifest};
use mcpgate_crds::names::{
    COMPONENT_CONFIG, CONFIG_KEY, CONFIG_MAP_NAME, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY,
};
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
        // The manifest and the parts it names (see mcpgate_crds::config_parts).
        watcher::Config::default().labels(&format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_CONFIG}"
        )),
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
            // Unpacking and building run on a blocking thread, not a worker serving requests.
            let (config_maps, secrets) = (cm_store.clone(), secret_store.clone());
            match tokio::task::spawn_blocking(move || load(&config_maps, &secrets)).await {
                Ok(loaded) => apply_result(&current, &metrics, loaded),
                Err(error) => apply_result::<String>(&current, &metrics, Err(error.to_string())),
            }
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
    #[error("ConfigMap {CONFIG_MAP_NAME} not found")]
    Missing,
    /// The manifest's parts do not (yet) make a configuration.
    #[error(transparent)]
    Parts(#[from] JoinError),
    /// The configuration is not JSON of the expected shape.
    #[error("ConfigMap {CONFIG_MAP_NAME}: {0}")]
    Json(#[from] serde_json::Error),
    /// The configuration is not usable.
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

/// The configuration JSON: the parts the manifest names, joined; or, from an operator older
/// than the manifest, the JSON in the one ConfigMap.
fn config_json(config_maps: &Store<ConfigMap>) -> Result<Vec<u8>, KubeError> {
    let all = config_maps.state();
    let manifest = all
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(CONFIG_MAP_NAME))
        .and_then(|cm| cm.data.as_ref())
        .ok_or(KubeError::Missing)?;
    if let Some(text) = manifest.get(config_parts::MANIFEST_KEY) {
        let manifest: Manifest = serde_json::from_str(text)?;
        let part = |name: &str| {
            all.iter()
                .find(|cm| cm.metadata.name.as_deref() == Some(name))
                .and_then(|cm| cm.binary_data.as_ref())
                .and_then(|d| d.get(config_parts::PART_KEY))
                .map(|b| b.0.as_slice())
        };
        return Ok(config_parts::join(&manifest, part)?);
    }
    manifest
        .get(CONFIG_KEY)
        .map(|text| text.clone().into_bytes())
        .ok_or(KubeError::Missing)
}

fn load(config_maps: &Store<ConfigMap>, secrets: &Store<Secret>) -> Result<Snapshot, KubeError> {
    let config: GatewayConfig = serde_json::from_slice(&config_json(config_maps)?)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use mcpgate_crds::config_parts::{MANIFEST_KEY, PART_KEY, split};

    use super::*;

    fn config_map(name: &str, data: Option<(&str, String)>, part: Option<Vec<u8>>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: data.map(|(k, v)| BTreeMap::from([(k.to_owned(), v)])),
            binary_data: part.map(|b| BTreeMap::from([(PART_KEY.to_owned(), ByteString(b))])),
            ..Default::default()
        }
    }

    fn store(objects: Vec<ConfigMap>) -> Store<ConfigMap> {
        let (reader, mut writer) = reflector::store();
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        reader
    }

    #[test]
    fn the_manifest_and_its_parts_make_the_configuration() {
        let json = br#"{"version":"v7"}"#.repeat(100_000);
        let (manifest, parts) = split(&json, "v7", CONFIG_MAP_NAME);
        let manifest = config_map(
            CONFIG_MAP_NAME,
            Some((MANIFEST_KEY, serde_json::to_string(&manifest).unwrap())),
            None,
        );
        let part_maps: Vec<ConfigMap> = parts
            .iter()
            .map(|p| config_map(&p.config_map, None, Some(p.bytes.clone())))
            .collect();
        let mut all = part_maps.clone();
        all.push(manifest.clone());
        assert_eq!(config_json(&store(all)).unwrap(), json);

        // A part not there yet: waiting, nothing half-read.
        let missing = config_json(&store(vec![manifest])).unwrap_err();
        assert!(
            matches!(missing, KubeError::Parts(JoinError::Missing(ref name)) if *name == parts[0].config_map),
            "{missing}"
        );
        assert!(matches!(
            config_json(&store(part_maps)),
            Err(KubeError::Missing)
        ));
    }

    #[test]
    fn an_older_operator_s_single_config_map_still_reads() {
        let old = config_map(
            CONFIG_MAP_NAME,
            Some((CONFIG_KEY, r#"{"version":"old"}"#.to_owned())),
            None,
        );
        assert_eq!(
            config_json(&store(vec![old])).unwrap(),
            br#"{"version":"old"}"#
        );
    }
}
