//! Removing a directory tree that may still hold mounts (rootfs overlays, shm
//! tmpfs, pinned namespaces) without ever deleting through a live mount.

use std::path::Path;

use anyhow::{Result, bail};

use crate::fsutil;
use crate::host::Mounts;

/// Unmounts everything under `path`, then removes the tree. Missing is fine.
pub fn remove_tree(mounts: &dyn Mounts, path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    unmount_under(mounts, path)?;
    fsutil::remove_dir_all_if_exists(path)
}

/// Unmounts everything mounted under `path`; an error when something stays
/// mounted there.
pub fn unmount_under(mounts: &dyn Mounts, path: &Path) -> Result<()> {
    for m in mounts.mounts_under(path)? {
        mounts.unmount(&m)?;
    }
    let left = mounts.mounts_under(path)?;
    if !left.is_empty() {
        bail!(
            "{} still has mounts under it ({}); not removing it",
            path.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
