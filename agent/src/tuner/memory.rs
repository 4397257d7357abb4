//! Memory readings of this process.

/// Resets the kernel's peak-RSS mark (VmHWM) so the next reading covers one candidate.
/// Linux only; elsewhere the reading covers the whole process.
pub(super) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes of heap this process has in use: glibc's `mallinfo2`, every arena's allocated chunks
/// plus the chunks it mapped directly. Unlike the resident set, it falls when memory is freed
/// and does not count pages the allocator keeps for reuse, so the difference across loading an
/// engine is that engine's own memory. `None` where glibc's allocator is not in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments, only reads the allocator's counters under its own
    // locks, and returns a plain struct by value (glibc 2.33 and newer; bookworm has 2.36).
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    u64::try_from(info.uordblks.saturating_add(info.hblkhd)).ok()
}

/// Bytes of heap this process has in use; unknown without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_reading_grows_with_an_allocation_and_falls_when_it_is_freed() {
        let before = heap_in_use_bytes().unwrap();
        let block = vec![1u8; 64 << 20];
        let during = heap_in_use_bytes().unwrap();
        drop(std::hint::black_box(block));
        let after = heap_in_use_bytes().unwrap();
        assert!(during >= before + (60 << 20), "{before} → {during}");
        assert!(after + (60 << 20) <= during, "{during} → {after}");
    }
}
