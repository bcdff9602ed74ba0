//! The control socket (`<bundle>/shim.sock`): one request line, one response
//! line, then the connection is closed (`crust_shim_protocol::control`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crust_shim_protocol::control::{Request, UNKNOWN, encode_answer};

use crate::crilog::LogSink;
use crate::pump::THREAD_STACK;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The container's init, as the control socket signals it: a pidfd taken
/// right after `runc create`, before the shim (its reaper) could have
/// reaped it, so a signal can never reach a process that reused its pid.
pub struct Init {
    pidfd: Option<OwnedFd>,
}

impl Init {
    /// Opens a pidfd of process `pid`; without one, signals are refused
    /// (crustd then signals through the OCI runtime).
    pub fn open(pid: i32) -> Init {
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor (close-on-exec) or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = i32::try_from(fd).ok().filter(|fd| *fd >= 0).map(|fd| {
            // SAFETY: the kernel just returned this descriptor to us alone.
            unsafe { OwnedFd::from_raw_fd(fd) }
        });
        Init { pidfd }
    }

    /// Sends `sig` to the init; one that is gone already is not an error.
    pub fn signal(&self, sig: i32) -> Result<(), String> {
        let Some(fd) = &self.pidfd else {
            return Err("the shim holds no pidfd of the container's init".into());
        };
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(format!("pidfd_send_signal {sig}: {e}"))
    }
}

/// Starts the thread that serves `listener` for the life of the process.
pub fn spawn(listener: UnixListener, sink: Arc<LogSink>, init: Init) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("control".into())
        .stack_size(THREAD_STACK)
        .spawn(move || serve(&listener, &sink, &init))
}

/// Accepts and answers connections one at a time, forever. Errors only ever
/// affect the connection they happen on.
fn serve(listener: &UnixListener, sink: &LogSink, init: &Init) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = handle(conn, sink, init);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of fds or similar: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Answers one connection.
fn handle(conn: UnixStream, sink: &LogSink, init: &Init) -> io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    let request = String::from_utf8_lossy(&line);
    (&conn).write_all(answer(&request, sink, init).as_bytes())
}

/// The answer line to one request line.
pub fn answer(request: &str, sink: &LogSink, init: &Init) -> String {
    let result = match Request::decode(request) {
        Some(Request::Ping) => Ok(()),
        Some(Request::ReopenLog) => sink.reopen().map_err(|e| e.to_string()),
        Some(Request::Signal(sig)) => init.signal(sig),
        None => Err(UNKNOWN.to_string()),
    };
    encode_answer(&result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_shim_protocol::files::SHIM_SOCK;
    use std::path::PathBuf;

    #[test]
    fn answers_requests() {
        let sink = LogSink::new(None);
        let none = Init { pidfd: None };
        assert_eq!(answer("ping", &sink, &none), "ok\n");
        assert_eq!(answer("reopen-log", &sink, &none), "ok\n");
        assert_eq!(answer("bogus", &sink, &none), "error unknown command\n");
        assert_eq!(answer("", &sink, &none), "error unknown command\n");
        assert!(answer("signal 15", &sink, &none).starts_with("error "));
        let broken = LogSink::new(Some(PathBuf::from("/nonexistent-dir/x/c.log")));
        assert!(answer("reopen-log", &broken, &none).starts_with("error "));
    }

    #[test]
    fn signals_reach_the_init_and_a_reaped_one_is_fine() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let init = Init::open(i32::try_from(child.id()).expect("pid"));
        let sink = LogSink::new(None);
        assert_eq!(answer("signal 9", &sink, &init), "ok\n");
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert_eq!(answer("signal 15", &sink, &init), "ok\n");
    }

    #[test]
    fn serves_over_socket() {
        let dir = std::env::temp_dir().join(format!("crust-shim-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(SHIM_SOCK);
        let listener = UnixListener::bind(&path).expect("bind");
        spawn(listener, Arc::new(LogSink::new(None)), Init { pidfd: None }).expect("spawn");
        let ask = |req: &[u8]| {
            let mut c = UnixStream::connect(&path).expect("connect");
            c.write_all(req).expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).expect("read");
            out
        };
        assert_eq!(ask(b"ping\n"), "ok\n");
        assert_eq!(ask(b"nope\n"), "error unknown command\n");
        // A client that hangs up early does not break the server.
        drop(UnixStream::connect(&path).expect("connect"));
        assert_eq!(ask(b"reopen-log\r\n"), "ok\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
