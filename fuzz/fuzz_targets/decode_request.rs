//! Fuzz target: see `policyserve_fuzz::decode_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policyserve_fuzz::decode_request(data));
