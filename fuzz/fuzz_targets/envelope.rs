//! Fuzz target `envelope`: see `weave_fuzz::envelope`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::envelope(data));
