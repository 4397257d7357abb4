//! Apply: OptimizationProfiles, the Service and its endpoints by server-side apply under one
//! field manager, surplus objects deleted, and the PolicyService status written only when it
//! changed.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use policyserve_crds::{
    OptimizationProfile, POLICY_SERVICE_LABEL, PolicyService, PolicyServiceStatus,
};
use serde_json::json;

use super::desired::Plan;
use super::service::{
    EndpointObjects, EndpointsApi, Published, SLICE_MANAGED_BY_LABEL, SLICE_MANAGER,
};
use super::validate::Validated;
use crate::{Error, Result};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "policyserve-operator";

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Whether the observed profile already is what the plan wants, so the apply can be skipped
/// (server-side apply would be a no-op, but still a request per profile per reconcile).
fn up_to_date(observed: &OptimizationProfile, desired: &OptimizationProfile) -> bool {
    let labels = observed.labels();
    let owners = observed.owner_references();
    observed.spec == desired.spec
        && desired
            .labels()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        && desired
            .owner_references()
            .iter()
            .all(|o| owners.contains(o))
}

/// Applies every planned profile that differs from what is observed; returns how many.
///
/// # Errors
/// When the apiserver refuses an apply.
pub async fn apply_profiles(
    client: &Client,
    ps: &Validated<'_>,
    plan: &Plan,
    owned: &[Arc<OptimizationProfile>],
) -> Result<usize> {
    let mut applied = 0;
    for assignment in &plan.assignments {
        let desired = &assignment.object;
        let name = desired.name_any();
        if owned
            .iter()
            .any(|o| o.name_any() == name && up_to_date(o, desired))
        {
            continue;
        }
        let namespace = ps.namespace;
        Api::<OptimizationProfile>::namespaced(client.clone(), namespace)
            .patch(&name, &apply_params(), &Patch::Apply(desired))
            .await
            .map_err(Error::kube(format!(
                "apply OptimizationProfile {namespace}/{name}"
            )))?;
        applied += 1;
    }
    Ok(applied)
}

/// Deletes owned profiles the plan no longer wants; returns how many.
///
/// # Errors
/// When a delete fails for another reason than the profile being gone already.
pub async fn delete_surplus(
    client: &Client,
    ps: &Validated<'_>,
    plan: &Plan,
    owned: &[Arc<OptimizationProfile>],
) -> Result<usize> {
    let mut deleted = 0;
    for profile in owned {
        let name = profile.name_any();
        if plan
            .assignments
            .iter()
            .any(|a| a.object.metadata.name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        // Owned profiles are observed in the PolicyService's namespace.
        let namespace = ps.namespace;
        match Api::<OptimizationProfile>::namespaced(client.clone(), namespace)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "delete OptimizationProfile {namespace}/{name}"
                ))(e));
            }
        }
    }
    Ok(deleted)
}

/// Deletes every OptimizationProfile of a PolicyService (the finalizer's cleanup: the garbage
/// collector may lag or, on a bare apiserver, not run at all).
///
/// # Errors
/// When the apiserver refuses the delete.
pub async fn delete_all(client: &Client, namespace: &str, policy_service: &str) -> Result<()> {
    let selector = format!("{POLICY_SERVICE_LABEL}={policy_service}");
    Api::<OptimizationProfile>::namespaced(client.clone(), namespace)
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        )
        .await
        .map_err(Error::kube(format!(
            "delete the OptimizationProfiles of {namespace}/{policy_service}"
        )))?;
    Ok(())
}

/// Writes the status by server-side apply on the status subresource, when it differs from
/// `previous`; returns whether it wrote. Skipping unchanged writes keeps a steady state free of
/// requests and of the watch events they would cause.
///
/// # Errors
/// When the apiserver refuses the patch.
pub async fn write_status(
    client: &Client,
    ps: &PolicyService,
    previous: Option<&PolicyServiceStatus>,
    status: &PolicyServiceStatus,
) -> Result<bool> {
    if previous == Some(status) {
        return Ok(false);
    }
    let namespace = ps
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = ps.name_any();
    let patch = json!({
        "apiVersion": PolicyService::api_version(&()),
        "kind": PolicyService::kind(&()),
        "status": status,
    });
    Api::<PolicyService>::namespaced(client.clone(), &namespace)
        .patch_status(&name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::kube(format!(
            "write the status of PolicyService {namespace}/{name}"
        )))?;
    Ok(true)
}

/// Which endpoints API the cluster serves: `discovery.k8s.io/v1` EndpointSlices when API
/// discovery lists them, else (a 404, as on Kubernetes 1.20 and older) core/v1 Endpoints.
/// Asked once at start; every authenticated user may read discovery.
///
/// # Errors
/// When discovery fails for another reason than the group version being absent.
pub async fn detect_endpoints_api(client: &Client) -> Result<EndpointsApi> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            Ok(EndpointsApi::EndpointSlice)
        }
        Ok(_) => Ok(EndpointsApi::Endpoints),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(EndpointsApi::Endpoints),
        Err(e) => Err(Error::kube("discover the discovery.k8s.io/v1 API")(e)),
    }
}

/// Applies the Service and its endpoints, and deletes EndpointSlices of this PolicyService that
/// are no longer wanted (an address family or port that no agent uses any more).
///
/// # Errors
/// When the apiserver refuses an apply, a list or a delete.
pub async fn apply_published(
    client: &Client,
    ps: &Validated<'_>,
    published: &Published,
) -> Result<()> {
    let (namespace, policy_service) = (ps.namespace, ps.name);
    let name = &published.service.name_any();
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let (params, patch) = (apply_params(), Patch::Apply(&published.service));
    let apply = || services.patch(name, &params, &patch);
    match apply().await {
        // A Service from a version that made ClusterIP Services holds an address, and a
        // cluster IP cannot be changed: replace it with the headless one.
        Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("clusterIP") => {
            tracing::info!(%namespace, %name, "replacing a ClusterIP Service with a headless one");
            services
                .delete(name, &DeleteParams::default())
                .await
                .map_err(Error::kube(format!("delete Service {namespace}/{name}")))?;
            apply().await
        }
        other => other,
    }
    .map_err(Error::kube(format!("apply Service {namespace}/{name}")))?;
    match &published.endpoints {
        EndpointObjects::Endpoints(endpoints) => {
            let name = &endpoints.name_any();
            Api::<Endpoints>::namespaced(client.clone(), namespace)
                .patch(name, &apply_params(), &Patch::Apply(endpoints.as_ref()))
                .await
                .map_err(Error::kube(format!("apply Endpoints {namespace}/{name}")))?;
        }
        EndpointObjects::Slices(slices) => {
            let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
            for slice in slices {
                let name = &slice.name_any();
                api.patch(name, &apply_params(), &Patch::Apply(slice))
                    .await
                    .map_err(Error::kube(format!(
                        "apply EndpointSlice {namespace}/{name}"
                    )))?;
            }
            let existing = api
                .list_metadata(&ListParams::default().labels(&slice_selector(policy_service)))
                .await
                .map_err(Error::kube(format!(
                    "list the EndpointSlices of {namespace}/{policy_service}"
                )))?;
            for stale in existing.items.iter().filter(|s| {
                !slices
                    .iter()
                    .any(|wanted| wanted.metadata.name == s.metadata.name)
            }) {
                let name = &stale.name_any();
                delete_ignoring_absent(&api, name, &format!("EndpointSlice {namespace}/{name}"))
                    .await?;
            }
        }
    }
    Ok(())
}

fn slice_selector(policy_service: &str) -> String {
    format!("{POLICY_SERVICE_LABEL}={policy_service},{SLICE_MANAGED_BY_LABEL}={SLICE_MANAGER}")
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str, what: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("delete {what}"))(e)),
    }
}

/// Deletes the Service and its endpoints of a PolicyService (the finalizer's cleanup: the
/// garbage collector may lag or, on a bare apiserver, not run at all).
///
/// # Errors
/// When the apiserver refuses a delete.
pub async fn delete_published(
    client: &Client,
    namespace: &str,
    policy_service: &str,
    service: &str,
    api: EndpointsApi,
) -> Result<()> {
    match api {
        EndpointsApi::EndpointSlice => {
            Api::<EndpointSlice>::namespaced(client.clone(), namespace)
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&slice_selector(policy_service)),
                )
                .await
                .map_err(Error::kube(format!(
                    "delete the EndpointSlices of {namespace}/{policy_service}"
                )))?;
        }
        EndpointsApi::Endpoints => {
            let endpoints = Api::<Endpoints>::namespaced(client.clone(), namespace);
            delete_ignoring_absent(
                &endpoints,
                service,
                &format!("Endpoints {namespace}/{service}"),
            )
            .await?;
        }
    }
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    delete_ignoring_absent(
        &services,
        service,
        &format!("Service {namespace}/{service}"),
    )
    .await
}
