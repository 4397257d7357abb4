//! Hardware detection. PLACEHOLDER: replaced by the detection issue's implementation.

use policyserve_crds::HardwareClass;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::args::HardwareArgs;

/// A machine's hardware.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hardware {
    /// Logical CPUs usable by this process.
    pub usable_cpus: f64,
}

impl Hardware {
    /// The hardware class (DESIGN.md's rules).
    pub fn class(&self) -> HardwareClass {
        HardwareClass::Balanced
    }
    /// CPUs usable under the cgroup quota and cpuset.
    pub fn usable_cpus(&self) -> f64 {
        self.usable_cpus
    }
    /// Physical cores usable under the quota.
    pub fn usable_physical_cores(&self) -> u32 {
        self.usable_cpus.floor().max(1.0) as u32
    }
    /// Whether the CPU runs int8 fast (AVX512-VNNI, AVX-VNNI, AMX).
    pub fn int8_acceleration(&self) -> bool {
        false
    }
    /// The first GPU's compute capability.
    pub fn gpu_compute_capability(&self) -> Option<(u32, u32)> {
        None
    }
}

/// Detects this machine, or reads the described one.
///
/// # Errors
/// When the hardware file cannot be read.
pub fn load(_args: &HardwareArgs) -> Result<Hardware> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Hardware {
        usable_cpus: cpus as f64,
    })
}
