//! Running `runc create` and collecting what it hands back: the container's
//! init pid, the pty master (received on the console socket), or the error
//! text runc logged.

use std::fs::{self, File};
use std::io::{self, IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::fsutil::remove_if_exists;
use crust_shim_protocol::json;

/// File name of runc's JSON log inside the bundle.
pub const RUNC_LOG: &str = "runc.log";
/// File name of the pid file runc writes inside the bundle.
pub const INIT_PID: &str = "init.pid";
/// File name of the console socket inside the bundle (with `--tty`).
pub const CONSOLE_SOCK: &str = "console.sock";

/// Most of runc.log the shim reads back when looking for errors.
const MAX_LOG_READ: u64 = 1 << 20;

/// Where the container's stdio goes.
#[derive(Debug)]
pub enum ContainerStdio {
    /// Write ends of the stdout and stderr pipes; the shim keeps the read ends.
    Pipes {
        /// Read end handed to runc as the container's stdin (none: /dev/null);
        /// the shim keeps the write end.
        stdin: Option<OwnedFd>,
        /// Write end handed to runc as the container's stdout.
        stdout: OwnedFd,
        /// Write end handed to runc as the container's stderr.
        stderr: OwnedFd,
    },
    /// A pseudo-terminal, whose master runc sends over the console socket.
    Tty,
}

/// What a successful `runc create` produced.
#[derive(Debug)]
pub struct Created {
    /// Pid of the container's init process (from `init.pid`).
    pub init_pid: i32,
    /// The pty master, when the container has a terminal.
    pub pty_master: Option<OwnedFd>,
}

/// Everything `create` needs to run runc.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    /// Path of the runc binary.
    pub runc: &'a Path,
    /// runc state directory.
    pub runc_root: &'a Path,
    /// Global runc arguments given before `create`.
    pub runc_opts: &'a [std::ffi::OsString],
    /// Absolute bundle directory. The process's current directory must be
    /// this directory: the console socket is bound by its relative name, so
    /// long bundle paths do not hit the unix socket path limit.
    pub bundle: &'a Path,
    /// Container id.
    pub id: &'a str,
}

/// Runs `runc create` for the container and waits for it.
///
/// On failure the error is the text runc logged at level error (joined with
/// "; "), or a description of how runc exited.
pub fn create(req: &CreateRequest<'_>, stdio: ContainerStdio) -> Result<Created, String> {
    let runc_log = req.bundle.join(RUNC_LOG);
    let pid_file = req.bundle.join(INIT_PID);
    let log_offset = fs::metadata(&runc_log).map(|m| m.len()).unwrap_or(0);
    remove_if_exists(&pid_file).map_err(|e| format!("removing stale {INIT_PID}: {e}"))?;

    let tty = matches!(stdio, ContainerStdio::Tty);
    let console = if tty {
        let rel = Path::new(CONSOLE_SOCK);
        remove_if_exists(rel).map_err(|e| format!("removing stale {CONSOLE_SOCK}: {e}"))?;
        let listener =
            UnixListener::bind(rel).map_err(|e| format!("binding {CONSOLE_SOCK}: {e}"))?;
        Some(listener)
    } else {
        None
    };

    let result = run_create(
        req,
        stdio,
        &runc_log,
        &pid_file,
        log_offset,
        console.as_ref(),
    );
    if console.is_some() {
        let _ = remove_if_exists(Path::new(CONSOLE_SOCK));
    }
    result
}

/// The part of [`create`] that runs while the console socket exists.
fn run_create(
    req: &CreateRequest<'_>,
    stdio: ContainerStdio,
    runc_log: &Path,
    pid_file: &Path,
    log_offset: u64,
    console: Option<&UnixListener>,
) -> Result<Created, String> {
    let mut cmd = Command::new(req.runc);
    cmd.arg("--root")
        .arg(req.runc_root)
        .args(req.runc_opts)
        .arg("--log")
        .arg(runc_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(req.bundle)
        .arg("--pid-file")
        .arg(pid_file);
    if console.is_some() {
        // Relative, like the bind: runc dials it from the bundle directory
        // (its cwd after it reads the bundle), and a long absolute path would
        // exceed the 108-byte unix socket limit.
        cmd.arg("--console-socket").arg(CONSOLE_SOCK);
    }
    cmd.arg(req.id).stdin(Stdio::null());
    match stdio {
        ContainerStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let Some(stdin) = stdin {
                cmd.stdin(Stdio::from(stdin));
            }
            cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
        }
        ContainerStdio::Tty => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let spawned = cmd.spawn();
    // Dropping the command closes the shim's copies of the pipe write ends,
    // so the pumps see EOF once the container's processes are gone.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("cannot run {}: {e}", req.runc.display()))?;
    let status = child
        .wait()
        .map_err(|e| format!("waiting for runc create: {e}"))?;
    if !status.success() {
        let errors = read_log_errors(runc_log, log_offset);
        return Err(if errors.is_empty() {
            describe_failure(status)
        } else {
            errors.join("; ")
        });
    }

    let pty_master = match console {
        Some(listener) => Some(receive_console(listener)?),
        None => None,
    };
    let init_pid = read_pid(pid_file)?;
    Ok(Created {
        init_pid,
        pty_master,
    })
}

/// Says how runc create ended when it logged no error.
fn describe_failure(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("runc create exited with status {code}"),
        (None, Some(sig)) => format!("runc create was killed by signal {sig}"),
        (None, None) => format!("runc create failed: {status}"),
    }
}

/// Reads the pid runc wrote to its pid file.
fn read_pid(path: &Path) -> Result<i32, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "{} holds no valid pid: {:?}",
            path.display(),
            text.trim()
        )),
    }
}

/// Collects the `msg` of every `"level":"error"` line in runc's JSON log,
/// starting at byte `offset` (so older runs' lines are ignored).
pub fn read_log_errors(path: &Path, offset: u64) -> Vec<String> {
    let mut data = Vec::new();
    let read = (|| -> io::Result<()> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        f.take(MAX_LOG_READ).read_to_end(&mut data)?;
        Ok(())
    })();
    if read.is_err() {
        return Vec::new();
    }
    log_errors(&String::from_utf8_lossy(&data))
}

/// The error messages in a chunk of JSON log text: runc's
/// (`"level":"error","msg":…`) or youki's (`"level":"ERROR","message":…`,
/// without the backtrace it may append).
pub fn log_errors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(fields) = json::string_fields(line) else {
            continue;
        };
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let is_error = field("level").is_some_and(|l| l.eq_ignore_ascii_case("error"));
        let msg = field("msg")
            .or_else(|| field("message"))
            .map(|m| m.split("\n\nStack backtrace:").next().unwrap_or("").trim())
            .filter(|m| !m.is_empty());
        if let (true, Some(msg)) = (is_error, msg) {
            out.push(msg.to_string());
        }
    }
    out
}

/// Accepts runc's connection on the console socket and receives the pty
/// master it sends with SCM_RIGHTS. Called after `runc create` has exited, by
/// which time runc has connected and sent the fd (it waits in the backlog).
pub fn receive_console(listener: &UnixListener) -> Result<OwnedFd, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let (conn, _) = match listener.accept() {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err("runc did not connect to the console socket".into());
        }
        Err(e) => return Err(format!("accepting on the console socket: {e}")),
    };
    conn.set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("console socket: {e}"))?;

    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let bytes = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("receiving the pty master: {e}")),
        };
        let cmsgs = msg
            .cmsgs()
            .map_err(|e| format!("receiving the pty master: {e}"))?;
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed these descriptors in
                    // this process for us; nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        break msg.bytes;
    };
    let mut fds = fds.into_iter();
    fds.next().ok_or_else(|| {
        format!("runc sent no pty master on the console socket ({bytes} bytes, no descriptor)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::IoSlice;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    #[test]
    fn extracts_error_messages() {
        let log = concat!(
            "{\"level\":\"info\",\"msg\":\"hello\",\"time\":\"t\"}\n",
            "not json\n",
            "{\"level\":\"error\",\"msg\":\"container_linux.go:380: starting container process caused: exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\n",
            "{\"level\":\"error\",\"msg\":\"second\",\"time\":\"t\"}\n",
        );
        assert_eq!(
            log_errors(log),
            vec![
                "container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH".to_string(),
                "second".to_string()
            ]
        );
    }

    #[test]
    fn extracts_youki_error_messages_without_backtraces() {
        let log = concat!(
            "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"hello\"}\n",
            "{\"timestamp\":\"t\",\"level\":\"ERROR\",\"message\":\"failed: executable '/x' not found\\n\\nStack backtrace:\\n   0: <unknown>\",\"target\":\"youki\"}\n",
        );
        assert_eq!(log_errors(log), vec!["failed: executable '/x' not found"]);
    }

    #[test]
    fn receives_fd_over_socket() {
        let dir = std::env::temp_dir().join(format!("crust-shim-console-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let client = UnixStream::connect(&path).expect("connect");
        let file = File::open("/dev/null").expect("open");
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        drop(client);
        let fd = receive_console(&listener).expect("receive");
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd must be close-on-exec"
        );

        // Nobody connected: an error, not a hang.
        assert!(receive_console(&listener).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn fake_runc(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("fake-runc");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    #[test]
    fn create_reports_pid_or_logged_error() {
        let dir = std::env::temp_dir().join(format!("crust-shim-create-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let req = |runc: &Path| {
            let r = CreateRequest {
                runc,
                runc_root: Path::new("/nonexistent"),
                runc_opts: &[],
                bundle: &dir,
                id: "c1",
            };
            // Another test thread forking while a fake runc was being
            // written can make exec fail with ETXTBSY for a moment: retry.
            for _ in 0..50 {
                let (_r1, w1) = nix::unistd::pipe().expect("pipe");
                let (_r2, w2) = nix::unistd::pipe().expect("pipe");
                let res = create(
                    &r,
                    ContainerStdio::Pipes {
                        stdin: None,
                        stdout: w1,
                        stderr: w2,
                    },
                );
                match &res {
                    Err(e) if e.contains("Text file busy") => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => return res,
                }
            }
            panic!("fake runc stayed busy");
        };

        // Success: the fake writes the pid file named after --pid-file.
        let ok = fake_runc(
            &dir,
            r#"while [ $# -gt 0 ]; do [ "$1" = --pid-file ] && echo 4242 > "$2"; shift; done"#,
        );
        assert_eq!(req(&ok).expect("created").init_pid, 4242);

        // Failure with logged errors: messages joined with "; ".
        let bad = fake_runc(
            &dir,
            r#"log=$4; echo '{"level":"error","msg":"first \"x\"","time":"t"}' >> "$log"; echo '{"level":"error","msg":"second","time":"t"}' >> "$log"; exit 1"#,
        );
        assert_eq!(req(&bad).expect_err("fails"), "first \"x\"; second");

        // Failure without log lines: the exit status. Older lines are ignored.
        let silent = fake_runc(&dir, "exit 7");
        assert_eq!(
            req(&silent).expect_err("fails"),
            "runc create exited with status 7"
        );

        // runc missing.
        let err = req(&dir.join("missing")).expect_err("fails");
        assert!(err.starts_with("cannot run"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
