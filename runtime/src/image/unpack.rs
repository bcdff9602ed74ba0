//! Unpacking one layer tar into an empty snapshot directory, treating the
//! tar as hostile.
//!
//! - Paths are cleaned: a leading `/` or `./` is dropped (as tar tools do),
//!   `..` anywhere rejects the layer, so every path names something inside
//!   the snapshot directory.
//! - Nothing is created through a symlink: every parent component of an
//!   entry must be a real directory inside the snapshot (checked with one
//!   `openat2` that follows no symlink; missing parents are created as
//!   directories), files are opened with `O_EXCL|O_NOFOLLOW`, metadata calls
//!   do not follow links, and directory times, set last, go through such a
//!   descriptor too. Paths deeper than 256 components are refused. The
//!   snapshot directory is private to this store (under a 0700 directory) and
//!   filled by one thread, so nothing changes a checked component behind
//!   our back.
//! - Hardlinks must name an existing non-directory of this same layer, reached
//!   through real directories.
//! - Whiteouts become what overlayfs reads: `.wh.<name>` a character device
//!   0:0 named `<name>`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y`
//!   on its directory; other `.wh..wh.` entries (aufs bookkeeping) are skipped.
//! - Owner, mode (with setuid, setgid and sticky bits), mtime, device nodes
//!   and fifos are applied as the image says (crustd runs as root, as runc's
//!   rootfs needs). Of the PAX `SCHILY.xattr.*` attributes only
//!   `security.capability` and `user.*` are applied; `trusted.*` (overlay's
//!   own), `security.selinux` and the rest are not the image's to set.
//! - An entry's headers (PAX, GNU long names) may take at most 1 MiB, as
//!   the tar reader holds them in memory.
//! - gzip, zstd and plain tar are told apart by the blob's first bytes and
//!   decompressed as the blob streams in. Output is bounded (see
//!   [`uncompressed_limit`]), so is the memory a zstd frame may ask for, and
//!   the sha256 of the uncompressed tar (the layer's diff id) is computed on
//!   the way.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::bufread::MultiGzDecoder;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::digest::finish;
use crate::{Error, Result};

/// Uncompressed output allowed for any layer, however small its blob.
pub const MIN_UNCOMPRESSED_LIMIT: u64 = 64 << 20;
/// How many times its compressed size a layer may expand to.
///
/// Real layers expand 2 to 10 times; gzip can reach about 1000 times on
/// runs of zeros, which is what a decompression bomb uses. 100 times stays
/// far above any real layer (a layer that is mostly one large zero-filled
/// file is the rare exception) while keeping a 10 MiB blob from filling a
/// node's disk with more than 1 GiB.
pub const MAX_EXPANSION_RATIO: u64 = 100;

/// Most uncompressed bytes (tar stream, and file contents written) a layer
/// whose blob is `compressed_size` bytes may produce:
/// `max(MIN_UNCOMPRESSED_LIMIT, MAX_EXPANSION_RATIO × compressed_size)`.
pub fn uncompressed_limit(compressed_size: u64) -> u64 {
    MIN_UNCOMPRESSED_LIMIT.max(compressed_size.saturating_mul(MAX_EXPANSION_RATIO))
}

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest zstd window (log2 bytes) a layer may ask the decoder to keep:
/// 128 MiB, zstd's own default limit, which covers every compression level
/// including `--long`. A frame asking for more is refused rather than
/// allowed to take gigabytes of memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Most directories one layer may hold: each one's mtime is kept in memory
/// until the layer ends. Real layers hold a few thousand.
const MAX_DIRECTORIES: usize = 1 << 20;
/// Most components an entry's path (or a hardlink's target) may have.
/// PATH_MAX allows about 2000; real layers stay far below 100.
const MAX_DEPTH: usize = 256;
/// Most bytes the tar reader may take to find the next entry: its header
/// block and the extension headers before it (PAX `x`/`g`, GNU long name
/// and long link), which the tar crate reads whole into memory, and the
/// padding of the entry before. Real extension headers are a few hundred
/// bytes; a long name is at most PATH_MAX.
const MAX_HEADER_BYTES: u64 = (1 << 20) + (16 << 10);

/// An error the reader side wants reported as it is (a download that broke,
/// a size limit) rather than as "not a valid tar stream".
#[derive(Debug)]
pub(crate) struct ReadAbort(pub(crate) Error);

impl std::fmt::Display for ReadAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ReadAbort {}

impl ReadAbort {
    /// Wraps `e` into an `io::Error` that [`unpack_layer`] unwraps again.
    pub(crate) fn io(e: Error) -> io::Error {
        io::Error::other(ReadAbort(e))
    }
}

/// Maps an error from reading the layer stream.
fn read_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<ReadAbort>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(abort) = inner.downcast::<ReadAbort>()
        {
            return abort.0;
        }
        return Error::internal("lost the cause of a read error");
    }
    Error::invalid(format!("the layer is not a valid tar stream: {e}"))
}

/// Unpacks the layer blob read from `blob` (gzip- or zstd-compressed or
/// plain tar, told apart by its first bytes) into the empty directory `dest`, producing
/// at most `limit` uncompressed bytes. Returns the diff id (`sha256:<hex>`
/// of the uncompressed tar). On error `dest` holds a partial layer the
/// caller must discard.
pub(crate) fn unpack_layer<R: Read>(blob: R, dest: &Path, limit: u64) -> Result<String> {
    let mut blob = io::BufReader::with_capacity(128 << 10, blob);
    let head = loop {
        match blob.fill_buf() {
            Ok(buf) => break buf.to_vec(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        }
    };
    let mut magic = head;
    // fill_buf may return fewer bytes than the magic needs; read on to be sure.
    if magic.len() < ZSTD_MAGIC.len() && !magic.is_empty() {
        blob.consume(magic.len());
        let mut more = vec![0u8; ZSTD_MAGIC.len() - magic.len()];
        let n = read_up_to(&mut blob, &mut more).map_err(read_error)?;
        magic.extend_from_slice(&more[..n]);
        return unpack_stream(
            io::Cursor::new(magic.clone()).chain(blob),
            &magic,
            dest,
            limit,
        );
    }
    unpack_stream(blob, &magic, dest, limit)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn unpack_stream<R: BufRead>(blob: R, magic: &[u8], dest: &Path, limit: u64) -> Result<String> {
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&ZSTD_MAGIC) {
        let mut decoder = zstd::stream::read::Decoder::with_buffer(blob)
            .map_err(|e| Error::internal(format!("starting a zstd decoder: {e}")))?;
        decoder
            .window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(|e| Error::internal(format!("bounding the zstd window: {e}")))?;
        Box::new(Decoding {
            inner: decoder,
            format: "zstd",
        })
    } else if magic.starts_with(&GZIP_MAGIC) {
        Box::new(Decoding {
            inner: MultiGzDecoder::new(blob),
            format: "gzip",
        })
    } else {
        Box::new(blob)
    };
    let mut diff = HashingLimit {
        inner: decoded,
        hasher: Sha256::new(),
        read: 0,
        limit,
    };
    let root_fd = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(dest, "opening", e))?;
    let mut unpacker = Unpacker {
        root: dest.to_path_buf(),
        root_fd,
        written_budget: limit,
        limit,
        dir_times: BTreeMap::new(),
        checked_parent: None,
    };
    {
        let budget = Cell::new(None);
        let mut archive = tar::Archive::new(HeaderBudget {
            inner: &mut diff,
            left: &budget,
        });
        let mut entries = archive.entries().map_err(read_error)?;
        loop {
            budget.set(Some(MAX_HEADER_BYTES));
            let Some(entry) = entries.next() else { break };
            budget.set(None);
            let mut entry = entry.map_err(read_error)?;
            unpacker.entry(&mut entry)?;
            // What the unpacker left of the entry's data is read here,
            // unbounded by the header budget, not skipped by the next call.
            io::copy(&mut entry, &mut io::sink()).map_err(read_error)?;
        }
        budget.set(None);
    }
    // The diff id covers the whole stream, end-of-archive padding included.
    io::copy(&mut diff, &mut io::sink()).map_err(read_error)?;
    unpacker.finish()?;
    Ok(finish(diff.hasher))
}

/// A decompressor whose own errors say that the data is corrupt, while
/// errors of the reader below (a broken download) pass through as they are.
struct Decoding<R> {
    inner: R,
    format: &'static str,
}

impl<R: Read> Read for Decoding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<ReadAbort>())
                || e.kind() == io::ErrorKind::Interrupted
            {
                e
            } else {
                ReadAbort::io(Error::invalid(format!(
                    "the layer is not valid {} data: {e}",
                    self.format
                )))
            }
        })
    }
}

/// The reader the tar crate pulls from: while `left` is `Some`, it may read
/// only that many more bytes (finding the next entry); while `None`, as much
/// as it likes (an entry's data, which the unpacker streams).
struct HeaderBudget<'b, R> {
    inner: R,
    left: &'b Cell<Option<u64>>,
}

impl<R: Read> Read for HeaderBudget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        let n = self.inner.read(buf)?;
        match left.checked_sub(n as u64) {
            Some(rest) => {
                self.left.set(Some(rest));
                Ok(n)
            }
            None => Err(ReadAbort::io(Error::invalid(format!(
                "the layer has a tar extension header (PAX, or GNU long name or link) larger than {} MiB; refusing it",
                MAX_HEADER_BYTES >> 20
            )))),
        }
    }
}

/// Hashes the uncompressed stream and stops it at `limit` bytes.
struct HashingLimit<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for HashingLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(ReadAbort::io(too_big(self.limit)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn too_big(limit: u64) -> Error {
    Error::invalid(format!(
        "the layer expands to more than {limit} bytes (the limit is {MAX_EXPANSION_RATIO} times its compressed size, at least {MIN_UNCOMPRESSED_LIMIT} bytes); refusing a possible decompression bomb"
    ))
}

/// Owner, mode, time and xattrs of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker {
    root: PathBuf,
    /// `root`, opened: paths beneath it are resolved from here.
    root_fd: OwnedFd,
    written_budget: u64,
    limit: u64,
    /// Directories (relative to `root`, which is "") and their mtimes,
    /// applied last (creating children changes them). One entry per path;
    /// entries under a removed directory are dropped with it.
    dir_times: BTreeMap<PathBuf, u64>,
    /// The last parent directory found to be real directories all the way
    /// down; forgotten whenever anything is removed.
    checked_parent: Option<PathBuf>,
}

/// Refuses a path (`path`, of entry `rel`) deeper than [`MAX_DEPTH`].
fn check_depth(rel: &Path, path: &Path) -> Result<()> {
    let depth = path.components().count();
    if depth > MAX_DEPTH {
        return Err(bad_entry(
            rel,
            format!("names a path {depth} components deep; at most {MAX_DEPTH} are accepted"),
        ));
    }
    Ok(())
}

fn bad_entry(rel: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("layer entry {:?} {why}", rel.display().to_string()))
}

fn io_error(path: &Path, what: &str, e: impl Into<anyhow::Error>) -> Error {
    Error::Internal(e.into().context(format!("{what} {}", path.display())))
}

/// Cleans a tar path into a relative path with only normal components.
fn clean_path(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad_entry(raw, "escapes the layer directory with \"..\""));
            }
        }
    }
    Ok(out)
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path().map_err(read_error)?.into_owned();
        let rel = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let meta = read_meta(entry, &rel)?;

        if let Some(name) = rel.file_name().and_then(|n| n.to_str())
            && name.starts_with(WHITEOUT_PREFIX)
        {
            return self.whiteout(&rel, name, &meta);
        }
        if rel.as_os_str().is_empty() {
            // The layer's root ("./"): only a directory makes sense here.
            if kind != EntryType::Directory {
                return Err(bad_entry(
                    &raw,
                    "replaces the layer root with a non-directory",
                ));
            }
            let root = self.root.clone();
            self.apply_meta(&root, &meta, false)?;
            return self.record_dir_time(&rel, meta.mtime);
        }

        let path = self.checked_parent_of(&rel)?;
        match kind {
            EntryType::Directory => {
                if !self.clear(&path, true)? {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(|e| io_error(&path, "creating directory", e))?;
                }
                self.apply_meta(&path, &meta, false)?;
                self.record_dir_time(&rel, meta.mtime)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&path, false)?;
                self.write_file(entry, &path, &rel, &meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(read_error)?
                    .ok_or_else(|| bad_entry(&rel, "is a symlink without a target"))?
                    .into_owned();
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| io_error(&path, "creating symlink", e))?;
                self.apply_meta(&path, &meta, true)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(read_error)?
                    .ok_or_else(|| bad_entry(&rel, "is a hardlink without a target"))?
                    .into_owned();
                self.hardlink(&rel, &path, &target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let h = entry.header();
                        let major = h.device_major().map_err(read_error)?.unwrap_or(0);
                        let minor = h.device_minor().map_err(read_error)?.unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, nix::sys::stat::makedev(major.into(), minor.into()))
                    }
                };
                self.clear(&path, false)?;
                nix::sys::stat::mknod(&path, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| io_error(&path, "creating device node", e))?;
                self.apply_meta(&path, &meta, false)?;
            }
            other => {
                return Err(bad_entry(
                    &rel,
                    format!("has unsupported tar type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every parent of `rel` is a real directory inside the
    /// snapshot, creating missing ones, and returns the entry's full path.
    fn checked_parent_of(&mut self, rel: &Path) -> Result<PathBuf> {
        check_depth(rel, rel)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if self.checked_parent.as_deref() != Some(parent) {
            // One openat2 in the common case; the walk below only runs to
            // name what is in the way (or on an unexpected error).
            if beneath::ensure_dirs(&self.root_fd, parent).is_err() {
                self.walk_parent(rel, parent)?;
            }
            self.checked_parent = Some(parent.to_path_buf());
        }
        Ok(self.root.join(rel))
    }

    /// Checks `parent` component by component with `lstat`, creating
    /// missing directories, and says which component is not a directory.
    fn walk_parent(&self, rel: &Path, parent: &Path) -> Result<()> {
        let mut cur = self.root.clone();
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(bad_entry(
                        rel,
                        format!(
                            "lies under {:?}, which is not a directory in this layer; refusing to follow it",
                            cur.strip_prefix(&self.root)
                                .unwrap_or(&cur)
                                .display()
                                .to_string()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(|e| io_error(&cur, "creating directory", e))?;
                }
                Err(e) => return Err(io_error(&cur, "inspecting", e)),
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `path`. Returns true when an existing
    /// directory stays (a directory entry over a directory only updates it).
    fn clear(&mut self, path: &Path, new_is_dir: bool) -> Result<bool> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(path, "inspecting", e)),
            Ok(m) if m.is_dir() && new_is_dir => Ok(true),
            Ok(m) if m.is_dir() => {
                self.checked_parent = None;
                self.forget_dir_times_under(path);
                fs::remove_dir_all(path).map_err(|e| io_error(path, "removing", e))?;
                Ok(false)
            }
            Ok(_) => {
                self.checked_parent = None;
                fs::remove_file(path).map_err(|e| io_error(path, "removing", e))?;
                Ok(false)
            }
        }
    }

    fn whiteout(&mut self, rel: &Path, name: &str, meta: &Meta) -> Result<()> {
        let path = self.checked_parent_of(rel)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if name == OPAQUE_MARKER {
            return set_xattr(&dir, "trusted.overlay.opaque", b"y")
                .map_err(|e| io_error(&dir, "marking opaque", e));
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(bad_entry(rel, "is a whiteout of nothing"));
        }
        let target = dir.join(hidden);
        self.clear(&target, false)?;
        nix::sys::stat::mknod(
            &target,
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(|e| io_error(&target, "creating whiteout", e))?;
        std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_error(&target, "changing owner of", e))?;
        Ok(())
    }

    fn hardlink(&mut self, rel: &Path, path: &Path, raw_target: &Path) -> Result<()> {
        let target_rel = clean_path(raw_target).map_err(|_| {
            bad_entry(
                rel,
                format!(
                    "links to {:?}, outside the layer",
                    raw_target.display().to_string()
                ),
            )
        })?;
        if target_rel.as_os_str().is_empty() {
            return Err(bad_entry(rel, "links to the layer root"));
        }
        check_depth(rel, &target_rel)?;
        let mut cur = self.root.clone();
        let count = target_rel.components().count();
        for (i, c) in target_rel.components().enumerate() {
            cur.push(c);
            let last = i + 1 == count;
            match fs::symlink_metadata(&cur) {
                Ok(m) if !last && m.is_dir() => {}
                Ok(m) if last && !m.is_dir() => {}
                Ok(_) if last => return Err(bad_entry(rel, "is a hardlink to a directory")),
                _ => {
                    return Err(bad_entry(
                        rel,
                        format!(
                            "links to {:?}, which is not a file in this layer",
                            raw_target.display().to_string()
                        ),
                    ));
                }
            }
        }
        if cur == path {
            return Ok(());
        }
        self.clear(path, false)?;
        fs::hard_link(&cur, path).map_err(|e| io_error(path, "creating hardlink", e))
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        rel: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_error(path, "creating", e))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            if n as u64 > self.written_budget {
                return Err(bad_entry(rel, too_big(self.limit)));
            }
            self.written_budget -= n as u64;
            file.write_all(&buf[..n])
                .map_err(|e| io_error(path, "writing", e))?;
        }
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_error(path, "changing owner of", e))?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| io_error(path, "changing mode of", e))?;
        for (name, value) in &meta.xattrs {
            apply_xattr(path, name, value, |n, v| fset_xattr(&file, n, v))?;
        }
        let t = system_time(meta.mtime);
        file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(|e| io_error(path, "setting times of", e))?;
        Ok(())
    }

    /// Owner, mode and xattrs of something just created (not a regular file);
    /// times too, except for directories (see `dir_times`).
    fn apply_meta(&self, path: &Path, meta: &Meta, is_symlink: bool) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_error(path, "changing owner of", e))?;
        if is_symlink {
            set_times_nofollow(path, meta.mtime)?;
            return Ok(());
        }
        // The final component was just created (or checked) as a non-symlink,
        // so a path-based chmod reaches it and nothing else.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| io_error(path, "changing mode of", e))?;
        for (name, value) in &meta.xattrs {
            apply_xattr(path, name, value, |n, v| set_xattr(path, n, v))?;
        }
        if !fs::symlink_metadata(path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            set_times_nofollow(path, meta.mtime)?;
        }
        Ok(())
    }

    /// Remembers the mtime of directory `rel`, set by [`Unpacker::finish`].
    fn record_dir_time(&mut self, rel: &Path, mtime: u64) -> Result<()> {
        if self.dir_times.len() >= MAX_DIRECTORIES && !self.dir_times.contains_key(rel) {
            return Err(bad_entry(
                rel,
                format!(
                    "makes the layer hold more than {MAX_DIRECTORIES} directories; refusing it"
                ),
            ));
        }
        self.dir_times.insert(rel.to_path_buf(), mtime);
        Ok(())
    }

    /// Drops the recorded mtimes of the directory at `path` and everything
    /// under it, which is about to be removed.
    fn forget_dir_times_under(&mut self, path: &Path) {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return;
        };
        // Paths order by component, so a directory's descendants follow it.
        let doomed: Vec<PathBuf> = self
            .dir_times
            .range(rel.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(rel))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.dir_times.remove(&p);
        }
    }

    /// Applies directory mtimes, each through a descriptor opened beneath
    /// the root without following any symlink: a directory whose path a
    /// later entry turned into a symlink is skipped, not followed.
    fn finish(&mut self) -> Result<()> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            set_dir_times_beneath(&self.root_fd, &self.root, &rel, mtime)?;
        }
        Ok(())
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<Meta> {
    let h = entry.header();
    let id = |v: u64| {
        u32::try_from(v).map_err(|_| bad_entry(rel, format!("has an out-of-range uid/gid {v}")))
    };
    let mut uid = h.uid().map_err(read_error)?;
    let mut gid = h.gid().map_err(read_error)?;
    let mode = h.mode().map_err(read_error)? & 0o7777;
    let mut mtime = h.mtime().map_err(read_error)?;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(read_error)? {
        for ext in pax {
            let ext = ext.map_err(read_error)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse::<u64>().ok())
            };
            match key {
                "uid" => uid = number().ok_or_else(|| bad_entry(rel, "has a malformed PAX uid"))?,
                "gid" => gid = number().ok_or_else(|| bad_entry(rel, "has a malformed PAX gid"))?,
                "mtime" => mtime = number().unwrap_or(mtime),
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(Meta {
        uid: id(uid)?,
        gid: id(gid)?,
        mode,
        mtime,
        xattrs,
    })
}

/// Applies an xattr from the image if it is one an image may set.
fn apply_xattr(
    path: &Path,
    name: &str,
    value: &[u8],
    set: impl Fn(&str, &[u8]) -> io::Result<()>,
) -> Result<()> {
    if name == "security.capability" {
        set(name, value).map_err(|e| io_error(path, &format!("setting {name} on"), e))
    } else if name.starts_with("user.") {
        if let Err(e) = set(name, value) {
            tracing::debug!(path = %path.display(), xattr = name, error = %e, "skipping an xattr the filesystem refused");
        }
        Ok(())
    } else {
        tracing::debug!(path = %path.display(), xattr = name, "not applying an xattr images may not set");
        Ok(())
    }
}

/// Sets the times of the directory `rel` beneath `root` (whose path is
/// `root_path`, for messages). Resolution stays beneath `root` and follows
/// no symlink; a directory that is gone or no longer reachable that way is
/// skipped.
fn set_dir_times_beneath(root: &OwnedFd, root_path: &Path, rel: &Path, mtime: u64) -> Result<()> {
    let dir = match beneath::open_dir(root, rel, OFlag::O_RDONLY) {
        Ok(dir) => dir,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(()),
        Err(e) => return Err(io_error(&root_path.join(rel), "opening", e)),
    };
    let t = timespec(mtime);
    nix::sys::stat::futimens(&dir, &t, &t)
        .map_err(|e| io_error(&root_path.join(rel), "setting times of", e))
}

/// A tar mtime as a timespec, clamped to the largest time the kernel takes.
fn timespec(mtime: u64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}

/// A tar mtime as a `SystemTime`, clamped like [`timespec`].
fn system_time(mtime: u64) -> SystemTime {
    let secs = mtime.min(i64::MAX as u64);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn set_times_nofollow(path: &Path, mtime: u64) -> Result<()> {
    let t = timespec(mtime);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_error(path, "setting times of", e))
}

/// `lsetxattr(2)`: sets an xattr without following a final symlink.
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fset_xattr(file: &File, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name)?;
    // SAFETY: the fd is open for the call's duration; name is NUL-terminated; value is a valid slice.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

mod beneath;
#[cfg(test)]
mod tests;
