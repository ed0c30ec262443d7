//! Fuzz target `persisted_state`: see `weave_fuzz::persisted_state`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::persisted_state(data));
