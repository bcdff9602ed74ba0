//! crust-shim as crustd runs it: starting one for a container, reading what
//! it reports and the exit status it records, sending it control requests;
//! and `crust-shim pause`, the holder of a pod's shared PID namespace.
//!
//! The shim forks and detaches; the detached half runs `runc create`, writes
//! its [`Report`] on the stdout pipe and closes it. When the container's init
//! exits it renames an [`ExitRecord`] into the bundle. Both, and the control
//! and attach sockets, are defined in `crust_shim_protocol`, which the shim
//! builds on too.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crust_shim_protocol::files::{EXIT_FILE, SHIM_PID_FILE, SHIM_SOCK};
use crust_shim_protocol::{ExitRecord, Report, control};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::host::{CreateError, Created, Launch};

/// How long a `runc create` may take before the start is abandoned.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the PID namespace holder may take to report.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The crust-shim binary (each launch names the OCI runtime it drives).
#[derive(Clone, Debug)]
pub struct ShimBinary {
    /// The crust-shim executable.
    pub shim: PathBuf,
}

impl crate::host::Shim for ShimBinary {
    fn launch(&self, l: &Launch<'_>) -> std::result::Result<Created, CreateError> {
        spawn(self, l)
    }

    fn kill_abandoned(&self, bundle: &Path) {
        kill_abandoned(bundle)
    }

    fn read_exit(&self, bundle: &Path) -> Option<ExitRecord> {
        read_exit(bundle)
    }

    fn alive(&self, pid: i32) -> bool {
        super::process::alive(pid, "crust-shim")
    }

    fn control(&self, bundle: &Path, request: control::Request) -> Result<()> {
        control(bundle, request)
    }

    fn start_pid_holder(&self, userns: Option<&Path>) -> Result<i32> {
        start_pause(&self.shim, userns)
    }

    fn stop_pid_holder(&self, pid: i32) -> Result<()> {
        stop_pause(pid)
    }

    fn pid_holder_alive(&self, pid: i32) -> bool {
        pause_alive(pid)
    }
}

/// Starts a shim and waits for its report.
fn spawn(bin: &ShimBinary, l: &Launch<'_>) -> std::result::Result<Created, CreateError> {
    let mut cmd = Command::new(&bin.shim);
    cmd.arg("--id")
        .arg(l.id)
        .arg("--bundle")
        .arg(l.bundle)
        .arg("--runc")
        .arg(&l.runtime.binary)
        .arg("--runc-root")
        .arg(&l.runtime.root);
    for opt in &l.runtime.options {
        cmd.arg(format!("--runc-opt={opt}"));
    }
    if let Some(p) = l.log_path {
        cmd.arg("--log-path").arg(p);
    }
    for (on, flag) in [
        (l.tty, "--tty"),
        (l.stdin, "--stdin"),
        (l.stdin_once, "--stdin-once"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.shim.display()))
        .map_err(CreateError::Shim)?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| CreateError::Shim(anyhow!("the shim's stdout pipe is missing")))?;
    let status = child
        .wait()
        .context("waiting for the shim to detach")
        .map_err(CreateError::Shim)?;
    if !status.success() {
        return Err(CreateError::Shim(anyhow!(
            "crust-shim failed to start: {status}"
        )));
    }
    let text = read_until_eof(&mut stdout, CREATE_TIMEOUT).map_err(CreateError::Shim)?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(CreateError::Shim(anyhow!(
            "crust-shim exited without reporting the result of runc create"
        )));
    }
    match Report::decode(line).map_err(|e| CreateError::Shim(anyhow!(e)))? {
        Report::Failed(err) => Err(CreateError::Runc(err)),
        Report::Started {
            pid,
            shim_pid: Some(shim_pid),
        } => Ok(Created { pid, shim_pid }),
        Report::Started { shim_pid: None, .. } => Err(CreateError::Shim(anyhow!(
            "the shim's report {line:?} lacks its own pid"
        ))),
    }
}

/// Kills the process group of a shim that started in `bundle` but whose
/// create was abandoned (its report never came, or the create is being
/// rolled back): the detached shim leads a session of its own, holding the
/// `runc create` it runs and whatever that started. A shim that is gone,
/// or a pid now used by anything but this bundle's shim, is left alone.
fn kill_abandoned(bundle: &Path) {
    let Some(pid) = std::fs::read_to_string(bundle.join(SHIM_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let own_args = format!("--bundle\0{}\0", bundle.display());
    if crate::sys::process::alive(pid, &own_args) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn read_until_eof(r: &mut std::process::ChildStdout, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("crust-shim did not report within {}s", timeout.as_secs());
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("polling the shim's pipe"),
        }
        let n = r.read(&mut buf).context("reading the shim's report")?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 {
            bail!("crust-shim's report is too large");
        }
    }
}

/// Reads the exit record if the shim wrote one.
pub(crate) fn read_exit(bundle: &Path) -> Option<ExitRecord> {
    let data = std::fs::read_to_string(bundle.join(EXIT_FILE)).ok()?;
    ExitRecord::decode(&data)
}

/// Sends one control request to the shim and returns its answer.
fn control(bundle: &Path, request: control::Request) -> Result<()> {
    let sock = bundle.join(SHIM_SOCK);
    // Through an fd of the bundle directory: the socket's own path may be longer
    // than the 108 bytes a unix socket address holds.
    let dir = std::fs::File::open(bundle)
        .with_context(|| format!("opening the bundle {}", bundle.display()))?;
    let short = format!("/proc/self/fd/{}/{SHIM_SOCK}", dir.as_raw_fd());
    let mut s = UnixStream::connect(&short)
        .with_context(|| format!("connecting to the shim at {}", sock.display()))?;
    drop(dir);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.encode().as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .context("reading the shim's answer")?;
    control::decode_answer(&answer)
        .map_err(|msg| anyhow!("the shim answered {request:?} with {msg:?}"))
}

/// Starts `crust-shim pause`, the holder of a pod's PID namespace, and
/// returns its pid once it reported.
fn start_pause(shim: &Path, userns: Option<&Path>) -> Result<i32> {
    let mut cmd = Command::new(shim);
    cmd.arg("pause");
    if let Some(userns) = userns {
        cmd.arg("--userns").arg(userns);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} pause", shim.display()))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the pause process's stdout pipe is missing"))?;
    child
        .wait()
        .context("waiting for the pause process to detach")?;
    let text = read_until_eof(&mut stdout, PAUSE_TIMEOUT)?;
    match Report::decode(&text).map_err(|e| anyhow!("the pause process: {e}"))? {
        Report::Failed(e) => bail!("creating the pod's PID namespace: {e}"),
        Report::Started { pid, .. } => Ok(pid),
    }
}

/// True while the holder process lives: `crust-shim pause` exactly, so a
/// recycled pid now used by a container's shim is never taken for it.
fn pause_alive(pid: i32) -> bool {
    super::process::alive(pid, "crust-shim\0pause\0")
}

/// Kills the holder process (and with it every process left in the
/// namespace) and waits, briefly, for it to be gone.
fn stop_pause(pid: i32) -> Result<()> {
    if !pause_alive(pid) {
        return Ok(());
    }
    let target = nix::unistd::Pid::from_raw(pid);
    match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(e).context("killing the pod's PID namespace holder"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pause_alive(pid) {
        if Instant::now() > deadline {
            bail!("the pod's PID namespace holder {pid} did not exit after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn an_abandoned_shim_is_killed_with_its_group() {
        let dir = std::env::temp_dir().join(format!("crust-shim-abandoned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in whose command line names the bundle as a shim's does,
        // leading its own group with a child, as the detached shim leads
        // runc.
        let mut shim = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & echo $$ > shim.pid; wait", "x", "--bundle"])
            .arg(&dir)
            .current_dir(&dir)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid_file = dir.join(SHIM_PID_FILE);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_abandoned(&dir);
        let status = shim.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            live_members(shim.id()),
            0,
            "a process of the shim's group lived on"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Processes of group `pgid` that are not zombies.
    fn live_members(pgid: u32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .count()
    }
}
