//! Disk use of the image filesystem, for ImageFsInfo.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::Result;

/// Space and inodes the image store uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory to report as the image filesystem's mountpoint.
    pub mountpoint: PathBuf,
    /// Bytes allocated (st_blocks × 512, hardlinks counted once).
    pub used_bytes: u64,
    /// Inodes used (hardlinks counted once).
    pub inodes_used: u64,
}

/// Adds up what lives under `dirs` (not following symlinks). Entries that
/// vanish during the walk (a concurrent removal) are skipped.
pub(crate) fn measure(mountpoint: &Path, dirs: &[&Path]) -> Result<FsUsage> {
    let mut usage = FsUsage {
        mountpoint: mountpoint.to_path_buf(),
        ..FsUsage::default()
    };
    let mut seen = HashSet::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("inspecting {}", path.display()))
                    .into());
            }
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.used_bytes += meta.blocks() * 512;
            usage.inodes_used += 1;
        }
        if meta.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading {}", path.display()))
                        .into());
                }
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hardlinks_once() {
        let dir = std::env::temp_dir().join(format!("crust-usage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a"), vec![1u8; 10000]).unwrap();
        fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
        let u = measure(&dir, &[&dir]).unwrap();
        assert_eq!(u.inodes_used, 2);
        assert!(u.used_bytes >= 10000);
        assert_eq!(u.mountpoint, dir);
        fs::remove_dir_all(&dir).unwrap();
    }
}
