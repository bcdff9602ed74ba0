//! Mounts the runtime makes: overlay root filesystems and the pod's `/dev/shm`
//! tmpfs; the real [`crate::host::Mounts`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Longest mount option string the kernel accepts (one page).
const MAX_MOUNT_OPTIONS: usize = 4095;

/// The kernel's mount table.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMounts;

impl crate::host::Mounts for KernelMounts {
    fn overlay(&self, lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
        overlay(lower, upper, work, target)
    }

    fn bind(&self, source: &Path, target: &Path, how: &crate::host::BindMount) -> Result<()> {
        super::bind::bind(source, target, how)
    }

    fn shm_tmpfs(&self, target: &Path, size_bytes: u64) -> Result<()> {
        shm_tmpfs(target, size_bytes)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        unmount(target)
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        mounts_under(prefix)
    }
}

/// Mounts an overlay of `lower` (topmost first) with a writable `upper`/`work` on `target`.
pub fn overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lower.is_empty() {
        bail!("an image without layers cannot be mounted");
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_MOUNT_OPTIONS {
        bail!(
            "the overlay mount options for {} layers are {} bytes, more than the kernel's {MAX_MOUNT_OPTIONS}",
            lower.len(),
            options.len()
        );
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mounting the overlay root filesystem on {}",
            target.display()
        )
    })
}

/// Mounts a tmpfs for a pod's `/dev/shm`.
pub fn shm_tmpfs(target: &Path, size_bytes: u64) -> Result<()> {
    let options = format!("mode=1777,size={size_bytes}");
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting the shm tmpfs on {}", target.display()))
}

/// Unmounts `target` (lazily, so a busy mount cannot wedge a remove). Not mounted or
/// missing is fine.
pub fn unmount(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", target.display())),
        }
    }
}

/// Mount points at or below `prefix` in this process's mount table, deepest first.
pub fn mounts_under(prefix: &Path) -> Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
