//! CNI network configs and plugin results.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = crust_cni::result::pod_ips(&value);
    let _ = crust_cni::config::NetworkList::from_list(
        &value,
        Path::new("/etc/cni/net.d/10-fuzz.conflist"),
    );
    let _ = crust_cni::config::NetworkList::from_single(
        &value,
        Path::new("/etc/cni/net.d/10-fuzz.conf"),
    );
});
