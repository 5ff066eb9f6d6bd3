#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| openserver::fuzzing::channels_messages(data));
