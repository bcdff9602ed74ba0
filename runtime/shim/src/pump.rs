//! Log pump threads: one per container stream, each reading a pipe (or the
//! pty master) and writing CRI log records to the shared [`LogSink`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::attach::Hub;
use crate::crilog::{LineSplitter, LogSink, Stream};

/// Stack size of the shim's helper threads; they need very little.
pub const THREAD_STACK: usize = 64 * 1024;

/// Size of each pump's read buffer.
const READ_BUF: usize = 16 * 1024;

/// Where a pump's bytes go: the CRI log and the attached clients.
#[derive(Clone)]
pub struct Outputs {
    /// The CRI log.
    pub sink: Arc<LogSink>,
    /// The attached clients.
    pub hub: Arc<Hub>,
}

/// Starts a thread draining `fd` into the log as `stream` records (and to
/// attached clients as it comes) until end of file, or until `stop` becomes
/// readable (its write end is closed). Before it exits it emits any partial
/// last line and sends `()` on `done`.
pub fn spawn(
    fd: OwnedFd,
    stream: Stream,
    strip_cr: bool,
    outputs: Outputs,
    stop: Arc<OwnedFd>,
    done: Sender<()>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("pump-{}", stream.as_str()))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            run(&fd, stream, strip_cr, &outputs, &stop);
            let _ = done.send(());
        })
}

/// Whether poll reported anything (data, hang-up, error) for `pfd`.
fn ready(pfd: &PollFd<'_>) -> bool {
    pfd.revents().is_none_or(|r| !r.is_empty())
}

/// The pump loop.
fn run(fd: &OwnedFd, stream: Stream, strip_cr: bool, outputs: &Outputs, stop: &OwnedFd) {
    let sink = &outputs.sink;
    let mut splitter = LineSplitter::new(strip_cr);
    let mut scratch = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            // Cannot happen with valid fds; do not spin.
            Err(_) => break,
        }
        if ready(&fds[1]) {
            // Told to stop: the container is gone and the grace period over.
            break;
        }
        if !ready(&fds[0]) {
            continue;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                outputs.hub.broadcast(stream, &buf[..n]);
                let now = SystemTime::now();
                splitter.push(&buf[..n], |tag, content| {
                    sink.write(&mut scratch, now, stream, tag, content)
                });
            }
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            // EIO is how a pty master reports that every slave end is closed.
            Err(_) => break,
        }
    }
    let now = SystemTime::now();
    splitter.finish(|tag, content| sink.write(&mut scratch, now, stream, tag, content));
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::unistd::{pipe2, write};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn drains_until_eof() {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (stop_r, _stop_w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (tx, rx) = mpsc::channel();
        let h = spawn(
            r,
            Stream::Stdout,
            false,
            Outputs {
                sink: Arc::new(LogSink::discard()),
                hub: Hub::new(false),
            },
            Arc::new(stop_r),
            tx,
        )
        .expect("spawn");
        write(&w, b"hello\npartial").expect("write");
        drop(w);
        rx.recv_timeout(Duration::from_secs(5)).expect("done");
        h.join().expect("join");
    }

    #[test]
    fn stops_when_told() {
        let (r, _w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (stop_r, stop_w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (tx, rx) = mpsc::channel();
        let h = spawn(
            r,
            Stream::Stderr,
            false,
            Outputs {
                sink: Arc::new(LogSink::discard()),
                hub: Hub::new(false),
            },
            Arc::new(stop_r),
            tx,
        )
        .expect("spawn");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(stop_w);
        rx.recv_timeout(Duration::from_secs(5)).expect("done");
        h.join().expect("join");
    }
}
