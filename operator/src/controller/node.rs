//! What the operator knows about a Node, read from its labels through the shared
//! [`CapabilityLabels`] (the agent's labels first, Node Feature Discovery's and GPU Feature
//! Discovery's where the agent's are absent).

use std::collections::BTreeMap;

use policyserve_crds::{CapabilityLabels, HardwareClass, NodeCapacity};

/// A node as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// All of the node's labels (for the PolicyService's nodeSelector).
    pub labels: BTreeMap<String, String>,
    /// The value of `policyserve.io/hardware-class`, when set.
    pub class_label: Option<String>,
    /// What the profile rules need; `variants` is left empty (it depends on the model).
    pub capacity: NodeCapacity,
    /// Memory usable under the agent's cgroup limit, MiB, when published.
    pub memory_usable_mib: Option<f64>,
    /// Number of NVIDIA GPUs.
    pub gpu_count: u32,
}

impl NodeFacts {
    /// Reads a node's labels.
    pub fn from_labels(name: &str, labels: &BTreeMap<String, String>) -> Self {
        let read = CapabilityLabels::from_labels(labels);
        let usable_cpus = read
            .cpu_usable
            .or(read.cpu_threads.map(f64::from))
            .map_or(1, |cpus| (cpus.floor() as u32).max(1));
        let physical_cores = read
            .cpu_cores
            .map_or(usable_cpus, |cores| cores.clamp(1, usable_cpus));
        let memory_usable_mib = read
            .memory_usable_mib
            .map(|mib| mib as f64)
            .or_else(|| read.memory_total_gib.map(|gib| gib as f64 * 1024.0));
        let gpu = read.gpu.as_ref();
        Self {
            name: name.to_owned(),
            labels: labels.clone(),
            capacity: NodeCapacity {
                usable_cpus,
                physical_cores,
                int8_acceleration: read.int8_acceleration(),
                gpu_compute_capability: gpu.and_then(|g| g.compute_capability),
                variants: Vec::new(),
            },
            memory_usable_mib,
            gpu_count: gpu.map_or(0, |g| g.count),
            class_label: read.hardware_class,
        }
    }

    /// The node's hardware class, when its label holds a known value.
    pub fn class(&self) -> Option<HardwareClass> {
        self.class_label
            .as_deref()
            .and_then(HardwareClass::from_label)
    }

    /// Whether the node has an NVIDIA GPU.
    pub fn has_gpu(&self) -> bool {
        self.gpu_count > 0 || self.capacity.gpu_compute_capability.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn agent_labels_give_usable_cpus_cores_int8_and_memory() {
        let facts = NodeFacts::from_labels(
            "n",
            &labels(&[
                ("policyserve.io/hardware-class", "high-performance-cpu"),
                ("hw.policyserve.io/cpu-usable", "15.5"),
                ("hw.policyserve.io/cpu-cores", "32"),
                ("hw.policyserve.io/cpu-cpuid.AMXINT8", "true"),
                ("hw.policyserve.io/memory-usable-mib", "65536"),
            ]),
        );
        assert_eq!(facts.capacity.usable_cpus, 15);
        assert_eq!(facts.capacity.physical_cores, 15, "never more than usable");
        assert!(facts.capacity.int8_acceleration);
        assert_eq!(facts.memory_usable_mib, Some(65536.0));
        assert_eq!(facts.class(), Some(HardwareClass::HighPerformanceCpu));
        assert!(!facts.has_gpu());
    }

    #[test]
    fn a_fraction_of_a_cpu_still_counts_as_one() {
        let facts =
            NodeFacts::from_labels("n", &labels(&[("hw.policyserve.io/cpu-usable", "0.5")]));
        assert_eq!(facts.capacity.usable_cpus, 1);
        assert_eq!(facts.capacity.physical_cores, 1);
    }

    #[test]
    fn nfd_and_gpu_feature_discovery_labels_fill_in_when_the_agent_s_are_absent() {
        let facts = NodeFacts::from_labels(
            "n",
            &labels(&[
                ("feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI", "true"),
                ("nvidia.com/gpu.count", "2"),
                ("nvidia.com/gpu.compute.major", "8"),
                ("nvidia.com/gpu.compute.minor", "6"),
            ]),
        );
        assert!(facts.capacity.int8_acceleration);
        assert_eq!(facts.gpu_count, 2);
        assert_eq!(facts.capacity.gpu_compute_capability, Some((8, 6)));
        assert!(facts.has_gpu());
        assert_eq!(facts.memory_usable_mib, None);
    }

    #[test]
    fn agent_labels_win_over_feature_discovery() {
        let facts = NodeFacts::from_labels(
            "n",
            &labels(&[
                ("hw.policyserve.io/gpu.compute.major", "7"),
                ("hw.policyserve.io/gpu.compute.minor", "5"),
                ("nvidia.com/gpu.compute.major", "9"),
            ]),
        );
        assert_eq!(facts.capacity.gpu_compute_capability, Some((7, 5)));
    }

    #[test]
    fn unknown_class_values_read_as_no_class() {
        let facts =
            NodeFacts::from_labels("n", &labels(&[("policyserve.io/hardware-class", "turbo")]));
        assert_eq!(facts.class_label.as_deref(), Some("turbo"));
        assert_eq!(facts.class(), None);
    }
}
