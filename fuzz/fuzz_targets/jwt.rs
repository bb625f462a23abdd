//! Fuzz target `jwt`: see `prism_fuzz_cases::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::jwt(data);
});
