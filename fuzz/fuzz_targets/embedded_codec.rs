//! Fuzz target `embedded_codec`: see `prism_fuzz_cases::embedded_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::embedded_codec(data);
});
