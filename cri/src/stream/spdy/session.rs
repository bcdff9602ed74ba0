//! One SPDY/3.1 session on an upgraded connection: a reader task that decodes
//! frames and routes DATA to per-stream bounded queues, and a writer task that
//! encodes control frames and DATA in order. The peer (client-go) opens every
//! stream; crustd accepts each with SYN_REPLY and hands it to the handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::frame::{self, Codec, Frame, HeaderBlock};
use crate::stream::channel::{
    Activity, Budget, Credit, INCOMING_QUEUE, Incoming, LINGER, MAX_CHUNK, MAX_SESSION_STREAMS,
    OUTGOING_QUEUE, OutData, Outgoing, PING_PERIOD, Queued, SendWindows, queue, until_dead,
};

/// Largest control frame accepted (a header block is a few hundred bytes).
const MAX_CONTROL_FRAME: usize = 64 << 10;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// Control frames queued for the writer before the reader waits.
const CONTROL_QUEUE: usize = 64;

/// One stream the client opened.
pub struct SpdyStream {
    /// Its id.
    pub id: u32,
    /// The headers of its SYN_STREAM.
    pub headers: HeaderBlock,
    /// What the client sends on it.
    pub incoming: Incoming,
    /// What crustd sends on it.
    pub outgoing: Outgoing,
    /// Its place under the server's and the session's stream limits.
    pub permit: StreamPermit,
}

/// A stream's place under the server's limit and its session's
/// ([`MAX_SESSION_STREAMS`]); both are given back when it is dropped.
pub struct StreamPermit {
    _server: OwnedSemaphorePermit,
    session: Option<OwnedSemaphorePermit>,
}

impl StreamPermit {
    /// Gives the stream's place under its session's limit back early,
    /// keeping the server's: a port-forward connection whose two streams
    /// have paired up counts only against the server, so one session can
    /// carry as many connections as the server has room for, while its
    /// unpaired halves stay capped.
    pub fn leave_session_share(&mut self) {
        self.session = None;
    }
}

impl SpdyStream {
    /// The value of header `name` (lower case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Limits a session works under.
#[derive(Clone)]
pub struct Limits {
    /// Streams the whole server may hold open.
    pub streams: Arc<Semaphore>,
    /// A session that carries no data for this long is closed.
    pub idle: Duration,
    /// Names the session in logs (e.g. "exec 3f2a…").
    pub label: String,
}

enum Control {
    Frame(Frame),
    /// Write what is queued, then GOAWAY, and shut the connection.
    Close,
}

/// The handler's side of a session.
pub struct Session {
    streams: mpsc::Receiver<SpdyStream>,
    control: mpsc::Sender<Control>,
    closed: watch::Receiver<bool>,
    closing: watch::Sender<bool>,
    writer: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts serving SPDY on `io` (the connection after the 101 answer).
    pub fn start<IO>(io: IO, limits: Limits) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let codec = Arc::new(Mutex::new(Codec::new(
            MAX_CONTROL_FRAME,
            MAX_HEADER_BLOCK,
            MAX_CHUNK,
        )));
        let windows = Arc::new(SendWindows::new(frame::DEFAULT_INITIAL_WINDOW));
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (data_tx, data_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (grant_tx, grant_rx) = mpsc::channel(CONTROL_QUEUE);
        let (stream_tx, stream_rx) = mpsc::channel(8);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (closing_tx, closing_rx) = watch::channel(false);
        let (dead_tx, dead_rx) = watch::channel(false);
        let activity = Arc::new(Activity::new());

        let writer = tokio::spawn(write_loop(
            write,
            codec.clone(),
            control_rx,
            data_rx,
            grant_rx,
            windows.clone(),
            activity.clone(),
            limits.label.clone(),
            dead_tx,
        ));
        let reader = Reader {
            codec,
            windows,
            control: control_tx.clone(),
            data: data_tx,
            grants: grant_tx,
            new_streams: stream_tx,
            inbound: HashMap::new(),
            last_id: 0,
            session_streams: Arc::new(Semaphore::new(MAX_SESSION_STREAMS)),
            budget: Budget::new(),
            activity,
            limits,
            closing: closing_rx,
            dead: dead_rx,
        };
        let stop_writer = writer.abort_handle();
        tokio::spawn(async move {
            reader.run(read).await;
            // The client is gone (or idle): nothing more can reach it, and a
            // writer blocked on a client that stopped reading must not linger.
            stop_writer.abort();
            let _ = closed_tx.send(true);
        });
        Session {
            streams: stream_rx,
            control: control_tx,
            closed: closed_rx,
            closing: closing_tx,
            writer,
        }
    }

    /// The next stream the client opens; `None` once the connection is gone.
    pub async fn next_stream(&mut self) -> Option<SpdyStream> {
        self.streams.recv().await
    }

    /// Resolves when the client has gone away (or the session ended).
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            let _ = closed.wait_for(|c| *c).await;
        }
    }

    /// Sends what is queued, then GOAWAY, and shuts the connection's write
    /// side. The client then closes it; until it does (at most [`LINGER`]),
    /// its frames are still read, so nothing it sends meanwhile makes the
    /// kernel reset the connection and drop output not yet delivered.
    pub async fn close(self) {
        let _ = self.control.send(Control::Close).await;
        let _ = self.writer.await;
        let _ = self.closing.send(true);
    }
}

struct Reader {
    codec: Arc<Mutex<Codec>>,
    windows: Arc<SendWindows>,
    control: mpsc::Sender<Control>,
    data: mpsc::Sender<OutData>,
    grants: mpsc::Sender<(u32, u32)>,
    new_streams: mpsc::Sender<SpdyStream>,
    inbound: HashMap<u32, mpsc::Sender<Queued>>,
    last_id: u32,
    /// Open streams of this session.
    session_streams: Arc<Semaphore>,
    /// What the streams' queues may hold, together.
    budget: Budget,
    activity: Arc<Activity>,
    limits: Limits,
    closing: watch::Receiver<bool>,
    /// Set when the writer could not write: the client is gone.
    dead: watch::Receiver<bool>,
}

/// Why reading ended.
enum End {
    Eof,
    /// Writing to the client failed.
    Gone,
    /// The session was closed and the client did not close its side in time.
    Lingered,
    Idle,
    GoAway,
    Error(String),
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(mut self, mut read: R) {
        let end = self.read_frames(&mut read).await;
        let label = &self.limits.label;
        match &end {
            End::Eof | End::GoAway | End::Gone => {
                tracing::debug!(session = %label, "client closed the SPDY session")
            }
            End::Lingered => {
                tracing::debug!(session = %label, "the client kept a closed SPDY session open")
            }
            End::Idle => {
                tracing::info!(session = %label, idle_s = self.limits.idle.as_secs(), "closing an idle streaming session")
            }
            End::Error(e) => tracing::info!(session = %label, error = %e, "SPDY session failed"),
        }
        // Stdin and friends see their end; senders fail.
        self.inbound.clear();
        self.windows.end();
    }

    async fn read_frames<R: AsyncRead + Unpin>(&mut self, read: &mut R) -> End {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            loop {
                let decoded = self
                    .codec
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .decode(&mut buf);
                match decoded {
                    Ok(Some(f)) => {
                        if let Some(end) = self.handle(f).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Error(e.to_string()),
                }
            }
            buf.reserve(64 << 10);
            let idle_at = self.activity.last() + self.limits.idle;
            tokio::select! {
                _ = async { self.closing.wait_for(|c| *c).await.is_ok() } => {
                    return match tokio::time::timeout(LINGER, drain(read)).await {
                        Ok(()) => End::Eof,
                        Err(_) => End::Lingered,
                    };
                }
                n = read.read_buf(&mut buf) => match n {
                    Ok(0) => return End::Eof,
                    Ok(_) => {}
                    Err(e) => return End::Error(e.to_string()),
                },
                _ = tokio::time::sleep_until(idle_at) => {
                    if self.activity.last() + self.limits.idle <= Instant::now() {
                        return End::Idle;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, f: Frame) -> Option<End> {
        match f {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => return self.open(stream_id, fin, headers).await,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => return self.data(stream_id, fin, data).await,
            Frame::RstStream { stream_id, .. } => {
                self.inbound.remove(&stream_id);
                self.windows.close(stream_id);
            }
            Frame::Settings { entries, .. } => {
                for s in entries {
                    if s.id == frame::settings::INITIAL_WINDOW_SIZE {
                        self.windows.set_initial(s.value);
                    }
                }
            }
            Frame::WindowUpdate { stream_id, delta } => self.windows.grant(stream_id, delta),
            Frame::Ping { id } => {
                // Odd ids are the client's pings; even ones would answer ours.
                if id % 2 == 1 && !self.send_control(Frame::Ping { id }).await {
                    return Some(End::Gone);
                }
            }
            Frame::GoAway { .. } => return Some(End::GoAway),
            Frame::SynReply { .. } | Frame::Headers { .. } => {}
        }
        None
    }

    /// Queues a control frame; false when the client is gone.
    async fn send_control(&self, f: Frame) -> bool {
        until_dead(&self.dead, self.control.send(Control::Frame(f)))
            .await
            .is_some()
    }

    async fn open(&mut self, id: u32, fin: bool, headers: HeaderBlock) -> Option<End> {
        if id.is_multiple_of(2) || id <= self.last_id {
            return Some(End::Error(format!(
                "the client opened stream {id} after {} (ids must be odd and increase)",
                self.last_id
            )));
        }
        self.last_id = id;
        let Ok(session) = self.session_streams.clone().try_acquire_owned() else {
            tracing::warn!(session = %self.limits.label, stream = id, limit = MAX_SESSION_STREAMS, "refusing a stream: the session holds as many streams as one session may");
            return self.refuse(id).await;
        };
        let Ok(server) = self.limits.streams.clone().try_acquire_owned() else {
            tracing::warn!(session = %self.limits.label, stream = id, "refusing a stream: the server's stream limit is reached");
            return self.refuse(id).await;
        };
        let permit = StreamPermit {
            _server: server,
            session: Some(session),
        };
        self.windows.open(id);
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        if !fin {
            self.inbound.insert(id, tx);
        }
        let replied = self
            .send_control(Frame::SynReply {
                stream_id: id,
                fin: false,
                headers: Vec::new(),
            })
            .await;
        if !replied {
            return Some(End::Gone);
        }
        let stream = SpdyStream {
            id,
            headers,
            incoming: Incoming::new(
                rx,
                Some(Credit {
                    stream: id,
                    grants: self.grants.clone(),
                }),
            ),
            outgoing: Outgoing::new(id, self.data.clone(), Some(self.windows.clone())),
            permit,
        };
        match until_dead(&self.dead, self.new_streams.send(stream)).await {
            None => return Some(End::Gone),
            // Nobody takes streams any more: the handler is finishing.
            Some(Err(_)) => {
                self.inbound.remove(&id);
            }
            Some(Ok(())) => {}
        }
        None
    }

    /// Answers a stream with RST_STREAM (REFUSED_STREAM).
    async fn refuse(&self, id: u32) -> Option<End> {
        let sent = self
            .send_control(Frame::RstStream {
                stream_id: id,
                status: frame::rst::REFUSED_STREAM,
            })
            .await;
        (!sent).then_some(End::Gone)
    }

    /// Hands DATA to its stream. A full queue holds the whole session (client-go
    /// keeps no windows, so TCP is its only back-pressure) until the stream's
    /// reader catches up or the client is found gone.
    async fn data(&mut self, id: u32, fin: bool, data: Bytes) -> Option<End> {
        self.activity.touch();
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if let Some(tx) = self.inbound.get(&id)
            && !data.is_empty()
        {
            match until_dead(&self.dead, queue(&self.budget, tx, data)).await {
                None => return Some(End::Gone),
                Some(true) => {}
                Some(false) => {
                    // The handler no longer reads this stream: grant the window
                    // back so a well-behaved client is not stalled by bytes we drop.
                    self.inbound.remove(&id);
                    if until_dead(&self.dead, self.grants.send((id, n)))
                        .await
                        .is_none()
                    {
                        return Some(End::Gone);
                    }
                }
            }
        }
        if fin {
            self.inbound.remove(&id);
        }
        None
    }
}

/// Reads and drops what the client still sends until it closes.
async fn drain<R: AsyncRead + Unpin>(read: &mut R) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = read.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    codec: Arc<Mutex<Codec>>,
    mut control: mpsc::Receiver<Control>,
    mut data: mpsc::Receiver<OutData>,
    mut grants: mpsc::Receiver<(u32, u32)>,
    windows: Arc<SendWindows>,
    activity: Arc<Activity>,
    label: String,
    dead: watch::Sender<bool>,
) {
    let mut buf = BytesMut::with_capacity(MAX_CHUNK + 64);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_PERIOD, PING_PERIOD);
    // Server pings carry even ids.
    let mut ping_id: u32 = 0;
    let encode = |f: &Frame, buf: &mut BytesMut| {
        codec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encode(f, buf)
    };
    let data_frame = |d: OutData| Frame::Data {
        stream_id: d.stream,
        fin: d.fin,
        data: d.data,
    };
    let mut closing = false;
    loop {
        let frames: Vec<Frame> = tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Frame(f)) => vec![f],
                Some(Control::Close) | None => {
                    closing = true;
                    let mut rest = Vec::new();
                    while let Ok(d) = data.try_recv() {
                        rest.push(data_frame(d));
                    }
                    rest.push(Frame::GoAway { last_good_stream_id: 0, status: frame::goaway::OK });
                    rest
                }
            },
            Some((stream, n)) = grants.recv() => {
                let mut fs = vec![Frame::WindowUpdate { stream_id: 0, delta: n.max(1) }];
                fs.push(Frame::WindowUpdate { stream_id: stream, delta: n.max(1) });
                fs
            },
            Some(d) = data.recv() => {
                if d.fin {
                    windows.close(d.stream);
                }
                vec![data_frame(d)]
            },
            _ = ping.tick() => {
                ping_id = ping_id.wrapping_add(2) & 0x7fff_fffe;
                vec![Frame::Ping { id: ping_id.max(2) }]
            },
        };
        for f in &frames {
            if let Err(e) = encode(f, &mut buf) {
                tracing::warn!(session = %label, error = %e, "cannot encode a SPDY frame");
                return;
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            tracing::debug!(session = %label, error = %e, "the client's connection is gone");
            let _ = dead.send(true);
            return;
        }
        buf.clear();
        if frames.iter().any(|f| matches!(f, Frame::Data { .. })) {
            activity.touch();
        }
        if closing {
            let _ = write.flush().await;
            let _ = write.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// The client's end: its own codec over the other half of a pipe.
    struct Client {
        io: DuplexStream,
        codec: Codec,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&f, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }

        /// The next frame, or None when nothing arrives within `wait`.
        async fn next(&mut self, wait: Duration) -> Option<Frame> {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                match tokio::time::timeout(wait, self.io.read_buf(&mut self.buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            }
        }

        /// DATA bytes of stream 1 received until nothing comes for a while.
        async fn data(&mut self) -> usize {
            let mut total = 0;
            while let Some(f) = self.next(Duration::from_millis(200)).await {
                if let Frame::Data {
                    stream_id: 1, data, ..
                } = f
                {
                    total += data.len();
                }
            }
            total
        }
    }

    fn start() -> (Session, Client) {
        start_with(8, Duration::from_secs(60))
    }

    fn start_with(streams: usize, idle: Duration) -> (Session, Client) {
        let (server, client) = tokio::io::duplex(1 << 20);
        let session = Session::start(
            server,
            Limits {
                streams: Arc::new(Semaphore::new(streams)),
                idle,
                label: "test".into(),
            },
        );
        let codec = Codec::new(MAX_CONTROL_FRAME, MAX_HEADER_BLOCK, MAX_CHUNK);
        (
            session,
            Client {
                io: client,
                codec,
                buf: BytesMut::new(),
            },
        )
    }

    #[tokio::test]
    async fn window_updates_stop_and_resume_data() {
        let (mut session, mut client) = start();
        client
            .send(Frame::Settings {
                clear: false,
                entries: vec![frame::Setting {
                    flags: 0,
                    id: frame::settings::INITIAL_WINDOW_SIZE,
                    value: 1000,
                }],
            })
            .await;
        client
            .send(Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: vec![("streamtype".into(), "stdout".into())],
            })
            .await;
        let reply = client.next(Duration::from_secs(5)).await;
        assert!(
            matches!(reply, Some(Frame::SynReply { stream_id: 1, .. })),
            "{reply:?}"
        );
        let mut stream = session.next_stream().await.unwrap();
        assert_eq!(stream.header("streamtype"), "stdout");
        let sender = tokio::spawn(async move {
            stream
                .outgoing
                .send(Bytes::from(vec![7u8; 5000]))
                .await
                .unwrap();
            stream.outgoing.finish().await;
            stream
        });
        assert_eq!(client.data().await, 1000, "DATA beyond the window");
        client
            .send(Frame::WindowUpdate {
                stream_id: 1,
                delta: 4000,
            })
            .await;
        assert_eq!(client.data().await, 4000);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn pings_are_answered_and_bad_stream_ids_end_the_session() {
        let (mut session, mut client) = start();
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(
            client.next(Duration::from_secs(5)).await,
            Some(Frame::Ping { id: 1 })
        );
        // Even stream ids belong to the server: the session ends.
        client
            .send(Frame::SynStream {
                stream_id: 2,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Vec::new(),
            })
            .await;
        assert!(session.next_stream().await.is_none());
    }

    fn syn(stream_id: u32) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: vec![("streamtype".into(), "data".into())],
        }
    }

    #[tokio::test]
    async fn one_session_holds_at_most_its_share_of_streams() {
        let (mut session, mut client) = start_with(1000, Duration::from_secs(60));
        let mut held = Vec::new();
        for i in 0..=MAX_SESSION_STREAMS {
            client.send(syn(2 * i as u32 + 1)).await;
            if i < MAX_SESSION_STREAMS {
                held.push(session.next_stream().await.unwrap());
            }
        }
        let mut refused = None;
        while let Some(f) = client.next(Duration::from_millis(500)).await {
            if let Frame::RstStream { stream_id, status } = f {
                refused = Some((stream_id, status));
            }
        }
        let last = 2 * MAX_SESSION_STREAMS as u32 + 1;
        assert_eq!(refused, Some((last, frame::rst::REFUSED_STREAM)));
        // A stream the handler let go of makes room for the next.
        drop(held.pop());
        client.send(syn(last + 2)).await;
        assert_eq!(session.next_stream().await.unwrap().id, last + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn only_data_keeps_a_session_from_idling() {
        let idle = PING_PERIOD + Duration::from_secs(5);
        let (mut session, mut client) = start_with(8, idle);
        client.send(syn(1)).await;
        let mut stream = session.next_stream().await.unwrap();
        // Data every so often keeps it open past the idle timeout...
        for _ in 0..4 {
            tokio::time::sleep(idle / 2).await;
            client
                .send(Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::from_static(b"x"),
                })
                .await;
            assert_eq!(stream.incoming.recv().await.unwrap(), "x");
        }
        // ...while crustd's pings, answered or not, do not.
        let started = Instant::now();
        let ended = tokio::time::timeout(idle * 3, session.gone()).await;
        assert!(ended.is_ok(), "an idle session outlived its idle timeout");
        assert!(started.elapsed() <= idle + Duration::from_secs(1));
        drop(client);
    }
}
