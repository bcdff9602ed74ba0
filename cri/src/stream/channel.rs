//! The byte channels a session hands to exec, attach and port-forward, whatever
//! the transport: [`Incoming`] for what the client sends on one stream, and
//! [`Outgoing`] for what crustd sends on one. Both are bounded, so a client that
//! stops reading (or floods) stalls its own session instead of growing crustd.

use std::collections::HashMap;
use std::io;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// The most payload one outgoing frame or message carries.
pub const MAX_CHUNK: usize = 32 << 10;

/// Chunks of client data queued per stream before the session stops reading.
pub const INCOMING_QUEUE: usize = 16;

/// Bytes of client data one session holds queued for its streams, all
/// streams together, before it stops reading the client (TCP back-pressure):
/// what one session can make crustd hold, however many streams or ports it
/// opens and however large its messages.
pub const SESSION_BUDGET: usize = 2 << 20;

/// Streams one session may hold open at a time, not counting port-forward
/// connections whose two streams have paired up (those count only against
/// the server's limit); more are refused, so one client's unpaired or idle
/// streams cannot take every stream of the server.
pub const MAX_SESSION_STREAMS: usize = 64;

/// Chunks queued towards the client per session before senders wait.
pub const OUTGOING_QUEUE: usize = 16;

/// How often crustd pings an open session: a write to a client that has gone
/// fails, which ends the session even while its reader waits on a stream.
pub const PING_PERIOD: Duration = Duration::from_secs(15);

/// How long a closed session waits for the client to close the connection.
pub const LINGER: Duration = Duration::from_secs(10);

/// Runs `f` unless the client is found gone first (`None`): `dead` is set by
/// a session's writer when writing to the client failed.
pub async fn until_dead<T>(dead: &watch::Receiver<bool>, f: impl Future<Output = T>) -> Option<T> {
    let mut dead = dead.clone();
    tokio::select! {
        v = f => Some(v),
        _ = async { dead.wait_for(|d| *d).await.is_ok() } => None,
    }
}

/// When a session last carried data, in either direction. Pings, pongs and
/// window updates do not count: they flow on every open session, and a
/// session that carries nothing else is idle.
pub struct Activity {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    /// Activity as of now.
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: 0.into(),
        }
    }

    /// Data went by just now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// When data last went by.
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A session's allowance of queued client data ([`SESSION_BUDGET`] bytes):
/// the session's reader takes from it before it queues a chunk for a stream,
/// and the chunk gives it back once the stream's handler took it (or the
/// stream is dropped).
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    /// A full budget of [`SESSION_BUDGET`] bytes.
    pub fn new() -> Self {
        Budget(Arc::new(Semaphore::new(SESSION_BUDGET)))
    }

    /// Waits until `data` (at most [`MAX_CHUNK`] in practice) fits in what
    /// is left, and takes that much.
    pub async fn hold(&self, data: Bytes) -> Queued {
        let n = data.len().clamp(1, SESSION_BUDGET);
        let held = match u32::try_from(n) {
            Ok(n) => self.0.clone().acquire_many_owned(n).await.ok(),
            Err(_) => None,
        };
        Queued { data, _held: held }
    }

    /// Bytes not taken.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.available_permits()
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues `data` for a stream in pieces of at most [`MAX_CHUNK`], each once
/// `budget` has room for it; `false` once the stream's handler is gone. The
/// pieces are copies: a slice would keep the whole message (or read buffer)
/// it came from alive, past what the budget counts.
pub async fn queue(budget: &Budget, tx: &mpsc::Sender<Queued>, data: Bytes) -> bool {
    for piece in data.chunks(MAX_CHUNK) {
        let piece = Bytes::copy_from_slice(piece);
        let queued = tokio::select! {
            q = budget.hold(piece) => q,
            () = tx.closed() => return false,
        };
        if tx.send(queued).await.is_err() {
            return false;
        }
    }
    true
}

/// A chunk of client data queued for a stream, holding its share of the
/// session's [`Budget`] until it is taken.
pub struct Queued {
    data: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

/// One piece of data for the session's writer: `stream` is a SPDY stream id or a
/// WebSocket channel number.
#[derive(Debug)]
pub struct OutData {
    /// Stream or channel.
    pub stream: u32,
    /// Payload (at most [`MAX_CHUNK`]).
    pub data: Bytes,
    /// Last data of this stream.
    pub fin: bool,
}

/// Says the session's reader consumed `bytes` of a stream (SPDY: grants window).
#[derive(Clone)]
pub struct Credit {
    /// The stream.
    pub stream: u32,
    /// Where grants go; the session turns them into WINDOW_UPDATE frames.
    pub grants: mpsc::Sender<(u32, u32)>,
}

/// What the client sends on one stream, in arrival order; `None` at its end.
pub struct Incoming {
    rx: mpsc::Receiver<Queued>,
    credit: Option<Credit>,
}

impl Incoming {
    /// A stream fed through `rx`; `credit` is told of what is consumed.
    pub fn new(rx: mpsc::Receiver<Queued>, credit: Option<Credit>) -> Incoming {
        Incoming { rx, credit }
    }

    /// The next chunk, or `None` once the client closed the stream.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let data = self.rx.recv().await?.data;
        if let Some(c) = &self.credit {
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let _ = c.grants.send((c.stream, n)).await;
        }
        Some(data)
    }
}

/// What crustd sends on one stream; [`Outgoing::finish`] ends it.
pub struct Outgoing {
    stream: u32,
    tx: mpsc::Sender<OutData>,
    windows: Option<Arc<SendWindows>>,
    finished: bool,
}

impl Outgoing {
    /// Stream `stream` of a session whose writer reads `tx`; `windows` applies
    /// SPDY flow control.
    pub fn new(stream: u32, tx: mpsc::Sender<OutData>, windows: Option<Arc<SendWindows>>) -> Self {
        Outgoing {
            stream,
            tx,
            windows,
            finished: false,
        }
    }

    /// Sends `data`, in chunks, each once the peer's window allows it.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        if self.finished {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream finished"));
        }
        while !data.is_empty() {
            let mut n = data.len().min(MAX_CHUNK);
            if let Some(w) = &self.windows {
                n = w.take(self.stream, n).await?;
            }
            let chunk = data.split_to(n);
            self.push(chunk, false).await?;
        }
        Ok(())
    }

    /// Resolves once nothing more can reach the client on this stream: it
    /// reset the stream, or the session ended.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        let windows = self.windows.clone();
        let stream = self.stream;
        async move {
            match windows {
                Some(w) => tokio::select! {
                    () = tx.closed() => {}
                    () = w.closed(stream) => {}
                },
                None => tx.closed().await,
            }
        }
    }

    /// Sends a message with no payload (WebSocket: the channel byte alone,
    /// which tells a client the channel is up).
    pub async fn send_empty(&mut self) -> io::Result<()> {
        self.push(Bytes::new(), false).await
    }

    /// Ends the stream (SPDY: DATA with FIN). Later calls do nothing.
    pub async fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.push(Bytes::new(), true).await;
        }
    }

    async fn push(&self, data: Bytes, fin: bool) -> io::Result<()> {
        self.tx
            .send(OutData {
                stream: self.stream,
                data,
                fin,
            })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the session has ended"))
    }
}

/// The peer's receive windows, per stream and for the whole session (SPDY/3.1).
///
/// client-go's SPDY library neither sends WINDOW_UPDATE nor honours it, relying on
/// TCP back-pressure; so windows bind only once the peer shows it keeps them (a
/// WINDOW_UPDATE or an INITIAL_WINDOW_SIZE setting). Either way what crustd
/// queues is bounded by the writer's queue.
pub struct SendWindows {
    state: Mutex<WindowState>,
    changed: Notify,
}

struct WindowState {
    enforced: bool,
    initial: i64,
    session: i64,
    streams: HashMap<u32, i64>,
    ended: bool,
}

impl SendWindows {
    /// Windows starting at `initial` bytes.
    pub fn new(initial: u32) -> Self {
        SendWindows {
            state: Mutex::new(WindowState {
                enforced: false,
                initial: i64::from(initial),
                session: i64::from(initial),
                streams: HashMap::new(),
                ended: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new stream opens with the initial window.
    pub fn open(&self, stream: u32) {
        let mut s = self.lock();
        let initial = s.initial;
        s.streams.insert(stream, initial);
    }

    /// A stream is gone (reset or done): its senders fail from now on.
    pub fn close(&self, stream: u32) {
        self.lock().streams.remove(&stream);
        self.changed.notify_waiters();
    }

    /// The session is gone: every sender fails.
    pub fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_waiters();
    }

    /// WINDOW_UPDATE: `stream` 0 is the session's window.
    pub fn grant(&self, stream: u32, delta: u32) {
        let mut s = self.lock();
        s.enforced = true;
        let delta = i64::from(delta);
        if stream == 0 {
            s.session += delta;
        } else if let Some(w) = s.streams.get_mut(&stream) {
            *w += delta;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// SETTINGS INITIAL_WINDOW_SIZE: existing streams move by the difference.
    pub fn set_initial(&self, initial: u32) {
        let mut s = self.lock();
        s.enforced = true;
        let diff = i64::from(initial) - s.initial;
        s.initial = i64::from(initial);
        for w in s.streams.values_mut() {
            *w += diff;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Resolves once `stream` is reset or closed, or the session ended.
    pub async fn closed(&self, stream: u32) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            {
                let s = self.lock();
                if s.ended || !s.streams.contains_key(&stream) {
                    return;
                }
            }
            changed.await;
        }
    }

    /// Waits until `stream` may send, then takes up to `want` bytes of window.
    pub async fn take(&self, stream: u32, want: usize) -> io::Result<usize> {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.ended {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the session has ended",
                    ));
                }
                let enforced = s.enforced;
                let session = s.session;
                let Some(w) = s.streams.get_mut(&stream) else {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client reset the stream",
                    ));
                };
                let want = i64::try_from(want).unwrap_or(i64::MAX);
                let n = if enforced {
                    want.min(*w).min(session)
                } else {
                    want
                };
                if n > 0 {
                    *w -= n;
                    s.session -= n;
                    return Ok(usize::try_from(n).unwrap_or(0));
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn windows_bind_only_once_the_peer_keeps_them() {
        let w = SendWindows::new(10);
        w.open(1);
        assert_eq!(w.take(1, 100).await.unwrap(), 100);
        w.grant(1, 5);
        // Now enforced: the stream's window is 10 - 100 + 5 < 0.
        let blocked = tokio::time::timeout(Duration::from_millis(50), w.take(1, 1)).await;
        assert!(blocked.is_err());
    }

    #[tokio::test]
    async fn window_updates_stop_and_resume_a_sender() {
        let w = Arc::new(SendWindows::new(4));
        w.open(1);
        w.set_initial(4);
        assert_eq!(w.take(1, 10).await.unwrap(), 4);
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.take(1, 10).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        w.grant(0, 100);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "the stream's own window is still empty"
        );
        w.grant(1, 3);
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
    }

    #[tokio::test]
    async fn queued_bytes_stay_within_the_session_budget() {
        let budget = Budget::new();
        // Each stream's queue holds this much; enough streams spend the budget.
        let per_stream = INCOMING_QUEUE * MAX_CHUNK;
        let full = SESSION_BUDGET / per_stream;
        let mut readers = Vec::new();
        for _ in 0..full {
            let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
            // One large message, queued in pieces of at most MAX_CHUNK.
            assert!(queue(&budget, &tx, Bytes::from(vec![1u8; per_stream])).await);
            readers.push((tx, Incoming::new(rx, None)));
        }
        assert_eq!(budget.available(), 0);
        // Another stream of the session now waits until a reader takes data.
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { queue(&budget, &tx, Bytes::from_static(b"hi")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "queued past the budget");
        let chunk = readers[0].1.recv().await.unwrap();
        assert_eq!(chunk.len(), MAX_CHUNK);
        assert!(waiting.await.unwrap());
        // Streams whose handlers are gone give back what they held.
        drop(readers);
        drop(rx);
        assert_eq!(budget.available(), SESSION_BUDGET);
    }

    #[tokio::test]
    async fn a_reset_stream_fails_its_sender() {
        let w = Arc::new(SendWindows::new(0));
        w.open(3);
        w.set_initial(0);
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.take(3, 10).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.close(3);
        assert!(waiter.await.unwrap().is_err());
    }
}
