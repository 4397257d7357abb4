//! Fuzz target: see `policyserve_fuzz::hardware_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policyserve_fuzz::hardware_file(data));
