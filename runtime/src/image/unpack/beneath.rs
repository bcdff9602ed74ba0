//! Directories of a snapshot being unpacked, reached through descriptors:
//! resolution stays beneath the snapshot's root and follows no symlink, so
//! a path that a layer turned into a symlink is never followed, and one
//! `openat2` checks a whole path instead of an `lstat` per component.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens the directory `rel` beneath `root` ("" is `root` itself) with
/// `flags` (`O_PATH` or `O_RDONLY`), following no symlink on the way.
pub(super) fn open_dir(root: &OwnedFd, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let target = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(root, target, how)
}

/// Makes `rel` a real directory beneath `root`, every component of it a
/// directory (not a symlink), creating the missing ones (mode 0755, less
/// the umask). Costs one `openat2` per missing component plus one; fails
/// (ELOOP, ENOTDIR, ...) when a component is something else, which the
/// caller then names.
pub(super) fn ensure_dirs(root: &OwnedFd, rel: &Path) -> nix::Result<()> {
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut at = rel;
    let mut dir = loop {
        match open_dir(root, at, OFlag::O_PATH) {
            Ok(dir) => break dir,
            Err(Errno::ENOENT) => {
                let Some(name) = at.file_name() else {
                    return Err(Errno::ENOENT);
                };
                missing.push(name);
                at = at.parent().unwrap_or(Path::new(""));
            }
            Err(e) => return Err(e),
        }
    };
    for name in missing.into_iter().rev() {
        nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755))?;
        dir = nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
    }
    Ok(())
}
