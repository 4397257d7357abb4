//! The capability labels on a Node, as one typed value: the agent writes them
//! ([`CapabilityLabels::to_labels`]), the operator reads them ([`CapabilityLabels::from_labels`]),
//! so the keys are spelled once, here. CPU and memory names follow Node Feature Discovery, GPU
//! names NVIDIA GPU Feature Discovery, under [`CAPABILITY_LABEL_PREFIX`]; where the agent's own
//! labels are absent, reading falls back to NFD's and GFD's labels.

use std::collections::{BTreeMap, BTreeSet};

use crate::HardwareClass;

/// Prefix of the capability labels the agent sets on its Node.
pub const CAPABILITY_LABEL_PREFIX: &str = "hw.policyserve.io/";
/// Node label with the node's hardware class.
pub const HARDWARE_CLASS_LABEL: &str = "policyserve.io/hardware-class";
/// Node Feature Discovery's label prefix (CPU flags).
const NFD_PREFIX: &str = "feature.node.kubernetes.io/";
/// GPU Feature Discovery's label prefix.
const GFD_PREFIX: &str = "nvidia.com/";
/// CPU flags (NFD names) that make int8 inference fast.
const INT8_FLAGS: [&str; 3] = ["AVX512VNNI", "AVXVNNI", "AMXINT8"];
/// The most characters a label value may have.
const MAX_VALUE_LEN: usize = 63;

/// The label keys, without the prefix.
mod key {
    pub const CPUID: &str = "cpu-cpuid.";
    pub const VENDOR: &str = "cpu-model.vendor_id";
    pub const FAMILY: &str = "cpu-model.family";
    pub const MODEL_ID: &str = "cpu-model.id";
    pub const CORES: &str = "cpu-cores";
    pub const THREADS: &str = "cpu-threads";
    pub const SOCKETS: &str = "cpu-sockets";
    pub const USABLE_CPUS: &str = "cpu-usable";
    pub const MEMORY_TOTAL_GIB: &str = "memory-total-gib";
    pub const MEMORY_USABLE_MIB: &str = "memory-usable-mib";
    pub const NUMA: &str = "memory-numa";
    pub const NUMA_NODES: &str = "memory-numa-nodes";
    pub const GPU_COUNT: &str = "gpu.count";
    pub const GPU_PRODUCT: &str = "gpu.product";
    pub const GPU_MEMORY: &str = "gpu.memory";
    pub const COMPUTE_MAJOR: &str = "gpu.compute.major";
    pub const COMPUTE_MINOR: &str = "gpu.compute.minor";
    pub const DRIVER_MAJOR: &str = "cuda.driver-version.major";
    pub const DRIVER_MINOR: &str = "cuda.driver-version.minor";
    pub const MIG_CAPABLE: &str = "mig.capable";
    pub const SOURCE: &str = "source";
}

/// What a node's labels say about its hardware. Every field is optional on reading: a node
/// labelled by an older agent, by NFD only, or not at all still reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CapabilityLabels {
    /// OS-enabled CPU flags, by NFD name (`AVX2`, `AVX512VNNI`, `AMXINT8`, ...).
    pub cpu_flags: BTreeSet<String>,
    /// CPU vendor (`Intel`, `AMD`), as NFD spells it.
    pub cpu_vendor: Option<String>,
    /// CPU family number.
    pub cpu_family: Option<u32>,
    /// CPU model number.
    pub cpu_model_id: Option<u32>,
    /// Host physical cores.
    pub cpu_cores: Option<u32>,
    /// Host logical CPUs.
    pub cpu_threads: Option<u32>,
    /// CPU sockets.
    pub cpu_sockets: Option<u32>,
    /// CPUs usable under the agent's cgroup quota and cpuset.
    pub cpu_usable: Option<f64>,
    /// Host memory, whole GiB rounded down.
    pub memory_total_gib: Option<u64>,
    /// Memory usable under the agent's cgroup limit, MiB.
    pub memory_usable_mib: Option<u64>,
    /// NUMA nodes.
    pub memory_numa_nodes: Option<u32>,
    /// The node's GPUs, described by the first (nodes hold one model, as GFD assumes).
    pub gpu: Option<GpuLabels>,
    /// `detected`, or `simulated` when a hardware file described the node.
    pub source: Option<String>,
    /// The hardware class label's value, as written (an unknown value is kept, not dropped).
    pub hardware_class: Option<String>,
}

/// GPU Feature Discovery's description of a node's GPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuLabels {
    /// Number of GPUs.
    pub count: u32,
    /// Product name (sanitized into a label value when written).
    pub product: Option<String>,
    /// Memory per GPU, MiB.
    pub memory_mib: Option<u64>,
    /// CUDA compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
    /// CUDA driver version (major, minor).
    pub driver_version: Option<(u32, u32)>,
    /// Whether the GPU supports MIG.
    pub mig_capable: Option<bool>,
}

impl CapabilityLabels {
    /// The labels to set on the Node: capability labels under [`CAPABILITY_LABEL_PREFIX`] and
    /// the hardware class. Absent facts get no label rather than a `false` one, as NFD does,
    /// except `mig.capable`, which GPU Feature Discovery sets either way. Free text (vendor,
    /// product) is made a valid label value.
    pub fn to_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                labels.insert(format!("{CAPABILITY_LABEL_PREFIX}{key}"), value);
            }
        };
        let text = |value: &Option<String>| value.as_deref().map(sanitize_value);
        let number = |value: Option<u32>| value.map(|v| v.to_string());
        for flag in &self.cpu_flags {
            put(&format!("{}{flag}", key::CPUID), Some("true".into()));
        }
        put(key::VENDOR, text(&self.cpu_vendor));
        put(key::FAMILY, number(self.cpu_family));
        put(key::MODEL_ID, number(self.cpu_model_id));
        put(key::CORES, number(self.cpu_cores));
        put(key::THREADS, number(self.cpu_threads));
        put(key::SOCKETS, number(self.cpu_sockets));
        put(key::USABLE_CPUS, self.cpu_usable.map(decimal));
        put(
            key::MEMORY_TOTAL_GIB,
            self.memory_total_gib.map(|v| v.to_string()),
        );
        put(
            key::MEMORY_USABLE_MIB,
            self.memory_usable_mib.map(|v| v.to_string()),
        );
        if self.memory_numa_nodes.is_some_and(|n| n > 1) {
            put(key::NUMA, Some("true".into()));
        }
        put(key::NUMA_NODES, number(self.memory_numa_nodes));
        if let Some(gpu) = &self.gpu {
            put(key::GPU_COUNT, Some(gpu.count.to_string()));
            put(key::GPU_PRODUCT, text(&gpu.product));
            put(key::GPU_MEMORY, gpu.memory_mib.map(|v| v.to_string()));
            put(
                key::COMPUTE_MAJOR,
                gpu.compute_capability.map(|c| c.0.to_string()),
            );
            put(
                key::COMPUTE_MINOR,
                gpu.compute_capability.map(|c| c.1.to_string()),
            );
            put(
                key::DRIVER_MAJOR,
                gpu.driver_version.map(|d| d.0.to_string()),
            );
            put(
                key::DRIVER_MINOR,
                gpu.driver_version.map(|d| d.1.to_string()),
            );
            put(
                key::MIG_CAPABLE,
                Some(gpu.mig_capable.unwrap_or(false).to_string()),
            );
        }
        put(key::SOURCE, text(&self.source));
        if let Some(class) = &self.hardware_class {
            labels.insert(HARDWARE_CLASS_LABEL.into(), class.clone());
        }
        labels
    }

    /// Reads a node's labels: the agent's first, NFD's CPU flags and GFD's GPU labels where the
    /// agent's are absent. Values that do not parse read as absent.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        let own = |key: &str| labels.get(&format!("{CAPABILITY_LABEL_PREFIX}{key}"));
        let gpu_label = |key: &str| own(key).or_else(|| labels.get(&format!("{GFD_PREFIX}{key}")));
        let parse = |value: Option<&String>| value.and_then(|v| v.trim().parse::<f64>().ok());
        let whole = |value: Option<&String>| parse(value).filter(|v| *v >= 0.0).map(|v| v as u64);
        let small = |value: Option<&String>| whole(value).and_then(|v| u32::try_from(v).ok());

        let mut cpu_flags = BTreeSet::new();
        for prefix in [
            format!("{CAPABILITY_LABEL_PREFIX}{}", key::CPUID),
            format!("{NFD_PREFIX}{}", key::CPUID),
        ] {
            cpu_flags.extend(labels.iter().filter_map(|(k, v)| {
                (v == "true")
                    .then(|| k.strip_prefix(&prefix))
                    .flatten()
                    .map(str::to_owned)
            }));
        }
        let pair = |major: &str, minor: &str| {
            small(gpu_label(major)).map(|m| (m, small(gpu_label(minor)).unwrap_or(0)))
        };
        let compute_capability = pair(key::COMPUTE_MAJOR, key::COMPUTE_MINOR);
        let count = small(gpu_label(key::GPU_COUNT));
        let gpu = (count.is_some() || compute_capability.is_some()).then(|| GpuLabels {
            count: count.unwrap_or(1),
            product: gpu_label(key::GPU_PRODUCT).cloned(),
            memory_mib: whole(gpu_label(key::GPU_MEMORY)),
            compute_capability,
            driver_version: pair(key::DRIVER_MAJOR, key::DRIVER_MINOR),
            mig_capable: gpu_label(key::MIG_CAPABLE).map(|v| v == "true"),
        });
        Self {
            cpu_flags,
            cpu_vendor: own(key::VENDOR).cloned(),
            cpu_family: small(own(key::FAMILY)),
            cpu_model_id: small(own(key::MODEL_ID)),
            cpu_cores: small(own(key::CORES)),
            cpu_threads: small(own(key::THREADS)),
            cpu_sockets: small(own(key::SOCKETS)),
            cpu_usable: parse(own(key::USABLE_CPUS)).filter(|v| *v >= 0.0),
            memory_total_gib: whole(own(key::MEMORY_TOTAL_GIB)),
            memory_usable_mib: whole(own(key::MEMORY_USABLE_MIB)),
            memory_numa_nodes: small(own(key::NUMA_NODES)),
            gpu,
            source: own(key::SOURCE).cloned(),
            hardware_class: labels.get(HARDWARE_CLASS_LABEL).cloned(),
        }
    }

    /// The hardware class, when the label holds a known value.
    pub fn class(&self) -> Option<HardwareClass> {
        self.hardware_class
            .as_deref()
            .and_then(HardwareClass::from_label)
    }

    /// Whether the CPU runs int8 fast (AVX512-VNNI, AVX-VNNI or AMX-INT8).
    pub fn int8_acceleration(&self) -> bool {
        INT8_FLAGS.iter().any(|flag| self.cpu_flags.contains(*flag))
    }
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

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn gpu_node() -> CapabilityLabels {
        CapabilityLabels {
            cpu_flags: ["AVX2", "AVX512VNNI"].map(String::from).into(),
            cpu_vendor: Some("Intel".into()),
            cpu_family: Some(6),
            cpu_model_id: Some(143),
            cpu_cores: Some(32),
            cpu_threads: Some(64),
            cpu_sockets: Some(2),
            cpu_usable: Some(15.5),
            memory_total_gib: Some(251),
            memory_usable_mib: Some(65536),
            memory_numa_nodes: Some(2),
            gpu: Some(GpuLabels {
                count: 1,
                product: Some("NVIDIA A100-SXM4-40GB".into()),
                memory_mib: Some(40960),
                compute_capability: Some((8, 0)),
                driver_version: Some((12, 4)),
                mig_capable: Some(true),
            }),
            source: Some("simulated".into()),
            hardware_class: Some(HardwareClass::GpuAccelerated.as_str().into()),
        }
    }

    #[test]
    fn labels_written_by_the_agent_read_back_the_same() {
        let written = gpu_node();
        let read = CapabilityLabels::from_labels(&written.to_labels());
        let mut expected = written;
        expected.gpu.as_mut().unwrap().product = Some("NVIDIA-A100-SXM4-40GB".into());
        assert_eq!(read, expected);
        assert_eq!(read.class(), Some(HardwareClass::GpuAccelerated));
        assert!(read.int8_acceleration());
    }

    #[test]
    fn every_written_key_and_value_is_valid() {
        let mut odd = gpu_node();
        odd.cpu_vendor = Some(" Weird Vendor, Inc. (tm) ".into());
        odd.cpu_usable = Some(2.0 / 3.0);
        odd.gpu.as_mut().unwrap().product = Some("Very Long GPU Name ™ ".repeat(5));
        for (key, value) in odd.to_labels() {
            assert!(is_valid_key(&key), "invalid key {key:?}");
            assert!(is_valid_value(&value), "invalid value {key}={value:?}");
        }
        assert_eq!(odd.to_labels()["hw.policyserve.io/cpu-usable"], "0.667");
    }

    #[test]
    fn nfd_and_gpu_feature_discovery_labels_fill_in_when_the_agent_s_are_absent() {
        let read = CapabilityLabels::from_labels(&labels(&[
            ("feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI", "true"),
            ("nvidia.com/gpu.count", "2"),
            ("nvidia.com/gpu.compute.major", "8"),
            ("nvidia.com/gpu.compute.minor", "6"),
        ]));
        assert!(read.int8_acceleration());
        let gpu = read.gpu.unwrap();
        assert_eq!(gpu.count, 2);
        assert_eq!(gpu.compute_capability, Some((8, 6)));
        assert_eq!(read.memory_usable_mib, None);
    }

    #[test]
    fn agent_labels_win_over_feature_discovery() {
        let read = CapabilityLabels::from_labels(&labels(&[
            ("hw.policyserve.io/gpu.compute.major", "7"),
            ("hw.policyserve.io/gpu.compute.minor", "5"),
            ("nvidia.com/gpu.compute.major", "9"),
        ]));
        assert_eq!(read.gpu.unwrap().compute_capability, Some((7, 5)));
    }

    #[test]
    fn unknown_class_values_and_unparsable_numbers_read_as_absent() {
        let read = CapabilityLabels::from_labels(&labels(&[
            ("policyserve.io/hardware-class", "turbo"),
            ("hw.policyserve.io/cpu-usable", "lots"),
        ]));
        assert_eq!(read.hardware_class.as_deref(), Some("turbo"));
        assert_eq!(read.class(), None);
        assert_eq!(read.cpu_usable, None);
    }

    #[test]
    fn values_are_sanitized_as_gpu_feature_discovery_does() {
        assert_eq!(
            sanitize_value("NVIDIA GeForce RTX 4090 (Laptop)"),
            "NVIDIA-GeForce-RTX-4090-Laptop"
        );
        assert_eq!(sanitize_value("  ---  "), "unknown");
        assert!(is_valid_value("1.5"));
        assert!(!is_valid_value("-a"));
        assert!(!is_valid_value(&"a".repeat(64)));
        assert!(is_valid_key("policyserve.io/hardware-class"));
        assert!(!is_valid_key("HW.policyserve.io/x"));
        assert!(!is_valid_key("hw.policyserve.io/"));
    }
}
