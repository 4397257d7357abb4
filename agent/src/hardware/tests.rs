//! Hardware descriptions as specifications: builders, the class rules, hardware files and
//! detection over captured /proc and /sys trees.

use std::path::{Path, PathBuf};

use policyserve_crds::HardwareClass;

use super::*;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A 2-CPU, 4 GiB node limited to 1.5 CPUs and 512 MiB, with AVX2.
pub(crate) fn small_node() -> Hardware {
    Hardware {
        source: Source::Simulated,
        cpu: Cpu {
            vendor: "Intel".into(),
            brand: "Intel(R) Xeon(R) CPU @ 2.20GHz".into(),
            family: 6,
            model: 79,
            flags: [
                CpuFlag::Sse42,
                CpuFlag::Avx,
                CpuFlag::Avx2,
                CpuFlag::Fma3,
                CpuFlag::F16c,
            ]
            .into(),
            physical_cores: 1,
            logical_cpus: 2,
            sockets: 1,
            usable_cpus: 1.5,
            quota_cpus: Some(1.5),
            allowed_cpus: None,
            allowed_physical_cores: None,
        },
        memory: Memory {
            total_mib: 4 * 1024,
            usable_mib: 512,
            limit_mib: Some(512),
            numa_nodes: 1,
        },
        gpus: Vec::new(),
        gpu_error: None,
    }
}

/// A 32-CPU, 2-socket, 128 GiB node with one A100 40GB.
pub(crate) fn gpu_node() -> Hardware {
    let mut hw = small_node();
    hw.cpu.physical_cores = 16;
    hw.cpu.logical_cpus = 32;
    hw.cpu.sockets = 2;
    hw.cpu.usable_cpus = 32.0;
    hw.cpu.quota_cpus = None;
    hw.memory = Memory {
        total_mib: 128 * 1024,
        usable_mib: 128 * 1024,
        limit_mib: None,
        numa_nodes: 2,
    };
    hw.gpus = vec![Gpu {
        index: 0,
        product: "NVIDIA A100-SXM4-40GB".into(),
        uuid: None,
        memory_mib: 40_960,
        compute_capability: Version { major: 8, minor: 0 },
        driver_version: "535.104.05".into(),
        cuda_driver_version: Version {
            major: 12,
            minor: 2,
        },
        mig_capable: true,
        mig_enabled: false,
    }];
    hw
}

/// A 64-CPU, 256 GiB node without GPU.
fn large_cpu_node() -> Hardware {
    let mut hw = gpu_node();
    hw.gpus.clear();
    hw.cpu.usable_cpus = 64.0;
    hw.cpu.logical_cpus = 64;
    hw.cpu.physical_cores = 32;
    hw.memory.total_mib = 256 * 1024;
    hw.memory.usable_mib = 256 * 1024;
    hw
}

#[test]
fn a_gpu_with_8_gib_makes_a_node_gpu_accelerated_even_when_memory_is_tight() {
    let mut hw = gpu_node();
    hw.gpus[0].memory_mib = 8 * 1024;
    hw.memory.usable_mib = 2048;
    assert_eq!(hw.class(), HardwareClass::GpuAccelerated);
}

#[test]
fn a_small_gpu_does_not_make_a_node_gpu_accelerated() {
    let mut hw = gpu_node();
    hw.gpus[0].memory_mib = 4 * 1024;
    assert_eq!(hw.class(), HardwareClass::HighPerformanceCpu);
}

#[test]
fn a_node_with_at_most_8_gib_usable_is_memory_constrained() {
    let mut hw = large_cpu_node();
    hw.memory.usable_mib = 8 * 1024;
    assert_eq!(hw.class(), HardwareClass::MemoryConstrained);
    hw.memory.usable_mib = 8 * 1024 + 1;
    assert_eq!(hw.class(), HardwareClass::HighPerformanceCpu);
}

#[test]
fn sixteen_usable_cpus_need_avx2_to_be_high_performance() {
    let mut hw = large_cpu_node();
    hw.cpu.usable_cpus = 16.0;
    assert_eq!(hw.class(), HardwareClass::HighPerformanceCpu);
    hw.cpu.flags.remove(&CpuFlag::Avx2);
    assert_eq!(hw.class(), HardwareClass::Balanced);
    hw.cpu.flags.insert(CpuFlag::Avx2);
    // A quota, not the host's size, decides.
    hw.cpu.usable_cpus = 15.5;
    assert_eq!(hw.class(), HardwareClass::Balanced);
}

#[test]
fn usable_physical_cores_follow_the_quota_and_the_cpu_set() {
    let mut hw = large_cpu_node();
    assert_eq!(hw.usable_physical_cores(), 32, "SMT siblings do not count");
    hw.cpu.usable_cpus = 8.0;
    assert_eq!(hw.usable_physical_cores(), 8);
    hw.cpu.allowed_physical_cores = Some(4);
    assert_eq!(hw.usable_physical_cores(), 4);
    hw.cpu.usable_cpus = 0.5;
    assert_eq!(hw.usable_physical_cores(), 1);
}

#[test]
fn int8_acceleration_means_vnni_or_amx() {
    let mut hw = small_node();
    assert!(!hw.int8_acceleration());
    for flag in [CpuFlag::Avx512Vnni, CpuFlag::AvxVnni, CpuFlag::AmxInt8] {
        hw.cpu.flags.insert(flag);
        assert!(hw.int8_acceleration(), "{flag}");
        hw.cpu.flags.remove(&flag);
    }
    hw.cpu.flags.insert(CpuFlag::Avx512F);
    assert!(!hw.int8_acceleration());
}

#[test]
fn the_first_gpus_compute_capability_is_reported() {
    assert_eq!(gpu_node().gpu_compute_capability(), Some((8, 0)));
    assert_eq!(small_node().gpu_compute_capability(), None);
}

#[test]
fn detect_json_output_round_trips_through_a_hardware_file() {
    let mut detected = gpu_node();
    detected.source = Source::Detected;
    let output = crate::detect::json_report(&detected);
    let text = serde_json::to_string_pretty(&output).unwrap();
    let read = Hardware::from_json(&text).unwrap();
    assert_eq!(read.source, Source::Simulated);
    assert_eq!(
        Hardware {
            source: Source::Detected,
            ..read
        },
        detected
    );
}

#[test]
fn a_hardware_file_cannot_claim_a_class() {
    let mut output = serde_json::to_value(crate::detect::json_report(&small_node())).unwrap();
    output["hardwareClass"] = "gpu-accelerated".into();
    let read = Hardware::from_json(&output.to_string()).unwrap();
    assert_eq!(read.class(), HardwareClass::MemoryConstrained);
}

#[test]
fn hardware_files_with_typos_or_impossible_machines_are_refused() {
    let mut typo = serde_json::to_value(small_node()).unwrap();
    typo["cpu"]["usableCpu"] = 2.into();
    let error = Hardware::from_json(&typo.to_string()).unwrap_err();
    assert!(error.contains("usableCpu"), "{error}");

    let mut zero = serde_json::to_value(small_node()).unwrap();
    zero["cpu"]["usableCpus"] = 0.into();
    let error = Hardware::from_json(&zero.to_string()).unwrap_err();
    assert!(error.contains("usableCpus"), "{error}");

    let mut flag = serde_json::to_value(small_node()).unwrap();
    flag["cpu"]["flags"] = serde_json::json!(["AVX3"]);
    assert!(Hardware::from_json(&flag.to_string()).is_err());
}

#[test]
fn the_example_machines_load_with_their_intended_classes() {
    let examples = workspace_root().join("examples/hardware");
    let expected = [
        ("gpu-node.json", HardwareClass::GpuAccelerated),
        ("large-cpu-node.json", HardwareClass::HighPerformanceCpu),
        ("small-node.json", HardwareClass::MemoryConstrained),
        ("balanced-node.json", HardwareClass::Balanced),
    ];
    for (file, class) in expected {
        let path = examples.join(file);
        let hw = Hardware::from_file(&path).unwrap();
        assert_eq!(hw.class(), class, "{file}");
        // Each file is exactly what `detect --output json` prints for it, labels included.
        let text = std::fs::read_to_string(&path).unwrap();
        let on_disk: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = serde_json::to_value(crate::detect::json_report(&hw)).unwrap();
        assert_eq!(on_disk, expected, "{file} is stale");
    }
    let large = Hardware::from_file(&examples.join("large-cpu-node.json")).unwrap();
    assert!(large.int8_acceleration());
}

#[test]
fn a_missing_hardware_file_names_the_file() {
    let error = Hardware::from_file(Path::new("/nonexistent/machine.json")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/machine.json"),
        "{error}"
    );
}

#[test]
fn a_two_socket_fixture_detects_cores_sockets_and_numa() {
    let hw = Hardware::detect_at(&fixture("two-socket")).unwrap();
    assert_eq!(hw.cpu.physical_cores, 8);
    assert_eq!(hw.cpu.logical_cpus, 16);
    assert_eq!(hw.cpu.sockets, 2);
    assert_eq!(hw.memory.numa_nodes, 2);
    assert_eq!(hw.cpu.usable_cpus, 16.0);
    assert_eq!(hw.cpu.allowed_physical_cores, Some(8));
    assert_eq!(hw.memory.total_mib, 257_678);
    assert_eq!(hw.memory.usable_mib, hw.memory.total_mib);
    let labels = crate::labels::labels(&hw);
    assert_eq!(labels["hw.policyserve.io/memory-numa"], "true");
    assert_eq!(labels["hw.policyserve.io/cpu-sockets"], "2");
    assert_eq!(labels["hw.policyserve.io/memory-total-gib"], "251");
}

#[test]
fn a_pod_with_a_quota_of_one_and_a_half_cpus_and_512_mib_is_memory_constrained() {
    let hw = Hardware::detect_at(&fixture("cgroup-v2-quota")).unwrap();
    assert_eq!(hw.usable_cpus(), 1.5);
    assert_eq!(hw.cpu.quota_cpus, Some(1.5));
    assert_eq!(hw.usable_physical_cores(), 1);
    assert_eq!(hw.memory.usable_mib, 512);
    assert_eq!(hw.memory.limit_mib, Some(512));
    assert_eq!(hw.class(), HardwareClass::MemoryConstrained);
    let labels = crate::labels::labels(&hw);
    assert_eq!(labels["hw.policyserve.io/cpu-usable"], "1.5");
    assert_eq!(labels["hw.policyserve.io/memory-usable-mib"], "512");
    assert_eq!(labels["hw.policyserve.io/source"], "detected");
}

#[test]
fn a_cpu_set_smaller_than_the_quota_bounds_usable_cpus() {
    let hw = Hardware::detect_at(&fixture("cgroup-v1-quota")).unwrap();
    // Quota 1.5 CPUs, CPU set of 1 CPU.
    assert_eq!(hw.cpu.allowed_cpus, Some(1));
    assert_eq!(hw.usable_cpus(), 1.0);
    assert_eq!(hw.memory.usable_mib, 512);
}
