//! The files `crustd install` puts on a host, written only when their
//! content differs (so a second install changes nothing) and always
//! atomically (temp file, fsync, rename), so a running crustd or shim keeps
//! its old binary and a crash leaves the old file or the new one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The host's root directory as the installer sees it (`/host` in the
/// DaemonSet, `/` by hand).
#[derive(Clone, Debug)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    /// `dir`, which must be a directory.
    pub fn new(dir: &Path) -> Result<HostRoot> {
        if !dir.is_dir() {
            anyhow::bail!("host root {} is not a directory", dir.display());
        }
        Ok(HostRoot(dir.to_path_buf()))
    }

    /// Where the host's absolute path `host_path` is seen from here.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let rel = host_path.as_ref();
        self.0.join(rel.strip_prefix("/").unwrap_or(rel))
    }
}

/// What putting one file in place did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// There was no such file.
    Created,
    /// The file was there with other content.
    Replaced,
    /// The file was there with this content.
    Unchanged,
    /// The file was there and is kept as it is (a config an operator owns).
    Kept,
}

impl Outcome {
    /// True when the host now has something it did not have before.
    pub fn changed(self) -> bool {
        matches!(self, Outcome::Created | Outcome::Replaced)
    }
}

/// Puts `content` at `path` with `mode` unless the file already holds it.
pub fn put(path: &Path, content: &[u8], mode: u32) -> Result<Outcome> {
    let outcome = match std::fs::read(path) {
        Ok(old) if old == content && mode_of(path) == Some(mode) => return Ok(Outcome::Unchanged),
        Ok(_) => Outcome::Replaced,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Created,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    write_atomically(path, content, mode)?;
    Ok(outcome)
}

/// Puts `content` at `path` only when there is no file there.
pub fn put_if_absent(path: &Path, content: &[u8], mode: u32) -> Result<Outcome> {
    if path.exists() {
        return Ok(Outcome::Kept);
    }
    write_atomically(path, content, mode)?;
    Ok(Outcome::Created)
}

/// Writes `content` to `path` atomically with `mode`, making the parent
/// directories first.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crust_runtime::fsutil::write_atomic_mode(path, content, mode)
}

/// Removes `path`; false when there was nothing to remove.
pub fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crust-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_only_what_differs() {
        let dir = scratch("put");
        let p = dir.join("a/b/file");
        assert_eq!(put(&p, b"one", 0o644).unwrap(), Outcome::Created);
        assert_eq!(put(&p, b"one", 0o644).unwrap(), Outcome::Unchanged);
        assert_eq!(put(&p, b"one", 0o755).unwrap(), Outcome::Replaced);
        assert_eq!(put(&p, b"two", 0o755).unwrap(), Outcome::Replaced);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p), Some(0o755));
        assert_eq!(put_if_absent(&p, b"three", 0o644).unwrap(), Outcome::Kept);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("a/b")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_paths_stay_under_the_host_root() {
        let host = HostRoot(PathBuf::from("/host"));
        assert_eq!(
            host.path("/etc/crust/config.toml"),
            PathBuf::from("/host/etc/crust/config.toml")
        );
        assert_eq!(host.path("etc"), PathBuf::from("/host/etc"));
    }
}
