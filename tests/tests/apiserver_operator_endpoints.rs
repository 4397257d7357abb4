//! Tier 2 (real kube-apiserver + etcd): the Service and endpoints the operator publishes per
//! PolicyService, with the controller run in-process as in `apiserver_operator.rs`.
//!
//! The operator writes `discovery.k8s.io/v1` EndpointSlices where the cluster serves that API
//! (Kubernetes 1.21 and later) and falls back to a core/v1 Endpoints object named like the
//! Service where it does not. The project's test apiserver is 1.20, which serves only
//! `discovery.k8s.io/v1beta1`: there the EndpointSlice path cannot run, and what these tests
//! exercise is the Endpoints fallback (the slices' construction is unit-tested in the operator's
//! `controller::service`). Pointed at a newer cluster through `KUBECONFIG`, the same tests read
//! the EndpointSlices instead.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use policyserve_crds::{OptimizationProfile, PolicyService};
use policyserve_tests::{
    ControllerScope, RUN_LABEL, agent_heartbeat, controller_scope, eventually, unique_name,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(15);

/// One test's world: a namespace, a Node label, and a controller watching only those.
struct World {
    client: Client,
    namespace: String,
    run: String,
    /// Whether the apiserver serves `discovery.k8s.io/v1` (not on the 1.20 test apiserver).
    slices: bool,
    _stop: oneshot::Sender<()>,
}

impl World {
    async fn start(prefix: &str) -> Result<Self> {
        let ControllerScope {
            client,
            namespace,
            run,
            stop,
        } = controller_scope(prefix, |_| {}).await?;
        let slices = match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) => list.resources.iter().any(|r| r.name == "endpointslices"),
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            client,
            namespace,
            run,
            slices,
            _stop: stop,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a Node labelled as an agent would; returns its (unique) name.
    async fn node(&self, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        let labels = BTreeMap::from([
            (
                "policyserve.io/hardware-class".to_owned(),
                "balanced".to_owned(),
            ),
            (RUN_LABEL.to_owned(), self.run.clone()),
        ]);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
        }))?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        Ok(name)
    }

    async fn create(&self, name: &str, min_replicas: i32) -> Result<()> {
        let ps: PolicyService = serde_json::from_value(json!({
            "apiVersion": "policyserve.io/v1alpha1",
            "kind": "PolicyService",
            "metadata": {"name": name},
            "spec": {
                "model": {"configMap": {"name": "model", "key": "model.onnx"}},
                "targets": {"latencyP99Ms": 5.0},
                "placement": {"minReplicas": min_replicas},
            }
        }))?;
        self.api::<PolicyService>()
            .create(&PostParams::default(), &ps)
            .await?;
        Ok(())
    }

    /// Waits until the PolicyService has profiles on exactly `nodes`; returns them by node.
    async fn profiles_on(
        &self,
        ps: &str,
        nodes: &[&str],
    ) -> Result<BTreeMap<String, OptimizationProfile>> {
        let api = self.api::<OptimizationProfile>();
        let mut wanted: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        wanted.sort();
        let selector = format!("policyserve.io/policy-service={ps}");
        eventually(&format!("profiles of {ps} on {wanted:?}"), TIMEOUT, || {
            let api = api.clone();
            let (selector, wanted) = (selector.clone(), wanted.clone());
            async move {
                let list = api.list(&ListParams::default().labels(&selector)).await?;
                let by_node: BTreeMap<String, OptimizationProfile> = list
                    .items
                    .into_iter()
                    .map(|p| (p.spec.node_name.clone(), p))
                    .collect();
                Ok(by_node.keys().eq(wanted.iter()).then_some(by_node))
            }
        })
        .await
    }

    /// Writes a profile's status as the node's agent would: Serving or not, at `address`; the
    /// agent's Lease is renewed too.
    async fn agent_reports(
        &self,
        profile: &str,
        serving: bool,
        address: &str,
        model: &str,
    ) -> Result<()> {
        let node = self
            .api::<OptimizationProfile>()
            .get(profile)
            .await?
            .spec
            .node_name;
        agent_heartbeat(&self.client, &self.namespace, &node).await?;
        let status = if serving { "True" } else { "False" };
        let reason = if serving { "Serving" } else { "Draining" };
        let patch = json!({"status": {
            "observedGeneration": 1,
            "conditions": [
                condition("Loaded", "True", "Loaded"),
                condition("Serving", status, reason),
            ],
            "endpoint": {"address": address, "port": 8001, "modelName": model},
        }});
        self.api::<OptimizationProfile>()
            .patch_status(profile, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// The addresses the cluster publishes for Service `service`, sorted: from its Endpoints
    /// object on a cluster without `discovery.k8s.io/v1`, else from its EndpointSlices.
    async fn published_addresses(&self, service: &str) -> Result<Option<Vec<String>>> {
        let mut addresses: Vec<String> = if self.slices {
            let slices = self
                .api::<EndpointSlice>()
                .list(
                    &ListParams::default().labels(&format!("kubernetes.io/service-name={service}")),
                )
                .await?;
            if slices.items.is_empty() {
                return Ok(None);
            }
            slices
                .items
                .iter()
                .flat_map(|s| &s.endpoints)
                .flat_map(|e| e.addresses.clone())
                .collect()
        } else {
            let Some(endpoints) = self.api::<Endpoints>().get_opt(service).await? else {
                return Ok(None);
            };
            endpoints
                .subsets
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s.addresses.clone().unwrap_or_default())
                .map(|a| a.ip)
                .collect()
        };
        addresses.sort();
        Ok(Some(addresses))
    }

    /// Waits until the Service's published addresses are exactly `wanted`.
    async fn addresses_become(&self, service: &str, wanted: &[&str]) -> Result<()> {
        eventually(
            &format!("{service} to publish {wanted:?}"),
            TIMEOUT,
            || async {
                let found = self.published_addresses(service).await?;
                Ok((found.as_deref().is_some_and(|f| f == wanted)).then_some(()))
            },
        )
        .await
    }
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": reason,
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1
    })
}

#[tokio::test]
async fn the_service_publishes_serving_agents_and_goes_with_its_policy_service() -> Result<()> {
    let world = World::start("op-endpoints").await?;
    let a = world.node("a").await?;
    let b = world.node("b").await?;
    world.create("lander", 2).await?;
    let profiles = world.profiles_on("lander", &[&a, &b]).await?;
    let model = format!("{}.lander", world.namespace);

    // Before any agent serves, the Service exists and publishes no address.
    world.addresses_become("lander", &[]).await?;
    let service = world.api::<Service>().get("lander").await?;
    let spec = service.spec.clone().context("Service spec")?;
    assert_eq!(spec.selector, None, "endpoints are managed, not selected");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let port = &spec.ports.context("Service ports")?[0];
    assert_eq!(
        (
            port.name.as_deref(),
            port.port,
            port.app_protocol.as_deref()
        ),
        (Some("grpc"), 8001, Some("grpc"))
    );
    assert_eq!(
        service.labels()["app.kubernetes.io/managed-by"],
        "policyserve-operator"
    );
    assert_eq!(service.labels()["policyserve.io/policy-service"], "lander");
    let owner = &service.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("PolicyService", "lander", Some(true))
    );
    let managers: Vec<String> = service
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "policyserve-operator"),
        "{managers:?}"
    );

    // Two agents serve: both addresses are published, each with its node.
    world
        .agent_reports(&profiles[&a].name_any(), true, "192.0.2.2", &model)
        .await?;
    world
        .agent_reports(&profiles[&b].name_any(), true, "192.0.2.3", &model)
        .await?;
    world
        .addresses_become("lander", &["192.0.2.2", "192.0.2.3"])
        .await?;
    if !world.slices {
        let endpoints = world.api::<Endpoints>().get("lander").await?;
        let subsets = endpoints.subsets.clone().context("subsets")?;
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let ports = subsets[0].ports.clone().context("ports")?;
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("grpc"), 8001)
        );
        let nodes: BTreeMap<String, Option<String>> = subsets[0]
            .addresses
            .clone()
            .context("addresses")?
            .into_iter()
            .map(|address| (address.ip, address.node_name))
            .collect();
        assert_eq!(nodes["192.0.2.2"].as_deref(), Some(a.as_str()));
        assert_eq!(nodes["192.0.2.3"].as_deref(), Some(b.as_str()));
        assert_eq!(endpoints.owner_references()[0].name, "lander");
    }
    let ps = world.api::<PolicyService>().get("lander").await?;
    let endpoint = ps.status.context("status")?.endpoint.context("endpoint")?;
    assert_eq!(
        (
            endpoint.service.as_str(),
            endpoint.port,
            endpoint.model_name
        ),
        ("lander", 8001, model.clone())
    );

    // One agent stops serving: its address leaves.
    world
        .agent_reports(&profiles[&b].name_any(), false, "192.0.2.3", &model)
        .await?;
    world.addresses_become("lander", &["192.0.2.2"]).await?;

    // Deleting the PolicyService deletes its Service and endpoints (the test apiserver runs no
    // garbage collector, so this is the finalizer's work).
    world
        .api::<PolicyService>()
        .delete("lander", &DeleteParams::default())
        .await?;
    let services = world.api::<Service>();
    eventually("the Service and its endpoints to be gone", TIMEOUT, || {
        let services = services.clone();
        let world = &world;
        async move {
            let service = services.get_opt("lander").await?;
            let published = world.published_addresses("lander").await?;
            Ok((service.is_none() && published.is_none()).then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_cluster_ip_service_from_an_earlier_version_is_replaced_by_a_headless_one() -> Result<()>
{
    let world = World::start("op-endpoints-headless").await?;
    let a = world.node("a").await?;
    // What the operator made before Services became headless: selector-less, with an address.
    let old: Service = serde_json::from_value(json!({
        "metadata": {"name": "lander", "labels": {"policyserve.io/policy-service": "lander"}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "grpc", "port": 8001}]},
    }))?;
    let old = world
        .api::<Service>()
        .create(&PostParams::default(), &old)
        .await?;
    let old_ip = old.spec.and_then(|s| s.cluster_ip);
    assert!(
        old_ip.as_deref().is_some_and(|ip| ip != "None"),
        "{old_ip:?}"
    );

    world.create("lander", 1).await?;
    let profiles = world.profiles_on("lander", &[&a]).await?;
    let services = world.api::<Service>();
    eventually("the Service to become headless", TIMEOUT, || {
        let services = services.clone();
        async move {
            // Gone for a moment: the operator deletes the old Service and creates the new one.
            let service = services.get_opt("lander").await?;
            let ip = service.and_then(|s| s.spec).and_then(|s| s.cluster_ip);
            Ok((ip.as_deref() == Some("None")).then_some(()))
        }
    })
    .await?;
    // And it publishes its agents as before.
    let model = format!("{}.lander", world.namespace);
    world
        .agent_reports(&profiles[&a].name_any(), true, "192.0.2.9", &model)
        .await?;
    world.addresses_become("lander", &["192.0.2.9"]).await?;
    Ok(())
}

#[tokio::test]
async fn addresses_endpoints_cannot_hold_are_left_out_and_a_scaled_in_node_leaves() -> Result<()> {
    let world = World::start("op-endpoints-odd").await?;
    let a = world.node("a").await?;
    let b = world.node("b").await?;
    world.create("walker", 2).await?;
    let profiles = world.profiles_on("walker", &[&a, &b]).await?;
    let (pa, pb) = (profiles[&a].name_any(), profiles[&b].name_any());
    let model = format!("{}.walker", world.namespace);
    world.agent_reports(&pa, true, "192.0.2.4", &model).await?;
    // A host name, and a loopback address (which the API refuses in endpoints): left out,
    // without holding back the other agent's address.
    world
        .agent_reports(&pb, true, "agent-b.example", &model)
        .await?;
    world.addresses_become("walker", &["192.0.2.4"]).await?;
    world.agent_reports(&pb, true, "127.0.0.5", &model).await?;
    world.addresses_become("walker", &["192.0.2.4"]).await?;
    world
        .agent_reports(&pb, true, "2001:db8::5", &model)
        .await?;
    world
        .addresses_become("walker", &["192.0.2.4", "2001:db8::5"])
        .await?;

    // minReplicas 1 and no throughput target: after the (2 s) stabilization window one node
    // serves, the other's profile goes and its address leaves with it.
    world
        .api::<PolicyService>()
        .patch(
            "walker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"placement": {"minReplicas": 1}}})),
        )
        .await?;
    world.profiles_on("walker", &[&a]).await?;
    world.addresses_become("walker", &["192.0.2.4"]).await?;
    Ok(())
}
