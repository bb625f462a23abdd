//! Fuzz target `jwks`: see `prism_fuzz_cases::jwks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::jwks(data);
});
