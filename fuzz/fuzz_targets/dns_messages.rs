//! Fuzz target `dns_messages`: see `weave_fuzz::dns_messages`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::dns_messages(data));
