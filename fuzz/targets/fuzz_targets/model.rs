//! Fuzz target `model`: the code is `glimpse_fuzz::model` in fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_fuzz::model(data));
