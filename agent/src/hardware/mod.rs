//! What this machine is: CPU model and ISA flags, cores and sockets, the cgroup limits this
//! process runs under, memory, NUMA and NVIDIA GPUs.
//!
//! [`Hardware`] is both the detection result and the schema of `detect --output json` and of
//! `--hardware-file`, so a detected machine can be saved, edited and replayed anywhere.

mod cpu;
mod gpu;
mod limits;
mod topology;

use std::path::Path;

use policyserve_crds::HardwareClass;
use serde::{Deserialize, Serialize};

pub use cpu::{CpuFlag, CpuIdentity};
pub use gpu::{GpuDetection, process_memory_mib as process_gpu_memory_mib};
pub use limits::{CpuLimits, MemoryInfo};
pub use topology::Topology;

use crate::{Error, Result};

/// GPU memory from which a GPU counts for the `gpu-accelerated` class.
const GPU_CLASS_MIN_MEMORY_MIB: u64 = 8 * 1024;
/// Usable memory up to which a node is `memory-constrained`.
const MEMORY_CONSTRAINED_MAX_MIB: u64 = 8 * 1024;
/// Usable CPUs from which a node with AVX2 is `high-performance-cpu`.
const HIGH_PERFORMANCE_MIN_CPUS: f64 = 16.0;

/// A machine's hardware, detected or described by a hardware file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hardware {
    /// Whether the facts were detected on this machine or read from a hardware file. A file's
    /// own value is ignored: whatever is read from a file is `simulated`.
    #[serde(default)]
    pub source: Source,
    /// Processor, cores and the CPU share this process may use.
    pub cpu: Cpu,
    /// Host memory, the share this process may use, and NUMA.
    pub memory: Memory,
    /// NVIDIA GPUs visible through the driver (empty without a driver).
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// Set when the NVIDIA driver loaded but then failed; the GPUs it did describe are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_error: Option<String>,
}

/// Where hardware facts came from (the `hw.policyserve.io/source` label).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Detected on this machine.
    #[default]
    Detected,
    /// Described by a hardware file.
    Simulated,
}

impl Source {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detected => "detected",
            Self::Simulated => "simulated",
        }
    }
}

/// The processor.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cpu {
    /// Vendor as Node Feature Discovery names it (`Intel`, `AMD`, ...).
    pub vendor: String,
    /// Brand string, such as `AMD EPYC 9654 96-Core Processor`.
    #[serde(default)]
    pub brand: String,
    /// Family number (CPUID's, extended family included).
    pub family: u32,
    /// Model number (CPUID's, extended model included).
    pub model: u32,
    /// ISA extensions the CPU has and the operating system has enabled.
    #[serde(default)]
    pub flags: std::collections::BTreeSet<CpuFlag>,
    /// Physical cores of the host.
    pub physical_cores: u32,
    /// Logical CPUs (hardware threads) of the host.
    pub logical_cpus: u32,
    /// Processor packages of the host.
    pub sockets: u32,
    /// CPUs this process may use: the smaller of its cgroup quota and its CPU set.
    pub usable_cpus: f64,
    /// The cgroup CPU quota in CPUs, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_cpus: Option<f64>,
    /// Logical CPUs in this process's CPU set (affinity / cpuset), when detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cpus: Option<u32>,
    /// Physical cores that the CPU set touches, when detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_physical_cores: Option<u32>,
}

/// Memory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    /// Host memory in MiB (`MemTotal`).
    pub total_mib: u64,
    /// Memory this process may use in MiB: the host's, capped by the cgroup limit.
    pub usable_mib: u64,
    /// The cgroup memory limit in MiB, when one is below the host's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_mib: Option<u64>,
    /// NUMA nodes.
    pub numa_nodes: u32,
}

/// One NVIDIA GPU, as NVML describes it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gpu {
    /// NVML's device index.
    pub index: u32,
    /// Product name, such as `NVIDIA A100-SXM4-40GB`.
    pub product: String,
    /// The GPU's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Installed memory in MiB.
    pub memory_mib: u64,
    /// CUDA compute capability.
    pub compute_capability: Version,
    /// Driver version, such as `535.104.05`.
    pub driver_version: String,
    /// The highest CUDA version the driver supports.
    pub cuda_driver_version: Version,
    /// Whether the GPU supports Multi-Instance GPU.
    #[serde(default)]
    pub mig_capable: bool,
    /// Whether MIG mode is on.
    #[serde(default)]
    pub mig_enabled: bool,
}

/// A `major.minor` version.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl Hardware {
    /// The hardware class: a GPU with enough memory, else little memory, else many CPUs with
    /// AVX2, else balanced; the first match wins (classes: `policyserve_crds::HardwareClass`).
    pub fn class(&self) -> HardwareClass {
        if self
            .gpus
            .iter()
            .any(|gpu| gpu.memory_mib >= GPU_CLASS_MIN_MEMORY_MIB)
        {
            HardwareClass::GpuAccelerated
        } else if self.memory.usable_mib <= MEMORY_CONSTRAINED_MAX_MIB {
            HardwareClass::MemoryConstrained
        } else if self.usable_cpus() >= HIGH_PERFORMANCE_MIN_CPUS && self.has(CpuFlag::Avx2) {
            HardwareClass::HighPerformanceCpu
        } else {
            HardwareClass::Balanced
        }
    }

    /// CPUs usable under the cgroup quota and CPU set.
    pub fn usable_cpus(&self) -> f64 {
        self.cpu.usable_cpus
    }

    /// Physical cores this process can keep busy: whole usable CPUs, but no more than the
    /// physical cores its CPU set spans. Inference threads beyond that share a core's vector
    /// units and slow each other down. At least 1.
    pub fn usable_physical_cores(&self) -> u32 {
        let cores = self
            .cpu
            .allowed_physical_cores
            .unwrap_or(self.cpu.physical_cores);
        // Float to int: usable_cpus is a small positive number, floor() makes the cut explicit.
        let whole_cpus = self.cpu.usable_cpus.floor() as u32;
        whole_cpus.min(cores).max(1)
    }

    /// Whether the CPU runs int8 inference fast: AVX-512 VNNI, AVX-VNNI or AMX INT8.
    pub fn int8_acceleration(&self) -> bool {
        [CpuFlag::Avx512Vnni, CpuFlag::AvxVnni, CpuFlag::AmxInt8]
            .into_iter()
            .any(|flag| self.has(flag))
    }

    /// The first GPU's CUDA compute capability.
    pub fn gpu_compute_capability(&self) -> Option<(u32, u32)> {
        self.gpus
            .first()
            .map(|gpu| (gpu.compute_capability.major, gpu.compute_capability.minor))
    }

    /// Whether the CPU has `flag`, enabled by the operating system.
    pub fn has(&self, flag: CpuFlag) -> bool {
        self.cpu.flags.contains(&flag)
    }

    /// Reads a machine description: the JSON `detect --output json` prints. Its `hardwareClass`
    /// and `labels` are ignored (they follow from the rest), and the result is `simulated`.
    ///
    /// # Errors
    /// When the file cannot be read, is not that JSON, or describes an impossible machine.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| Error::Parse {
            what: format!("hardware file {}", path.display()),
            reason,
        })
    }

    /// Parses a machine description (see [`Hardware::from_file`]); the error is the reason.
    /// Public as the hardware file's fuzzing entry (`fuzz/fuzz_targets/hardware_file.rs`).
    ///
    /// # Errors
    /// When `text` is not that JSON or describes an impossible machine.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        // Derived fields of `detect --output json`: dropped so that output round-trips, and so
        // that a hand-edited file cannot claim a class its hardware does not earn.
        if let Some(object) = value.as_object_mut() {
            object.remove("hardwareClass");
            object.remove("labels");
        }
        let mut hardware: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        hardware.source = Source::Simulated;
        hardware.validate()?;
        Ok(hardware)
    }

    /// Rejects descriptions no machine has, which would otherwise give nonsense labels.
    fn validate(&self) -> std::result::Result<(), String> {
        let cpu = &self.cpu;
        if !(cpu.usable_cpus.is_finite() && cpu.usable_cpus > 0.0) {
            return Err(format!(
                "cpu.usableCpus must be a positive number, not {}",
                cpu.usable_cpus
            ));
        }
        if cpu.physical_cores == 0 || cpu.logical_cpus == 0 || cpu.sockets == 0 {
            return Err(
                "cpu.physicalCores, cpu.logicalCpus and cpu.sockets must be at least 1".into(),
            );
        }
        // Found by fuzzing: a usableCpus of 1e155 made a cpu-usable label longer than 63
        // characters. Detection never exceeds the logical CPUs (quota and CPU set both cap it).
        if cpu.usable_cpus > f64::from(cpu.logical_cpus) {
            return Err(format!(
                "cpu.usableCpus ({}) exceeds cpu.logicalCpus ({})",
                cpu.usable_cpus, cpu.logical_cpus
            ));
        }
        if cpu.physical_cores > cpu.logical_cpus {
            return Err(format!(
                "cpu.physicalCores ({}) exceeds cpu.logicalCpus ({})",
                cpu.physical_cores, cpu.logical_cpus
            ));
        }
        if self.memory.total_mib == 0 || self.memory.usable_mib == 0 || self.memory.numa_nodes == 0
        {
            return Err(
                "memory.totalMib, memory.usableMib and memory.numaNodes must be at least 1".into(),
            );
        }
        if self.memory.usable_mib > self.memory.total_mib {
            return Err(format!(
                "memory.usableMib ({}) exceeds memory.totalMib ({})",
                self.memory.usable_mib, self.memory.total_mib
            ));
        }
        Ok(())
    }

    /// Detects this machine, reading `/proc` and `/sys` under `root` (`/` outside tests).
    ///
    /// # Errors
    /// When `/proc/meminfo` cannot be read; other missing files only cost detail.
    pub fn detect_at(root: &Path) -> Result<Self> {
        let identity = CpuIdentity::detect(root);
        let topology = Topology::read(root);
        let allowed = limits::allowed_cpus(root);
        let allowed_physical_cores = allowed
            .as_ref()
            .and_then(|cpus| topology.physical_cores_among(cpus));
        let cpu_limits = CpuLimits::read(root);
        let memory = MemoryInfo::read(root)?;
        let gpu = GpuDetection::detect();

        let logical_cpus = topology.logical_cpus;
        let allowed_cpus = allowed.map(|cpus| u32::try_from(cpus.len()).unwrap_or(u32::MAX));
        let set_cpus = f64::from(
            allowed_cpus
                .unwrap_or(logical_cpus)
                .min(logical_cpus)
                .max(1),
        );
        let usable_cpus = cpu_limits
            .quota_cpus
            .map_or(set_cpus, |quota| quota.min(set_cpus));

        Ok(Self {
            source: Source::Detected,
            cpu: Cpu {
                vendor: identity.vendor,
                brand: identity.brand,
                family: identity.family,
                model: identity.model,
                flags: identity.flags,
                physical_cores: topology.physical_cores,
                logical_cpus,
                sockets: topology.sockets,
                usable_cpus,
                quota_cpus: cpu_limits.quota_cpus,
                allowed_cpus,
                allowed_physical_cores,
            },
            memory: Memory {
                total_mib: memory.total_mib,
                usable_mib: memory.usable_mib(),
                limit_mib: memory.effective_limit_mib(),
                numa_nodes: topology.numa_nodes,
            },
            gpus: gpu.gpus,
            gpu_error: gpu.error,
        })
    }
}

/// Detects this machine, or reads the machine `hardware_file` describes.
///
/// # Errors
/// When the hardware file cannot be read or parsed, or `/proc/meminfo` cannot be read.
pub fn load(hardware_file: Option<&Path>) -> Result<Hardware> {
    match hardware_file {
        Some(path) => Hardware::from_file(path),
        None => Hardware::detect_at(Path::new("/")),
    }
}

#[cfg(test)]
pub(crate) mod tests;
