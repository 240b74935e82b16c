//! Fuzz target `http`: the code is `glimpse_fuzz::http` in fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_fuzz::http(data));
