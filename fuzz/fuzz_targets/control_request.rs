//! Fuzz target `control_request`: see `prism_fuzz_cases::control_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::control_request(data);
});
