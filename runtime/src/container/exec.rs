//! ExecSync: a command run in a running container through `runc exec`, its output
//! captured (capped at 16 MiB per stream, as CRI asks) and its timeout enforced by
//! killing the exec'd process.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::ContainerState;
use crate::runtime::Runtime;
use crate::sys::runc::runc_error;
use crate::{Error, Result};

/// The most output kept per stream.
const MAX_OUTPUT: usize = 16 << 20;

/// How long to keep reading output after the command exited (a background child
/// can hold the pipes open).
const DRAIN: Duration = Duration::from_secs(2);

/// runc's exit status when it could not start the process at all.
const RUNC_EXEC_FAILED: i32 = 255;

/// What ExecSync returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout (capped).
    pub stdout: Vec<u8>,
    /// Captured stderr (capped).
    pub stderr: Vec<u8>,
    /// The command's exit code.
    pub exit_code: i32,
}

impl Runtime {
    /// ExecSync: runs `cmd` in the container and waits for it, at most `timeout`
    /// seconds when `timeout` > 0.
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(Error::invalid("exec needs a command"));
        }
        let entry = self.container_entry(id)?;
        let c = {
            let rt = self.clone();
            let e = entry.clone();
            tokio::task::spawn_blocking(move || {
                rt.refresh_container(&e);
                e.snapshot()
            })
            .await
            .map_err(|e| Error::internal(format!("exec task failed: {e}")))?
        };
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running; exec needs a running container",
                c.id
            )));
        }
        let pid_file = c.bundle.join(format!("exec-{}.pid", crate::ids::new_id()));
        let mut child = Command::new(&self.opts.runc)
            .arg("--root")
            .arg(&self.runc.root)
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&c.id)
            .args(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::internal(format!("running runc exec: {e}")))?;
        let out_task = tokio::spawn(read_capped(child.stdout.take()));
        let err_task = tokio::spawn(read_capped(child.stderr.take()));

        let waited = if timeout > 0 {
            tokio::time::timeout(Duration::from_secs(timeout.unsigned_abs()), child.wait())
                .await
                .ok()
        } else {
            Some(child.wait().await)
        };
        let status = match waited {
            Some(r) => r.map_err(|e| Error::internal(format!("waiting for runc exec: {e}")))?,
            None => {
                kill_exec(&pid_file).await;
                let _ = child.wait().await;
                let _ = std::fs::remove_file(&pid_file);
                out_task.abort();
                err_task.abort();
                return Err(Error::DeadlineExceeded(format!(
                    "command {cmd:?} in container {} timed out after {timeout}s",
                    c.id
                )));
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        let stdout = drain(out_task).await;
        let stderr = drain(err_task).await;
        let exit_code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        if exit_code == RUNC_EXEC_FAILED && looks_like_runc_failure(&stderr) {
            return Err(Error::FailedPrecondition(format!(
                "could not run {cmd:?} in container {}: {}",
                c.id,
                runc_error(&stderr)
            )));
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}

async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

async fn drain(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = task.abort_handle();
    match tokio::time::timeout(DRAIN, task).await {
        Ok(Ok(v)) => v,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

async fn kill_exec(pid_file: &std::path::Path) {
    for _ in 0..50 {
        if let Ok(text) = tokio::fs::read_to_string(pid_file).await
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn looks_like_runc_failure(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    text.contains("runc exec failed")
        || text.contains("level=error")
        || text.contains("exec failed:")
}
