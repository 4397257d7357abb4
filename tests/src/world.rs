//! A world for operator tests on the test apiserver: a controller run in-process, restricted to
//! the test's namespace and to Nodes carrying its own `policyserve.io/test-run` label, with
//! agents played by patching OptimizationProfile status (and renewing their Leases).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use policyserve_crds::conditions;
use policyserve_crds::{OptimizationProfile, PolicyService};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{
    ControllerScope, RUN_LABEL, agent_heartbeat, controller_scope, eventually, unique_name,
};

/// How long a test waits for the controller.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// One test's world: a namespace, a Node label, and a controller watching only those.
#[allow(missing_debug_implementations)] // kube::Client has no Debug
pub struct World {
    /// A client for the test apiserver.
    pub client: Client,
    /// The test's namespace (also the agents' Lease namespace).
    pub namespace: String,
    /// The value of the test's Nodes' run label.
    pub run: String,
    _stop: oneshot::Sender<()>,
}

impl World {
    /// Starts a controller for a fresh namespace and run label.
    ///
    /// # Errors
    /// When the cluster cannot be reached.
    pub async fn start(prefix: &str) -> Result<Self> {
        let ControllerScope {
            client,
            namespace,
            run,
            stop,
        } = controller_scope(prefix, |_| {}).await?;
        Ok(Self {
            client,
            namespace,
            run,
            _stop: stop,
        })
    }

    /// The namespace's PolicyServices.
    pub fn policy_services(&self) -> Api<PolicyService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The namespace's OptimizationProfiles.
    pub fn profiles(&self) -> Api<OptimizationProfile> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Nodes.
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates a Node labelled as an agent would; returns its (unique) name.
    ///
    /// # Errors
    /// When the apiserver refuses it.
    pub async fn node(&self, prefix: &str, class: &str, hw: &[(&str, &str)]) -> Result<String> {
        let name = unique_name(prefix);
        let mut labels: BTreeMap<String, String> = hw
            .iter()
            .map(|(k, v)| (format!("hw.policyserve.io/{k}"), (*v).to_owned()))
            .collect();
        labels.insert("policyserve.io/hardware-class".into(), class.into());
        labels.insert(RUN_LABEL.into(), self.run.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
        }))?;
        self.nodes().create(&PostParams::default(), &node).await?;
        Ok(name)
    }

    /// Creates a PolicyService.
    ///
    /// # Errors
    /// When the apiserver refuses it.
    pub async fn create(&self, ps: Value) -> Result<()> {
        let ps: PolicyService = serde_json::from_value(ps)?;
        self.policy_services()
            .create(&PostParams::default(), &ps)
            .await?;
        Ok(())
    }

    /// Waits until the PolicyService's condition has `status` and `reason`, and returns it.
    ///
    /// # Errors
    /// When it does not within [`TIMEOUT`].
    pub async fn condition(
        &self,
        ps: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<Condition> {
        let api = self.policy_services();
        let what = format!("{ps} {type_}={status} ({reason})");
        let last = Arc::new(std::sync::Mutex::new(None::<Condition>));
        let found = eventually(&what, TIMEOUT, || {
            let api = api.clone();
            let last = last.clone();
            async move {
                let current = api.get(ps).await?;
                let condition = current
                    .status
                    .and_then(|s| conditions::find(&s.conditions, type_).cloned());
                if let Ok(mut seen) = last.lock() {
                    seen.clone_from(&condition);
                }
                Ok(condition.filter(|c| c.status == status && c.reason == reason))
            }
        })
        .await;
        found.with_context(|| format!("last seen: {:?}", last.lock().ok().and_then(|c| c.clone())))
    }

    /// Waits until the PolicyService has profiles on exactly `nodes`.
    ///
    /// # Errors
    /// When it does not within [`TIMEOUT`].
    pub async fn profiles_on(&self, ps: &str, nodes: &[&str]) -> Result<Vec<OptimizationProfile>> {
        let api = self.profiles();
        let mut wanted: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        wanted.sort();
        let selector = format!("policyserve.io/policy-service={ps}");
        eventually(&format!("profiles of {ps} on {wanted:?}"), TIMEOUT, || {
            let api = api.clone();
            let (selector, wanted) = (selector.clone(), wanted.clone());
            async move {
                let list = api.list(&ListParams::default().labels(&selector)).await?;
                let mut on: Vec<String> = list
                    .items
                    .iter()
                    .map(|p| p.spec.node_name.clone())
                    .collect();
                on.sort();
                Ok((on == wanted).then_some(list.items))
            }
        })
        .await
    }

    /// Writes a profile's status as the node's agent would, and renews that agent's Lease.
    ///
    /// # Errors
    /// When the apiserver refuses it.
    pub async fn agent_reports(&self, profile: &str, status: Value) -> Result<()> {
        let node = self.profiles().get(profile).await?.spec.node_name;
        agent_heartbeat(&self.client, &self.namespace, &node).await?;
        self.profiles()
            .patch_status(
                profile,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }
}

/// A condition as an agent writes it.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1
    })
}

/// An agent's status: serving, with these figures.
pub fn serving(rps: f64, p99_ms: f64, memory_mib: f64) -> Value {
    json!({
        "observedGeneration": 1,
        "conditions": [
            condition("Loaded", "True", "Loaded", "model loaded"),
            condition("Tuned", "True", "Tuned", "best of 12 candidates"),
            condition("Serving", "True", "Serving", "serving on 10.0.0.5:8001"),
        ],
        "chosen": {"executionProviders": ["CPU"], "precision": "fp32", "intraOpThreads": 1, "maxBatchSize": 8},
        "capacity": {
            "latencyP50Ms": p99_ms / 2.0, "latencyP95Ms": p99_ms * 0.8, "latencyP99Ms": p99_ms,
            "throughputRps": rps, "memoryMiB": memory_mib, "method": "written by the test"
        },
        "endpoint": {"address": "10.0.0.5", "port": 8001, "modelName": "x"}
    })
}

/// A PolicyService with a ConfigMap model, `targets` and `placement`.
pub fn policy_service(name: &str, targets: Value, placement: Value) -> Value {
    json!({
        "apiVersion": "policyserve.io/v1alpha1",
        "kind": "PolicyService",
        "metadata": {"name": name},
        "spec": {
            "model": {"configMap": {"name": "model", "key": "model.onnx"}},
            "targets": targets,
            "placement": placement,
        }
    })
}
