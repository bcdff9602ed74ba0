//! Layer tars as images carry them: unpacked into a fresh directory each time.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

static RUN: AtomicU64 = AtomicU64::new(0);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let dest = std::env::temp_dir().join(format!("crust-fuzz-layer-{}-{n}", std::process::id()));
    if std::fs::create_dir(&dest).is_ok() {
        crust_runtime::fuzzing::layer_tar(data, &dest);
        let _ = std::fs::remove_dir_all(&dest);
    }
});
