//! Commands run on the host itself, such as `systemctl`, by `crustd install`
//! even when it runs in the installer DaemonSet's container: there the
//! command is run in the mount namespace of the host's PID 1 (the pod has
//! the host's PID namespace), so the host's own binary talks to the host's
//! own init, and the image needs no shell or nsenter.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// The PATH a command run in the host's mount namespace is looked up in.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most output kept of one command.
const MAX_OUTPUT: u64 = 1 << 20;

/// The host's mount namespace, when this process is not in it.
pub struct HostNamespace {
    init_mounts: Option<OwnedFd>,
}

impl HostNamespace {
    /// Finds out whether this process shares PID 1's mount namespace; when
    /// it does not, opens that namespace to run commands in.
    pub fn detect() -> Result<HostNamespace> {
        let ours = std::fs::metadata("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
        let init = match std::fs::metadata("/proc/1/ns/mnt") {
            Ok(m) => m,
            // Not allowed to look at PID 1: run commands where we are.
            Err(_) => return Ok(HostNamespace { init_mounts: None }),
        };
        if (ours.dev(), ours.ino()) == (init.dev(), init.ino()) {
            return Ok(HostNamespace { init_mounts: None });
        }
        let ns = std::fs::File::open("/proc/1/ns/mnt").context("opening /proc/1/ns/mnt")?;
        Ok(HostNamespace {
            init_mounts: Some(ns.into()),
        })
    }

    /// True when commands run in PID 1's mount namespace rather than ours.
    pub fn entered(&self) -> bool {
        self.init_mounts.is_some()
    }

    /// Runs `program` with `args` on the host, for at most `limit`: its exit
    /// status, stdout and stderr.
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<crust_child::Finished> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(ns) = &self.init_mounts {
            let fd = ns.as_raw_fd();
            cmd.env("PATH", HOST_PATH);
            // SAFETY: the closure runs in the forked child before exec and
            // only makes async-signal-safe system calls (setns, chdir) on a
            // descriptor the parent keeps open until the child has exec'd.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::chdir(c"/".as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        crust_child::run(&mut cmd, b"", limit, MAX_OUTPUT)
            .with_context(|| format!("running {program} {}", args.join(" ")))
    }
}
