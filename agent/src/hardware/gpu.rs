//! NVIDIA GPUs through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time, so the
//! agent builds and runs without a driver).

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{Gpu, Version};

/// What NVML said about this machine's GPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuDetection {
    /// GPUs NVML described.
    pub gpus: Vec<Gpu>,
    /// Why the driver, having loaded, failed (then `gpus` holds what it described before).
    pub error: Option<String>,
}

impl GpuDetection {
    /// Asks NVML. No driver library, or a library without a loaded kernel driver, means no GPU;
    /// any later failure is reported in `error`.
    pub fn detect() -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) if means_no_driver(&e) => {
                tracing::debug!(error = %e, "no NVIDIA driver: no GPUs");
                return Self::default();
            }
            Err(e) => return Self::failed(Vec::new(), "failed to initialise NVML", &e),
        };
        let (driver_version, cuda_driver_version) =
            match (nvml.sys_driver_version(), nvml.sys_cuda_driver_version()) {
                (Ok(driver), Ok(cuda)) => (driver, cuda_version(cuda)),
                (Err(e), _) | (_, Err(e)) => {
                    return Self::failed(Vec::new(), "failed to read the driver version", &e);
                }
            };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => return Self::failed(Vec::new(), "failed to count GPUs", &e),
        };
        let mut gpus = Vec::new();
        for index in 0..count {
            match describe(&nvml, index, &driver_version, cuda_driver_version) {
                Ok(gpu) => gpus.push(gpu),
                Err(e) => {
                    return Self::failed(gpus, &format!("failed to describe GPU {index}"), &e);
                }
            }
        }
        Self { gpus, error: None }
    }

    fn failed(gpus: Vec<Gpu>, what: &str, error: &NvmlError) -> Self {
        let error = format!("{what}: {error}");
        tracing::warn!(%error, "NVIDIA driver loaded but failed");
        Self {
            gpus,
            error: Some(error),
        }
    }
}

/// GPU memory this process holds, summed over every GPU, MiB: what NVML lists for this process
/// among each device's running compute processes. `None` ("unmeasured") without a driver, when
/// NVML cannot say, or when this process cannot be told apart in NVML's list; `Some(0.0)` when
/// a driver is there and this process holds no GPU memory.
///
/// NVML names processes by PID, and which PID depends on the driver: older ones report PIDs of
/// the host's (initial) PID namespace, newer ones translate them into the caller's namespace
/// and leave out processes it cannot see. In the initial namespace both agree with our own PID.
/// In a pod's PID namespace our PID is only comparable when the list is in our namespace too,
/// which shows as every listed PID existing in our `/proc`; a host PID list almost always names
/// a PID we cannot see (our own host PID, for a start), and then attribution is impossible from
/// inside the pod: the answer is `None`, never a guessed 0.
///
/// NVML reports memory in use now, not a peak; ONNX Runtime's CUDA arena keeps what it has
/// grown to, so after a measurement window the two are close.
pub fn process_memory_mib() -> Option<f64> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    let nvml = NVML.get_or_init(|| Nvml::init().ok()).as_ref()?;
    let mut listed = Vec::new();
    for index in 0..nvml.device_count().ok()? {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        // A GPU that cannot list processes (NotSupported on some boards) holds none we know of.
        let Ok(processes) = device.running_compute_processes() else {
            continue;
        };
        listed.extend(processes.into_iter().map(|p| {
            let used = match p.used_gpu_memory {
                UsedGpuMemory::Used(used) => Some(used),
                UsedGpuMemory::Unavailable => None,
            };
            (p.pid, used)
        }));
    }
    let own_namespace = in_initial_pid_namespace()
        || listed
            .iter()
            .all(|(pid, _)| std::path::Path::new(&format!("/proc/{pid}")).exists());
    attributed_mib(&listed, std::process::id(), own_namespace)
}

/// The initial PID namespace's inode number (`PROC_PID_INIT_INO` in the kernel), fixed since
/// Linux 3.8: `/proc/self/ns/pid` reads `pid:[4026531836]` outside any container.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Whether this process runs in the host's PID namespace, where every driver's PIDs are ours.
fn in_initial_pid_namespace() -> bool {
    std::fs::read_link("/proc/self/ns/pid")
        .is_ok_and(|link| link.to_string_lossy() == INITIAL_PID_NAMESPACE)
}

/// Sums the memory `listed` (PID, bytes if NVML knows them) gives for `pid`, in MiB. `None` when
/// the list's PIDs are not in our namespace (`comparable` false) or our entry's memory is
/// unavailable; `Some(0.0)` when the list is comparable and we are not in it.
fn attributed_mib(listed: &[(u32, Option<u64>)], pid: u32, comparable: bool) -> Option<f64> {
    if !comparable {
        return None;
    }
    let mut bytes = 0u64;
    for (_, used) in listed.iter().filter(|(p, _)| *p == pid) {
        bytes += (*used)?;
    }
    Some(bytes as f64 / (1024.0 * 1024.0))
}

/// Errors that say "there is no NVIDIA driver here", as opposed to "the driver is broken".
fn means_no_driver(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::DriverNotLoaded
    )
}

fn describe(
    nvml: &Nvml,
    index: u32,
    driver_version: &str,
    cuda_driver_version: Version,
) -> Result<Gpu, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let capability = device.cuda_compute_capability()?;
    // MIG is a data-centre feature; elsewhere NVML answers NotSupported, which means "no".
    let mig = match device.mig_mode() {
        Ok(mode) => Some(mode),
        Err(NvmlError::NotSupported) => None,
        Err(e) => return Err(e),
    };
    Ok(Gpu {
        index,
        product: device.name()?,
        uuid: device.uuid().ok(),
        memory_mib: device.memory_info()?.total / (1024 * 1024),
        compute_capability: Version {
            major: u32::try_from(capability.major).unwrap_or(0),
            minor: u32::try_from(capability.minor).unwrap_or(0),
        },
        driver_version: driver_version.to_owned(),
        cuda_driver_version,
        mig_capable: mig.is_some(),
        // NVML_DEVICE_MIG_ENABLE is 1.
        mig_enabled: mig.is_some_and(|mode| mode.current == 1),
    })
}

/// NVML's CUDA version integer (`12040`) as `12.4`.
fn cuda_version(version: i32) -> Version {
    Version {
        major: u32::try_from(nvml_wrapper::cuda_driver_version_major(version)).unwrap_or(0),
        minor: u32::try_from(nvml_wrapper::cuda_driver_version_minor(version)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_split_into_major_and_minor() {
        assert_eq!(
            cuda_version(12040),
            Version {
                major: 12,
                minor: 4
            }
        );
        assert_eq!(
            cuda_version(11080),
            Version {
                major: 11,
                minor: 8
            }
        );
    }

    #[test]
    fn a_missing_driver_is_no_gpu_and_a_broken_one_is_an_error() {
        assert!(means_no_driver(&NvmlError::LibraryNotFound));
        assert!(means_no_driver(&NvmlError::DriverNotLoaded));
        assert!(!means_no_driver(&NvmlError::GpuLost));
        assert!(!means_no_driver(&NvmlError::Unknown));
    }

    /// On a machine without an NVIDIA driver, detection finds no GPU and no error.
    #[test]
    fn detection_without_a_driver_is_quiet() {
        let has_driver = ["/proc/driver/nvidia/version", "/dev/nvidiactl"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        if has_driver {
            return;
        }
        assert_eq!(GpuDetection::detect(), GpuDetection::default());
    }

    #[test]
    fn our_entries_are_summed_when_the_pids_are_in_our_namespace() {
        let mib = 1024 * 1024;
        let listed = [
            (7, Some(100 * mib)),
            (8, Some(5 * mib)),
            (7, Some(28 * mib)),
        ];
        assert_eq!(attributed_mib(&listed, 7, true), Some(128.0));
        // Listed by a driver that sees our namespace, but not holding GPU memory: a real 0.
        assert_eq!(attributed_mib(&listed, 9, true), Some(0.0));
        assert_eq!(attributed_mib(&[], 9, true), Some(0.0));
    }

    #[test]
    fn host_pids_seen_from_a_pod_are_unmeasured_not_zero() {
        // A driver that lists host PIDs to a pod: nothing says which entry is ours, and a
        // host process may even share our in-pod PID number.
        let listed = [
            (1, Some(64 * 1024 * 1024)),
            (48_211, Some(512 * 1024 * 1024)),
        ];
        assert_eq!(attributed_mib(&listed, 1, false), None);
        assert_eq!(attributed_mib(&[], 1, false), None);
    }

    #[test]
    fn memory_nvml_cannot_read_for_us_is_unmeasured() {
        let listed = [(7, Some(1024 * 1024)), (7, None)];
        assert_eq!(attributed_mib(&listed, 7, true), None);
        // Someone else's unreadable entry does not make ours unknown.
        assert_eq!(
            attributed_mib(&[(7, Some(1024 * 1024)), (8, None)], 7, true),
            Some(1.0)
        );
    }

    #[test]
    fn the_initial_pid_namespace_is_recognised_by_its_fixed_inode() {
        let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(
            in_initial_pid_namespace(),
            link.to_string_lossy() == INITIAL_PID_NAMESPACE
        );
    }

    /// Without a driver there is no GPU memory to add to a measurement, and asking is no error.
    #[test]
    fn process_gpu_memory_without_a_driver_is_none() {
        let has_driver = ["/proc/driver/nvidia/version", "/dev/nvidiactl"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        if has_driver {
            eprintln!("skipped: an NVIDIA driver is present; this test is about its absence");
            return;
        }
        assert_eq!(process_memory_mib(), None);
    }
}
