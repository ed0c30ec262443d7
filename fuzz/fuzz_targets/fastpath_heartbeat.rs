//! Fuzz target `fastpath_heartbeat`: see `weave_fuzz::fastpath_heartbeat`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::fastpath_heartbeat(data));
