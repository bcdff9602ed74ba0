//! Image references as clients write them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        crust_runtime::fuzzing::reference(s);
    }
});
