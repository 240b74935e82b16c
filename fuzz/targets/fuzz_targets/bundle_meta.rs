//! Fuzz target `bundle_meta`: the code is `glimpse_fuzz::bundle_meta` in fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_fuzz::bundle_meta(data));
