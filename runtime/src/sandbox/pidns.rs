//! The pod-wide PID namespace of pods whose containers share one: held by a
//! `crust-shim pause` process (a PID namespace dies with its init, so it cannot
//! be pinned on a mount like the others).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crust_shim_protocol::Report;

use crate::container::shim::read_until_eof;
use crate::sys::process;

/// File in the sandbox directory that names the holder's pid, so a crustd that
/// died before recording the sandbox can still find and stop it.
const PID_FILE: &str = "pidns.pid";

/// Starts the holder process, notes its pid in `sandbox_dir` and returns it.
pub fn start(shim: &Path, sandbox_dir: &Path) -> Result<i32> {
    let mut child = Command::new(shim)
        .arg("pause")
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
    let text = read_until_eof(&mut stdout, Duration::from_secs(30))?;
    let report = Report::decode(&text).map_err(|e| anyhow!("the pause process: {e}"))?;
    match report {
        Report::Failed(e) => bail!("creating the pod's PID namespace: {e}"),
        Report::Started { pid, .. } => {
            // Atomic: a crash mid-write must not leave a torn pid that a
            // restarted crustd would signal.
            let note = crate::fsutil::write_atomic(
                &sandbox_dir.join(PID_FILE),
                pid.to_string().as_bytes(),
            );
            if let Err(e) = note {
                let _ = stop(pid);
                return Err(e).context("recording the PID namespace holder's pid");
            }
            Ok(pid)
        }
    }
}

/// Stops the holder named in an unrecorded sandbox directory, if any.
pub fn stop_noted(sandbox_dir: &Path) -> Result<()> {
    match std::fs::read_to_string(sandbox_dir.join(PID_FILE)) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) => stop(pid),
            Err(_) => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

/// True while the holder process lives: `crust-shim pause` exactly, so a
/// recycled pid now used by a container's shim is never taken for it.
pub fn alive(pid: i32) -> bool {
    process::alive(pid, "crust-shim\0pause\0")
}

/// Kills the holder process (and with it every process left in the namespace)
/// and waits, briefly, for it to be gone.
pub fn stop(pid: i32) -> Result<()> {
    if !alive(pid) {
        return Ok(());
    }
    let target = nix::unistd::Pid::from_raw(pid);
    match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(e).context("killing the pod's PID namespace holder"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("the pod's PID namespace holder {pid} did not exit after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
