//! Fuzz target `gateway_request`: see `prism_fuzz_cases::gateway_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::gateway_request(data);
});
