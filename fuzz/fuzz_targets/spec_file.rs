//! Fuzz target `spec_file`: see `prism_fuzz_cases::spec_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::spec_file(data);
});
