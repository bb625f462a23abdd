//! Fuzz target `page_token`: see `prism_fuzz_cases::page_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    prism_fuzz_cases::page_token(data);
});
