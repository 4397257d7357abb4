//! `policyserve-agent detect`: the machine, its class and its labels, as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use policyserve_crds::HardwareClass;
use serde::Serialize;

use crate::cli::{DetectArgs, OutputFormat};
use crate::hardware::{CpuFlag, Hardware};

/// Prints the detected (or described) hardware, its class and labels to stdout.
///
/// # Errors
/// When detection fails or the hardware file cannot be read.
pub fn run(args: &DetectArgs) -> anyhow::Result<()> {
    let hardware = crate::hardware::load(args.hardware.hardware_file.as_deref())?;
    let text = match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&json_report(&hardware))?,
        OutputFormat::Table => table(&hardware),
    };
    println!("{text}");
    Ok(())
}

/// `detect --output json`: the [`Hardware`] description (which a hardware file reads back)
/// with `hardwareClass` and `labels` added.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonReport<'a> {
    /// The machine.
    #[serde(flatten)]
    pub hardware: &'a Hardware,
    /// Its class.
    pub hardware_class: HardwareClass,
    /// Its labels, key to value.
    pub labels: BTreeMap<String, String>,
}

/// The JSON report of `hw`.
pub fn json_report(hw: &Hardware) -> JsonReport<'_> {
    JsonReport {
        hardware: hw,
        hardware_class: hw.class(),
        labels: crate::labels::labels(hw),
    }
}

/// A table for people: one fact per line, then the labels.
pub fn table(hw: &Hardware) -> String {
    let cpu = &hw.cpu;
    let mut rows: Vec<(&str, String)> = vec![
        ("source", hw.source.as_str().to_owned()),
        ("cpu vendor", cpu.vendor.clone()),
        ("cpu brand", cpu.brand.clone()),
        (
            "cpu family / model",
            format!("{} / {}", cpu.family, cpu.model),
        ),
        (
            "cpu flags",
            CpuFlag::ALL
                .into_iter()
                .filter(|f| hw.has(*f))
                .map(CpuFlag::name)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "cores / threads / sockets",
            format!(
                "{} / {} / {}",
                cpu.physical_cores, cpu.logical_cpus, cpu.sockets
            ),
        ),
        ("usable cpus", usable_cpus(hw)),
        (
            "usable physical cores",
            hw.usable_physical_cores().to_string(),
        ),
        ("memory total", format!("{} MiB", hw.memory.total_mib)),
        ("memory usable", usable_memory(hw)),
        ("numa nodes", hw.memory.numa_nodes.to_string()),
        ("gpus", hw.gpus.len().to_string()),
    ];
    for gpu in &hw.gpus {
        rows.push((
            "gpu",
            format!(
                "#{} {}, {} MiB, compute {}.{}, driver {} (CUDA {}.{}), MIG {}",
                gpu.index,
                gpu.product,
                gpu.memory_mib,
                gpu.compute_capability.major,
                gpu.compute_capability.minor,
                gpu.driver_version,
                gpu.cuda_driver_version.major,
                gpu.cuda_driver_version.minor,
                match (gpu.mig_capable, gpu.mig_enabled) {
                    (false, _) => "not supported",
                    (true, false) => "off",
                    (true, true) => "on",
                },
            ),
        ));
    }
    if let Some(error) = &hw.gpu_error {
        rows.push(("gpu error", error.clone()));
    }
    rows.push(("hardware class", hw.class().as_str().to_owned()));

    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<width$}  {value}");
    }
    let _ = writeln!(out, "\nlabels");
    let labels = crate::labels::labels(hw);
    let key_width = labels.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in labels {
        let _ = writeln!(out, "  {key:<key_width$}  {value}");
    }
    out.trim_end().to_owned()
}

fn usable_cpus(hw: &Hardware) -> String {
    let cpu = &hw.cpu;
    let mut why = Vec::new();
    if let Some(quota) = cpu.quota_cpus {
        why.push(format!("cgroup quota {quota}"));
    }
    if let Some(allowed) = cpu.allowed_cpus.filter(|&n| n < cpu.logical_cpus) {
        why.push(format!("cpu set of {allowed}"));
    }
    if why.is_empty() {
        cpu.usable_cpus.to_string()
    } else {
        format!("{} ({})", cpu.usable_cpus, why.join(", "))
    }
}

fn usable_memory(hw: &Hardware) -> String {
    match hw.memory.limit_mib {
        Some(limit) => format!("{} MiB (cgroup limit {limit} MiB)", hw.memory.usable_mib),
        None => format!("{} MiB (no cgroup limit)", hw.memory.usable_mib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::tests::gpu_node;

    #[test]
    fn the_json_report_has_the_documented_top_level_keys() {
        let report = serde_json::to_value(json_report(&gpu_node())).unwrap();
        for key in ["cpu", "memory", "gpus", "hardwareClass", "labels"] {
            assert!(report.get(key).is_some(), "missing {key}");
        }
        assert_eq!(report["hardwareClass"], "gpu-accelerated");
        assert_eq!(report["labels"]["hw.policyserve.io/gpu.count"], "1");
    }

    #[test]
    fn the_table_names_the_class_and_lists_the_labels() {
        let table = table(&gpu_node());
        assert!(table.contains("hardware class"), "{table}");
        assert!(table.contains("gpu-accelerated"), "{table}");
        assert!(table.contains("NVIDIA A100-SXM4-40GB"), "{table}");
        assert!(table.contains("hw.policyserve.io/gpu.product"), "{table}");
    }
}
