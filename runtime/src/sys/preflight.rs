//! What `crustd check` reads of the host before crust runs on it: the
//! kernel's release and the kernel features crust relies on, the cgroup
//! layout, capabilities and free space. Each probe answers with what it saw,
//! for a person to read; judging it is the caller's job.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The major and minor numbers of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the kernel lists `name` in `/proc/filesystems` (a module not
/// loaded yet is not listed, though a mount would load it).
pub fn filesystem_listed(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some(name)))
}

/// Whether `pidfd_open` works, which crust uses to wait on every helper
/// process it runs with a deadline.
pub fn pidfd_supported() -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; the descriptor is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: fd is a descriptor this function just opened and owns.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Whether namespaces are on nsfs, which crust bind-mounts to pin a pod's
/// namespaces without a process in them.
pub fn nsfs_supported() -> bool {
    crust_cni::nsfs::is_pinned(Path::new("/proc/self/ns/net"))
}

/// Whether the filesystem holding `dir` (or its nearest existing parent)
/// can be idmapped, which user-namespaced pods need; why not if it cannot.
pub fn idmapped_mounts(dir: &Path) -> Result<()> {
    super::facts::idmap_supported(&existing_ancestor(dir))
}

/// Whether the kernel can make a mount tree read-only recursively.
pub fn recursive_read_only_mounts() -> bool {
    super::bind::recursive_read_only_supported()
}

/// How the host's cgroups are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only the unified hierarchy (cgroup v2).
    Unified,
    /// v1 hierarchies with cgroup2 mounted beside them (at `unified`).
    Hybrid,
    /// v1 hierarchies only.
    Legacy,
}

/// The host's cgroup layout and the controllers it offers.
pub fn cgroup_layout() -> (CgroupLayout, Vec<String>) {
    let root = Path::new("/sys/fs/cgroup");
    if super::process::cgroup_v2_only() {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        return (CgroupLayout::Unified, controllers);
    }
    let controllers = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            root.join(name)
                .join("cgroup.procs")
                .exists()
                .then(|| name.to_string())
        })
        .collect();
    let layout = if root.join("unified").join("cgroup.controllers").exists() {
        CgroupLayout::Hybrid
    } else {
        CgroupLayout::Legacy
    };
    (layout, controllers)
}

/// Whether this process holds CAP_SYS_RESOURCE, without which no container
/// may get an `oom_score_adj` below crustd's own.
pub fn may_lower_oom_score_adj() -> bool {
    super::process::has_capability(super::process::CAP_SYS_RESOURCE)
}

/// This process's own `oom_score_adj`.
pub fn own_oom_score_adj() -> i64 {
    super::process::own_oom_score_adj()
}

/// Space on the filesystem holding `dir` (or its nearest existing parent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

/// The free space where `dir` is, or will be once made; the directory the
/// answer is about.
pub fn free_space(dir: &Path) -> Result<(Space, PathBuf)> {
    let at = existing_ancestor(dir);
    let st =
        nix::sys::statvfs::statvfs(&at).with_context(|| format!("statvfs {}", at.display()))?;
    let block = st.fragment_size();
    Ok((
        Space {
            available: st.blocks_available().saturating_mul(block),
            total: st.blocks().saturating_mul(block),
        },
        at,
    ))
}

/// `dir` itself when it exists, else its nearest existing parent.
pub fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(
            kernel_version("5.15.153.1-microsoft-standard"),
            Some((5, 15))
        );
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn ancestors() {
        assert_eq!(
            existing_ancestor(Path::new("/proc/no/such/dir")),
            PathBuf::from("/proc")
        );
        assert_eq!(existing_ancestor(Path::new("/")), PathBuf::from("/"));
    }
}
