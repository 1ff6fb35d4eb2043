//! What ties the operator's objects to its installation: the owner (read again at every
//! reconcile, so a recreated owner is followed and a deleted one stops all writes), the
//! leader election Lease it owns, and the proxy's session key when the installation did not
//! bring one.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use ring::rand::{SecureRandom, SystemRandom};

use mcpgate_crds::names::COMPONENT_SESSION_KEY;

use crate::apply::meta;
use crate::error::{Error, Result};

/// The installation's cluster-scoped anchor (the chart's operator ClusterRole) as an owner.
/// Namespaced objects in any namespace may name a cluster-scoped owner, so when the release
/// is deleted the garbage collector deletes the Manager Roles in tenant namespaces and the
/// copies in the gateway namespace with it.
pub async fn owner(client: &Client, cluster_role: &str) -> Result<OwnerReference> {
    let role = Api::<ClusterRole>::all(client.clone())
        .get(cluster_role)
        .await
        .map_err(Error::kube("get the owner ClusterRole", cluster_role))?;
    Ok(OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".to_owned(),
        kind: "ClusterRole".to_owned(),
        name: role.name_any(),
        uid: role.uid().unwrap_or_default(),
        // Neither: the owner must not wait for its dependents, and setting
        // blockOwnerDeletion needs rights on the owner the operator does not hold.
        controller: None,
        block_owner_deletion: None,
    })
}

/// Creates the Secret `name` (key `current`: 32 random bytes) unless it exists. Any replica
/// may call this: creation is atomic, and a replica that loses the race keeps the winner's
/// key. Never replaces a key: a new one would end every open session. Not owned: it also
/// seals the sign-in state and per-user credentials the proxy stores, which outlive a
/// reinstall. Returns whether it created the Secret.
pub async fn session_key(client: &Client, namespace: &str, name: &str) -> Result<bool> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let object = format!("{namespace}/{name}");
    if api
        .get_opt(name)
        .await
        .map_err(Error::kube("get the session key Secret", &object))?
        .is_some()
    {
        return Ok(false);
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Random)?;
    let secret = Secret {
        metadata: meta(name, namespace, COMPONENT_SESSION_KEY, None, None),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            "current".to_owned(),
            ByteString(key.to_vec()),
        )])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(Error::kube("create the session key Secret", object)(e)),
    }
}

/// Adds `owner` to the leader election Lease `name` (which the lease library creates without
/// one), so that it goes with the installation too. Returns whether it patched.
pub async fn own_lease(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &OwnerReference,
) -> Result<bool> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let object = format!("{namespace}/{name}");
    let Some(lease) = api
        .get_opt(name)
        .await
        .map_err(Error::kube("get the leader election Lease", &object))?
    else {
        return Ok(false);
    };
    if lease.owner_references().iter().any(|o| o.uid == owner.uid) {
        return Ok(false);
    }
    let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("own the leader election Lease", object))?;
    Ok(true)
}
