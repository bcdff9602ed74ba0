//! Commands run on the host itself, such as `systemctl`, by `crustd install`
//! even when it runs in the installer DaemonSet's container: there the
//! command is run in the mount namespace of the host's PID 1 (the pod has
//! the host's PID namespace), so the host's own binary talks to the host's
//! own init, and the image needs no shell or nsenter.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// The directories a host keeps its programs in, in the order a command
/// run in the host's mount namespace is looked up in them.
pub const HOST_BIN_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Where the filesystem seen at `root` (a host root, a process's
/// `/proc/<pid>/root`) has `program` in one of [`HOST_BIN_DIRS`]: the path
/// the host itself knows it by.
pub fn find_program(root: &Path, program: &str) -> Option<PathBuf> {
    HOST_BIN_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| root.join(path.strip_prefix("/").unwrap_or(path)).is_file())
}

/// The most output kept of one command.
const MAX_OUTPUT: u64 = 1 << 20;

/// Where commands run: here, or in the mount namespace of the host's PID 1
/// when this process is not in it.
pub struct HostNamespace {
    /// The process whose mount namespace commands enter.
    pid: u32,
    /// That namespace, when it is not ours.
    mounts: Option<OwnedFd>,
    /// Why the process's namespace could not be looked at, if it could not.
    hidden: Option<String>,
}

impl HostNamespace {
    /// The host's PID 1: entered when this process is in another mount
    /// namespace (a container with the host's PID namespace).
    pub fn detect() -> Result<HostNamespace> {
        Self::of_process(1)
    }

    /// Commands run here, in this process's own mount namespace.
    pub fn here() -> HostNamespace {
        HostNamespace {
            pid: std::process::id(),
            mounts: None,
            hidden: None,
        }
    }

    /// The mount namespace of process `pid`, entered when it is not ours.
    pub fn of_process(pid: u32) -> Result<HostNamespace> {
        let path = format!("/proc/{pid}/ns/mnt");
        let ours = std::fs::metadata("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
        let theirs = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Commands then run here; if they are not here either, the
            // error says why the host's were not reached.
            Err(e) => {
                return Ok(HostNamespace {
                    pid,
                    mounts: None,
                    hidden: Some(format!("{path}: {e}")),
                });
            }
        };
        let mounts = if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
            None
        } else {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            Some(ns.into())
        };
        Ok(HostNamespace {
            pid,
            mounts,
            hidden: None,
        })
    }

    /// Runs `program` with `args` on the host, for at most `limit`: its exit
    /// status, stdout and stderr.
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<crust_child::Finished> {
        let what = format!("running {program} {}", args.join(" "));
        let Some(ns) = &self.mounts else {
            return crust_child::run(Command::new(program).args(args), b"", limit, MAX_OUTPUT)
                .with_context(|| match &self.hidden {
                    Some(why) => format!(
                        "{what} (the host's own could not be reached, {why}: a container \
                         running this needs the host's PID namespace and privileges)"
                    ),
                    None => what.clone(),
                });
        };
        // A bare name is looked up before the child enters the namespace:
        // find it there, through the process's root.
        let mut cmd = Command::new(self.binary(program)?);
        cmd.args(args).env("PATH", HOST_BIN_DIRS.join(":"));
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setns, chdir) on a
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
        crust_child::run(&mut cmd, b"", limit, MAX_OUTPUT).with_context(|| what.clone())
    }

    /// Where the namespace has `program`: the first of the usual binary
    /// directories that holds it, seen through the process's root.
    fn binary(&self, program: &str) -> Result<PathBuf> {
        let root = PathBuf::from(format!("/proc/{}/root", self.pid));
        std::fs::read_dir(&root).with_context(|| {
            format!(
                "cannot look for {program} on the host: {} is not readable",
                root.display()
            )
        })?;
        find_program(&root, program).with_context(|| {
            format!(
                "{program} is not installed on the host (in {})",
                HOST_BIN_DIRS.join(":")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root: a process in a mount namespace of its own, where a
    /// tmpfs over /usr/local/sbin holds a program the test's namespace
    /// does not have; run through that process's namespace, it is found
    /// and runs there.
    #[test]
    fn commands_run_in_another_process_mount_namespace() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/local/sbin").is_dir() {
            eprintln!("skipped: needs root and /usr/local/sbin to make a mount namespace over");
            return;
        }
        let script = "mount -t tmpfs crust-test /usr/local/sbin && \
            printf '#!/bin/sh\\necho inside $(pwd)\\n' > /usr/local/sbin/crust-host-probe && \
            chmod 0755 /usr/local/sbin/crust-host-probe && echo ready && exec sleep 30";
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("reading the holder");
        assert_eq!(line.trim(), "ready");
        assert!(!Path::new("/usr/local/sbin/crust-host-probe").exists());

        let ns = HostNamespace::of_process(holder.id()).expect("the holder's namespace");
        let out = ns.run("crust-host-probe", &[], Duration::from_secs(10));
        let here = HostNamespace::of_process(std::process::id())
            .expect("our namespace")
            .run("crust-host-probe", &[], Duration::from_secs(10));
        let _ = holder.kill();
        let _ = holder.wait();
        let out = out.expect("running the probe in the holder's namespace");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "inside /\n");
        assert!(
            here.is_err(),
            "the probe exists only in the holder's namespace"
        );
    }
}
