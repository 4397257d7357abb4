//! Cores, threads, sockets and NUMA nodes from `/sys/devices/system`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How the host's logical CPUs group into cores, sockets and NUMA nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Online logical CPUs.
    pub logical_cpus: u32,
    /// Physical cores: distinct sets of hardware-thread siblings.
    pub physical_cores: u32,
    /// Distinct physical packages.
    pub sockets: u32,
    /// NUMA nodes (1 where the kernel shows none).
    pub numa_nodes: u32,
    /// Each online logical CPU's core, keyed by CPU number; the core is named by its sibling
    /// list, unique across the machine. Empty when /sys does not describe cores.
    core_of: BTreeMap<u32, String>,
}

impl Topology {
    /// Reads `/sys/devices/system/{cpu,node}` under `root`. Missing files cost precision, not
    /// an error: without topology files every logical CPU is its own core on one socket.
    pub fn read(root: &Path) -> Self {
        let cpu_dir = root.join("sys/devices/system/cpu");
        let online = read_trimmed(&cpu_dir.join("online"))
            .and_then(|list| parse_cpu_list(&list))
            .filter(|cpus| !cpus.is_empty())
            .unwrap_or_else(|| {
                // No /sys (or an unusual one): trust the scheduler's count.
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..u32::try_from(n).unwrap_or(1)).collect()
            });

        let mut core_of = BTreeMap::new();
        let mut packages = BTreeSet::new();
        for &cpu in &online {
            let topology = cpu_dir.join(format!("cpu{cpu}/topology"));
            if let Some(siblings) = read_trimmed(&topology.join("thread_siblings_list")) {
                // A package id keeps two sockets' identical sibling lists apart, should a
                // kernel ever number them per package.
                let package = read_trimmed(&topology.join("physical_package_id"));
                core_of.insert(
                    cpu,
                    format!("{}/{siblings}", package.as_deref().unwrap_or("0")),
                );
                if let Some(package) = package {
                    packages.insert(package);
                }
            }
        }
        // Partial topology (some CPUs without files) would undercount cores: drop it.
        if core_of.len() != online.len() {
            core_of.clear();
        }

        let logical_cpus = count(online.len());
        let physical_cores = if core_of.is_empty() {
            logical_cpus
        } else {
            count(core_of.values().collect::<BTreeSet<_>>().len())
        };
        Self {
            logical_cpus,
            physical_cores,
            sockets: count(packages.len()).max(1),
            numa_nodes: numa_nodes(&root.join("sys/devices/system/node")).max(1),
            core_of,
        }
    }

    /// The physical cores that `cpus` touch, when /sys described the cores.
    pub fn physical_cores_among(&self, cpus: &BTreeSet<u32>) -> Option<u32> {
        if self.core_of.is_empty() {
            return None;
        }
        let cores: BTreeSet<&String> = cpus.iter().filter_map(|c| self.core_of.get(c)).collect();
        Some(count(cores.len()).max(1))
    }
}

/// NUMA nodes: the `nodeN` directories the kernel shows.
fn numa_nodes(node_dir: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(node_dir) else {
        return 0;
    };
    let nodes = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix("node"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    count(nodes)
}

/// Parses the kernel's CPU list format: `0-3,8,10-11`. `None` when malformed.
pub(crate) fn parse_cpu_list(list: &str) -> Option<BTreeSet<u32>> {
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => {
                cpus.insert(part.parse().ok()?);
            }
        }
    }
    Some(cpus)
}

/// A file's content without surrounding whitespace; `None` when it cannot be read.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// A count as `u32`; machines have far fewer than 2³² CPUs.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn cpu_lists_expand_ranges_and_singles() {
        let cpus = parse_cpu_list("0-3,8,10-11\n").unwrap();
        assert_eq!(
            cpus.into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("").unwrap().len(), 0);
        assert!(parse_cpu_list("3-1").is_none());
        assert!(parse_cpu_list("a").is_none());
    }

    #[test]
    fn a_two_socket_machine_has_two_sockets_numa_nodes_and_smt_siblings() {
        let topology = Topology::read(&fixture("two-socket"));
        assert_eq!(topology.logical_cpus, 16);
        assert_eq!(topology.physical_cores, 8);
        assert_eq!(topology.sockets, 2);
        assert_eq!(topology.numa_nodes, 2);
    }

    #[test]
    fn a_cpu_set_of_sibling_threads_spans_fewer_physical_cores() {
        let topology = Topology::read(&fixture("two-socket"));
        // CPUs 0 and 8 are the two threads of core 0 on socket 0.
        let siblings = parse_cpu_list("0,8").unwrap();
        assert_eq!(topology.physical_cores_among(&siblings), Some(1));
        let one_socket = parse_cpu_list("0-3,8-11").unwrap();
        assert_eq!(topology.physical_cores_among(&one_socket), Some(4));
    }

    #[test]
    fn a_machine_without_topology_files_counts_each_cpu_as_a_core() {
        let topology = Topology::read(&fixture("cgroup-v2-quota"));
        assert_eq!(topology.logical_cpus, 4);
        assert_eq!(topology.physical_cores, 4);
        assert_eq!(topology.sockets, 1);
        assert_eq!(topology.numa_nodes, 1);
        assert_eq!(
            topology.physical_cores_among(&parse_cpu_list("0-1").unwrap()),
            None
        );
    }
}
