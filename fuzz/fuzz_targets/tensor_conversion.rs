//! Fuzz target: see `policyserve_fuzz::tensor_conversion`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policyserve_fuzz::tensor_conversion(data));
