#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_fuzz::target("webhook_desk").expect("a target")(data));
