//! Fuzz target `decode`: the code is `glimpse_fuzz::decode` in fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_fuzz::decode(data));
