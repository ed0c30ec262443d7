//! Fuzz target `ipam_messages`: see `weave_fuzz::ipam_messages`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::ipam_messages(data));
