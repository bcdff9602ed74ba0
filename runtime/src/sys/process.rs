//! Process and privilege probes.

use std::path::Path;

/// True while a process with `pid` exists and its command line mentions `needle`
/// (guards against a recycled pid).
pub fn alive(pid: i32, needle: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            !zombie && String::from_utf8_lossy(&cmd).contains(needle)
        }
        Err(_) => false,
    }
}

/// This process's resident bytes and open file descriptors, for crustd's
/// metrics.
pub fn own_rss_and_fds() -> (u64, u64) {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(4096);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    (pages.saturating_mul(page_size), fds as u64)
}

/// This process's own `oom_score_adj`; a container may not go below it unless the
/// process holds CAP_SYS_RESOURCE.
pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// True when this process's effective capability set holds `cap` (a bit number).
pub fn has_capability(cap: u32) -> bool {
    capability_mask("CapEff:") & (1u64 << cap) != 0
}

/// This process's capability bounding set as a bit mask: no container started
/// by it can hold a capability outside it.
pub fn capability_bounding_set() -> u64 {
    capability_mask("CapBnd:")
}

fn capability_mask(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Makes glibc give large freed blocks back at once: buffers of 128 KiB and
/// more (ExecSync output, layer chunks, replies) are mapped on their own and
/// unmapped when freed, and a heap top larger than 1 MiB is trimmed. Without
/// this, glibc raises both thresholds after the first large free (to 32 MiB
/// per arena), and crustd keeps tens of MiB after a burst of large replies.
pub fn return_large_frees() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables; called at start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns freed heap memory to the operating system (glibc keeps it otherwise).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory at the top of the heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// True when the host's kernel enforces AppArmor.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

/// Whether SELinux is enabled: its filesystem is mounted with a policy
/// loaded.
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// CAP_SYS_RESOURCE's bit number.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// True on a host whose cgroup hierarchy is cgroup v2 only.
pub fn cgroup_v2_only() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}
