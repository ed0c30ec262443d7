//! Fuzz target `ipam_sequences`: see `weave_fuzz::ipam_sequences`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::ipam_sequences(data));
