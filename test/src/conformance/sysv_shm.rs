//! The host's System V shared memory segments: critest's HostIpc specs make
//! 1 MiB segments with `ipcmk` on the host and never remove them, so the
//! conformance run notes the segments that exist before and removes the ones
//! that appeared during it.

use std::collections::BTreeSet;

/// Ids of the host IPC namespace's shared memory segments.
pub fn segments() -> BTreeSet<i32> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Removes the segments that exist now but were not in `before`; returns
/// what could not be removed.
pub fn remove_new(before: &BTreeSet<i32>) -> Vec<String> {
    segments()
        .difference(before)
        .filter_map(|&id| {
            // SAFETY: IPC_RMID takes no buffer; a null pointer is allowed.
            let rc = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            (rc != 0).then(|| {
                format!(
                    "removing shared memory segment {id}: {}",
                    std::io::Error::last_os_error()
                )
            })
        })
        .collect()
}
