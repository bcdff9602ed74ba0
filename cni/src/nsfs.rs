//! Namespaces pinned on nsfs bind mounts, so they live on without any process in them.
//!
//! A short-lived thread unshares the requested namespaces (network, IPC and UTS may be
//! unshared by one thread of a multi-threaded process), configures them from inside
//! (hostname, loopback) and bind-mounts its `/proc/self/task/<tid>/ns/<kind>` files
//! onto the pin paths, then exits. The bind mounts live in the host mount namespace,
//! where runc can join them by path.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// A kind of namespace that can be pinned without a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Network namespace; its loopback interface is brought up.
    Net,
    /// IPC namespace.
    Ipc,
    /// UTS namespace; its hostname is set.
    Uts,
}

impl Kind {
    fn proc_name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// What to create: each kind with the file it is pinned on.
#[derive(Clone, Debug, Default)]
pub struct PinRequest {
    /// Namespaces to create and where to pin each one.
    pub pins: Vec<(Kind, PathBuf)>,
    /// Hostname to set inside a new UTS namespace.
    pub hostname: Option<String>,
}

/// Creates new namespaces as requested and pins them. On failure nothing stays
/// pinned and no pin file is left behind.
pub fn pin_new(req: PinRequest) -> Result<()> {
    if req.pins.is_empty() {
        return Ok(());
    }
    let paths: Vec<PathBuf> = req.pins.iter().map(|(_, p)| p.clone()).collect();
    let result = std::thread::Builder::new()
        .name("crust-nsfs".into())
        .spawn(move || pin_in_fresh_thread(&req))
        .context("spawning the namespace thread")?
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the namespace thread panicked")));
    if result.is_err() {
        for p in &paths {
            let _ = unpin(p);
        }
    }
    result
}

fn pin_in_fresh_thread(req: &PinRequest) -> Result<()> {
    let flags = req
        .pins
        .iter()
        .fold(CloneFlags::empty(), |acc, (k, _)| acc | k.clone_flag());
    unshare(flags).context("unshare of the pod namespaces")?;
    let kinds: Vec<Kind> = req.pins.iter().map(|(k, _)| *k).collect();
    if let (true, Some(name)) = (kinds.contains(&Kind::Uts), &req.hostname) {
        nix::unistd::sethostname(name).with_context(|| format!("setting hostname {name:?}"))?;
    }
    if kinds.contains(&Kind::Net) {
        crate::loopback::up().context("bringing up loopback in the new network namespace")?;
    }
    let tid = nix::unistd::gettid();
    for (kind, path) in &req.pins {
        let src = PathBuf::from(format!("/proc/self/task/{tid}/ns/{}", kind.proc_name()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .with_context(|| format!("creating pin file {}", path.display()))?;
        mount(
            Some(src.as_path()),
            path.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {} on {}", src.display(), path.display()))?;
    }
    Ok(())
}

/// Unmounts a pinned namespace and removes its file. A pin that is already gone is fine.
pub fn unpin(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// True when `path` is a live pinned namespace (an nsfs mount), false when it is
/// missing or a plain file (for instance after a reboot emptied the mounts).
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == NSFS_MAGIC,
        Err(_) => false,
    }
}
