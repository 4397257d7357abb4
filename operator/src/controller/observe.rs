//! Observe: the Nodes, the owned OptimizationProfiles and the agents' Leases, read from the watch caches (no API
//! calls per reconcile, so a thousand PolicyServices cost the apiserver nothing extra), and the
//! filter that turns Node watch events into "re-plan everything" only when labels change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use policyserve_crds::{OptimizationProfile, POLICY_SERVICE_LABEL, PolicyService};

use super::liveness::Liveness;
use super::node::NodeFacts;
use super::placement::{ModelCapacities, model_capacities};

/// What one reconcile sees.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Every policyserve node in scope, by name.
    pub nodes: Vec<NodeFacts>,
    /// The PolicyService's OptimizationProfiles, with the agents' status.
    pub owned: Vec<Arc<OptimizationProfile>>,
    /// Which nodes' agents renew their Leases.
    pub liveness: Liveness,
    /// This model's capacity on each node where any PolicyService measured it.
    pub measured: ModelCapacities,
}

/// Reads the caches for one PolicyService, as of `now`.
pub fn observe(
    ps: &PolicyService,
    nodes: &Store<PartialObjectMeta<Node>>,
    profiles: &Store<OptimizationProfile>,
    leases: &Store<Lease>,
    now: Timestamp,
) -> Observed {
    let mut nodes: Vec<NodeFacts> = nodes
        .state()
        .iter()
        .map(|n| NodeFacts::from_labels(&n.name_any(), n.labels()))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let namespace = ps.namespace();
    let name = ps.name_any();
    let mut owned = profiles.state_filter(|p| {
        p.namespace() == namespace && p.labels().get(POLICY_SERVICE_LABEL) == Some(&name)
    });
    owned.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
    Observed {
        measured: model_capacities(ps, &profiles.state()),
        nodes,
        owned,
        liveness: Liveness::from_leases(&leases.state(), now),
    }
}

/// Remembers each node's labels so that a Node event re-plans only when labels changed, a
/// node appeared or a node went away; status heartbeats and other updates are ignored.
#[derive(Debug, Default)]
pub struct NodeLabelTracker {
    labels: HashMap<String, BTreeMap<String, String>>,
    relist: Option<HashMap<String, BTreeMap<String, String>>>,
}

impl NodeLabelTracker {
    /// Records a watch event; true when PolicyServices should be re-planned.
    pub fn changed(&mut self, event: &watcher::Event<PartialObjectMeta<Node>>) -> bool {
        match event {
            watcher::Event::Apply(node) => {
                let labels = node.labels().clone();
                self.labels.insert(node.name_any(), labels.clone()) != Some(labels)
            }
            watcher::Event::Delete(node) => {
                self.labels.remove(&node.name_any());
                true
            }
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(node) => {
                if let Some(relist) = &mut self.relist {
                    relist.insert(node.name_any(), node.labels().clone());
                }
                false
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = fresh != self.labels;
                self.labels = fresh;
                changed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], version: &str) -> PartialObjectMeta<Node> {
        let mut meta = PartialObjectMeta::<Node>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.resource_version = Some(version.into());
        meta.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        meta
    }

    #[test]
    fn node_events_re_plan_only_on_label_changes_joins_and_removals() {
        let mut tracker = NodeLabelTracker::default();
        let class = [("policyserve.io/hardware-class", "balanced")];
        let gpu = [("policyserve.io/hardware-class", "gpu-accelerated")];
        use watcher::Event::*;
        let steps = [
            (Init, false),
            (InitApply(node("a", &class, "1")), false),
            (InitDone, true),
            (Apply(node("a", &class, "2")), false), // heartbeat: same labels
            (Apply(node("a", &gpu, "3")), true),    // relabelled
            (Apply(node("b", &class, "4")), true),  // joined
            (Delete(node("b", &class, "5")), true), // removed
            (Init, false),
            (InitApply(node("a", &gpu, "6")), false),
            (InitDone, false), // a relist that finds nothing new
        ];
        for (i, (event, expected)) in steps.into_iter().enumerate() {
            assert_eq!(tracker.changed(&event), expected, "step {i}");
        }
    }
}
