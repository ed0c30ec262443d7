//! Fuzz target `handshake`: see `weave_fuzz::handshake`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::handshake(data, None));
