//! Fuzz target: see `policyserve_fuzz::model_signature`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policyserve_fuzz::model_signature(data));
