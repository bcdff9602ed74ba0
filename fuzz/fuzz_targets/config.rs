//! Image configs as registries send them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    crust_runtime::fuzzing::config(data);
});
