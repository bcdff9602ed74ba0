//! Supervision after a successful create: reap every child (the shim is a
//! child subreaper), record the container init's exit, let the log pumps
//! drain, and write the exit file.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::os::fd::OwnedFd;

use crust_shim_protocol::ExitRecord;
use crust_shim_protocol::files::{EXIT_FILE, write_atomic};

/// How long the log pumps get to reach end of file after the init exited.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Exit code recorded when the init's status could not be collected (it was
/// not the shim's child, so `waitpid` never reported it).
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// Converts a raw `waitpid` status into an exit code: the code for a normal
/// exit, 128 + signal for a kill; `None` for stop/continue notifications.
pub fn exit_code(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Reaps children until `init` exits and returns how it ended. Other
/// children (runc leftovers, orphans re-parented to the shim) are reaped and
/// ignored.
pub fn wait_for_init(init: i32) -> ExitRecord {
    reap_until(-1, init)
}

/// [`wait_for_init`] with the `waitpid` target as a parameter (tests pass the
/// init itself so they do not reap the test harness's other children).
fn reap_until(target: libc::pid_t, init: i32) -> ExitRecord {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: plain syscall with a valid pointer to a local.
        let pid = unsafe { libc::waitpid(target, &mut status, 0) };
        let exited_at = now_ns();
        if pid == init {
            if let Some(exit_code) = exit_code(status) {
                return ExitRecord {
                    exit_code,
                    exited_at,
                };
            }
            continue;
        }
        if pid > 0 {
            continue;
        }
        match Errno::last() {
            Errno::EINTR => {}
            Errno::ECHILD => {
                // The init is not (or no longer) our child. Should not happen;
                // wait for it to vanish rather than spin.
                if kill(Pid::from_raw(init), None) == Err(Errno::ESRCH) {
                    return ExitRecord {
                        exit_code: UNKNOWN_EXIT_CODE,
                        exited_at: now_ns(),
                    };
                }
                thread::sleep(Duration::from_secs(1));
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The running shim after it reported success.
#[derive(Debug)]
pub struct Supervisor {
    /// Pid of the container's init process.
    pub init_pid: i32,
    /// The log pump threads.
    pub pumps: Vec<JoinHandle<()>>,
    /// Receives one `()` per pump that finished.
    pub done: Receiver<()>,
    /// Write end of the pumps' stop pipe; dropping it stops them.
    pub stop: OwnedFd,
    /// Absolute bundle directory.
    pub bundle: std::path::PathBuf,
    /// The attached clients, told when the output has ended.
    pub hub: std::sync::Arc<crate::attach::Hub>,
}

impl Supervisor {
    /// Waits for the container to exit, then writes the exit file. Returns the
    /// shim's exit status.
    pub fn run(self) -> i32 {
        let exit = wait_for_init(self.init_pid);

        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut left = self.pumps.len();
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(wait) {
                Ok(()) => left -= 1,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Pumps still blocked (a process outside the container's PID
        // namespace may hold the pipe) stop now and flush what they have.
        drop(self.stop);
        for pump in self.pumps {
            let _ = pump.join();
        }
        self.hub.finish();

        write_exit_file(&self.bundle, exit)
    }
}

/// Writes the exit file; returns the shim's exit status.
fn write_exit_file(bundle: &Path, exit: ExitRecord) -> i32 {
    match write_atomic(&bundle.join(EXIT_FILE), exit.encode().as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status() {
        // Layout of Linux wait statuses: exit code in bits 8..16, signal in 0..7.
        assert_eq!(exit_code(3 << 8), Some(3));
        assert_eq!(exit_code(0), Some(0));
        assert_eq!(exit_code(9), Some(137));
        assert_eq!(exit_code(15 | 0x80), Some(143)); // with core dump flag
        assert_eq!(exit_code(0x137f), None); // stopped by SIGSTOP
        assert_eq!(exit_code(0xffff), None); // continued
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by reap_until, not Child::wait
    fn reaps_a_real_child() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        let exit = reap_until(pid, pid);
        assert_eq!(exit.exit_code, 5);
        assert!(exit.exited_at > 0);
    }
}
