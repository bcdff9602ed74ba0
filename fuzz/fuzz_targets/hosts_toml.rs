//! Registry host configuration files (hosts.toml).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        crust_runtime::fuzzing::hosts_toml(s);
    }
});
