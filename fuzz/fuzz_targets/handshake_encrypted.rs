//! Fuzz target `handshake_encrypted`: see `weave_fuzz::handshake`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::handshake(data, Some(weave_fuzz::fuzz_psk())));
