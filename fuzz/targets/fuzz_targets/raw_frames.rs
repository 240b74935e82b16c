//! Fuzz target `raw_frames`: the code is `glimpse_fuzz::raw_frames` in fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_fuzz::raw_frames(data));
