//! Bind mounts crust prepares itself, with the new mount API (`open_tree`,
//! `mount_setattr`, `move_mount`), for what runc 1.1 cannot do: idmapped
//! mounts (the layers and volumes of a pod with its own user namespace) and
//! recursive read-only mounts. The container then gets a plain bind mount of
//! the prepared tree, which keeps its idmapping and read-only flags.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl MountAttr {
    /// Attributes that make a tree read-only and/or idmapped through
    /// `userns`, with `propagation` (0 leaves it).
    fn new(read_only: bool, userns: Option<&File>, propagation: u64) -> MountAttr {
        let mut attr = MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation,
            userns_fd: 0,
        };
        if read_only {
            attr.attr_set |= MOUNT_ATTR_RDONLY;
        }
        if let Some(ns) = userns {
            attr.attr_set |= MOUNT_ATTR_IDMAP;
            attr.userns_fd = ns.as_raw_fd() as u64;
        }
        attr
    }
}

/// How a prepared bind mount differs from its source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindMount {
    /// Take the mounts under the source along (an rbind).
    pub recursive: bool,
    /// Make every mount of the copy read-only.
    pub read_only: bool,
    /// Idmap the copy through the user namespace pinned at this path: files
    /// owned by id N on disk appear owned by N as the namespace maps it.
    pub idmap: Option<PathBuf>,
}

/// The kernel or the filesystem cannot make the mount asked for (no
/// idmapped mounts on it, no `mount_setattr`): the request cannot be met on
/// this host, which callers report as a failed precondition.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// Attaches on `target` (an existing directory, or file for a file source)
/// a private copy of the mount tree at `source`, changed as `how` says.
pub fn bind(source: &Path, target: &Path, how: &BindMount) -> Result<()> {
    let tree = open_tree(source, how.recursive)
        .with_context(|| format!("copying the mount tree at {}", source.display()))?;
    let userns = match &how.idmap {
        Some(p) => Some(
            File::open(p).with_context(|| format!("opening the user namespace {}", p.display()))?,
        ),
        None => None,
    };
    let attr = MountAttr::new(how.read_only, userns.as_ref(), libc::MS_PRIVATE);
    set_attr(&tree, &attr, how.recursive).map_err(|e| {
        let what = match (how.idmap.is_some(), how.read_only) {
            (true, true) => "an idmapped, read-only",
            (true, false) => "an idmapped",
            (false, _) => "a recursively read-only",
        };
        Unsupported(format!(
            "{} cannot be made {what} mount on this host: {e}",
            source.display()
        ))
    })?;
    move_to(&tree, target).with_context(|| {
        format!(
            "attaching the copy of {} on {}",
            source.display(),
            target.display()
        )
    })
}

fn path_arg(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn open_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let path = path_arg(source)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a valid C string and flags; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_attr(tree: &OwnedFd, attr: &MountAttr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `attr` is a live `struct mount_attr` of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn move_to(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let path = path_arg(target)?;
    // SAFETY: a detached tree's descriptor, an empty path and a C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel makes recursive read-only copies of mount trees.
pub fn recursive_read_only_supported() -> bool {
    open_tree(Path::new("/"), false)
        .and_then(|tree| set_attr(&tree, &MountAttr::new(true, None, 0), true))
        .is_ok()
}

/// Whether the filesystem holding `dir` can be idmapped through `userns`
/// (an open user namespace file); the kernel's refusal if not.
pub fn idmap_supported(dir: &Path, userns: &File) -> Result<()> {
    let tree =
        open_tree(dir, false).with_context(|| format!("copying the mount at {}", dir.display()))?;
    set_attr(&tree, &MountAttr::new(false, Some(userns), 0), false)
        .with_context(|| format!("idmapping a copy of {}", dir.display()))
}
