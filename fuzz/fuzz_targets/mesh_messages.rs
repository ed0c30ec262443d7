//! Fuzz target `mesh_messages`: see `weave_fuzz::mesh_messages`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weave_fuzz::mesh_messages(data));
