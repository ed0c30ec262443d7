//! Fuzz target `cni_config`: see `weave_fuzz::cni_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::cni_config(data));
