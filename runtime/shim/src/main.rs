//! `crust-shim`: the per-container monitor. It detaches from crustd, runs
//! `runc create`, reports the container's init pid on stdout, then holds the
//! container's stdio, writes its CRI log, serves a small control socket, and
//! records the init's exit status in `<bundle>/exit`.
//!
//! ```text
//! crust-shim --id <id> --bundle <dir> --runc <path> --runc-root <dir>
//!            [--runc-opt <arg>]... [--log-path <file>] [--tty]
//! crust-shim pause
//! ```
//!
//! The second form holds a pod-wide PID namespace (see `pause.rs`).
//!
//! Synchronous, std + nix + libc only, so that one shim costs well under a
//! megabyte of memory.

mod args;
mod attach;
mod control;
mod crilog;
mod fsutil;
mod pause;
mod pump;
mod runc;
mod supervise;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, mpsc};

use nix::fcntl::OFlag;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, fork, pipe2};

use crate::args::Args;
use crust_shim_protocol::Report;
use crust_shim_protocol::files::{ATTACH_SOCK, EXIT_FILE, SHIM_PID_FILE, SHIM_SOCK, write_atomic};

use crate::attach::Hub;
use crate::crilog::{LogSink, Stream};
use crate::fsutil::remove_if_exists;
use crate::runc::{ContainerStdio, CreateRequest};
use crate::supervise::Supervisor;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "pause") {
        detach_from_parent();
        std::process::exit(pause::main());
    }
    let args = match args::parse(std::env::args_os().skip(1)).and_then(absolutize) {
        Ok(a) => a,
        Err(msg) => {
            let _ = io::stdout().write_all(error_line(&msg).as_bytes());
            std::process::exit(2);
        }
    };

    detach_from_parent();
    std::process::exit(run(&args));
}

/// Forks; the parent exits at once (crustd reaps it) and the child carries on.
fn detach_from_parent() {
    // SAFETY: nothing but the main thread exists yet.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(e) => {
            let _ = io::stdout().write_all(error_line(&format!("fork: {e}")).as_bytes());
            std::process::exit(1);
        }
    }
}

/// The detached shim: returns its exit status.
fn run(args: &Args) -> i32 {
    let mut report = Reporter::take_stdout();
    let started = detach(args, report.fd()).and_then(|()| launch(args));
    match started {
        Ok(supervisor) => {
            report.send(
                &Report::Started {
                    pid: supervisor.init_pid,
                    shim_pid: i32::try_from(std::process::id()).ok(),
                }
                .encode(),
            );
            let status = supervisor.run();
            let _ = remove_if_exists(Path::new(SHIM_SOCK));
            let _ = remove_if_exists(Path::new(ATTACH_SOCK));
            status
        }
        Err(msg) => {
            report.send(&error_line(&msg));
            1
        }
    }
}

/// The failure report line.
fn error_line(msg: &str) -> String {
    Report::Failed(msg.to_string()).encode()
}

/// Makes the paths absolute, since the shim changes into the bundle.
fn absolutize(mut args: Args) -> Result<Args, String> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    args.bundle = abs(&args.bundle)?;
    args.runc_root = abs(&args.runc_root)?;
    if let Some(log) = &args.log_path {
        args.log_path = Some(abs(log)?);
    }
    // A bare name ("runc") is looked up in PATH; anything with a slash is a path.
    if args.runc.components().count() > 1 {
        args.runc = abs(&args.runc)?;
    }
    Ok(args)
}

/// The pipe to crustd on which the single report line is written.
struct Reporter(Option<File>);

impl Reporter {
    /// Moves the inherited stdout to a close-on-exec descriptor, so that
    /// nothing the shim starts can hold crustd's pipe open.
    fn take_stdout() -> Self {
        // std duplicates with F_DUPFD_CLOEXEC, above the standard descriptors.
        Reporter(
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(File::from),
        )
    }

    /// The descriptor in use, if any.
    fn fd(&self) -> Option<RawFd> {
        self.0.as_ref().map(|f| f.as_raw_fd())
    }

    /// Writes the report line and closes the pipe (only the first call counts).
    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            // crustd may be gone; the container is supervised regardless.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Detaches from crustd: fds, session, subreaper, cwd, signals, pid file.
fn detach(args: &Args, keep: Option<RawFd>) -> Result<(), String> {
    close_inherited_fds(keep);
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null)
        .and_then(|()| nix::unistd::dup2_stdout(&null))
        .and_then(|()| nix::unistd::dup2_stderr(&null))
        .map_err(|e| format!("redirecting the standard descriptors to /dev/null: {e}"))?;
    drop(null);

    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    std::env::set_current_dir(&args.bundle)
        .map_err(|e| format!("chdir {}: {e}", args.bundle.display()))?;
    setup_signals().map_err(|e| format!("signals: {e}"))?;
    limit_malloc_arenas();

    let pid = std::process::id().to_string();
    write_atomic(&args.bundle.join(SHIM_PID_FILE), pid.as_bytes())
        .map_err(|e| format!("writing {SHIM_PID_FILE}: {e}"))?;
    Ok(())
}

/// Closes every descriptor above stderr except `keep`, so nothing crustd
/// leaked reaches runc or the container.
fn close_inherited_fds(keep: Option<RawFd>) {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // `dir` is consumed: its own descriptor is closed before the loop, so
    // closing its (stale) number below is a harmless EBADF.
    for fd in fds {
        if fd > 2 && Some(fd) != keep {
            // SAFETY: the process is single-threaded here and owns no other
            // descriptors; these are inherited ones nothing refers to.
            unsafe { libc::close(fd) };
        }
    }
}

/// A handler that does nothing: the signal is effectively ignored, but unlike
/// SIG_IGN the disposition is reset to default in runc and the container.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// Ignores SIGPIPE, SIGHUP, SIGINT and SIGTERM, restores the default SIGCHLD
/// disposition, and unblocks all signals.
fn setup_signals() -> nix::Result<()> {
    let noop = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler is async-signal-safe (it does nothing); SIG_IGN for
    // SIGPIPE is what std sets up anyway; SIG_DFL is always sound.
    unsafe {
        for sig in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM] {
            nix::sys::signal::sigaction(sig, &noop)?;
        }
        nix::sys::signal::sigaction(Signal::SIGPIPE, &ign)?;
        // An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap
        // children and hide the container's exit status from waitpid.
        nix::sys::signal::sigaction(Signal::SIGCHLD, &dfl)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// One malloc arena for all threads keeps the resident size small.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Creates the container and starts pumps and the control socket.
fn launch(args: &Args) -> Result<Supervisor, String> {
    let sink = Arc::new(LogSink::new(args.log_path.clone()));
    let hub = Hub::new(args.stdin_once);
    let outputs = pump::Outputs {
        sink: sink.clone(),
        hub: hub.clone(),
    };
    let (stop_r, stop_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let stop_r = Arc::new(stop_r);
    let (done_tx, done) = mpsc::channel();
    let mut pumps = Vec::new();
    let mut start_pump = |fd: OwnedFd, stream: Stream, strip_cr: bool| {
        pump::spawn(
            fd,
            stream,
            strip_cr,
            outputs.clone(),
            stop_r.clone(),
            done_tx.clone(),
        )
        .map(|h| pumps.push(h))
        .map_err(|e| format!("starting log thread: {e}"))
    };

    // The write end of a stdin pipe, held so the container's stdin stays open.
    let mut stdin_writer = None;
    let stdio = if args.tty {
        ContainerStdio::Tty
    } else {
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        start_pump(out_r, Stream::Stdout, false)?;
        start_pump(err_r, Stream::Stderr, false)?;
        let stdin = if args.stdin {
            let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            stdin_writer = Some(in_w);
            Some(in_r)
        } else {
            None
        };
        ContainerStdio::Pipes {
            stdin,
            stdout: out_w,
            stderr: err_w,
        }
    };

    // A leftover exit file would make the new container look exited.
    remove_if_exists(&args.bundle.join(EXIT_FILE))
        .map_err(|e| format!("removing stale exit file: {e}"))?;

    let req = CreateRequest {
        runc: &args.runc,
        runc_root: &args.runc_root,
        runc_opts: &args.runc_opts,
        bundle: &args.bundle,
        id: &args.id,
    };
    let created = runc::create(&req, stdio)?;
    if let Some(master) = created.pty_master {
        let dup = |m: &OwnedFd| {
            m.try_clone()
                .map_err(|e| format!("dup of the terminal: {e}"))
        };
        let stdin = if args.stdin {
            Some(dup(&master)?)
        } else {
            None
        };
        hub.set_io(stdin, Some(dup(&master)?));
        start_pump(master, Stream::Stdout, true)?;
    } else {
        hub.set_io(stdin_writer, None);
    }

    // Relative name: the cwd is the bundle, and this avoids the unix socket
    // path length limit for long bundle paths.
    let sock = Path::new(SHIM_SOCK);
    remove_if_exists(sock).map_err(|e| format!("removing stale {SHIM_SOCK}: {e}"))?;
    let listener = UnixListener::bind(sock).map_err(|e| format!("binding {SHIM_SOCK}: {e}"))?;
    control::spawn(
        listener,
        sink.clone(),
        control::Init::open(created.init_pid),
    )
    .map_err(|e| format!("starting control thread: {e}"))?;
    let attach_sock = Path::new(ATTACH_SOCK);
    remove_if_exists(attach_sock).map_err(|e| format!("removing stale {ATTACH_SOCK}: {e}"))?;
    let listener =
        UnixListener::bind(attach_sock).map_err(|e| format!("binding {ATTACH_SOCK}: {e}"))?;
    attach::spawn(listener, hub.clone()).map_err(|e| format!("starting attach thread: {e}"))?;

    Ok(Supervisor {
        init_pid: created.init_pid,
        pumps,
        done,
        stop: stop_w,
        bundle: args.bundle.clone(),
        hub,
    })
}
