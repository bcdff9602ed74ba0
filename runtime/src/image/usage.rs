//! Disk use of the image filesystem and of the containers' writable layers,
//! for ImageFsInfo.
//!
//! kubelet asks every 10 s or so (its eviction manager), and again for stats
//! scrapes and image garbage collection, so neither answer may walk every
//! file of every image each time:
//!
//! - The image store ([`ImageTallies`]): blobs and committed snapshots never
//!   change once written, so each committed snapshot directory is walked once
//!   and its tally kept (keyed by its name and inode) until it is collected.
//!   A call stats the content files (one per blob) and the snapshot
//!   directories' top level, and walks only snapshots still being unpacked.
//!   The answer is exact, and a pull or a removal shows in the next call.
//! - The writable layers ([`WritableLayers`]): running containers change them
//!   behind crustd's back, so they must be walked. One walk serves every call
//!   for [`WritableLayers::max_age`]; concurrent callers wait for the same walk
//!   instead of each starting one. The reported timestamp is when it ran.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Result;

/// Space and inodes used under a directory, as ImageFsInfo reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory to report as the filesystem's mountpoint.
    pub mountpoint: PathBuf,
    /// Bytes allocated (st_blocks × 512, hardlinks counted once).
    pub used_bytes: u64,
    /// Inodes used (hardlinks counted once).
    pub inodes_used: u64,
    /// When the figures were collected, in nanoseconds since the epoch.
    pub timestamp: i64,
}

/// Bytes and inodes of some files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    inodes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.bytes += other.bytes;
        self.inodes += other.inodes;
    }

    fn usage(self, mountpoint: &Path, timestamp: i64) -> FsUsage {
        FsUsage {
            mountpoint: mountpoint.to_path_buf(),
            used_bytes: self.bytes,
            inodes_used: self.inodes,
            timestamp,
        }
    }
}

/// Walks `dir` (not following symlinks), counting every inode not in `seen`
/// yet. Entries that vanish during the walk (a concurrent removal) are
/// skipped. So is an entry below `dir` that cannot be read (a container can
/// nest directories deeper than a path can name, or take permissions
/// away): it is logged, and the rest still counts, so one container's
/// layer cannot blind kubelet to every container's usage.
fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut unreadable = 0u64;
    let mut first_error = None;
    while let Some(path) = stack.pop() {
        let below = path.as_path() != dir;
        let meta = match lstat(&path) {
            Ok(Some(meta)) => meta,
            Ok(None) => continue,
            Err(e) if below => {
                unreadable += 1;
                first_error.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            tally.bytes += meta.blocks() * 512;
            tally.inodes += 1;
        }
        if meta.is_dir() {
            match children(&path) {
                Ok(c) => stack.extend(c),
                Err(e) if below => {
                    unreadable += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(dir = %dir.display(), unreadable, error = %e, "disk use left out entries it could not read");
    }
    Ok(tally)
}

/// `symlink_metadata`, with a vanished path as `None`.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("inspecting {}", path.display()))
            .into()),
    }
}

/// The entries of directory `path`; none if it vanished.
fn children(path: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading {}", path.display()))
                .into());
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", path.display()))?;
        out.push(entry.path());
    }
    Ok(out)
}

/// Adds up what lives under `dirs` (not following symlinks, hardlinks once),
/// reported with `mountpoint`.
#[cfg(test)]
pub(crate) fn measure(mountpoint: &Path, dirs: &[&Path]) -> Result<FsUsage> {
    let timestamp = crate::clock::now_ns();
    let mut seen = HashSet::new();
    let mut total = Tally::default();
    for dir in dirs {
        total.add(walk(dir, &mut seen)?);
    }
    Ok(total.usage(mountpoint, timestamp))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The image store's disk use, with the tallies of committed snapshots kept
/// between calls (they never change until they are deleted).
#[derive(Debug, Default)]
pub(crate) struct ImageTallies {
    /// By snapshot directory name and inode.
    committed: Mutex<HashMap<(String, u64), Tally>>,
}

impl ImageTallies {
    /// Space and inodes under `content` (walked: one file per blob) and
    /// `snapshots`, whose direct subdirectories listed in `committed` are
    /// immutable and walked only the first time they are seen; everything
    /// else there (the index, unpacks in progress) is walked each time.
    pub(crate) fn measure(
        &self,
        content: &Path,
        snapshots: &Path,
        committed: &HashSet<PathBuf>,
    ) -> Result<FsUsage> {
        let timestamp = crate::clock::now_ns();
        let mut known = lock(&self.committed);
        let mut kept = HashMap::with_capacity(known.len());
        let mut seen = HashSet::new();
        let mut total = walk(content, &mut seen)?;
        if let Some(meta) = lstat(snapshots)? {
            total.add(Tally {
                bytes: meta.blocks() * 512,
                inodes: 1,
            });
        }
        for path in children(snapshots)? {
            if !committed.contains(&path) {
                total.add(walk(&path, &mut seen)?);
                continue;
            }
            let Some(meta) = lstat(&path)? else {
                continue;
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let key = (name, meta.ino());
            let tally = match known.get(&key) {
                Some(t) => *t,
                // A snapshot has its own hardlinks only: a fresh `seen` keeps
                // its tally independent of what else was walked.
                None => walk(&path, &mut HashSet::new())?,
            };
            total.add(tally);
            kept.insert(key, tally);
        }
        *known = kept;
        Ok(total.usage(snapshots, timestamp))
    }

    /// How many snapshot tallies are kept (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.committed).len()
    }
}

/// One walk of the containers' writable layers: the total, and each
/// container's own (by the name of its directory, the container id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayersUsage {
    /// Everything under the layers' directory.
    pub total: FsUsage,
    /// Each container's layer; the mountpoint is the layers' directory, the
    /// filesystem that holds them.
    pub by_container: HashMap<String, FsUsage>,
}

/// The disk use of the containers' writable layers (upper and work
/// directories) under one directory, walked at most once per `max_age`.
#[derive(Debug)]
pub struct WritableLayers {
    dir: PathBuf,
    max_age: Duration,
    last: Mutex<Option<(Instant, Arc<LayersUsage>)>>,
}

impl WritableLayers {
    /// Reports on everything under `dir` (crustd's `<root>/containers`),
    /// reusing a walk for `max_age`.
    pub fn new(dir: PathBuf, max_age: Duration) -> WritableLayers {
        WritableLayers {
            dir,
            max_age,
            last: Mutex::new(None),
        }
    }

    /// How long one walk's figures are reused.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The usage, from the last walk if it is recent enough, else from a new
    /// one (blocking; run it off the async runtime). The mountpoint is `dir`.
    pub fn usage(&self) -> Result<Arc<LayersUsage>> {
        let mut last = lock(&self.last);
        if let Some((at, usage)) = last.as_ref()
            && at.elapsed() < self.max_age
        {
            return Ok(usage.clone());
        }
        let started = Instant::now();
        let usage = Arc::new(self.walk()?);
        *last = Some((started, usage.clone()));
        Ok(usage)
    }

    /// Walks each container's directory on its own, adding them up.
    fn walk(&self) -> Result<LayersUsage> {
        let timestamp = crate::clock::now_ns();
        let mut seen = HashSet::new();
        let mut total = Tally::default();
        if let Some(meta) = lstat(&self.dir)? {
            total.add(Tally {
                bytes: meta.blocks() * 512,
                inodes: 1,
            });
            seen.insert((meta.dev(), meta.ino()));
        }
        let mut by_container = HashMap::new();
        for path in children(&self.dir)? {
            let tally = walk(&path, &mut seen)?;
            total.add(tally);
            if let Some(name) = path.file_name() {
                by_container.insert(
                    name.to_string_lossy().into_owned(),
                    tally.usage(&self.dir, timestamp),
                );
            }
        }
        Ok(LayersUsage {
            total: total.usage(&self.dir, timestamp),
            by_container,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("crust-usage-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn counts_hardlinks_once() {
        let d = dir("links");
        fs::write(d.0.join("a"), vec![1u8; 10000]).unwrap();
        fs::hard_link(d.0.join("a"), d.0.join("b")).unwrap();
        let u = measure(&d.0, &[&d.0]).unwrap();
        assert_eq!(u.inodes_used, 2);
        assert!(u.used_bytes >= 10000);
        assert_eq!(u.mountpoint, d.0);
        assert!(u.timestamp > 0);
    }

    #[test]
    fn a_tree_deeper_than_a_path_can_name_does_not_fail_the_walk() {
        use nix::fcntl::{OFlag, open, openat};
        use nix::sys::stat::{Mode, mkdirat};
        let d = dir("deep");
        fs::write(d.0.join("top"), vec![1u8; 10000]).unwrap();
        let name = "d".repeat(250);
        let mut fd = open(&d.0, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        for _ in 0..20 {
            mkdirat(&fd, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
            fd = openat(
                &fd,
                name.as_str(),
                OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
        }
        let u = measure(&d.0, &[&d.0]).unwrap();
        assert!(u.used_bytes >= 10000);
        assert!(u.inodes_used >= 3);
    }

    #[test]
    fn committed_snapshots_are_walked_once() {
        let d = dir("tallies");
        let content = d.0.join("content");
        let snapshots = d.0.join("snapshots");
        fs::create_dir_all(content.join("blobs")).unwrap();
        fs::write(content.join("blobs/x"), vec![1u8; 8192]).unwrap();
        for n in ["1", "2"] {
            fs::create_dir_all(snapshots.join(n)).unwrap();
            fs::write(snapshots.join(n).join("f"), vec![2u8; 8192]).unwrap();
        }
        fs::create_dir_all(snapshots.join("by-chain")).unwrap();
        let committed: HashSet<PathBuf> = [snapshots.join("1")].into_iter().collect();
        let tallies = ImageTallies::default();
        let first = tallies.measure(&content, &snapshots, &committed).unwrap();
        let exact = measure(&snapshots, &[&content, &snapshots]).unwrap();
        assert_eq!(first.used_bytes, exact.used_bytes);
        assert_eq!(first.inodes_used, exact.inodes_used);
        assert_eq!(first.mountpoint, snapshots);
        assert_eq!(tallies.kept(), 1);

        // A committed snapshot is not walked again (it never changes); the
        // uncommitted one is.
        fs::write(snapshots.join("1/g"), vec![3u8; 8192]).unwrap();
        fs::write(snapshots.join("2/g"), vec![3u8; 8192]).unwrap();
        let second = tallies.measure(&content, &snapshots, &committed).unwrap();
        assert_eq!(second.inodes_used, first.inodes_used + 1);

        // A collected snapshot goes from the figures and from the tallies.
        fs::remove_dir_all(snapshots.join("1")).unwrap();
        let third = tallies
            .measure(&content, &snapshots, &HashSet::new())
            .unwrap();
        assert_eq!(third.inodes_used, second.inodes_used - 2);
        assert_eq!(tallies.kept(), 0);
    }

    #[test]
    fn writable_layers_are_walked_at_most_once_per_max_age() {
        let d = dir("layers");
        fs::write(d.0.join("a"), vec![1u8; 4096]).unwrap();
        fs::create_dir(d.0.join("c1")).unwrap();
        fs::write(d.0.join("c1/a"), vec![1u8; 4096]).unwrap();
        let cached = WritableLayers::new(d.0.clone(), Duration::from_secs(3600));
        let first = cached.usage().unwrap();
        let exact = measure(&d.0, &[&d.0]).unwrap();
        assert_eq!(
            (first.total.used_bytes, first.total.inodes_used),
            (exact.used_bytes, exact.inodes_used)
        );
        assert_eq!(
            first.by_container["c1"].inodes_used, 2,
            "the directory and its file"
        );
        fs::write(d.0.join("c1/b"), vec![1u8; 4096]).unwrap();
        assert_eq!(cached.usage().unwrap(), first, "reused within max_age");
        let fresh = WritableLayers::new(d.0.clone(), Duration::ZERO);
        let now = fresh.usage().unwrap();
        assert_eq!(now.total.inodes_used, first.total.inodes_used + 1);
        assert_eq!(now.by_container["c1"].inodes_used, 3);
        assert!(now.by_container["c1"].used_bytes >= 8192);
        assert_eq!(now.total.mountpoint, d.0);
        assert_eq!(now.by_container["c1"].mountpoint, d.0);
    }
}
