//! Capability labels for the Node: Node Feature Discovery's names for CPU and memory, NVIDIA
//! GPU Feature Discovery's for GPUs, under `hw.policyserve.io/`, plus the hardware class.
//!
//! Pure functions of a [`Hardware`]: the same machine always gives the same labels, which is
//! what keeps server-side apply from touching the Node on every re-detection.

use std::collections::BTreeMap;

use policyserve_crds::{CAPABILITY_LABEL_PREFIX, HARDWARE_CLASS_LABEL};

use crate::hardware::{CpuFlag, Hardware};

/// The most characters a label value may have.
const MAX_VALUE_LEN: usize = 63;

/// All capability labels of `hw` (`hw.policyserve.io/...`) and `policyserve.io/hardware-class`.
/// Absent facts have no label rather than a `false` one, as NFD does, except `mig.capable`,
/// which GPU Feature Discovery sets either way.
pub fn labels(hw: &Hardware) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        labels.insert(format!("{CAPABILITY_LABEL_PREFIX}{key}"), value);
    };
    let cpu = &hw.cpu;
    for flag in CpuFlag::ALL.into_iter().filter(|flag| hw.has(*flag)) {
        put(&format!("cpu-cpuid.{}", flag.name()), "true".into());
    }
    put("cpu-model.vendor_id", sanitize_value(&cpu.vendor));
    put("cpu-model.family", cpu.family.to_string());
    put("cpu-model.id", cpu.model.to_string());
    put("cpu-cores", cpu.physical_cores.to_string());
    put("cpu-threads", cpu.logical_cpus.to_string());
    put("cpu-sockets", cpu.sockets.to_string());
    put("cpu-usable", decimal(cpu.usable_cpus));
    put("memory-total-gib", (hw.memory.total_mib / 1024).to_string());
    put("memory-usable-mib", hw.memory.usable_mib.to_string());
    if hw.memory.numa_nodes > 1 {
        put("memory-numa", "true".into());
    }
    put("memory-numa-nodes", hw.memory.numa_nodes.to_string());
    // GPU Feature Discovery describes a node by its first GPU: nodes hold one model.
    if let Some(gpu) = hw.gpus.first() {
        put("gpu.count", hw.gpus.len().to_string());
        put("gpu.product", sanitize_value(&gpu.product));
        put("gpu.memory", gpu.memory_mib.to_string());
        put(
            "gpu.compute.major",
            gpu.compute_capability.major.to_string(),
        );
        put(
            "gpu.compute.minor",
            gpu.compute_capability.minor.to_string(),
        );
        put(
            "cuda.driver-version.major",
            gpu.cuda_driver_version.major.to_string(),
        );
        put(
            "cuda.driver-version.minor",
            gpu.cuda_driver_version.minor.to_string(),
        );
        put("mig.capable", gpu.mig_capable.to_string());
    }
    put("source", hw.source.as_str().into());
    labels.insert(HARDWARE_CLASS_LABEL.into(), hw.class().as_str().into());
    labels
}

/// A CPU count as a short decimal: millicore precision, no trailing zeros (`1.5`, `2`, `0.333`).
fn decimal(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    // Display of f64 prints the shortest form that round-trips: `1.5`, `2`, `0.333`.
    format!("{rounded}")
}

/// Makes `raw` a valid label value the way GPU Feature Discovery does (drop other characters,
/// spaces become `-`), then trims to 63 characters with alphanumeric ends. `unknown` when
/// nothing is left.
pub fn sanitize_value(raw: &str) -> String {
    let kept: String = raw
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => Some(c),
            _ => None,
        })
        .collect();
    let cut: String = kept.chars().take(MAX_VALUE_LEN).collect();
    let trimmed = cut.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed.into()
    }
}

/// Whether `value` is a valid label value: at most 63 characters of `[A-Za-z0-9-_.]`, starting
/// and ending with an alphanumeric (empty is valid too).
pub fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    value.is_empty()
        || (bytes.len() <= MAX_VALUE_LEN
            && bytes.iter().all(allowed)
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

/// Whether `key` is a valid qualified label key: an optional DNS-subdomain prefix and `/`, then
/// a name of at most 63 characters of `[A-Za-z0-9-_.]` with alphanumeric ends.
pub fn is_valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_valid_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::hardware::tests::{gpu_node, small_node};

    #[test]
    fn decimals_are_short() {
        assert_eq!(decimal(1.5), "1.5");
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(1.0 / 3.0), "0.333");
        assert_eq!(decimal(64.0), "64");
    }

    #[test]
    fn gpu_products_are_sanitized_as_gpu_feature_discovery_does() {
        assert_eq!(
            sanitize_value("NVIDIA A100-SXM4-40GB"),
            "NVIDIA-A100-SXM4-40GB"
        );
        assert_eq!(
            sanitize_value("NVIDIA GeForce RTX 4090 (Laptop)"),
            "NVIDIA-GeForce-RTX-4090-Laptop"
        );
        assert_eq!(sanitize_value("  ---  "), "unknown");
        let long = sanitize_value(&"x".repeat(40).replace('x', "ab "));
        assert!(is_valid_value(&long), "{long}");
    }

    #[test]
    fn validity_checks_follow_the_kubernetes_rules() {
        assert!(is_valid_value("AMD"));
        assert!(is_valid_value("1.5"));
        assert!(is_valid_value(""));
        assert!(!is_valid_value("-a"));
        assert!(!is_valid_value("a b"));
        assert!(!is_valid_value(&"a".repeat(64)));
        assert!(is_valid_key("hw.policyserve.io/cpu-cpuid.AVX512VNNI"));
        assert!(is_valid_key("policyserve.io/hardware-class"));
        assert!(!is_valid_key("HW.policyserve.io/x"));
        assert!(!is_valid_key("hw.policyserve.io/"));
    }

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
