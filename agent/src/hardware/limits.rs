//! The share of the machine this process may use: cgroup v2 and v1 CPU quotas, the CPU set, the
//! cgroup memory limit, and host memory from `/proc/meminfo`.
//!
//! This matters because ONNX Runtime sizes its thread pool from the host's cores: in a pod
//! limited to 1.5 CPUs on a 64-core host it starts 64 threads and the quota throttles them.
//! Everything here reads files under a root directory so that captured fixtures test it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

use super::topology::{parse_cpu_list, read_trimmed};

/// The cgroup CPU limit of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuLimits {
    /// The tightest CPU quota of this process's cgroup and its ancestors, in CPUs
    /// (quota / period); `None` when unlimited.
    pub quota_cpus: Option<f64>,
}

impl CpuLimits {
    /// Reads the quota of this process's cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` and
    /// `cpu.cfs_period_us`) under `root`, and of every ancestor up to the mount, since a
    /// parent's quota binds its children too.
    pub fn read(root: &Path) -> Self {
        let quota_cpus = Cgroups::read(root).and_then(|cgroups| {
            cgroups
                .controller_dirs("cpu")
                .into_iter()
                .filter_map(|(version, dir)| match version {
                    CgroupVersion::V2 => {
                        read_trimmed(&dir.join("cpu.max")).and_then(|v| parse_cpu_max(&v))
                    }
                    CgroupVersion::V1 => parse_cfs(
                        &read_trimmed(&dir.join("cpu.cfs_quota_us"))?,
                        &read_trimmed(&dir.join("cpu.cfs_period_us"))?,
                    ),
                })
                .reduce(f64::min)
        });
        Self { quota_cpus }
    }
}

/// Host memory and the cgroup memory limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Host memory in MiB.
    pub total_mib: u64,
    /// The tightest memory limit of this process's cgroup and its ancestors, in bytes.
    pub limit_bytes: Option<u64>,
}

impl MemoryInfo {
    /// Reads `/proc/meminfo` and the cgroup memory limit (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`) under `root`.
    ///
    /// # Errors
    /// When `/proc/meminfo` cannot be read or has no `MemTotal`.
    pub fn read(root: &Path) -> Result<Self> {
        let path = root.join("proc/meminfo");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let total_kib = parse_mem_total_kib(&text).ok_or_else(|| Error::Parse {
            what: path.display().to_string(),
            reason: "no MemTotal line".into(),
        })?;
        let limit_bytes = Cgroups::read(root).and_then(|cgroups| {
            cgroups
                .controller_dirs("memory")
                .into_iter()
                .filter_map(|(version, dir)| {
                    let file = match version {
                        CgroupVersion::V2 => "memory.max",
                        CgroupVersion::V1 => "memory.limit_in_bytes",
                    };
                    parse_memory_limit(&read_trimmed(&dir.join(file))?)
                })
                .min()
        });
        Ok(Self {
            total_mib: total_kib / 1024,
            limit_bytes,
        })
    }

    /// The limit in MiB when it is below host memory; v1 writes "unlimited" as a huge number.
    pub fn effective_limit_mib(&self) -> Option<u64> {
        self.limit_bytes
            .map(|bytes| bytes / (1024 * 1024))
            .filter(|&mib| mib < self.total_mib)
    }

    /// Memory this process may use, in MiB.
    pub fn usable_mib(&self) -> u64 {
        self.effective_limit_mib().unwrap_or(self.total_mib)
    }
}

/// The logical CPUs this process may run on (its affinity, which the cpuset cgroup sets), from
/// `Cpus_allowed_list` in `/proc/self/status` under `root`.
pub fn allowed_cpus(root: &Path) -> Option<BTreeSet<u32>> {
    let status = std::fs::read_to_string(root.join("proc/self/status")).ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list).filter(|cpus| !cpus.is_empty())
}

/// `cpu.max` (v2): `"<quota> <period>"` in microseconds, quota `max` when unlimited.
pub(crate) fn parse_cpu_max(value: &str) -> Option<f64> {
    let mut parts = value.split_whitespace();
    let quota = parts.next()?;
    let period = parts.next().unwrap_or("100000");
    if quota == "max" {
        return None;
    }
    cpus_from(quota.parse().ok()?, period.parse().ok()?)
}

/// `cpu.cfs_quota_us` and `cpu.cfs_period_us` (v1): quota `-1` when unlimited.
pub(crate) fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let quota = u64::try_from(quota).ok()?;
    cpus_from(quota, period.trim().parse().ok()?)
}

fn cpus_from(quota_us: u64, period_us: u64) -> Option<f64> {
    // Microsecond counts are far below 2^52, so the conversions are exact.
    (quota_us > 0 && period_us > 0).then(|| quota_us as f64 / period_us as f64)
}

/// `memory.max` (v2, `max` when unlimited) or `memory.limit_in_bytes` (v1).
pub(crate) fn parse_memory_limit(value: &str) -> Option<u64> {
    match value.trim() {
        "max" => None,
        bytes => bytes.parse().ok(),
    }
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub(crate) fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Which cgroup hierarchy a controller lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CgroupVersion {
    V1,
    V2,
}

/// A mounted cgroup hierarchy, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgroupMount {
    version: CgroupVersion,
    /// v1 controllers mounted here (`cpu`, `cpuacct`, `memory`, ...); empty for v2.
    controllers: Vec<String>,
    /// The cgroup that is the root of this mount (not `/` inside a container without a cgroup
    /// namespace).
    root: String,
    /// Where it is mounted.
    mount_point: String,
}

/// This process's cgroups: the mounts and its membership lines in `/proc/self/cgroup`.
#[derive(Debug)]
struct Cgroups {
    /// The directory everything is read under (`/`, or a fixture).
    fs_root: PathBuf,
    mounts: Vec<CgroupMount>,
    /// `(controllers, path)` per line of /proc/self/cgroup; v2's line has no controllers.
    membership: Vec<(Vec<String>, String)>,
}

impl Cgroups {
    fn read(root: &Path) -> Option<Self> {
        let mountinfo = std::fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
        let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
        Some(Self {
            fs_root: root.to_owned(),
            mounts: mountinfo.lines().filter_map(parse_mount).collect(),
            membership: cgroup.lines().filter_map(parse_membership).collect(),
        })
    }

    /// The directories whose limits apply to `controller`: this process's cgroup and its
    /// ancestors up to the mount point. v1 wins where it has the controller: on hybrid hosts
    /// the v2 hierarchy is mounted but holds no controllers.
    fn controller_dirs(&self, controller: &str) -> Vec<(CgroupVersion, PathBuf)> {
        let v1 = self.mounts.iter().find_map(|mount| {
            let has = mount.version == CgroupVersion::V1
                && mount.controllers.iter().any(|c| c == controller);
            let path = self
                .membership
                .iter()
                .find(|(controllers, _)| controllers.iter().any(|c| c == controller))?;
            has.then_some((mount, &path.1))
        });
        let chosen = v1.or_else(|| {
            let mount = self
                .mounts
                .iter()
                .find(|m| m.version == CgroupVersion::V2)?;
            let path = self
                .membership
                .iter()
                .find(|(controllers, _)| controllers.is_empty())?;
            Some((mount, &path.1))
        });
        let Some((mount, path)) = chosen else {
            return Vec::new();
        };
        let mount_dir = self.fs_root.join(mount.mount_point.trim_start_matches('/'));
        // The process's path is relative to the hierarchy's root; the mount shows the part
        // of the hierarchy below `mount.root`.
        let relative = path
            .strip_prefix(mount.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        let mut dir = mount_dir.join(relative);
        if !dir.is_dir() {
            // A path from outside our view (no cgroup namespace, host path): the mount itself
            // is then the closest cgroup we can see.
            dir.clone_from(&mount_dir);
        }
        let mut dirs = vec![(mount.version, dir.clone())];
        while dir != mount_dir && dir.pop() && dir.starts_with(&mount_dir) {
            dirs.push((mount.version, dir.clone()));
        }
        dirs
    }
}

/// A cgroup mount from one line of `/proc/self/mountinfo`:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
fn parse_mount(line: &str) -> Option<CgroupMount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split_whitespace().collect();
    let mut after = after.split_whitespace();
    let fstype = after.next()?;
    let _source = after.next();
    let super_options = after.next().unwrap_or("");
    let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
    let (version, controllers) = match fstype {
        "cgroup2" => (CgroupVersion::V2, Vec::new()),
        "cgroup" => (
            CgroupVersion::V1,
            super_options.split(',').map(str::to_owned).collect(),
        ),
        _ => return None,
    };
    Some(CgroupMount {
        version,
        controllers,
        root: unescape_octal(root),
        mount_point: unescape_octal(mount_point),
    })
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
fn parse_membership(line: &str) -> Option<(Vec<String>, String)> {
    let mut parts = line.splitn(3, ':');
    let _id = parts.next()?;
    let controllers = parts.next()?;
    let path = parts.next()?;
    let controllers = controllers
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    Some((controllers, path.to_owned()))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn cpu_max_of_150000_over_100000_is_one_and_a_half_cpus() {
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn cfs_quota_of_minus_one_is_unlimited() {
        assert_eq!(parse_cfs("150000", "100000"), Some(1.5));
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_cfs("50000", "0"), None);
    }

    #[test]
    fn memory_max_is_bytes_or_max() {
        assert_eq!(parse_memory_limit("536870912"), Some(512 * 1024 * 1024));
        assert_eq!(parse_memory_limit("max"), None);
    }

    #[test]
    fn v1_unlimited_memory_is_no_limit() {
        let info = MemoryInfo {
            total_mib: 24_105,
            limit_bytes: Some(9_223_372_036_854_771_712),
        };
        assert_eq!(info.effective_limit_mib(), None);
        assert_eq!(info.usable_mib(), 24_105);
    }

    #[test]
    fn mountinfo_lines_give_cgroup_mounts() {
        let v1 = parse_mount(
            "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct",
        )
        .unwrap();
        assert_eq!(v1.version, CgroupVersion::V1);
        assert_eq!(v1.controllers, ["rw", "cpu", "cpuacct"]);
        assert_eq!(v1.root, "/docker/abc");
        assert_eq!(v1.mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        let v2 =
            parse_mount("41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw").unwrap();
        assert_eq!(v2.version, CgroupVersion::V2);
        assert!(parse_mount("22 1 8:1 / / rw - ext4 /dev/sda1 rw").is_none());
        assert_eq!(unescape_octal(r"/mnt/with\040space"), "/mnt/with space");
    }

    #[test]
    fn cgroup_v2_quota_and_memory_max_apply_from_the_pod_cgroup() {
        let root = fixture("cgroup-v2-quota");
        assert_eq!(CpuLimits::read(&root).quota_cpus, Some(1.5));
        let memory = MemoryInfo::read(&root).unwrap();
        assert_eq!(memory.total_mib, 16_000);
        assert_eq!(memory.effective_limit_mib(), Some(512));
        assert_eq!(memory.usable_mib(), 512);
    }

    #[test]
    fn cgroup_v1_cfs_quota_and_memory_limit_apply_inside_a_container() {
        let root = fixture("cgroup-v1-quota");
        assert_eq!(CpuLimits::read(&root).quota_cpus, Some(1.5));
        let memory = MemoryInfo::read(&root).unwrap();
        assert_eq!(memory.usable_mib(), 512);
    }

    #[test]
    fn a_parents_tighter_limit_binds_the_child() {
        let root = fixture("cgroup-v2-parent-limit");
        assert_eq!(CpuLimits::read(&root).quota_cpus, Some(2.0));
        assert_eq!(MemoryInfo::read(&root).unwrap().usable_mib(), 1024);
    }

    #[test]
    fn a_hybrid_host_without_limits_reports_none() {
        let root = fixture("cgroup-v1-hybrid-unlimited");
        assert_eq!(CpuLimits::read(&root).quota_cpus, None);
        let memory = MemoryInfo::read(&root).unwrap();
        assert_eq!(memory.effective_limit_mib(), None);
        assert_eq!(memory.usable_mib(), memory.total_mib);
        assert_eq!(allowed_cpus(&root).map(|c| c.len()), Some(2));
    }

    #[test]
    fn missing_cgroup_files_mean_no_limit() {
        let root = fixture("two-socket");
        assert_eq!(CpuLimits::read(&root).quota_cpus, None);
        assert_eq!(MemoryInfo::read(&root).unwrap().effective_limit_mib(), None);
    }
}
