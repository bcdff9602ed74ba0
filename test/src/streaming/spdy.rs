//! The client side of a SPDY/3.1 connection, as client-go's spdystream drives
//! it for exec, attach and port-forward: the HTTP/1.1 upgrade, client-created
//! streams (odd ids) that wait for SYN_REPLY, DATA with FIN half-close,
//! RST_STREAM, PING every 5 s and echoing the server's PINGs, and GOAWAY.
//!
//! Flow control (spdystream, so client-go, ignores it): once the server sends
//! WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE, the client honours its
//! windows when sending and credits back every chunk the test consumes with
//! WINDOW_UPDATE (stream and session, including what it consumed before).
//! Until then it sends no WINDOW_UPDATE, like client-go, unless
//! [`WindowUpdates::Always`] says so: against kubelet's server (containerd
//! 1.6) late WINDOW_UPDATEs arrive after it closed its socket with output
//! still queued, its kernel answers with RST and the tail of the output is
//! lost. Receive queues are bounded, so a test that stops reading stops the
//! reader task reading the socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::UpgradeError;
use super::http::{self, Target};
use super::pipe::{self, Inbound};
use super::spdy_frame::{FLAG_FIN, Frame, Headers, STATUS_CANCEL};
use super::spdy_io::{Entry, Out, Shared, State, lock, ping_loop, read_loop, write_loop};

/// The `Upgrade` token.
pub const UPGRADE_SPDY_31: &str = "SPDY/3.1";
/// Header carrying offered protocols (request) and the chosen one (response).
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// How long a new stream waits for SYN_REPLY (client-go: 30 s).
pub const STREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// client-go's PING period for SPDY connections.
pub const PING_PERIOD: Duration = Duration::from_secs(5);
/// When the client credits consumed data with WINDOW_UPDATE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WindowUpdates {
    /// Once the server has shown it does flow control (it sent WINDOW_UPDATE
    /// or SETTINGS_INITIAL_WINDOW_SIZE); nothing before, as client-go.
    #[default]
    Auto,
    /// For every chunk consumed, from the start.
    Always,
}

/// Client behaviour beyond what the protocol fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpdyConfig {
    /// When to send WINDOW_UPDATE.
    pub window_updates: WindowUpdates,
    /// PING period (client-go: 5 s); `None` sends no PING.
    pub ping_period: Option<Duration>,
}

impl Default for SpdyConfig {
    fn default() -> Self {
        Self {
            window_updates: WindowUpdates::Auto,
            ping_period: Some(PING_PERIOD),
        }
    }
}

/// The SPDY/3.1 initial stream and session window.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Largest DATA frame the client sends (io.Copy's buffer in client-go).
const MAX_SEND_CHUNK: usize = 32 * 1024;
/// Outbound DATA frames queued before a sender waits for the socket.
const OUTBOUND_FRAMES: usize = 16;

/// One upgraded SPDY/3.1 connection (cheap to clone; the background tasks
/// stop when the last clone and the last stream writer are gone).
#[derive(Clone)]
pub struct SpdyConnection {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
    protocol: String,
}

impl std::fmt::Debug for SpdyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyConnection")
            .field("protocol", &self.protocol)
            .finish()
    }
}

struct Tasks {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    others: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    fn abort(&self, reason: &str) {
        if let Some(w) = lock(&self.writer).take() {
            w.abort();
        }
        for t in lock(&self.others).drain(..) {
            t.abort();
        }
        self.shared.fail(reason);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort("the client dropped the connection");
    }
}

/// A client-created stream: its id, the server's reply headers, a writer and
/// the bounded receive queue.
pub struct SpdyStream {
    /// The stream id (odd).
    pub id: u32,
    /// Headers of the server's SYN_REPLY.
    pub reply_headers: Headers,
    /// The sending half.
    pub writer: StreamWriter,
    /// What the server sends on the stream.
    pub inbound: Inbound,
}

/// The sending half of a stream.
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
    done: bool,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

/// The request headers of a SPDY upgrade offering `protocols`.
fn upgrade_headers(protocols: &[String]) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Connection", "Upgrade".to_string()),
        ("Upgrade", UPGRADE_SPDY_31.to_string()),
    ];
    for p in protocols {
        headers.push((PROTOCOL_HEADER, p.clone()));
    }
    headers
}

/// Sends the upgrade request and returns the HTTP status, without speaking
/// SPDY afterwards.
pub async fn probe(url: &str, method: &str, protocols: &[String]) -> Result<u16> {
    let target = http::parse_url(url)?;
    let (_stream, head, _) = http::upgrade(method, &target, &upgrade_headers(protocols)).await?;
    Ok(head.status)
}

impl SpdyConnection {
    /// Upgrades `url` with `method` (client-go: POST), offering `protocols`
    /// (most preferred first, one header each), and checks the response like
    /// client-go: 101, `Connection: Upgrade`, `Upgrade: SPDY/3.1`. A refusal
    /// is an [`UpgradeError`].
    pub async fn connect(
        url: &str,
        method: &str,
        protocols: &[String],
        config: SpdyConfig,
    ) -> Result<Self> {
        let target: Target = http::parse_url(url)?;
        let (mut stream, head, rest) =
            http::upgrade(method, &target, &upgrade_headers(protocols)).await?;
        let connection = head.value("Connection").unwrap_or_default().to_lowercase();
        let upgrade = head.value("Upgrade").unwrap_or_default().to_lowercase();
        if head.status != 101
            || !connection.contains("upgrade")
            || !upgrade.contains(&UPGRADE_SPDY_31.to_lowercase())
        {
            let body = http::read_error_body(&mut stream, &head, rest).await;
            return Err(UpgradeError {
                status: head.status,
                body,
                headers: head.headers,
            }
            .into());
        }
        let protocol = head.value(PROTOCOL_HEADER).unwrap_or_default().to_string();
        Ok(Self::start(stream, rest, protocol, config))
    }

    /// Runs SPDY over an already upgraded socket; `early` holds bytes read
    /// past the response head.
    pub fn start(stream: TcpStream, early: Vec<u8>, protocol: String, config: SpdyConfig) -> Self {
        let (read_half, write_half) = stream.into_split();
        let reader = BufReader::new(std::io::Cursor::new(early).chain(read_half));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_id: 1,
                next_ping: 1,
                streams: HashMap::new(),
                flow_enforced: false,
                initial_window: DEFAULT_WINDOW,
                session_window: DEFAULT_WINDOW,
                goaway: false,
                closed: None,
                write_failed: None,
                owed: HashMap::new(),
            }),
            control: control_tx,
            data: data_tx,
            window_changed: Notify::new(),
            config,
        });
        let writer = tokio::spawn(write_loop(write_half, control_rx, data_rx, shared.clone()));
        let read = tokio::spawn(read_loop(reader, shared.clone()));
        let mut others = vec![read];
        if let Some(period) = config.ping_period {
            others.push(tokio::spawn(ping_loop(shared.clone(), period)));
        }
        let tasks = Arc::new(Tasks {
            shared: shared.clone(),
            writer: Mutex::new(Some(writer)),
            others: Mutex::new(others),
        });
        Self {
            shared,
            tasks,
            protocol,
        }
    }

    /// The protocol the server chose (`X-Stream-Protocol-Version`), or "".
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a stream with `headers` (names are sent lower-case) and waits up
    /// to 30 s for the server's SYN_REPLY, as client-go's `CreateStream` does.
    pub async fn create_stream(&self, headers: Headers) -> Result<SpdyStream> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, inbound) = {
            let mut st = lock(&self.shared.state);
            if let Some(reason) = st.closed.as_ref().or(st.write_failed.as_ref()) {
                bail!("cannot create a stream: {reason}");
            }
            ensure!(!st.goaway, "cannot create a stream: the server sent GOAWAY");
            let id = st.next_id;
            st.next_id += 2;
            let initial = st.initial_window;
            let shared = self.shared.clone();
            let hook: pipe::ConsumeHook = Box::new(move |n| shared.credit(id, n));
            let (tx, inbound) = pipe::queue(Some(hook));
            st.streams.insert(
                id,
                Entry {
                    inbound: Some(tx),
                    reply: Some(reply_tx),
                    send_window: initial,
                    local_done: false,
                },
            );
            // Queued under the lock so stream ids reach the wire in order.
            self.shared
                .control
                .send(Out::Frame(Frame::SynStream {
                    stream_id: id,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers,
                }))
                .map_err(|_| anyhow!("the connection's writer has stopped"))?;
            (id, inbound)
        };
        let reply = tokio::time::timeout(STREAM_REPLY_TIMEOUT, reply_rx)
            .await
            .with_context(|| {
                format!("no SYN_REPLY for stream {id} within {STREAM_REPLY_TIMEOUT:?}")
            })?
            .map_err(|_| anyhow!("the connection ended before stream {id} was accepted"))?
            .map_err(|e| anyhow!("stream {id} was not accepted: {e}"))?;
        Ok(SpdyStream {
            id,
            reply_headers: reply,
            writer: StreamWriter {
                id,
                shared: self.shared.clone(),
                _tasks: self.tasks.clone(),
                done: false,
            },
            inbound,
        })
    }

    /// Closes like client-go's `Connection.Close`: RST_STREAM (CANCEL) for
    /// every stream the client has not finished, GOAWAY, then the socket.
    pub async fn close(&self) {
        let ids: Vec<u32> = {
            let mut st = lock(&self.shared.state);
            let mut ids: Vec<u32> = st
                .streams
                .iter_mut()
                .filter(|(_, e)| !e.local_done)
                .map(|(id, e)| {
                    e.local_done = true;
                    *id
                })
                .collect();
            ids.sort_unstable();
            ids
        };
        let mut frames: Vec<Out> = ids
            .into_iter()
            .map(|stream_id| {
                Out::Frame(Frame::RstStream {
                    stream_id,
                    status: STATUS_CANCEL,
                })
            })
            .collect();
        frames.push(Out::Frame(Frame::GoAway {
            last_good: 0,
            status: 0,
        }));
        frames.push(Out::Shutdown);
        let send_all = async {
            for frame in frames {
                if self.shared.data.send(frame).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), send_all).await;
        let writer = lock(&self.tasks.writer).take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        }
        self.tasks.abort("the client closed the connection");
    }

    /// Drops the socket at once, like a client process that went away.
    pub fn disconnect(&self) {
        self.tasks.abort("the client disconnected");
    }

    /// Why the connection ended, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        lock(&self.shared.state).closed.clone()
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` in DATA frames of at most 32 KiB, within the server's
    /// windows once it announced any. An empty `data` sends an empty frame.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        ensure!(
            !self.done,
            "stream {} is already closed for writing",
            self.id
        );
        if data.is_empty() {
            return self.frame(0, Vec::new()).await;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = self
                .shared
                .reserve(self.id, rest.len().min(MAX_SEND_CHUNK))
                .await?;
            self.frame(0, rest[..n].to_vec()).await?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Half-closes the stream: an empty DATA frame with FIN (spdystream's
    /// `Close`).
    pub async fn close(&mut self) -> Result<()> {
        ensure!(
            !self.done,
            "stream {} is already closed for writing",
            self.id
        );
        self.frame(FLAG_FIN, Vec::new()).await?;
        self.mark_done();
        Ok(())
    }

    /// Aborts the stream with RST_STREAM (CANCEL), as spdystream's `Reset`;
    /// a no-op once the client finished the stream.
    pub async fn reset(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.mark_done();
        self.shared
            .data
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status: STATUS_CANCEL,
            }))
            .await
            .map_err(|_| anyhow!("the connection's writer has stopped"))
    }

    fn mark_done(&mut self) {
        self.done = true;
        if let Some(e) = lock(&self.shared.state).streams.get_mut(&self.id) {
            e.local_done = true;
        }
    }

    async fn frame(&self, flags: u8, data: Vec<u8>) -> Result<()> {
        self.shared.ensure_open()?;
        self.shared
            .data
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                flags,
                data,
            }))
            .await
            .map_err(|_| anyhow!("the connection's writer has stopped"))
    }
}
