#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| openserver::fuzzing::admin(data));
