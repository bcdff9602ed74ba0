//! The pod-wide PID namespace of pods whose containers share one: held by a
//! `crust-shim pause` process (a PID namespace dies with its init, so it cannot
//! be pinned on a mount like the others), whose pid is noted in the sandbox
//! directory.

use std::path::Path;

use anyhow::{Context, Result};

use crate::host::Shim;

/// File in the sandbox directory that names the holder's pid, so a crustd that
/// died before recording the sandbox can still find and stop it.
const PID_FILE: &str = "pidns.pid";

/// Starts the holder process (in the pod's user namespace `userns`, if it
/// has one, which then owns the PID namespace), notes its pid in
/// `sandbox_dir` and returns it.
pub(crate) fn start(shim: &dyn Shim, sandbox_dir: &Path, userns: Option<&Path>) -> Result<i32> {
    let pid = shim.start_pid_holder(userns)?;
    // Atomic: a crash mid-write must not leave a torn pid that a restarted
    // crustd would signal.
    let note = crate::fsutil::write_atomic(&sandbox_dir.join(PID_FILE), pid.to_string().as_bytes());
    if let Err(e) = note {
        let _ = shim.stop_pid_holder(pid);
        return Err(e).context("recording the PID namespace holder's pid");
    }
    Ok(pid)
}

/// Stops the holder named in a sandbox directory, if any.
pub(crate) fn stop_noted(shim: &dyn Shim, sandbox_dir: &Path) -> Result<()> {
    match std::fs::read_to_string(sandbox_dir.join(PID_FILE)) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) => shim.stop_pid_holder(pid),
            Err(_) => Ok(()),
        },
        Err(_) => Ok(()),
    }
}
