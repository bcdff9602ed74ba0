//! Runs a helper binary (runc, a CNI plugin) to completion within a time
//! limit, and never waits on it longer.
//!
//! A helper's input and output go through memory files instead of pipes: a
//! helper that leaves a background process holding its stdout (a CNI plugin
//! that forks) cannot make the caller wait for an end of file that never
//! comes, and no thread is needed to feed or drain it. The helper runs in a
//! process group of its own, and when the limit passes the whole group is
//! killed and the helper reaped, so nothing it started lingers. The helpers
//! are the node's own trusted binaries: what they write is kept in memory
//! until they end, and read back up to a cap.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What a helper that ended left behind.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout, at most the cap the caller gave.
    pub stdout: Vec<u8>,
    /// Its stderr, at most the cap the caller gave.
    pub stderr: Vec<u8>,
}

/// Why a helper gave no result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be started (missing, not executable, out of resources).
    #[error("could not start it: {0}")]
    Spawn(std::io::Error),
    /// It did not finish within the limit; it and its process group were
    /// killed and it was reaped.
    #[error("it did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    /// Waiting for it or reading its output failed.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Runs `command` with `input` on its stdin, waits at most `limit`, and
/// returns its exit status and up to `max_output` bytes of each of stdout
/// and stderr. The command's own stdio settings are replaced.
pub fn run(
    command: &mut Command,
    input: &[u8],
    limit: Duration,
    max_output: u64,
) -> Result<Finished, Error> {
    let stdin = memory_file("stdin")?;
    if !input.is_empty() {
        (&stdin).write_all(input).map_err(Error::Io)?;
        (&stdin).seek(SeekFrom::Start(0)).map_err(Error::Io)?;
    }
    let stdout = memory_file("stdout")?;
    let stderr = memory_file("stderr")?;
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout.try_clone().map_err(Error::Io)?))
        .stderr(Stdio::from(stderr.try_clone().map_err(Error::Io)?))
        .process_group(0);
    let mut child = spawn_retrying_busy(command).map_err(Error::Spawn)?;
    let live = Live::register(child.id());
    let status = match wait_within(&mut child, limit) {
        Ok(status) => status,
        Err(e) => {
            kill_group(&mut child);
            return Err(e);
        }
    };
    drop(live);
    Ok(Finished {
        status,
        stdout: read_capped(&stdout, max_output)?,
        stderr: read_capped(&stderr, max_output)?,
    })
}

fn memory_file(name: &str) -> Result<File, Error> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)
        .map_err(|e| Error::Io(std::io::Error::from(e)))?;
    Ok(File::from(fd))
}

fn read_capped(file: &File, cap: u64) -> Result<Vec<u8>, Error> {
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
    let mut out = Vec::new();
    f.take(cap).read_to_end(&mut out).map_err(Error::Io)?;
    Ok(out)
}

/// Waits for `child` to exit, at most until `limit` has passed. The caller
/// kills and reaps it on any error.
fn wait_within(child: &mut Child, limit: Duration) -> Result<ExitStatus, Error> {
    let deadline = Instant::now().checked_add(limit);
    let pidfd = pidfd_open(child.id())?;
    loop {
        if let Some(status) = child.try_wait().map_err(Error::Io)? {
            return Ok(status);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            // It may have ended since the last look.
            return match child.try_wait().map_err(Error::Io)? {
                Some(status) => Ok(status),
                None => Err(Error::TimedOut(limit)),
            };
        }
        let timeout = left.map_or(PollTimeout::NONE, |l| {
            PollTimeout::try_from(l).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
}

/// Process groups of the helpers running now.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A helper's place in [`LIVE`] while it runs.
struct Live(u32);

impl Live {
    fn register(pid: u32) -> Live {
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        Live(pid)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| *p != self.0);
    }
}

/// Kills the process group of every helper still running. For a process
/// that is exiting without waiting for its calls to finish: a helper cut
/// off this way is what a crash leaves, which restart recovery undoes,
/// while one left running would race that recovery.
pub fn kill_all() {
    for pid in LIVE.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills the helper's whole process group (it leads it) and reaps the
/// helper.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A pid file descriptor: readable once the process has exited, so the wait
/// can be bounded by poll's timeout.
fn pidfd_open(pid: u32) -> Result<OwnedFd, Error> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| Error::Io(std::io::Error::other("pid out of range")))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let fd = i32::try_from(fd).map_err(|_| Error::Io(std::io::Error::other("bad pidfd")))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Spawns `command`, retrying for a moment while the binary is "text file
/// busy": a binary just installed (or rewritten by an upgrade) can still be
/// open for writing in a process that is between fork and exec.
fn spawn_retrying_busy(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn passes_input_and_captures_output() {
        let done = run(
            &mut sh("cat; echo err >&2; exit 3"),
            b"hello",
            Duration::from_secs(10),
            1 << 20,
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, b"hello");
        assert_eq!(done.stderr, b"err\n");
    }

    #[test]
    fn output_is_capped() {
        let done = run(
            &mut sh("head -c 100000 /dev/zero"),
            b"",
            Duration::from_secs(10),
            1000,
        )
        .unwrap();
        assert_eq!(done.stdout.len(), 1000);
    }

    #[test]
    fn a_background_process_holding_stdout_does_not_hold_the_caller() {
        let start = Instant::now();
        let done = run(
            &mut sh("sleep 30 & echo started"),
            b"",
            Duration::from_secs(10),
            1 << 20,
        )
        .unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout, b"started\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn at_the_limit_the_whole_group_is_killed() {
        let marker = std::env::temp_dir().join(format!("crust-child-{}", std::process::id()));
        let script = format!("sh -c 'sleep 2; touch {}' & sleep 30", marker.display());
        let start = Instant::now();
        let err = run(&mut sh(&script), b"", Duration::from_millis(300), 1 << 20).unwrap_err();
        assert!(matches!(err, Error::TimedOut(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a process of the killed group lived on");
    }
}
