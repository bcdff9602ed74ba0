//! Names that are unique per test process and per call, so parallel tests and
//! concurrent test processes never share a directory, cgroup or pod name.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns `<pid>-<n>`, different on every call within this process.
pub fn suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Returns a UUID-shaped string (like a Kubernetes pod UID) unique to this call.
pub fn pod_uid() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let pid = std::process::id();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        nanos,
        pid & 0xffff,
        n & 0xfff,
        (pid >> 16) & 0xfff,
        (u64::from(pid) << 20) | u64::from(n)
    )
}

/// Shortens `name` to at most `max` characters of `[a-z0-9-]`, so it is safe in
/// paths (unix socket paths are limited to 107 bytes) and Kubernetes names.
pub fn slug(name: &str, max: usize) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect()
}

/// A well-formed 64-hex-character id that no daemon has handed out.
pub fn unknown_id() -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("crust-e2e-unknown-{}", suffix())))
}
