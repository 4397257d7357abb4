//! What the operator knows about a Node, read from its labels: the agent's capability labels
//! (`hw.policyserve.io/…`) first, Node Feature Discovery and GPU Feature Discovery labels where
//! the agent's are absent.

use std::collections::BTreeMap;

use policyserve_crds::{
    CAPABILITY_LABEL_PREFIX, HARDWARE_CLASS_LABEL, HardwareClass, NodeCapacity,
};

/// Node Feature Discovery's label prefix (CPU flags).
const NFD_PREFIX: &str = "feature.node.kubernetes.io/";
/// GPU Feature Discovery's label prefix.
const GFD_PREFIX: &str = "nvidia.com/";
/// CPU flags that make int8 inference fast.
const INT8_FLAGS: [&str; 3] = ["AVX512VNNI", "AVXVNNI", "AMXINT8"];

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
        let hw = |key: &str| labels.get(&format!("{CAPABILITY_LABEL_PREFIX}{key}"));
        let hw_or = |key: &str, fallback: &str| hw(key).or_else(|| labels.get(fallback));
        let number = |text: Option<&String>| text.and_then(|v| v.trim().parse::<f64>().ok());

        let usable_cpus = number(hw("cpu-usable"))
            .or_else(|| number(hw("cpu-threads")))
            .map_or(1, |cpus| (cpus.floor() as u32).max(1));
        let physical_cores = number(hw("cpu-cores"))
            .map_or(usable_cpus, |cores| (cores as u32).clamp(1, usable_cpus));
        let flag = |name: &str| {
            hw_or(
                &format!("cpu-cpuid.{name}"),
                &format!("{NFD_PREFIX}cpu-cpuid.{name}"),
            )
            .is_some_and(|v| v == "true")
        };
        let int8_acceleration = INT8_FLAGS.iter().any(|f| flag(f));
        let gpu = |key: &str| number(hw_or(key, &format!("{GFD_PREFIX}{key}")));
        let gpu_compute_capability = match (gpu("gpu.compute.major"), gpu("gpu.compute.minor")) {
            (Some(major), minor) => Some((major as u32, minor.unwrap_or(0.0) as u32)),
            (None, _) => None,
        };
        let gpu_count = gpu("gpu.count").map_or(0, |n| n as u32);
        let memory_usable_mib = number(hw("memory-usable-mib"))
            .or_else(|| number(hw("memory-total-gib")).map(|gib| gib * 1024.0));

        Self {
            name: name.to_owned(),
            labels: labels.clone(),
            class_label: labels.get(HARDWARE_CLASS_LABEL).cloned(),
            capacity: NodeCapacity {
                usable_cpus,
                physical_cores,
                int8_acceleration,
                gpu_compute_capability,
                variants: Vec::new(),
            },
            memory_usable_mib,
            gpu_count,
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
