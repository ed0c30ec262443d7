//! Fuzz target `sleeve_datagrams`: see `weave_fuzz::sleeve_datagrams`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::sleeve_datagrams(data));
