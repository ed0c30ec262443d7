//! Fuzz target `session`: see `weave_fuzz::session`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::session(data));
