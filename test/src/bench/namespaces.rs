//! The floor of RunPodSandbox and StopPodSandbox+RemovePodSandbox: what a
//! runtime without a pause container must do at least. A short-lived thread
//! unshares new network, IPC and UTS namespaces, sets the hostname, brings
//! loopback up with an ioctl and bind-mounts its namespace files onto pin
//! files; teardown unmounts and deletes the pins. Also `ip netns add`/`del`,
//! the same done by the usual tool, for comparison.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, ensure};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::requirements;

/// Namespace kinds pinned per pod, as `/proc/thread-self/ns/<name>`.
const KINDS: [&str; 3] = ["net", "ipc", "uts"];

/// The pinned namespaces of one floor "pod".
#[derive(Debug)]
pub struct PinnedNamespaces {
    pins: Vec<PathBuf>,
}

impl PinnedNamespaces {
    /// Creates and pins new net, IPC and UTS namespaces as `<dir>/<name>-<kind>`.
    pub fn create(dir: &Path, name: &str) -> Result<Self> {
        let pins: Vec<PathBuf> = KINDS
            .iter()
            .map(|k| dir.join(format!("{name}-{k}")))
            .collect();
        let thread_pins = pins.clone();
        let hostname = name.to_string();
        let made = std::thread::Builder::new()
            .name("bench-netns".into())
            .spawn(move || pin_from_fresh_thread(&thread_pins, &hostname))
            .context("spawning the namespace thread")?
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the namespace thread panicked")));
        let pinned = Self { pins };
        match made {
            Ok(()) => Ok(pinned),
            Err(e) => {
                let _ = pinned.remove();
                Err(e)
            }
        }
    }

    /// Unmounts and deletes the pins (the namespaces go with the last user).
    pub fn remove(self) -> Result<()> {
        let mut first_error = None;
        for pin in &self.pins {
            if let Err(e) = umount2(pin, MntFlags::MNT_DETACH)
                && e != nix::errno::Errno::EINVAL
                && e != nix::errno::Errno::ENOENT
            {
                first_error.get_or_insert(anyhow!("umount {}: {e}", pin.display()));
            }
            if let Err(e) = std::fs::remove_file(pin)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                first_error.get_or_insert(anyhow!("remove {}: {e}", pin.display()));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn pin_from_fresh_thread(pins: &[PathBuf], hostname: &str) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .context("unshare")?;
    nix::unistd::sethostname(hostname).context("sethostname")?;
    loopback_up()?;
    for (kind, pin) in KINDS.iter().zip(pins) {
        std::fs::File::create(pin).with_context(|| format!("creating {}", pin.display()))?;
        let source = format!("/proc/thread-self/ns/{kind}");
        mount(
            Some(source.as_str()),
            pin,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {source} on {}", pin.display()))?;
    }
    Ok(())
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for SIOCSIFFLAGS")?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming `lo`; the ioctls read and write it.
    unsafe {
        ensure!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        ensure!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == 0,
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `ip netns add <name>` and `ip -n <name> link set lo up`.
pub fn ip_netns_add(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// `ip netns del <name>`.
pub fn ip_netns_del(name: &str) -> Result<()> {
    ip(&["netns", "del", name])
}

fn ip(args: &[&str]) -> Result<()> {
    let program = requirements::find_program("ip").context("ip (iproute2) is not installed")?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
