//! Fuzz target `frames`: see `weave_fuzz::frames`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::frames(data));
