//! Hardware classes, the four profiles and the tuner's search space each profile allows.
//!
//! The rules live beside the types because two programs apply them: the operator when it plans
//! a node's OptimizationProfile, and the agent when it tunes standalone (`policyserve-agent tune`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ExecutionProvider, Precision};

/// The class of a node's hardware, computed by the agent and published as the
/// `policyserve.io/hardware-class` label.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum HardwareClass {
    /// An NVIDIA GPU with at least 8 GiB whose driver loads.
    GpuAccelerated,
    /// At most 8 GiB of usable memory.
    MemoryConstrained,
    /// At least 16 usable CPUs with AVX2.
    HighPerformanceCpu,
    /// Anything else.
    Balanced,
}

impl HardwareClass {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GpuAccelerated => "gpu-accelerated",
            Self::MemoryConstrained => "memory-constrained",
            Self::HighPerformanceCpu => "high-performance-cpu",
            Self::Balanced => "balanced",
        }
    }

    /// Parses a label value.
    pub fn from_label(value: &str) -> Option<Self> {
        [
            Self::GpuAccelerated,
            Self::MemoryConstrained,
            Self::HighPerformanceCpu,
            Self::Balanced,
        ]
        .into_iter()
        .find(|class| class.as_str() == value)
    }

    /// The profile a node of this class gets when the PolicyService does not pin one.
    pub fn default_profile(self) -> Profile {
        match self {
            Self::GpuAccelerated => Profile::GPUAccelerated,
            Self::MemoryConstrained => Profile::MemoryConstrained,
            Self::HighPerformanceCpu => Profile::HighPerformanceCPU,
            Self::Balanced => Profile::Balanced,
        }
    }
}

impl std::fmt::Display for HardwareClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An optimization profile: the family of engine configurations a node explores.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum Profile {
    /// TensorRT, then CUDA, then CPU; fp16 on GPUs with tensor cores; large batches.
    GPUAccelerated,
    /// All physical cores, spinning threads, int8 where the CPU has VNNI or AMX.
    HighPerformanceCPU,
    /// Few threads, no memory arena, small batches, int8 where given.
    MemoryConstrained,
    /// Up to four threads, fp32, medium batches.
    Balanced,
}

impl Profile {
    /// The name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GPUAccelerated => "GPUAccelerated",
            Self::HighPerformanceCPU => "HighPerformanceCPU",
            Self::MemoryConstrained => "MemoryConstrained",
            Self::Balanced => "Balanced",
        }
    }

    /// The search space this profile allows on a node, per the table in docs/profiles.md.
    pub fn search_space(self, node: &NodeCapacity) -> SearchSpace {
        let cpu_threads = |cap: u32| ladder(cap.max(1));
        let variants = |wanted: &[Precision]| -> Vec<Precision> {
            let mut precisions = vec![Precision::Fp32];
            precisions.extend(wanted.iter().filter(|p| node.variants.contains(p)));
            precisions
        };
        match self {
            Self::GPUAccelerated => {
                let mut precisions = variants(&[]);
                if node.gpu_compute_capability.is_some_and(|cc| cc >= (7, 0)) {
                    precisions.push(Precision::Fp16);
                }
                SearchSpace {
                    execution_providers: vec![
                        vec![
                            ExecutionProvider::TensorRT,
                            ExecutionProvider::Cuda,
                            ExecutionProvider::Cpu,
                        ],
                        vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu],
                        vec![ExecutionProvider::Cpu],
                    ],
                    precisions,
                    intra_op_threads: cpu_threads(node.usable_cpus.min(4)),
                    instances: vec![1, 2],
                    max_batch_sizes: vec![1, 8, 32, 128],
                    batch_delays_micros: vec![0, 100, 500],
                    memory_arena: vec![true],
                }
            }
            Self::HighPerformanceCPU => SearchSpace {
                execution_providers: vec![vec![ExecutionProvider::Cpu]],
                precisions: if node.int8_acceleration {
                    variants(&[Precision::Int8])
                } else {
                    variants(&[])
                },
                intra_op_threads: cpu_threads(node.physical_cores),
                instances: cpu_threads(node.physical_cores.min(4)),
                max_batch_sizes: vec![1, 8, 32, 64],
                batch_delays_micros: vec![0, 100, 500],
                memory_arena: vec![true],
            },
            Self::MemoryConstrained => SearchSpace {
                execution_providers: vec![vec![ExecutionProvider::Cpu]],
                precisions: variants(&[Precision::Int8]),
                intra_op_threads: cpu_threads(node.usable_cpus.min(2)),
                instances: vec![1],
                max_batch_sizes: vec![1, 4, 8],
                batch_delays_micros: vec![0, 100, 500],
                memory_arena: vec![false],
            },
            Self::Balanced => SearchSpace {
                execution_providers: vec![vec![ExecutionProvider::Cpu]],
                precisions: vec![Precision::Fp32],
                intra_op_threads: cpu_threads(node.usable_cpus.min(4)),
                instances: cpu_threads(node.usable_cpus.min(2)),
                max_batch_sizes: vec![1, 8, 32],
                batch_delays_micros: vec![0, 100, 500],
                memory_arena: vec![true],
            },
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 1, 2, 4, … up to and including `cap`.
fn ladder(cap: u32) -> Vec<u32> {
    let mut steps: Vec<u32> = std::iter::successors(Some(1u32), |n| n.checked_mul(2))
        .take_while(|n| *n < cap)
        .collect();
    steps.push(cap);
    steps
}

fn one_instance() -> Vec<u32> {
    vec![1]
}

/// What the profile rules need to know about a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeCapacity {
    /// CPUs usable under the cgroup quota, rounded down, at least 1.
    pub usable_cpus: u32,
    /// Physical cores usable (never more than usable CPUs).
    pub physical_cores: u32,
    /// Whether the CPU runs int8 fast (AVX512-VNNI, AVX-VNNI or AMX).
    pub int8_acceleration: bool,
    /// Compute capability of the node's GPU, when it has one.
    pub gpu_compute_capability: Option<(u32, u32)>,
    /// Precision variants the model provides besides fp32.
    pub variants: Vec<Precision>,
}

/// Most values one axis of a search space lists; the thread ladder of a 1024-CPU node has 11.
pub const MAX_AXIS_VALUES: u32 = 16;

/// The engine configurations the agent's tuner may explore: the cross product of these lists.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpace {
    /// Execution-provider lists to try, each in priority order (at most 16 lists).
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub execution_providers: Vec<Vec<ExecutionProvider>>,
    /// Model precisions to try (each needs a file of that precision, except fp16 on TensorRT).
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub precisions: Vec<Precision>,
    /// Intra-op thread counts to try.
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub intra_op_threads: Vec<u32>,
    /// Model instance counts to try.
    #[serde(default = "one_instance")]
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub instances: Vec<u32>,
    /// Maximum batch sizes to try.
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub max_batch_sizes: Vec<u32>,
    /// Batcher queue delays to try, microseconds.
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub batch_delays_micros: Vec<u64>,
    /// CPU memory arena settings to try.
    #[schemars(length(max = MAX_AXIS_VALUES))]
    pub memory_arena: Vec<bool>,
}

impl SearchSpace {
    /// Number of configurations in the cross product.
    pub fn size(&self) -> usize {
        self.execution_providers.len()
            * self.precisions.len()
            * self.intra_op_threads.len()
            * self.instances.len()
            * self.max_batch_sizes.len()
            * self.batch_delays_micros.len()
            * self.memory_arena.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(usable_cpus: u32) -> NodeCapacity {
        NodeCapacity {
            usable_cpus,
            physical_cores: usable_cpus,
            ..NodeCapacity::default()
        }
    }

    #[test]
    fn thread_ladder_doubles_up_to_the_cap() {
        assert_eq!(ladder(1), vec![1]);
        assert_eq!(ladder(6), vec![1, 2, 4, 6]);
        assert_eq!(ladder(16), vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn balanced_uses_at_most_four_threads_and_fp32() {
        let space = Profile::Balanced.search_space(&NodeCapacity {
            variants: vec![Precision::Int8],
            ..node(32)
        });
        assert_eq!(space.intra_op_threads, vec![1, 2, 4]);
        assert_eq!(space.precisions, vec![Precision::Fp32]);
        assert_eq!(space.max_batch_sizes.last(), Some(&32));
    }

    #[test]
    fn high_performance_cpu_tries_int8_only_with_vnni_and_a_variant() {
        let with_variant = NodeCapacity {
            variants: vec![Precision::Int8],
            ..node(16)
        };
        let no_vnni = Profile::HighPerformanceCPU.search_space(&with_variant);
        assert_eq!(no_vnni.precisions, vec![Precision::Fp32]);
        let vnni = NodeCapacity {
            int8_acceleration: true,
            ..with_variant
        };
        let space = Profile::HighPerformanceCPU.search_space(&vnni);
        assert_eq!(space.precisions, vec![Precision::Fp32, Precision::Int8]);
        assert_eq!(space.intra_op_threads, vec![1, 2, 4, 8, 16]);
        assert_eq!(space.max_batch_sizes.last(), Some(&64));
    }

    #[test]
    fn memory_constrained_turns_the_arena_off_and_caps_threads_and_batches() {
        let space = Profile::MemoryConstrained.search_space(&node(8));
        assert_eq!(space.memory_arena, vec![false]);
        assert_eq!(space.intra_op_threads, vec![1, 2]);
        assert_eq!(space.max_batch_sizes.last(), Some(&8));
    }

    #[test]
    fn gpu_accelerated_adds_fp16_from_compute_capability_seven() {
        let volta = NodeCapacity {
            gpu_compute_capability: Some((7, 0)),
            ..node(8)
        };
        let space = Profile::GPUAccelerated.search_space(&volta);
        assert!(space.precisions.contains(&Precision::Fp16));
        assert_eq!(space.execution_providers[0][0], ExecutionProvider::TensorRT);
        assert_eq!(space.max_batch_sizes.last(), Some(&128));
        let pascal = NodeCapacity {
            gpu_compute_capability: Some((6, 1)),
            ..node(8)
        };
        assert!(
            !Profile::GPUAccelerated
                .search_space(&pascal)
                .precisions
                .contains(&Precision::Fp16)
        );
    }

    #[test]
    fn classes_round_trip_through_their_label_values() {
        for class in [
            HardwareClass::GpuAccelerated,
            HardwareClass::MemoryConstrained,
            HardwareClass::HighPerformanceCpu,
            HardwareClass::Balanced,
        ] {
            assert_eq!(HardwareClass::from_label(class.as_str()), Some(class));
        }
        assert_eq!(HardwareClass::from_label("fast"), None);
    }
}
