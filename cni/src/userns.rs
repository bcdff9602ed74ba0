//! User namespaces with id mappings, made by a forked child.
//!
//! A multi-threaded process can neither unshare nor join a user namespace, so
//! a child forked for the purpose unshares one, waits while this process
//! writes its `uid_map` and `gid_map`, unshares the namespaces that must be
//! owned by it (a pod's network, IPC and UTS), and then only waits: this
//! process reaches each namespace through `/proc/<child>/ns/`, and the child
//! exits when the [`Holder`] is dropped. Between fork and exit the child makes
//! only raw system calls (no allocation, no locks), as a child of a
//! multi-threaded process must.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

/// One id mapping range: ids `inside..inside+count` in the namespace are
/// `outside..outside+count` on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub inside: u32,
    /// The host id it is.
    pub outside: u32,
    /// How many ids the range holds.
    pub count: u32,
}

impl IdMapping {
    /// The host id of `id` inside, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.inside)?;
        (offset < self.count).then(|| self.outside.checked_add(offset))?
    }

    /// The line a `uid_map` or `gid_map` file takes.
    fn map_line(&self) -> String {
        format!("{} {} {}\n", self.inside, self.outside, self.count)
    }
}

/// A child process in a new user namespace (and the namespaces asked to be
/// owned by it); it exits, and the namespaces with it unless pinned, when
/// this is dropped.
pub struct Holder {
    pid: Pid,
    /// Closing it tells the child to exit.
    release: Option<File>,
}

impl Holder {
    /// Forks the child, maps `uids` and `gids` in its user namespace and
    /// has it unshare `owned` (network, IPC, UTS) inside.
    pub fn spawn(uids: IdMapping, gids: IdMapping, owned: CloneFlags) -> Result<Holder> {
        let (from_child_r, from_child_w) = pipe()?;
        let (to_child_r, to_child_w) = pipe()?;
        // SAFETY: the child runs only `child_main`, which makes raw system
        // calls on descriptors made before the fork and ends in `_exit`.
        match unsafe { fork() }.context("forking the user namespace holder")? {
            ForkResult::Child => child_main(
                [from_child_w.as_raw_fd(), to_child_r.as_raw_fd()],
                [from_child_r.as_raw_fd(), to_child_w.as_raw_fd()],
                owned.bits(),
            ),
            ForkResult::Parent { child } => {
                drop(from_child_w);
                drop(to_child_r);
                let mut holder = Holder {
                    pid: child,
                    release: Some(File::from(to_child_w)),
                };
                let mut from_child = File::from(from_child_r);
                holder.setup(&mut from_child, uids, gids)?;
                Ok(holder)
            }
        }
    }

    fn setup(&mut self, from_child: &mut File, uids: IdMapping, gids: IdMapping) -> Result<()> {
        expect_byte(from_child, b'u', "unsharing a user namespace")?;
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        std::fs::write(proc.join("uid_map"), uids.map_line())
            .with_context(|| format!("writing the uid mapping {}", uids.map_line().trim()))?;
        std::fs::write(proc.join("gid_map"), gids.map_line())
            .with_context(|| format!("writing the gid mapping {}", gids.map_line().trim()))?;
        let release = self
            .release
            .as_mut()
            .context("the user namespace holder was released")?;
        release
            .write_all(b"m")
            .context("telling the user namespace holder its mappings are written")?;
        expect_byte(
            from_child,
            b'n',
            "unsharing the namespaces of the user namespace",
        )
    }

    /// The child's namespace file of `kind` ("user", "net", "ipc", "uts").
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release.take();
        let _ = waitpid(self.pid, None);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("making a pipe")
}

fn expect_byte(from_child: &mut File, want: u8, what: &str) -> Result<()> {
    let mut got = [0u8; 1];
    match from_child.read(&mut got) {
        Ok(1) if got[0] == want => Ok(()),
        Ok(1) => bail!(
            "{what} failed in the user namespace holder: errno {}",
            got[0]
        ),
        Ok(_) => bail!("{what}: the user namespace holder exited"),
        Err(e) => Err(e).with_context(|| format!("{what}: reading the holder's report")),
    }
}

/// The forked child: unshare the user namespace, report, wait for the
/// mappings, unshare `owned`, report, wait for release. It closes the
/// parent's ends of the pipes first, so that it sees the release (end of
/// file) however the parent goes away.
fn child_main([report, wait]: [i32; 2], parent_ends: [i32; 2], owned: i32) -> ! {
    // SAFETY: raw system calls on descriptors this process owns.
    unsafe {
        for fd in parent_ends {
            libc::close(fd);
        }
        let say = |b: u8| {
            libc::write(report, (&b as *const u8).cast(), 1);
        };
        let errno = || (*libc::__errno_location()).clamp(1, 255) as u8;
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            say(errno());
            libc::_exit(1);
        }
        say(b'u');
        let mut byte = 0u8;
        if libc::read(wait, (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(2);
        }
        if owned != 0 && libc::unshare(owned) != 0 {
            say(errno());
            libc::_exit(3);
        }
        say(b'n');
        libc::read(wait, (&mut byte as *mut u8).cast(), 1);
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_of_a_range() {
        let m = IdMapping {
            inside: 0,
            outside: 100_000,
            count: 65_536,
        };
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(65_535), Some(165_535));
        assert_eq!(m.to_host(65_536), None);
        let shifted = IdMapping {
            inside: 10,
            outside: u32::MAX - 1,
            count: 5,
        };
        assert_eq!(shifted.to_host(9), None);
        assert_eq!(shifted.to_host(11), Some(u32::MAX));
        assert_eq!(shifted.to_host(12), None);
    }
}
