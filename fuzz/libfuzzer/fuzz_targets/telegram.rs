#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_fuzz::target("telegram").expect("a target")(data));
