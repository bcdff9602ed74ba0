//! Small filesystem helpers that crash safety depends on.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Writes `data` to `path` so that after a crash the file holds either the old
/// or the new content, never a torn mix: temp file, fsync, rename, fsync of the
/// directory. The file is readable by its owner alone.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// [`write_atomic`] with the file's permission bits `mode`, whatever the
/// umask (an installed binary, a config others read).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Reads all of `file`, which must be a regular file of at most `cap`
/// bytes: what crust reads for a request (an image's /etc/passwd, a seccomp
/// profile) may be a FIFO, a device or huge. Open it with `O_NONBLOCK` so
/// the open itself cannot block. The error says what the file is instead.
pub fn read_regular_capped(file: File, cap: u64) -> Result<Vec<u8>, String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be inspected: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    if meta.len() > cap {
        return Err(format!(
            "is {} bytes, more than the {cap} bytes crust reads",
            meta.len()
        ));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if out.len() as u64 > cap {
        return Err(format!("grew past the {cap} bytes crust reads"));
    }
    Ok(out)
}

/// Opens `path` for reading without blocking on a FIFO (and without
/// following a final symlink when `nofollow`), for [`read_regular_capped`].
pub fn open_nonblocking(path: &Path, nofollow: bool) -> std::io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// Removes a file, treating "already gone" as success.
pub fn remove_file_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a directory tree, treating "already gone" as success.
pub fn remove_dir_all_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a directory if it is empty: one that is gone, or that something
/// else has put a file in since, is left as it is.
pub fn remove_dir_if_empty(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir(path) {
        Err(e)
            if e.kind() != std::io::ErrorKind::NotFound
                && e.kind() != std::io::ErrorKind::DirectoryNotEmpty =>
        {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content() {
        let dir = std::env::temp_dir().join(format!("crust-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("obj.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_only_small_regular_files() {
        let dir = std::env::temp_dir().join(format!("crust-fsutil-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("profile.json");
        fs::write(&file, b"{}").unwrap();
        let read = |p: &Path, cap| read_regular_capped(open_nonblocking(p, false).unwrap(), cap);
        assert_eq!(read(&file, 10).unwrap(), b"{}");
        assert!(read(&file, 1).unwrap_err().contains("more than"));
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Neither the open nor the read blocks on a FIFO nobody writes.
        assert!(read(&fifo, 10).unwrap_err().contains("FIFO"));
        assert!(
            read(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .contains("device")
        );
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        assert!(open_nonblocking(&dir.join("link"), true).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
