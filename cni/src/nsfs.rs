//! Namespaces pinned on nsfs bind mounts, so they live on without any process in them.
//!
//! A short-lived thread unshares the requested namespaces (network, IPC and UTS may be
//! unshared by one thread of a multi-threaded process), configures them from inside
//! (hostname, loopback) and bind-mounts its `/proc/self/task/<tid>/ns/<kind>` files
//! onto the pin paths, then exits. The bind mounts live in the host mount namespace,
//! where runc can join them by path.
//!
//! A pod with its own user namespace has it made by a [`crate::userns::Holder`]
//! child, which also unshares the pod's other namespaces so that the user
//! namespace owns them; the thread then joins those to configure them, and the
//! pins are taken from the child's `/proc/<pid>/ns/` files.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::userns::{Holder, IdMapping};

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
    /// Sysctls to set inside the new namespaces (`net.*` in the network
    /// namespace, IPC ones in the IPC namespace), checked by [`sysctl_kind`].
    pub sysctls: Vec<(String, String)>,
    /// A user namespace that owns the others, and where to pin it.
    pub user: Option<UserPin>,
}

/// A pod's user namespace: its mappings and the file it is pinned on.
#[derive(Clone, Debug)]
pub struct UserPin {
    /// Where to pin it.
    pub path: PathBuf,
    /// The uid mapping.
    pub uids: IdMapping,
    /// The gid mapping.
    pub gids: IdMapping,
}

/// A sysctl the kernel would not take (unknown name, bad value): the
/// request's fault, so callers can tell it from a failure of the host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SysctlRefused(pub String);

/// The namespace a namespaced sysctl belongs to, or None for one that is not
/// namespaced (setting it would change the whole node).
pub fn sysctl_kind(name: &str) -> Option<Kind> {
    let dotted = name.replace('/', ".");
    if dotted.starts_with("net.") {
        Some(Kind::Net)
    } else if dotted.starts_with("kernel.shm")
        || dotted.starts_with("kernel.msg")
        || dotted == "kernel.sem"
        || dotted.starts_with("fs.mqueue.")
    {
        Some(Kind::Ipc)
    } else {
        None
    }
}

/// The /proc/sys file of a sysctl name ("net.ipv4.ip_forward", or with slashes
/// when a component holds dots, "net/ipv4/conf/eth0.1/forwarding").
pub fn sysctl_path(name: &str) -> Option<PathBuf> {
    let rel = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    let clean = rel
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    clean.then(|| Path::new("/proc/sys").join(rel))
}

/// Creates new namespaces as requested and pins them. On failure nothing stays
/// pinned and no pin file is left behind.
pub fn pin_new(req: PinRequest) -> Result<()> {
    if req.pins.is_empty() && req.user.is_none() {
        return Ok(());
    }
    let mut paths: Vec<PathBuf> = req.pins.iter().map(|(_, p)| p.clone()).collect();
    paths.extend(req.user.as_ref().map(|u| u.path.clone()));
    let result = std::thread::Builder::new()
        .name("crust-nsfs".into())
        .spawn(move || match &req.user {
            None => pin_in_fresh_thread(&req, None),
            Some(user) => {
                let holder = Holder::spawn(user.uids, user.gids, clone_flags(&req))?;
                pin_file(&holder.ns_path("user"), &user.path)?;
                pin_in_fresh_thread(&req, Some(&holder))
            }
        })
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

fn clone_flags(req: &PinRequest) -> CloneFlags {
    req.pins
        .iter()
        .fold(CloneFlags::empty(), |acc, (k, _)| acc | k.clone_flag())
}

/// Makes the namespaces (or, with a `holder`, joins the ones it made),
/// configures them and pins them.
fn pin_in_fresh_thread(req: &PinRequest, holder: Option<&Holder>) -> Result<()> {
    match holder {
        None => unshare(clone_flags(req)).context("unshare of the pod namespaces")?,
        Some(h) => {
            for (kind, _) in &req.pins {
                let ns = std::fs::File::open(h.ns_path(kind.proc_name()))
                    .with_context(|| format!("opening the pod's {} namespace", kind.proc_name()))?;
                setns(&ns, kind.clone_flag())
                    .with_context(|| format!("joining the pod's {} namespace", kind.proc_name()))?;
            }
        }
    }
    let kinds: Vec<Kind> = req.pins.iter().map(|(k, _)| *k).collect();
    if let (true, Some(name)) = (kinds.contains(&Kind::Uts), &req.hostname) {
        nix::unistd::sethostname(name).with_context(|| format!("setting hostname {name:?}"))?;
    }
    if kinds.contains(&Kind::Net) {
        crate::loopback::up().context("bringing up loopback in the new network namespace")?;
    }
    for (name, value) in &req.sysctls {
        let path =
            sysctl_path(name).with_context(|| format!("sysctl name {name:?} is not valid"))?;
        match std::fs::write(&path, value) {
            Ok(()) => {}
            // No such sysctl, or a value it does not take: the request's fault.
            Err(e)
                if matches!(
                    e.raw_os_error().map(nix::errno::Errno::from_raw),
                    Some(
                        nix::errno::Errno::ENOENT
                            | nix::errno::Errno::EINVAL
                            | nix::errno::Errno::ERANGE
                    )
                ) =>
            {
                return Err(SysctlRefused(format!(
                    "the kernel refused sysctl {name}={value:?} in the pod: {e}"
                ))
                .into());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("setting sysctl {name} = {value:?} in the pod"));
            }
        }
    }
    let tid = nix::unistd::gettid();
    for (kind, path) in &req.pins {
        let src = match holder {
            Some(h) => h.ns_path(kind.proc_name()),
            None => PathBuf::from(format!("/proc/self/task/{tid}/ns/{}", kind.proc_name())),
        };
        pin_file(&src, path)?;
    }
    Ok(())
}

/// Pins the namespace file `src` on a new file at `path`.
fn pin_file(src: &Path, path: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .with_context(|| format!("creating pin file {}", path.display()))?;
    mount(
        Some(src),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} on {}", src.display(), path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names() {
        assert_eq!(sysctl_kind("net.ipv4.ip_forward"), Some(Kind::Net));
        assert_eq!(sysctl_kind("kernel.shmmax"), Some(Kind::Ipc));
        assert_eq!(sysctl_kind("fs.mqueue.msg_max"), Some(Kind::Ipc));
        assert_eq!(sysctl_kind("kernel.sem"), Some(Kind::Ipc));
        assert_eq!(sysctl_kind("vm.swappiness"), None);
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.1/forwarding"))
        );
        assert_eq!(sysctl_path("net.ipv4.."), None);
        assert_eq!(sysctl_path("net/../../etc"), None);
    }
}
