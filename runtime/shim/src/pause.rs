//! `crust-shim pause`: the holder of a pod-wide PID namespace, for pods that share
//! one (`shareProcessNamespace`). A PID namespace dies with its init, so unlike
//! network or IPC namespaces it cannot be pinned on a mount; this process is that
//! init. It does nothing but reap the orphans the pod's processes leave to it.
//!
//! ```text
//! crust-shim pause [--userns <pinned user namespace>]
//! ```
//!
//! With `--userns` it joins the pod's user namespace first, so that the PID
//! namespace is owned by it and the pod's containers, which run in that user
//! namespace, may join it.
//!
//! Like the container mode it detaches from crustd and reports on stdout one JSON
//! line: `{"pid":<host pid of the namespace's init>}` or `{"error":"..."}`.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, fork, pipe};

use crust_shim_protocol::Report;

/// Runs the pause mode; returns the exit status of this (the reporting) process.
pub fn main() -> i32 {
    match start() {
        Ok(pid) => report(
            &Report::Started {
                pid,
                shim_pid: None,
            }
            .encode(),
            0,
        ),
        Err(msg) => report(&Report::Failed(msg).encode(), 1),
    }
}

fn report(line: &str, status: i32) -> i32 {
    let _ = std::io::stdout().write_all(line.as_bytes());
    status
}

/// Forks the namespace's init and returns its host pid.
fn start() -> Result<i32, String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let args: Vec<_> = std::env::args_os().skip(2).collect();
    match args.as_slice() {
        [] => {}
        [flag, path] if flag == "--userns" => {
            let ns = std::fs::File::open(path)
                .map_err(|e| format!("opening the user namespace {path:?}: {e}"))?;
            setns(&ns, CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("joining the user namespace {path:?}: {e}"))?;
        }
        _ => {
            return Err(format!(
                "usage: crust-shim pause [--userns PATH], got {args:?}"
            ));
        }
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    let (ready_r, ready_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded here; the child only calls async-signal-safe
    // functions and its own loop.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(ready_r);
            init(ready_w.as_raw_fd())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            // Wait until the init has set itself up (or died).
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte into a local buffer from an fd we own.
            let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            if n == 1 {
                Ok(child.as_raw())
            } else {
                Err("the PID namespace init exited during setup".into())
            }
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

extern "C" fn on_signal(_: libc::c_int) {}

/// The namespace's PID 1: reaps children forever. Only SIGKILL (from crustd,
/// in the parent namespace) ends it.
fn init(ready: libc::c_int) -> ! {
    // Detach from everything crustd handed down.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGCHLD);
    // SAFETY: the handler does nothing.
    unsafe {
        for sig in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            let _ = nix::sys::signal::sigaction(sig, &handler);
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None);
    // SAFETY: `ready` is the write end of the setup pipe; writing then closing it.
    unsafe {
        let file = std::fs::File::from_raw_fd(ready);
        let _ = (&file).write_all(b"r");
    }
    let unblocked = SigSet::empty();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => {
                // Sleep until the next SIGCHLD (blocked outside this call, so none is missed).
                let _ = unblocked.suspend();
            }
            Ok(_) | Err(_) => {}
        }
    }
}
