//! The agent's liveness: a `coordination.k8s.io` Lease named `policyserve-agent-<node>` in the
//! agent's namespace, renewed every 10 s. Profile statuses are rewritten only when their
//! figures move, so a status that stays the same says nothing about whether its agent still
//! runs; the Lease does, and the operator drops a node whose Lease is older than 40 s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::FIELD_MANAGER;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use policyserve_crds::{
    AGENT_LEASE_RENEW_SECONDS, AGENT_LEASE_TIMEOUT_SECONDS, NODE_LABEL, agent_lease_name,
};

/// The Lease for `node`, renewed now.
pub fn lease(namespace: &str, node: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(agent_lease_name(node)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(NODE_LABEL.to_owned(), node.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: i32::try_from(AGENT_LEASE_TIMEOUT_SECONDS).ok(),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews the Lease every 10 s, forever; a failed renewal is logged and retried at the next
/// tick (the operator tolerates three missed ones).
pub async fn keep_renewed(client: kube::Client, namespace: String, node: String) {
    let api = Api::<Lease>::namespaced(client, &namespace);
    let name = agent_lease_name(&node);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut every = tokio::time::interval(Duration::from_secs(AGENT_LEASE_RENEW_SECONDS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let lease = lease(&namespace, &node);
        match api.patch(&name, &params, &Patch::Apply(&lease)).await {
            Ok(_) => tracing::trace!(lease = %name, "renewed"),
            Err(e) => {
                tracing::warn!(lease = %name, %namespace, "cannot renew the agent Lease: {e}")
            }
        }
    }
}
