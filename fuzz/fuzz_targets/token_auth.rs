#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| openserver::fuzzing::token_auth(data));
