//! Removing a directory tree that may still hold mounts (rootfs overlays, shm
//! tmpfs, pinned namespaces) without ever deleting through a live mount.

use std::path::Path;

use anyhow::{Result, bail};

use crate::fsutil;
use crate::sys::mount;

/// Unmounts everything under `path`, then removes the tree. Missing is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for m in mount::mounts_under(path)? {
        mount::unmount(&m)?;
    }
    let left = mount::mounts_under(path)?;
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
    fsutil::remove_dir_all_if_exists(path)
}
