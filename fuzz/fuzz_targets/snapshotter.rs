#![no_main]

#[path = "../bodies/control.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::snapshotter(data));
