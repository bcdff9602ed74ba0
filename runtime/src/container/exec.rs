//! Commands run in a running container through `runc exec`: ExecSync, whose output
//! is captured and whose timeout is enforced, and streamed execs, whose stdio the
//! streaming server carries. Either is killed, with what runc started for it,
//! when its client goes away.
//!
//! ExecSync's memory is bounded: one reply carries at most
//! [`MAX_REPLY_OUTPUT`] (stdout and stderr together, under kubelet's 16 MiB
//! receive limit); at most [`MAX_CONCURRENT_EXEC_SYNCS`] capture at once (the
//! others wait their turn within their deadline); each keeps its first
//! [`SMALL_OUTPUT`] freely, and only [`LARGE_OUTPUTS`] at a time may grow
//! past that (a call waits, its command blocked on the pipe, until one ends).
//! A call takes its large share once and whole, so no call that holds memory
//! ever waits for more: the bound cannot deadlock. Together: at most
//! 32 × 512 KiB + 3 × 16 MiB.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Container, ContainerState};
use crate::host::ExecCommand;
use crate::runtime::Runtime;
use crate::sys::pty::{Pty, open_terminal};
use crate::sys::runc::runc_error;
use crate::{Error, Result};

/// The most output one ExecSync returns, stdout and stderr together: kubelet
/// accepts messages of up to 16 MiB, and the reply needs room for its framing.
pub const MAX_REPLY_OUTPUT: usize = (16 << 20) - (64 << 10);

/// ExecSyncs capturing output at the same time.
pub const MAX_CONCURRENT_EXEC_SYNCS: usize = 32;

/// Output every ExecSync may keep without taking a large share.
pub const SMALL_OUTPUT: usize = 512 << 10;

/// ExecSyncs whose output may grow past [`SMALL_OUTPUT`] at the same time.
pub const LARGE_OUTPUTS: usize = 3;

/// The bounds every ExecSync shares.
pub(crate) struct ExecLimits {
    calls: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            calls: Arc::new(Semaphore::new(MAX_CONCURRENT_EXEC_SYNCS)),
            large: Arc::new(Semaphore::new(LARGE_OUTPUTS)),
        }
    }
}

/// One ExecSync's output allowance, shared by its stdout and stderr readers.
struct CallOutput {
    /// What the reply may still carry.
    room: std::sync::atomic::AtomicUsize,
    /// What was kept so far.
    kept: std::sync::atomic::AtomicUsize,
    /// Its large share, once it needs one.
    large: tokio::sync::OnceCell<OwnedSemaphorePermit>,
    shares: Arc<Semaphore>,
}

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

/// What a streamed exec asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command and its arguments; not empty.
    pub cmd: Vec<String>,
    /// Run it on a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Give it a stdin the client writes to.
    pub stdin: bool,
    /// Carry its stdout.
    pub stdout: bool,
    /// Carry its stderr (never with `tty`).
    pub stderr: bool,
}

/// Byte source of a streamed exec (a pipe or the terminal).
pub type ExecReader = Box<dyn AsyncRead + Send + Unpin>;
/// Byte sink of a streamed exec (a pipe or the terminal).
pub type ExecWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A running streamed exec: its stdio, its terminal, and its end.
pub struct ExecProcess {
    /// Its stdin, when asked for.
    pub stdin: Option<ExecWriter>,
    /// Its stdout (the terminal's output with `tty`), when asked for.
    pub stdout: Option<ExecReader>,
    /// Its stderr, when asked for (never with `tty`).
    pub stderr: Option<ExecReader>,
    /// The terminal, for resizes.
    pub terminal: Option<Pty>,
    process: RuncExec,
    log: PathBuf,
    what: String,
}

impl ExecProcess {
    /// Waits for the command to end and returns its exit code; `Err` when runc
    /// could not start it at all (e.g. the executable does not exist).
    pub async fn wait(&mut self) -> Result<i32> {
        let status = self
            .process
            .wait()
            .await
            .map_err(|e| Error::internal(format!("waiting for runc exec: {e}")))?;
        let code = exit_code(status);
        let errors = read_runc_log(&self.log);
        if code == RUNC_EXEC_FAILED && !errors.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "could not run {}: {}",
                self.what,
                errors.join("; ")
            )));
        }
        Ok(code)
    }
}

impl Runtime {
    /// The running container `what` (exec, attach) needs.
    pub(crate) async fn running_container(
        self: &Arc<Self>,
        id: &str,
        what: &str,
    ) -> Result<Container> {
        let entry = self.container_entry(id)?;
        let c = self
            .blocking(move |rt| {
                rt.refresh_unless_busy(&entry);
                Ok(entry.snapshot())
            })
            .await?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running; {what} needs a running container",
                c.id
            )));
        }
        Ok(c)
    }

    /// Checks a streamed exec before a URL is handed out for it: the container
    /// runs and the request is coherent.
    pub async fn check_exec(self: &Arc<Self>, id: &str, req: &ExecRequest) -> Result<String> {
        check_command(&req.cmd)?;
        if req.tty && req.stderr {
            return Err(Error::invalid(
                "tty and stderr cannot both be set: a terminal has one output stream",
            ));
        }
        if !req.stdin && !req.stdout && !req.stderr {
            return Err(Error::invalid(
                "exec needs at least one of stdin, stdout and stderr",
            ));
        }
        Ok(self.running_container(id, "exec").await?.id)
    }

    /// Starts a streamed exec. The process is killed if the returned value is
    /// dropped before [`ExecProcess::wait`] saw it end.
    ///
    /// With `tty`, runc runs in the foreground on a terminal crustd made (runc
    /// refuses a console socket unless it detaches, which would lose the exit
    /// code): it gives the process a terminal of the container's own and
    /// relays between the two, following the outer terminal's size.
    pub async fn exec_streaming(
        self: &Arc<Self>,
        id: &str,
        req: &ExecRequest,
    ) -> Result<ExecProcess> {
        let c = self.running_container(id, "exec").await?;
        let tag = crate::ids::new_id();
        let tag = &tag[..16];
        let pid_file = c.bundle.join(format!("exec-{tag}.pid"));
        let log = c.bundle.join(format!("exec-{tag}.log"));
        let terminal_error =
            |e: std::io::Error| Error::internal(format!("making the exec's terminal: {e}"));
        let (stdin, stdout, stderr, terminal) = if req.tty {
            let (master, slave) = open_terminal().map_err(terminal_error)?;
            let stdio =
                |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from).map_err(terminal_error);
            (
                stdio(&slave)?,
                stdio(&slave)?,
                Stdio::from(slave),
                Some(master),
            )
        } else {
            (
                piped_if(req.stdin),
                piped_if(req.stdout),
                piped_if(req.stderr),
                None,
            )
        };
        let what = format!("{:?} in container {}", req.cmd, c.id);
        let child = self
            .oci_runtime(&c)?
            .spawn_exec(ExecCommand {
                id: &c.id,
                cmd: &req.cmd,
                pid_file: &pid_file,
                log: Some(&log),
                tty: req.tty,
                stdin,
                stdout,
                stderr,
            })
            .map_err(|e| Error::internal(format!("running runc exec: {e}")))?;
        let runc_pid = child.id();
        let mut process = RuncExec::new(child, pid_file, Some(log.clone()));
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        let terminal = match terminal {
            Some(master) => {
                let pty = Pty::new(master, runc_pid).map_err(terminal_error)?;
                if req.stdin {
                    stdin = Some(Box::new(pty.try_clone().map_err(terminal_error)?) as ExecWriter);
                }
                if req.stdout {
                    stdout = Some(Box::new(pty.try_clone().map_err(terminal_error)?) as ExecReader);
                }
                Some(pty)
            }
            None => {
                if let Some(child) = process.child() {
                    stdin = child.stdin.take().map(|s| Box::new(s) as ExecWriter);
                    stdout = child.stdout.take().map(|s| Box::new(s) as ExecReader);
                    stderr = child.stderr.take().map(|s| Box::new(s) as ExecReader);
                }
                None
            }
        };
        Ok(ExecProcess {
            stdin,
            stdout,
            stderr,
            terminal,
            process,
            log,
            what,
        })
    }

    /// ExecSync: runs `cmd` in the container and waits for it, at most `timeout`
    /// seconds when `timeout` > 0.
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        check_command(&cmd)?;
        let c = self.running_container(id, "exec").await?;
        let _turn = self
            .exec_limits
            .calls
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("the ExecSync limiter is closed"))?;
        let pid_file = c.bundle.join(format!("exec-{}.pid", crate::ids::new_id()));
        let child = self
            .oci_runtime(&c)?
            .spawn_exec(ExecCommand {
                id: &c.id,
                cmd: &cmd,
                pid_file: &pid_file,
                log: None,
                tty: false,
                stdin: Stdio::null(),
                stdout: Stdio::piped(),
                stderr: Stdio::piped(),
            })
            .map_err(|e| Error::internal(format!("running runc exec: {e}")))?;
        let mut process = RuncExec::new(child, pid_file, None);
        let (out, err) = match process.child() {
            Some(c) => (c.stdout.take(), c.stderr.take()),
            None => (None, None),
        };
        let call = Arc::new(CallOutput {
            room: MAX_REPLY_OUTPUT.into(),
            kept: 0.into(),
            large: tokio::sync::OnceCell::new(),
            shares: self.exec_limits.large.clone(),
        });
        let mut out_task = OutputReader(Some(tokio::spawn(read_capped(out, call.clone()))));
        // `call` (and the large share it may take) lives until the reply.
        let mut err_task = OutputReader(Some(tokio::spawn(read_capped(err, call.clone()))));

        let waited = if timeout > 0 {
            tokio::time::timeout(crate::clock::request_secs(timeout), process.wait())
                .await
                .ok()
        } else {
            Some(process.wait().await)
        };
        let status = match waited {
            Some(r) => r.map_err(|e| Error::internal(format!("waiting for runc exec: {e}")))?,
            None => {
                process.kill().await;
                return Err(Error::DeadlineExceeded(format!(
                    "command {cmd:?} in container {} timed out after {timeout}s",
                    c.id
                )));
            }
        };
        let stdout = out_task.drain().await;
        let stderr = err_task.drain().await;
        let exit_code = exit_code(status);
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

fn piped_if(wanted: bool) -> Stdio {
    if wanted {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A `runc exec` child, the pid file naming the process it started and runc's
/// log. Until its end was seen, dropping it kills that process (SIGKILL) and
/// lets runc reap it; the files go with it.
struct RuncExec {
    child: Option<Child>,
    pid_file: PathBuf,
    log: Option<PathBuf>,
}

/// How long runc may take to reap a killed process and exit before it is
/// killed too (the process would then linger as a zombie in the container).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

impl RuncExec {
    fn new(child: Child, pid_file: PathBuf, log: Option<PathBuf>) -> RuncExec {
        RuncExec {
            child: Some(child),
            pid_file,
            log,
        }
    }

    /// The runc child, for its stdio.
    fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(std::io::Error::other("the exec was already waited for"));
        };
        let status = child.wait().await?;
        self.child = None;
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(status)
    }

    /// Kills the process and waits for runc to reap it.
    async fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            end(child, self.pid_file.clone()).await;
        }
    }
}

/// Kills the exec'd process once runc has named it, and waits for runc to
/// reap it and exit. The pid is only used while runc lives (so it cannot have
/// been reused); a runc that neither names nor reaps it in time is killed,
/// and its process, if it was named by then, with it.
async fn end(mut child: Child, pid_file: PathBuf) {
    let deadline = tokio::time::Instant::now() + REAP_TIMEOUT;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if kill_by_pid_file(&pid_file) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            kill_by_pid_file(&pid_file);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(&pid_file);
}

impl Drop for RuncExec {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(log);
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid_file = std::mem::take(&mut self.pid_file);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(end(child, pid_file));
            }
            Err(_) => {
                kill_by_pid_file(&pid_file);
                let _ = child.start_kill();
                let _ = std::fs::remove_file(&pid_file);
            }
        }
    }
}

/// SIGKILLs the pid in `pid_file`; false when the file holds no pid yet.
fn kill_by_pid_file(pid_file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            true
        }
        _ => false,
    }
}

/// The `msg` of every error line in runc's JSON log.
fn read_runc_log(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect()
}

/// Reads `pipe` to its end, keeping what the call's allowance lets it keep
/// (and reading on past it, so the command is never blocked by the cap).
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, call: Arc<CallOutput>) -> Vec<u8> {
    use std::sync::atomic::Ordering;
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => n,
        };
        let keep = call
            .room
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left - left.min(n))
            })
            .map_or(0, |left| left.min(n));
        if keep == 0 {
            continue;
        }
        if call.kept.fetch_add(keep, Ordering::Relaxed) + keep > SMALL_OUTPUT {
            let share = call
                .large
                .get_or_try_init(|| call.shares.clone().acquire_owned())
                .await;
            if share.is_err() {
                return out;
            }
        }
        out.extend_from_slice(&buf[..keep]);
    }
}

/// A task reading an ExecSync's output pipe; aborted if the ExecSync ends
/// (or its client leaves) before the output was collected, since a background
/// child may hold the pipe open.
struct OutputReader(Option<tokio::task::JoinHandle<Vec<u8>>>);

impl OutputReader {
    /// The output, once the pipe closes or [`DRAIN`] passed.
    async fn drain(&mut self) -> Vec<u8> {
        let Some(task) = self.0.as_mut() else {
            return Vec::new();
        };
        match tokio::time::timeout(DRAIN, task).await {
            Ok(Ok(v)) => v,
            _ => Vec::new(),
        }
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

fn looks_like_runc_failure(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    text.contains("runc exec failed")
        || text.contains("level=error")
        || text.contains("exec failed:")
}

/// An exec's command: present, and without the NUL no argument can hold.
fn check_command(cmd: &[String]) -> Result<()> {
    if cmd.is_empty() {
        return Err(Error::invalid("exec needs a command"));
    }
    if let Some(arg) = cmd.iter().find(|a| a.contains('\0')) {
        return Err(Error::invalid(format!(
            "exec argument {arg:?} contains a NUL byte"
        )));
    }
    Ok(())
}
