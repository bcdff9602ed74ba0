//! The attach socket (`<bundle>/attach.sock`): crustd connects once per attach
//! session, and the shim fans the container's output out to every attached
//! client while the log keeps every byte, carries one client's input to the
//! container's stdin, and applies terminal resizes.
//!
//! The protocol is `crust_shim_protocol::attach`.
//!
//! A client that falls more than [`CLIENT_QUEUE`] frames or [`CLIENT_BYTES`]
//! behind is cut off, so a stalled client never holds up the container or
//! grows the shim.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crust_shim_protocol::attach::{self, CUT_OFF, RESIZE, STDERR, STDIN_CLOSE, STDIN_DATA, STDOUT};
use crust_shim_protocol::control::encode_answer;

use crate::crilog::Stream;
use crate::pump::THREAD_STACK;

/// Output frames queued per client before it is cut off...
pub const CLIENT_QUEUE: usize = 64;
/// ...or bytes.
pub const CLIENT_BYTES: usize = 256 << 10;

/// Clients attached at the same time; more are refused.
const MAX_CLIENTS: usize = 16;

/// Largest frame a client may send.
const MAX_FRAME: usize = 1 << 20;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long queued output may take to reach clients once the container ended.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything attach clients share.
pub struct Hub {
    state: Mutex<State>,
    writers_done: Condvar,
    stdin_once: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("stdin_once", &self.stdin_once)
            .finish_non_exhaustive()
    }
}

struct State {
    clients: Vec<Subscriber>,
    next_id: u64,
    /// The container's stdin, while it is open.
    stdin: Option<Arc<File>>,
    /// The client whose input goes to stdin.
    stdin_holder: Option<u64>,
    /// The terminal, for resizes.
    pty: Option<OwnedFd>,
    /// The container has ended; no more clients.
    finished: bool,
    /// Writer threads still running.
    writers: usize,
}

/// One output frame for a client: its kind and payload.
type OutFrame = (u8, Vec<u8>);

struct Subscriber {
    id: u64,
    stdout: bool,
    stderr: bool,
    tx: SyncSender<OutFrame>,
    backlog: Arc<Backlog>,
}

/// What a client's writer has yet to write, and whether it was cut off.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    cut_off: AtomicBool,
}

impl Hub {
    /// A hub for a container whose stdin closes after the first client when
    /// `stdin_once`.
    pub fn new(stdin_once: bool) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State {
                clients: Vec::new(),
                next_id: 0,
                stdin: None,
                stdin_holder: None,
                pty: None,
                finished: false,
                writers: 0,
            }),
            writers_done: Condvar::new(),
            stdin_once,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the hub the container's stdin (the write end of its pipe, or the
    /// terminal) and the terminal for resizes.
    pub fn set_io(&self, stdin: Option<OwnedFd>, pty: Option<OwnedFd>) {
        let mut st = self.lock();
        st.stdin = stdin.map(|fd| Arc::new(File::from(fd)));
        st.pty = pty;
    }

    /// Hands output to every client that wants `stream`; clients too far
    /// behind, or gone, are dropped.
    pub fn broadcast(&self, stream: Stream, data: &[u8]) {
        let mut st = self.lock();
        if st.clients.is_empty() {
            return;
        }
        let code = match stream {
            Stream::Stdout => STDOUT,
            Stream::Stderr => STDERR,
        };
        st.clients.retain(|c| {
            let wanted = if code == STDOUT { c.stdout } else { c.stderr };
            if !wanted {
                return true;
            }
            let queued = c.backlog.bytes.load(Ordering::Relaxed);
            let sent = queued + data.len() <= CLIENT_BYTES
                && match c.tx.try_send((code, data.to_vec())) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                };
            if sent {
                c.backlog.bytes.fetch_add(data.len(), Ordering::Relaxed);
            } else {
                c.backlog.cut_off.store(true, Ordering::Relaxed);
            }
            sent
        });
    }

    /// The container has ended and its output is drained: clients get what is
    /// queued, then end of file.
    pub fn finish(&self) {
        let mut st = self.lock();
        st.finished = true;
        st.clients.clear();
        st.stdin = None;
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        while st.writers > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.writers_done.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Registers a client; the error is the answer line's message.
    fn register(
        &self,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<(u64, Receiver<OutFrame>, Arc<Backlog>), String> {
        let mut st = self.lock();
        if st.finished {
            return Err("the container has exited".into());
        }
        if st.clients.len() >= MAX_CLIENTS {
            return Err(format!("{MAX_CLIENTS} clients are attached already"));
        }
        let id = st.next_id;
        st.next_id += 1;
        if stdin {
            if st.stdin.is_none() {
                return Err("the container's stdin is closed".into());
            }
            if st.stdin_holder.is_some() {
                return Err("another attached client holds the container's stdin".into());
            }
            st.stdin_holder = Some(id);
        }
        let (tx, rx) = sync_channel(CLIENT_QUEUE);
        let backlog = Arc::new(Backlog::default());
        st.clients.push(Subscriber {
            id,
            stdout,
            stderr,
            tx,
            backlog: backlog.clone(),
        });
        Ok((id, rx, backlog))
    }

    /// The client `id` stops sending input (or left).
    fn release_stdin(&self, id: u64) {
        let mut st = self.lock();
        if st.stdin_holder == Some(id) {
            st.stdin_holder = None;
            if self.stdin_once {
                st.stdin = None;
            }
        }
    }

    /// The client `id` is gone.
    fn detach(&self, id: u64) {
        self.release_stdin(id);
        self.lock().clients.retain(|c| c.id != id);
    }

    fn writer_started(&self) {
        self.lock().writers += 1;
    }

    fn writer_done(&self) {
        let mut st = self.lock();
        st.writers = st.writers.saturating_sub(1);
        self.writers_done.notify_all();
    }

    fn write_stdin(&self, id: u64, data: &[u8]) -> io::Result<()> {
        let file = {
            let st = self.lock();
            if st.stdin_holder != Some(id) {
                return Ok(());
            }
            st.stdin.clone()
        };
        match file {
            // Written outside the lock: a container that does not read its
            // stdin blocks this client only.
            Some(f) => (&*f).write_all(data),
            None => Ok(()),
        }
    }

    fn resize(&self, width: u16, height: u16) {
        let st = self.lock();
        if let Some(pty) = &st.pty {
            let size = libc::winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
            unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
    }
}

/// Starts the thread that accepts attach clients for the life of the process.
pub fn spawn(listener: UnixListener, hub: Arc<Hub>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("attach".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            loop {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let hub = hub.clone();
                        let _ = thread::Builder::new()
                            .name("attach-in".into())
                            .stack_size(THREAD_STACK)
                            .spawn(move || {
                                let _ = serve(conn, &hub);
                            });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        })
}

/// Serves one client: answers its request, starts its writer, and reads its
/// frames until it leaves.
fn serve(conn: UnixStream, hub: &Arc<Hub>) -> io::Result<()> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    (&mut reader).take(256).read_line(&mut line)?;
    let registered =
        attach::Request::decode(&line).and_then(|r| hub.register(r.stdin, r.stdout, r.stderr));
    let (id, rx, backlog) = match registered {
        Ok(r) => r,
        Err(msg) => {
            let _ = (&conn).write_all(encode_answer(&Err(msg)).as_bytes());
            return Ok(());
        }
    };
    // From here on every way out detaches the client.
    let _attached = Attached { hub, id };
    (&conn).write_all(encode_answer(&Ok(())).as_bytes())?;
    conn.set_read_timeout(None)?;
    let out = conn.try_clone()?;
    hub.writer_started();
    let writer_hub = hub.clone();
    let started = thread::Builder::new()
        .name("attach-out".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            write_frames(&out, &rx, &backlog);
            let _ = out.shutdown(std::net::Shutdown::Write);
            writer_hub.writer_done();
        });
    if started.is_err() {
        hub.writer_done();
        return Ok(());
    }
    read_frames(&mut reader, hub, id)
}

/// Detaches its client when dropped.
struct Attached<'a> {
    hub: &'a Hub,
    id: u64,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

fn write_frames(out: &UnixStream, rx: &Receiver<OutFrame>, backlog: &Backlog) {
    let mut w = out;
    let mut write = |kind: u8, data: &[u8]| {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        w.write_all(&attach::encode_header(kind, len))
            .and_then(|()| w.write_all(data))
    };
    for (kind, data) in rx {
        let written = write(kind, &data);
        backlog.bytes.fetch_sub(data.len(), Ordering::Relaxed);
        if written.is_err() {
            return;
        }
    }
    if backlog.cut_off.load(Ordering::Relaxed) {
        let _ = write(CUT_OFF, &[]);
    }
}

fn read_frames(r: &mut impl Read, hub: &Hub, id: u64) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; attach::HEADER_LEN];
        r.read_exact(&mut head)?;
        let (kind, len) = attach::decode_header(&head);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf)?;
        match kind {
            STDIN_DATA => hub.write_stdin(id, &buf)?,
            STDIN_CLOSE => hub.release_stdin(id),
            RESIZE => {
                if let Some((width, height)) = attach::decode_resize(&buf) {
                    hub.resize(width, height);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::unistd::pipe2;

    use attach::encode_frame as frame;
    use crust_shim_protocol::files::ATTACH_SOCK;

    fn read_frame(c: &mut UnixStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; attach::HEADER_LEN];
        c.read_exact(&mut head).expect("head");
        let (kind, len) = attach::decode_header(&head);
        let mut data = vec![0u8; len];
        c.read_exact(&mut data).expect("data");
        (kind, data)
    }

    fn connect(path: &std::path::Path, request: &str) -> (UnixStream, String) {
        let mut c = UnixStream::connect(path).expect("connect");
        c.write_all(request.as_bytes()).expect("request");
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            c.read_exact(&mut byte).expect("answer");
            answer.push(byte[0]);
        }
        (c, String::from_utf8_lossy(&answer).trim().to_string())
    }

    #[test]
    fn fans_out_output_and_carries_one_clients_stdin() {
        let dir = std::env::temp_dir().join(format!("crust-shim-attach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(ATTACH_SOCK);
        let _ = std::fs::remove_file(&path);
        let hub = Hub::new(true);
        let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        hub.set_io(Some(stdin_w), None);
        spawn(UnixListener::bind(&path).expect("bind"), hub.clone()).expect("spawn");

        let (mut a, ok) = connect(&path, "attach 1 1 1\n");
        assert_eq!(ok, "ok");
        let (mut b, ok) = connect(&path, "attach 0 1 0\n");
        assert_eq!(ok, "ok");
        let (_, refused) = connect(&path, "attach 1 1 1\n");
        assert!(
            refused.starts_with("error another attached client"),
            "{refused}"
        );

        hub.broadcast(Stream::Stdout, b"out");
        hub.broadcast(Stream::Stderr, b"err");
        assert_eq!(read_frame(&mut a), (STDOUT, b"out".to_vec()));
        assert_eq!(read_frame(&mut a), (STDERR, b"err".to_vec()));
        assert_eq!(read_frame(&mut b), (STDOUT, b"out".to_vec()));

        a.write_all(&frame(STDIN_DATA, b"typed")).expect("stdin");
        let mut got = [0u8; 5];
        File::from(stdin_r.try_clone().expect("dup"))
            .read_exact(&mut got)
            .expect("read stdin");
        assert_eq!(&got, b"typed");

        // stdin_once: the first client leaving closes the container's stdin.
        a.write_all(&frame(STDIN_CLOSE, b"")).expect("close");
        drop(a);
        let mut rest = Vec::new();
        File::from(stdin_r).read_to_end(&mut rest).expect("eof");
        assert!(rest.is_empty());

        hub.finish();
        let mut tail = Vec::new();
        b.read_to_end(&mut tail).expect("eof for b");
        let (_, after) = connect(&path, "attach 0 1 0\n");
        assert_eq!(after, "error the container has exited");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_off() {
        let hub = Hub::new(false);
        let (_id, rx, backlog) = hub.register(false, true, false).expect("register");
        for _ in 0..=CLIENT_QUEUE {
            hub.broadcast(Stream::Stdout, b"x");
        }
        assert!(
            hub.lock().clients.is_empty(),
            "the lagging client is still attached"
        );
        assert_eq!(rx.try_iter().count(), CLIENT_QUEUE);
        assert!(backlog.cut_off.load(Ordering::Relaxed));

        // A byte budget too: a few big pieces cut a client off as well.
        let (_id, rx, backlog) = hub.register(false, true, false).expect("register");
        for _ in 0..4 {
            hub.broadcast(Stream::Stdout, &[0u8; CLIENT_BYTES / 3]);
        }
        assert!(hub.lock().clients.is_empty());
        assert_eq!(rx.try_iter().count(), 3);
        assert!(backlog.cut_off.load(Ordering::Relaxed));
    }
}
