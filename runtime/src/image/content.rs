//! The content store: blobs (manifests, configs, compressed layers) by digest
//! under `content/blobs/sha256/<hex>`.
//!
//! A blob is written to a fresh file under `content/ingest/`, hashed and
//! counted while it is written, and renamed into `blobs/` only once its sha256
//! and size match what was expected, so a file under `blobs/` is always
//! complete and correct. Whatever is under `ingest/` when the store opens is
//! the leftover of an interrupted write and is deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use sha2::{Digest as _, Sha256};

use super::digest::{finish, hex_of};
use crate::fsutil;
use crate::{Error, Result};

/// Distinguishes ingest files written concurrently by this process.
static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Blobs by digest, on disk.
#[derive(Debug)]
pub(crate) struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) `dir` and deletes leftover ingest files.
    pub(crate) fn open(dir: &Path) -> Result<ContentStore> {
        let blobs = dir.join("blobs").join("sha256");
        let ingest = dir.join("ingest");
        fsutil::remove_dir_all_if_exists(&ingest)?;
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(hex_of(digest, "blob digest")?))
    }

    /// Whether the blob is present.
    pub(crate) fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a whole blob, refusing one larger than `max` bytes.
    pub(crate) fn read(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut data = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {}", path.display()))?;
        if data.len() as u64 > max {
            return Err(Error::invalid(format!(
                "blob {digest} is larger than {max} bytes"
            )));
        }
        Ok(data)
    }

    /// Opens a blob for reading.
    pub(crate) fn open_blob(&self, digest: &str) -> Result<File> {
        let path = self.path(digest)?;
        Ok(File::open(&path).with_context(|| format!("opening {}", path.display()))?)
    }

    /// Stores `data` as `digest`, after checking that it is.
    pub(crate) fn write(&self, digest: &str, data: &[u8]) -> Result<()> {
        if self.has(digest) {
            return Ok(());
        }
        let mut ingest = self.ingest()?;
        ingest.write_all(data)?;
        ingest.verify(digest, data.len() as u64)?;
        ingest.commit()
    }

    /// Starts writing a new blob.
    pub(crate) fn ingest(&self) -> Result<Ingest> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.ingest.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Ingest {
            file,
            path,
            blobs: self.blobs.clone(),
            hasher: Sha256::new(),
            size: 0,
            verified: None,
            committed: false,
        })
    }

    /// Digests of every stored blob.
    pub(crate) fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.blobs)
            .with_context(|| format!("reading {}", self.blobs.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.blobs.display()))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// Deletes a blob; absent is fine.
    pub(crate) fn remove(&self, digest: &str) -> Result<()> {
        Ok(fsutil::remove_file_if_exists(&self.path(digest)?)?)
    }
}

/// A blob being written: hashes and counts what goes through it; removed on
/// drop unless [`Ingest::commit`] succeeded.
pub(crate) struct Ingest {
    file: File,
    path: PathBuf,
    blobs: PathBuf,
    hasher: Sha256,
    size: u64,
    verified: Option<String>,
    committed: bool,
}

impl Ingest {
    /// Checks that what was written is `size` bytes hashing to `digest`.
    pub(crate) fn verify(&mut self, digest: &str, size: u64) -> Result<()> {
        let hex = hex_of(digest, "blob digest")?.to_string();
        let got = finish(std::mem::take(&mut self.hasher));
        if self.size != size {
            return Err(Error::invalid(format!(
                "blob {digest} is {} bytes, but its descriptor says {size}",
                self.size
            )));
        }
        if got != digest {
            return Err(Error::invalid(format!(
                "blob {digest} does not match its digest: what was received hashes to {got}"
            )));
        }
        self.verified = Some(hex);
        Ok(())
    }

    /// Makes verified data durable and moves it into place.
    pub(crate) fn commit(mut self) -> Result<()> {
        let Some(hex) = self.verified.take() else {
            return Err(Error::internal("committing a blob that was not verified"));
        };
        self.file
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        let dest = self.blobs.join(hex);
        fs::rename(&self.path, &dest)
            .with_context(|| format!("renaming {} to {}", self.path.display(), dest.display()))?;
        self.committed = true;
        fsutil::sync_dir(&self.blobs)?;
        Ok(())
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::sha256_of;

    #[test]
    fn write_checks_digest_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("crust-content-{}", std::process::id()));
        let store = ContentStore::open(&dir).unwrap();
        let d = sha256_of(b"hello");
        assert!(store.write(&sha256_of(b"other"), b"hello").is_err());
        assert_eq!(fs::read_dir(dir.join("ingest")).unwrap().count(), 0);
        store.write(&d, b"hello").unwrap();
        assert!(store.has(&d));
        assert_eq!(store.read(&d, 100).unwrap(), b"hello");
        assert!(store.read(&d, 2).is_err());
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        store.remove(&d).unwrap();
        assert!(!store.has(&d));
        fs::remove_dir_all(&dir).unwrap();
    }
}
