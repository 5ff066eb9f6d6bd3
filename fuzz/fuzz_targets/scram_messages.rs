#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| openserver::fuzzing::scram_messages(data));
