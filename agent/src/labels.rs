//! The Node's capability labels from a [`Hardware`] description, written through the shared
//! [`CapabilityLabels`] type the operator reads them with.
//!
//! Pure functions of a [`Hardware`]: the same machine always gives the same labels, which is
//! what keeps server-side apply from touching the Node on every re-detection.

use std::collections::BTreeMap;

use policyserve_crds::{CapabilityLabels, GpuLabels};

use crate::hardware::{CpuFlag, Hardware};

/// What `hw` says, in the labels' terms.
pub fn capabilities(hw: &Hardware) -> CapabilityLabels {
    let cpu = &hw.cpu;
    CapabilityLabels {
        cpu_flags: CpuFlag::ALL
            .into_iter()
            .filter(|flag| hw.has(*flag))
            .map(|flag| flag.name().to_owned())
            .collect(),
        cpu_vendor: Some(cpu.vendor.clone()),
        cpu_family: Some(cpu.family),
        cpu_model_id: Some(cpu.model),
        cpu_cores: Some(cpu.physical_cores),
        cpu_threads: Some(cpu.logical_cpus),
        cpu_sockets: Some(cpu.sockets),
        cpu_usable: Some(cpu.usable_cpus),
        memory_total_gib: Some(hw.memory.total_mib / 1024),
        memory_usable_mib: Some(hw.memory.usable_mib),
        memory_numa_nodes: Some(hw.memory.numa_nodes),
        // GPU Feature Discovery describes a node by its first GPU: nodes hold one model.
        gpu: hw.gpus.first().map(|gpu| GpuLabels {
            count: u32::try_from(hw.gpus.len()).unwrap_or(u32::MAX),
            product: Some(gpu.product.clone()),
            memory_mib: Some(gpu.memory_mib),
            compute_capability: Some((gpu.compute_capability.major, gpu.compute_capability.minor)),
            driver_version: Some((gpu.cuda_driver_version.major, gpu.cuda_driver_version.minor)),
            mig_capable: Some(gpu.mig_capable),
        }),
        source: Some(hw.source.as_str().to_owned()),
        hardware_class: Some(hw.class().as_str().to_owned()),
    }
}

/// All capability labels of `hw` (`hw.policyserve.io/...`) and `policyserve.io/hardware-class`.
pub fn labels(hw: &Hardware) -> BTreeMap<String, String> {
    capabilities(hw).to_labels()
}

#[cfg(test)]
mod tests {
    use policyserve_crds::labels::{is_valid_key, is_valid_value};
    use policyserve_crds::{CAPABILITY_LABEL_PREFIX, HARDWARE_CLASS_LABEL};

    use super::*;
    use crate::hardware::tests::{gpu_node, small_node};

    #[test]
    fn every_label_key_and_value_is_valid() {
        let this_machine = Hardware::detect_at(std::path::Path::new("/")).unwrap();
        let mut odd = small_node();
        odd.cpu.vendor = " Weird Vendor, Inc. (tm) ".into();
        odd.cpu.usable_cpus = 2.0 / 3.0;
        let mut odd_gpu = gpu_node();
        odd_gpu.gpus[0].product = format!("{} ™ extra", "Very Long GPU Name ".repeat(5));
        for hw in [this_machine, small_node(), gpu_node(), odd, odd_gpu] {
            for (key, value) in labels(&hw) {
                assert!(is_valid_key(&key), "invalid key {key:?}");
                assert!(is_valid_value(&value), "invalid value {key}={value:?}");
            }
        }
    }

    #[test]
    fn the_label_keys_are_exactly_the_designed_ones() {
        let keys: Vec<String> = labels(&gpu_node()).into_keys().collect();
        let expected = [
            "hw.policyserve.io/cpu-cores",
            "hw.policyserve.io/cpu-cpuid.AVX",
            "hw.policyserve.io/cpu-cpuid.AVX2",
            "hw.policyserve.io/cpu-cpuid.F16C",
            "hw.policyserve.io/cpu-cpuid.FMA3",
            "hw.policyserve.io/cpu-cpuid.SSE42",
            "hw.policyserve.io/cpu-model.family",
            "hw.policyserve.io/cpu-model.id",
            "hw.policyserve.io/cpu-model.vendor_id",
            "hw.policyserve.io/cpu-sockets",
            "hw.policyserve.io/cpu-threads",
            "hw.policyserve.io/cpu-usable",
            "hw.policyserve.io/cuda.driver-version.major",
            "hw.policyserve.io/cuda.driver-version.minor",
            "hw.policyserve.io/gpu.compute.major",
            "hw.policyserve.io/gpu.compute.minor",
            "hw.policyserve.io/gpu.count",
            "hw.policyserve.io/gpu.memory",
            "hw.policyserve.io/gpu.product",
            "hw.policyserve.io/memory-numa",
            "hw.policyserve.io/memory-numa-nodes",
            "hw.policyserve.io/memory-total-gib",
            "hw.policyserve.io/memory-usable-mib",
            "hw.policyserve.io/mig.capable",
            "hw.policyserve.io/source",
            "policyserve.io/hardware-class",
        ];
        assert_eq!(keys, expected);
    }

    #[test]
    fn labels_carry_the_numbers_of_the_description() {
        let labels = labels(&small_node());
        let get = |key: &str| labels[&format!("{CAPABILITY_LABEL_PREFIX}{key}")].as_str();
        assert_eq!(get("cpu-usable"), "1.5");
        assert_eq!(get("memory-usable-mib"), "512");
        assert_eq!(get("memory-total-gib"), "4");
        assert_eq!(get("memory-numa-nodes"), "1");
        assert_eq!(get("source"), "simulated");
        assert!(!labels.contains_key("hw.policyserve.io/memory-numa"));
        assert!(!labels.keys().any(|k| k.contains("gpu.")));
        assert_eq!(labels[HARDWARE_CLASS_LABEL], "memory-constrained");
    }
}
