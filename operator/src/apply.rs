//! Thin: writes the rendered configuration and credential Secrets into the gateway namespace
//! with server-side apply, skipping objects that already match, and prunes orphans by label.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use mcpgate_crds::config_parts;
use mcpgate_crds::names::*;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::render::{ObjectKey, Rendered};
use crate::watch::{Caches, key};

/// The configuration as ConfigMaps (see `mcpgate_crds::config_parts`): its parts, then the
/// manifest that names them.
pub struct ConfigObjects {
    /// Compressed parts, named after their content.
    pub parts: Vec<ConfigMap>,
    /// [`CONFIG_MAP_NAME`], naming the parts in order.
    pub manifest: ConfigMap,
}

/// The objects the gateway namespace should hold, owned by `owner` when there is one. Pure.
pub fn desired(
    rendered: &Rendered,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> Result<(ConfigObjects, Vec<Secret>)> {
    // Compact. Serializing plain data cannot fail.
    let json = serde_json::to_vec(&rendered.config).unwrap_or_default();
    if json.len() as u64 > config_parts::MAX_CONFIG_BYTES {
        return Err(Error::ConfigTooLarge {
            bytes: json.len(),
            limit: config_parts::MAX_CONFIG_BYTES as usize,
        });
    }
    let (manifest, parts) = config_parts::split(&json, &rendered.config.version, CONFIG_MAP_NAME);
    let parts = parts
        .into_iter()
        .map(|part| ConfigMap {
            metadata: meta(&part.config_map, namespace, COMPONENT_CONFIG, None, owner),
            binary_data: Some(BTreeMap::from([(
                config_parts::PART_KEY.to_owned(),
                ByteString(part.bytes),
            )])),
            ..Default::default()
        })
        .collect();
    let manifest = ConfigMap {
        metadata: meta(CONFIG_MAP_NAME, namespace, COMPONENT_CONFIG, None, owner),
        // Serializing plain data cannot fail.
        data: Some(BTreeMap::from([(
            config_parts::MANIFEST_KEY.to_owned(),
            serde_json::to_string_pretty(&manifest).unwrap_or_default(),
        )])),
        ..Default::default()
    };
    let secrets = rendered
        .secrets
        .iter()
        .map(|(name, credential)| Secret {
            metadata: meta(
                name,
                namespace,
                COMPONENT_CREDENTIALS,
                Some(credential.source.to_string()),
                owner,
            ),
            type_: Some("Opaque".to_owned()),
            data: Some(
                credential
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        })
        .collect();
    Ok((ConfigObjects { parts, manifest }, secrets))
}

/// Metadata of an object the operator writes into the gateway namespace.
pub(crate) fn meta(
    name: &str,
    namespace: &str,
    component: &str,
    source: Option<String>,
    owner: Option<&OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_COMPONENT.to_owned(), component.to_owned()),
        ])),
        annotations: source.map(|s| BTreeMap::from([(ANNOTATION_SOURCE.to_owned(), s)])),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// Whether `existing` already carries everything `desired` sets.
pub(crate) fn same_meta(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let owned = desired.owner_references.iter().flatten().all(|want| {
        existing
            .owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid)
    });
    subset(&desired.labels, &existing.labels)
        && subset(&desired.annotations, &existing.annotations)
        && owned
}

/// Secrets first (so the configuration never names a Secret the proxy cannot find yet), then
/// the configuration's parts, then its manifest (so the proxy never sees a manifest whose parts
/// are not there yet), then orphans: old parts and credentials no server needs.
pub async fn gateway(
    client: &Client,
    caches: &Caches,
    metrics: &Metrics,
    rendered: &Rendered,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> Result<()> {
    let (config, secrets) = desired(rendered, namespace, owner)?;
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();

    for secret in &secrets {
        let name = secret.name_any();
        let current = caches.owned_secrets.get(&key(secret));
        if current.is_some_and(|c| {
            c.data == secret.data
                && c.type_ == secret.type_
                && same_meta(&c.metadata, &secret.metadata)
        }) {
            continue;
        }
        secret_api
            .patch(&name, &params, &Patch::Apply(secret))
            .await
            .map_err(Error::kube("apply Secret", format!("{namespace}/{name}")))?;
        metrics.write("Secret", "apply");
    }

    for config_map in config.parts.iter().chain([&config.manifest]) {
        let name = config_map.name_any();
        let current = caches.owned_config_maps.get(&key(config_map));
        if current.is_some_and(|c| {
            c.data == config_map.data
                && c.binary_data == config_map.binary_data
                && same_meta(&c.metadata, &config_map.metadata)
        }) {
            continue;
        }
        config_api
            .patch(&name, &params, &Patch::Apply(config_map))
            .await
            .map_err(Error::kube(
                "apply ConfigMap",
                format!("{namespace}/{name}"),
            ))?;
        metrics.write("ConfigMap", "apply");
    }

    let is = |labels: &BTreeMap<String, String>, component: &str| {
        labels.get(LABEL_COMPONENT).is_some_and(|c| c == component)
    };
    let wanted_parts: BTreeSet<String> = config.parts.iter().map(|p| p.name_any()).collect();
    for orphan in caches.owned_config_maps.all() {
        let name = orphan.name_any();
        if is(orphan.labels(), COMPONENT_CONFIG)
            && name != CONFIG_MAP_NAME
            && !wanted_parts.contains(&name)
        {
            delete(&config_api, &name, "delete ConfigMap", namespace).await?;
            metrics.write("ConfigMap", "delete");
        }
    }
    for orphan in caches.owned_secrets.all() {
        if is(orphan.labels(), COMPONENT_CREDENTIALS)
            && !rendered.secrets.contains_key(&orphan.name_any())
        {
            delete(&secret_api, &orphan.name_any(), "delete Secret", namespace).await?;
            metrics.write("Secret", "delete");
        }
    }
    // The proxy's tool records of servers that are gone (or that do not read well).
    let servers: BTreeSet<_> = caches.servers.all().iter().map(|s| key(&**s)).collect();
    let kept: BTreeSet<String> = caches
        .discovered_tools()
        .into_iter()
        .filter(|(_, r)| servers.contains(&ObjectKey::new(&r.namespace, &r.server)))
        .map(|(name, _)| name)
        .collect();
    for record in caches.discovered.all() {
        if !kept.contains(&record.name_any()) {
            delete(
                &config_api,
                &record.name_any(),
                "delete ConfigMap",
                namespace,
            )
            .await?;
            metrics.write("ConfigMap", "delete");
        }
    }
    metrics
        .managed_objects
        .with_label_values(&["Secret"])
        .set(i64::try_from(secrets.len()).unwrap_or(i64::MAX));
    metrics
        .managed_objects
        .with_label_values(&["ConfigMap"])
        .set(i64::try_from(config.parts.len() + 1).unwrap_or(i64::MAX));
    Ok(())
}

/// Deletes, treating "already gone" as done.
pub(crate) async fn delete<K>(
    api: &Api<K>,
    name: &str,
    action: &'static str,
    namespace: &str,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(action, format!("{namespace}/{name}"))(e)),
    }
}
