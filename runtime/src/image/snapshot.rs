//! Layer snapshots: one read-only directory per unpacked layer, shared by
//! every image whose stack contains it.
//!
//! Layout under `snapshots/` (mode 0700, so only root sees layer contents):
//!
//! - `<n>/`: the root of one unpacked layer; `n` is a decimal number handed
//!   out by this store. Numbers keep overlay's `lowerdir=` short: a lower dir is
//!   `/var/lib/crust/snapshots/123` (about 30 bytes), so the mount option of
//!   an image with 120 layers still fits in one 4096-byte page, where a chain
//!   id in the path (71 bytes) would allow only 40 or so.
//! - `by-chain/<chain id hex>`: a symlink to `../<n>`, the index from a
//!   layer's chain id to its directory.
//!
//! A layer is unpacked into a fresh `<n>/`, the filesystem is synced, and only
//! then is its `by-chain/` symlink created (creating a symlink is atomic: it
//! is there whole or not at all). So the index entry is the commit marker: a
//! numeric directory no index entry points to is the leftover of an
//! interrupted unpack (or removal) and is deleted when the store opens.
//! Removal goes the other way: index entry first, then the directory.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use super::digest::hex_of;
use crate::fsutil;
use crate::{Error, Result};

/// The snapshot directories and their chain-id index.
#[derive(Debug)]
pub(crate) struct Snapshots {
    dir: PathBuf,
    index: PathBuf,
    next: AtomicU64,
}

impl Snapshots {
    /// Opens (creating) `dir`, drops dangling index entries and deletes
    /// numeric directories that no index entry points to.
    pub(crate) fn open(dir: &Path) -> Result<Snapshots> {
        let index = dir.join("by-chain");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&index)
            .with_context(|| format!("creating {}", index.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;

        let mut indexed = std::collections::HashSet::new();
        for entry in read_dir(&index)? {
            let path = index.join(&entry);
            match target_number(&path) {
                Some(n)
                    if dir.join(n.to_string()).is_dir()
                        && hex_of(&format!("sha256:{entry}"), "").is_ok() =>
                {
                    indexed.insert(n);
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing stale snapshot index entry");
                    fsutil::remove_file_if_exists(&path)?;
                }
            }
        }
        let mut max = 0;
        for entry in read_dir(dir)? {
            if entry == "by-chain" {
                continue;
            }
            let path = dir.join(&entry);
            match entry.parse::<u64>() {
                Ok(n) if indexed.contains(&n) => max = max.max(n),
                _ => {
                    tracing::info!(path = %path.display(), "removing leftover of an interrupted unpack");
                    remove_any(&path)?;
                }
            }
        }
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            index,
            next: AtomicU64::new(max + 1),
        })
    }

    /// The directory of the committed snapshot for `chain_id`, if there is one.
    pub(crate) fn lookup(&self, chain_id: &str) -> Option<PathBuf> {
        let hex = hex_of(chain_id, "chain id").ok()?;
        let n = target_number(&self.index.join(hex))?;
        let path = self.dir.join(n.to_string());
        path.is_dir().then_some(path)
    }

    /// Whether a committed snapshot exists for `chain_id`.
    pub(crate) fn exists(&self, chain_id: &str) -> bool {
        self.lookup(chain_id).is_some()
    }

    /// Creates a fresh, empty, uncommitted snapshot directory.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(n.to_string());
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {
                    return Ok(Prepared {
                        n,
                        path,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("creating {}", path.display()))
                        .into());
                }
            }
        }
    }

    /// Makes a prepared snapshot the one for `chain_id`: syncs its contents,
    /// then creates the index entry. If another one was committed for the
    /// same chain id meanwhile, that one is kept and this one deleted.
    pub(crate) fn commit(&self, mut prepared: Prepared, chain_id: &str) -> Result<PathBuf> {
        let hex = hex_of(chain_id, "chain id")?;
        let dir = fs::File::open(&prepared.path)
            .with_context(|| format!("opening {}", prepared.path.display()))?;
        nix::unistd::syncfs(&dir)
            .with_context(|| format!("syncing the filesystem of {}", prepared.path.display()))?;
        let link = self.index.join(hex);
        match symlink(format!("../{}", prepared.n), &link) {
            Ok(()) => {
                prepared.committed = true;
                fsutil::sync_dir(&self.index)?;
                Ok(prepared.path.clone())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.lookup(chain_id).ok_or_else(|| {
                    Error::internal(format!(
                        "{} is not a valid snapshot index entry",
                        link.display()
                    ))
                })
            }
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("creating {}", link.display()))
                .into()),
        }
    }

    /// Chain ids of every committed snapshot.
    pub(crate) fn list(&self) -> Result<Vec<String>> {
        Ok(read_dir(&self.index)?
            .into_iter()
            .map(|hex| format!("sha256:{hex}"))
            .filter(|d| hex_of(d, "").is_ok())
            .collect())
    }

    /// Uncommits the snapshot of `chain_id` (removes its index entry) and
    /// returns its directory, which the caller then deletes with
    /// [`Snapshots::remove_dir`] after [`Snapshots::sync_index`]; `None` if
    /// there was none.
    pub(crate) fn unindex(&self, chain_id: &str) -> Result<Option<PathBuf>> {
        let hex = hex_of(chain_id, "chain id")?;
        let link = self.index.join(hex);
        let dir = target_number(&link).map(|n| self.dir.join(n.to_string()));
        fsutil::remove_file_if_exists(&link)?;
        Ok(dir)
    }

    /// Makes index removals durable.
    pub(crate) fn sync_index(&self) -> Result<()> {
        Ok(fsutil::sync_dir(&self.index)?)
    }

    /// Deletes an unindexed snapshot directory.
    pub(crate) fn remove_dir(&self, path: &Path) -> Result<()> {
        Ok(fsutil::remove_dir_all_if_exists(path)?)
    }

    /// The directory holding everything.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A snapshot directory being filled; deleted on drop unless committed.
#[derive(Debug)]
pub(crate) struct Prepared {
    n: u64,
    path: PathBuf,
    committed: bool,
}

impl Prepared {
    /// The directory to unpack into.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = fsutil::remove_dir_all_if_exists(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove an unfinished snapshot");
        }
    }
}

/// The `n` an index symlink `../<n>` points to.
fn target_number(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let name = target.strip_prefix("..").ok()?;
    name.to_str()?.parse().ok()
}

fn read_dir(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        match entry.file_name().into_string() {
            Ok(name) => out.push(name),
            Err(name) => {
                let path = dir.join(name);
                tracing::info!(path = %path.display(), "removing a stray entry");
                remove_any(&path)?;
            }
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Result<()> {
    let is_dir = fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    if is_dir {
        fsutil::remove_dir_all_if_exists(path)?;
    } else {
        fsutil::remove_file_if_exists(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::sha256_of;

    #[test]
    fn commit_index_and_leftovers() {
        let dir = std::env::temp_dir().join(format!("crust-snap-{}", std::process::id()));
        let snaps = Snapshots::open(&dir).unwrap();
        let chain = sha256_of(b"layer");
        let p = snaps.prepare().unwrap();
        fs::write(p.path().join("f"), b"x").unwrap();
        assert!(!snaps.exists(&chain));
        let committed = snaps.commit(p, &chain).unwrap();
        assert!(snaps.exists(&chain));
        assert_eq!(snaps.lookup(&chain).unwrap(), committed);
        assert!(committed.join("f").exists());

        // Dropped without commit: gone at once.
        let p = snaps.prepare().unwrap();
        let uncommitted = p.path().to_path_buf();
        drop(p);
        assert!(!uncommitted.exists());

        // Left behind by a crash: gone at the next open.
        let leftover = dir.join("999");
        fs::create_dir(&leftover).unwrap();
        symlink(
            "../12345",
            dir.join("by-chain").join(&sha256_of(b"dangling")[7..]),
        )
        .unwrap();
        let snaps = Snapshots::open(&dir).unwrap();
        assert!(!leftover.exists());
        assert_eq!(snaps.list().unwrap(), vec![chain.clone()]);
        let next = snaps.prepare().unwrap();
        assert_ne!(next.path(), committed.as_path());

        let gone = snaps.unindex(&chain).unwrap().unwrap();
        assert!(!snaps.exists(&chain));
        snaps.remove_dir(&gone).unwrap();
        assert!(!committed.exists());
        drop(next);
        fs::remove_dir_all(&dir).unwrap();
    }
}
