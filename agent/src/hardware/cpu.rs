//! The processor: vendor, brand, family/model and the ISA flags that matter for inference.
//!
//! A flag counts only when the operating system has enabled it. CPUID lists AVX-512 on a CPU
//! whose kernel (or hypervisor) does not save the ZMM registers; code using it would fault. So
//! flags come from std's `is_x86_feature_detected!`, which checks XCR0, and where std has no
//! stable name (AMX) from CPUID plus our own XCR0 check.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// An ISA extension, under Node Feature Discovery's name (the `cpu-cpuid.<FLAG>` label).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuFlag {
    /// SSE 4.2.
    #[serde(rename = "SSE42")]
    Sse42,
    /// AVX.
    #[serde(rename = "AVX")]
    Avx,
    /// AVX2.
    #[serde(rename = "AVX2")]
    Avx2,
    /// Fused multiply-add (FMA3).
    #[serde(rename = "FMA3")]
    Fma3,
    /// Half-precision conversions.
    #[serde(rename = "F16C")]
    F16c,
    /// AVX-512 Foundation.
    #[serde(rename = "AVX512F")]
    Avx512F,
    /// AVX-512 byte and word instructions.
    #[serde(rename = "AVX512BW")]
    Avx512Bw,
    /// AVX-512 doubleword and quadword instructions.
    #[serde(rename = "AVX512DQ")]
    Avx512Dq,
    /// AVX-512 vector length extensions.
    #[serde(rename = "AVX512VL")]
    Avx512Vl,
    /// AVX-512 vector neural network instructions (int8 dot products).
    #[serde(rename = "AVX512VNNI")]
    Avx512Vnni,
    /// AVX-512 bfloat16.
    #[serde(rename = "AVX512BF16")]
    Avx512Bf16,
    /// AVX-512 half precision arithmetic.
    #[serde(rename = "AVX512FP16")]
    Avx512Fp16,
    /// VEX-encoded VNNI (int8 dot products without AVX-512).
    #[serde(rename = "AVXVNNI")]
    AvxVnni,
    /// AMX tile architecture.
    #[serde(rename = "AMXTILE")]
    AmxTile,
    /// AMX int8 tile multiplication.
    #[serde(rename = "AMXINT8")]
    AmxInt8,
    /// AMX bfloat16 tile multiplication.
    #[serde(rename = "AMXBF16")]
    AmxBf16,
}

impl CpuFlag {
    /// Every flag the agent reports, in label order.
    pub const ALL: [Self; 16] = [
        Self::Sse42,
        Self::Avx,
        Self::Avx2,
        Self::Fma3,
        Self::F16c,
        Self::Avx512F,
        Self::Avx512Bw,
        Self::Avx512Dq,
        Self::Avx512Vl,
        Self::Avx512Vnni,
        Self::Avx512Bf16,
        Self::Avx512Fp16,
        Self::AvxVnni,
        Self::AmxTile,
        Self::AmxInt8,
        Self::AmxBf16,
    ];

    /// Node Feature Discovery's name, as in the label `cpu-cpuid.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sse42 => "SSE42",
            Self::Avx => "AVX",
            Self::Avx2 => "AVX2",
            Self::Fma3 => "FMA3",
            Self::F16c => "F16C",
            Self::Avx512F => "AVX512F",
            Self::Avx512Bw => "AVX512BW",
            Self::Avx512Dq => "AVX512DQ",
            Self::Avx512Vl => "AVX512VL",
            Self::Avx512Vnni => "AVX512VNNI",
            Self::Avx512Bf16 => "AVX512BF16",
            Self::Avx512Fp16 => "AVX512FP16",
            Self::AvxVnni => "AVXVNNI",
            Self::AmxTile => "AMXTILE",
            Self::AmxInt8 => "AMXINT8",
            Self::AmxBf16 => "AMXBF16",
        }
    }

    /// The Linux kernel's name in `/proc/cpuinfo`.
    pub fn cpuinfo_name(self) -> &'static str {
        match self {
            Self::Sse42 => "sse4_2",
            Self::Avx => "avx",
            Self::Avx2 => "avx2",
            Self::Fma3 => "fma",
            Self::F16c => "f16c",
            Self::Avx512F => "avx512f",
            Self::Avx512Bw => "avx512bw",
            Self::Avx512Dq => "avx512dq",
            Self::Avx512Vl => "avx512vl",
            Self::Avx512Vnni => "avx512_vnni",
            Self::Avx512Bf16 => "avx512_bf16",
            Self::Avx512Fp16 => "avx512_fp16",
            Self::AvxVnni => "avx_vnni",
            Self::AmxTile => "amx_tile",
            Self::AmxInt8 => "amx_int8",
            Self::AmxBf16 => "amx_bf16",
        }
    }
}

impl std::fmt::Display for CpuFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who made the processor and which one it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuIdentity {
    /// Vendor as Node Feature Discovery names it (`Intel`, `AMD`, ...), or `unknown`.
    pub vendor: String,
    /// Brand string; empty when the CPU has none.
    pub brand: String,
    /// Family number.
    pub family: u32,
    /// Model number.
    pub model: u32,
    /// OS-enabled ISA flags.
    pub flags: BTreeSet<CpuFlag>,
}

impl CpuIdentity {
    /// Identifies this machine's processor. `root` is where `/proc` lives; only non-x86
    /// machines read it, x86 ones ask CPUID.
    pub fn detect(root: &Path) -> Self {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            let _ = root;
            x86::detect()
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        {
            let text = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
            from_cpuinfo(&text)
        }
    }
}

/// Node Feature Discovery's vendor name for a CPUID vendor string.
pub(crate) fn nfd_vendor(cpuid_vendor: &str) -> String {
    match cpuid_vendor {
        "GenuineIntel" => "Intel".into(),
        "AuthenticAMD" => "AMD".into(),
        "HygonGenuine" => "Hygon".into(),
        "CentaurHauls" | "VIA VIA VIA " => "VIA".into(),
        "  Shanghai  " => "Zhaoxin".into(),
        other => {
            let trimmed = other.trim();
            if trimmed.is_empty() {
                "unknown".into()
            } else {
                trimmed.into()
            }
        }
    }
}

/// Identity from `/proc/cpuinfo`, for processors without CPUID (Arm and others). Follows Node
/// Feature Discovery on arm64: vendor from the implementer, family from the architecture, id
/// from the part number. No x86 flags, naturally.
#[cfg_attr(any(target_arch = "x86", target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn from_cpuinfo(text: &str) -> CpuIdentity {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let number = |value: Option<String>| {
        value
            .and_then(|v| match v.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            })
            .unwrap_or(0)
    };
    let vendor = match field("CPU implementer").as_deref() {
        Some("0x41") => "ARM".to_owned(),
        Some("0x42") => "Broadcom".to_owned(),
        Some("0x43") => "Cavium".to_owned(),
        Some("0x48") => "HiSilicon".to_owned(),
        Some("0x4e") => "NVIDIA".to_owned(),
        Some("0x51") => "Qualcomm".to_owned(),
        Some("0x61") => "Apple".to_owned(),
        Some("0xc0") => "Ampere".to_owned(),
        _ => field("vendor_id").map_or_else(|| "unknown".to_owned(), |v| nfd_vendor(&v)),
    };
    CpuIdentity {
        vendor,
        brand: field("model name").unwrap_or_default(),
        family: number(field("CPU architecture").or_else(|| field("cpu family"))),
        model: number(field("CPU part").or_else(|| field("model"))),
        flags: BTreeSet::new(),
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod x86 {
    use std::collections::BTreeSet;

    use raw_cpuid::CpuId;

    use super::{CpuFlag, CpuIdentity, nfd_vendor};

    /// XCR0 bits the OS sets when it saves AMX tile configuration and tile data.
    const XCR0_AMX: u64 = (1 << 17) | (1 << 18);

    pub(super) fn detect() -> CpuIdentity {
        let cpuid = CpuId::new();
        let vendor = cpuid
            .get_vendor_info()
            .map_or_else(|| "unknown".to_owned(), |v| nfd_vendor(v.as_str()));
        let brand = cpuid
            .get_processor_brand_string()
            .map(|b| b.as_str().trim().to_owned())
            .unwrap_or_default();
        let (family, model) = cpuid.get_feature_info().map_or((0, 0), |f| {
            (u32::from(f.family_id()), u32::from(f.model_id()))
        });
        CpuIdentity {
            vendor,
            brand,
            family,
            model,
            flags: flags(&cpuid),
        }
    }

    fn flags(cpuid: &CpuId<raw_cpuid::CpuIdReaderNative>) -> BTreeSet<CpuFlag> {
        let amx_enabled = os_saves(cpuid, XCR0_AMX);
        let extended = cpuid.get_extended_feature_info();
        let amx = |has: fn(&raw_cpuid::ExtendedFeatures) -> bool| {
            amx_enabled && extended.as_ref().is_some_and(has)
        };
        let detected = [
            (
                CpuFlag::Sse42,
                std::arch::is_x86_feature_detected!("sse4.2"),
            ),
            (CpuFlag::Avx, std::arch::is_x86_feature_detected!("avx")),
            (CpuFlag::Avx2, std::arch::is_x86_feature_detected!("avx2")),
            (CpuFlag::Fma3, std::arch::is_x86_feature_detected!("fma")),
            (CpuFlag::F16c, std::arch::is_x86_feature_detected!("f16c")),
            (
                CpuFlag::Avx512F,
                std::arch::is_x86_feature_detected!("avx512f"),
            ),
            (
                CpuFlag::Avx512Bw,
                std::arch::is_x86_feature_detected!("avx512bw"),
            ),
            (
                CpuFlag::Avx512Dq,
                std::arch::is_x86_feature_detected!("avx512dq"),
            ),
            (
                CpuFlag::Avx512Vl,
                std::arch::is_x86_feature_detected!("avx512vl"),
            ),
            (
                CpuFlag::Avx512Vnni,
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                CpuFlag::Avx512Bf16,
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
            (
                CpuFlag::Avx512Fp16,
                std::arch::is_x86_feature_detected!("avx512fp16"),
            ),
            (
                CpuFlag::AvxVnni,
                std::arch::is_x86_feature_detected!("avxvnni"),
            ),
            // std's AMX names are unstable (x86_amx_intrinsics): CPUID plus XCR0 instead.
            (
                CpuFlag::AmxTile,
                amx(raw_cpuid::ExtendedFeatures::has_amx_tile),
            ),
            (
                CpuFlag::AmxInt8,
                amx(raw_cpuid::ExtendedFeatures::has_amx_int8),
            ),
            (
                CpuFlag::AmxBf16,
                amx(raw_cpuid::ExtendedFeatures::has_amx_bf16),
            ),
        ];
        detected
            .into_iter()
            .filter_map(|(flag, on)| on.then_some(flag))
            .collect()
    }

    /// Whether the OS saves all the register state in `mask` on context switches (XCR0).
    fn os_saves(cpuid: &CpuId<raw_cpuid::CpuIdReaderNative>, mask: u64) -> bool {
        // OSXSAVE: the OS has set CR4.OSXSAVE, which is what makes XGETBV legal to execute.
        let osxsave = cpuid.get_feature_info().is_some_and(|f| f.has_oxsave());
        osxsave && xcr0() & mask == mask
    }

    /// Reads XCR0, the register in which the OS lists the state components it saves.
    /// Only call after checking CPUID's OSXSAVE bit.
    #[allow(unsafe_code)]
    fn xcr0() -> u64 {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::_xgetbv;
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::_xgetbv;
        // SAFETY: XGETBV with ECX=0 reads XCR0 and has no side effects. It raises #UD only when
        // CR4.OSXSAVE is clear, and our one caller checks CPUID.1:ECX.OSXSAVE (which mirrors
        // CR4.OSXSAVE) first. The `xsave` target feature the intrinsic is compiled for is
        // implied by OSXSAVE.
        unsafe { _xgetbv(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_label_names() {
        for flag in CpuFlag::ALL {
            let json = serde_json::to_value(flag).unwrap();
            assert_eq!(json, flag.name());
            let back: CpuFlag = serde_json::from_value(json).unwrap();
            assert_eq!(back, flag);
        }
    }

    #[test]
    fn vendors_are_named_as_node_feature_discovery_names_them() {
        assert_eq!(nfd_vendor("GenuineIntel"), "Intel");
        assert_eq!(nfd_vendor("AuthenticAMD"), "AMD");
        assert_eq!(nfd_vendor("HygonGenuine"), "Hygon");
        assert_eq!(nfd_vendor(""), "unknown");
    }

    #[test]
    fn arm_identity_comes_from_proc_cpuinfo() {
        let text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
                    CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n\
                    CPU part\t: 0xd0c\nCPU revision\t: 1\n";
        let identity = from_cpuinfo(text);
        assert_eq!(identity.vendor, "ARM");
        assert_eq!(identity.family, 8);
        assert_eq!(identity.model, 0xd0c);
        assert!(identity.flags.is_empty());
    }

    /// On x86 the detected flags must be exactly those of our list that the kernel reports in
    /// /proc/cpuinfo: the kernel, too, lists only what it has enabled.
    #[cfg(all(target_os = "linux", any(target_arch = "x86", target_arch = "x86_64")))]
    #[test]
    fn detected_flags_agree_with_proc_cpuinfo() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let kernel: BTreeSet<&str> = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("flags"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, flags)| flags.split_whitespace().collect())
            .unwrap_or_default();
        let expected: BTreeSet<CpuFlag> = CpuFlag::ALL
            .into_iter()
            .filter(|flag| kernel.contains(flag.cpuinfo_name()))
            .collect();
        let detected = CpuIdentity::detect(Path::new("/")).flags;
        assert_eq!(detected, expected);
    }

    #[cfg(all(target_os = "linux", any(target_arch = "x86", target_arch = "x86_64")))]
    #[test]
    fn family_and_model_agree_with_proc_cpuinfo() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let from_kernel = from_cpuinfo(&cpuinfo);
        let detected = CpuIdentity::detect(Path::new("/"));
        assert_eq!(detected.family, from_kernel.family);
        assert_eq!(detected.model, from_kernel.model);
        assert_eq!(detected.vendor, from_kernel.vendor);
    }
}
