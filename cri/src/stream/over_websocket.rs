//! Sessions over WebSocket (RFC 6455): Kubernetes' channel protocols for exec
//! and attach (one leading channel byte per message: 0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize; v5 adds the close signal `[255, channel]`;
//! the base64 variants send text), the channel protocol for port-forward (a
//! data and an error channel per port, each opened with the port number),
//! and SPDY tunnelled in WebSocket messages (`SPDY/3.1+portforward.k8s.io`,
//! what client-go's port-forward speaks over WebSocket).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::Shared;
use super::channel::{
    Activity, Budget, INCOMING_QUEUE, Incoming, LINGER, MAX_CHUNK, OUTGOING_QUEUE, OutData,
    Outgoing, PING_PERIOD, queue, until_dead,
};
use super::over_spdy;
use super::portforward::{self, Connection};
use super::remotecommand::{self, StatusFormat, Streams, Wanted};
use super::tokens::Pending;

/// Largest message accepted from a client (client-go sends 32 KiB pieces).
const MAX_MESSAGE: usize = 1 << 20;
/// Ports one channel port-forward session forwards (repeats allowed, as
/// kubelet allows them). Each is one connection opened with the session and
/// listed in its URL; a client wanting more opens more sessions.
const MAX_PORTS: usize = 32;
/// The v5 close signal's channel.
const CLOSE_CHANNEL: u8 = 255;
/// Exec and attach channels.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// SPDY in WebSocket messages, client-go's port-forward over WebSocket.
const TUNNELED_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Exec and attach subprotocols, most preferred first ("" when none is offered).
const REMOTE_COMMAND: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward subprotocols (all but the tunnel use the channel framing).
const PORT_FORWARD: &[&str] = &[
    TUNNELED_PORT_FORWARD,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
];

type Reply = Response<Full<Bytes>>;

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(req: &Request<Body>) -> bool {
    super::http::header_has(req, UPGRADE.as_str(), "websocket")
}

/// Answers the WebSocket handshake and serves the session once upgraded.
pub fn upgrade(
    req: &mut Request<Body>,
    pending: Pending,
    label: String,
    shared: Arc<Shared>,
) -> Reply {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return super::http::plain(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        );
    };
    let supported = match pending {
        Pending::PortForward { .. } => PORT_FORWARD,
        _ => REMOTE_COMMAND,
    };
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        String::new()
    } else if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
        p.clone()
    } else {
        return super::http::plain(
            StatusCode::BAD_REQUEST,
            &format!(
                "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
            ),
        );
    };
    let ports = query_ports(req.uri().query().unwrap_or(""));
    let ports = match ports {
        Ok(p) => p,
        Err(msg) => return super::http::plain(StatusCode::BAD_REQUEST, &msg),
    };
    if let Pending::PortForward {
        ports: requested, ..
    } = &pending
        && protocol != TUNNELED_PORT_FORWARD
    {
        let n = if ports.is_empty() {
            requested.len()
        } else {
            ports.len()
        };
        if n > MAX_PORTS {
            return super::http::plain(
                StatusCode::BAD_REQUEST,
                &format!(
                    "a WebSocket port-forward session forwards at most {MAX_PORTS} ports; this one asks for {n}: open several sessions"
                ),
            );
        }
    }
    let upgrade = hyper::upgrade::on(req);
    let chosen = protocol.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(session = %label, error = %e, "the client did not complete the upgrade");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(ws, pending, &chosen, ports, label, shared).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&protocol)
    {
        h.insert("sec-websocket-protocol", v);
    }
    r
}

/// The `port` query parameters (repeated or comma-separated).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("port=") else {
            continue;
        };
        for p in value.split("%2C").flat_map(|v| v.split(',')) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    Ok(ports)
}

/// A close frame with status 1000: client-go reads every other close as an error.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn serve(
    ws: Ws,
    pending: Pending,
    protocol: &str,
    ports: Vec<u16>,
    label: String,
    shared: Arc<Shared>,
) {
    let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
        tracing::warn!(session = %label, "refusing a WebSocket session: the server's stream limit is reached");
        let mut ws = ws;
        let _ = ws.close(None).await;
        return;
    };
    let base64 = protocol.contains("base64");
    match pending {
        Pending::PortForward { .. } if protocol == TUNNELED_PORT_FORWARD => {
            let (ours, theirs) = tokio::io::duplex(2 * MAX_CHUNK);
            tokio::spawn(bridge(ws, theirs));
            over_spdy::serve(
                ours,
                pending,
                portforward::SPDY_PROTOCOL.into(),
                label,
                shared,
            )
            .await;
        }
        Pending::PortForward {
            sandbox_id,
            ports: requested,
        } => {
            let ports = if ports.is_empty() { requested } else { ports };
            let read: Vec<u8> = (0..ports.len())
                .filter_map(|i| u8::try_from(2 * i).ok())
                .collect();
            let (mut session, mut incoming) = Channels::start(ws, base64, &read, &shared, &label);
            let mut forwards = Vec::new();
            for (i, port) in ports.into_iter().enumerate() {
                let (Ok(data), Ok(error)) = (u8::try_from(2 * i), u8::try_from(2 * i + 1)) else {
                    break;
                };
                let Some(data_in) = incoming.remove(&data) else {
                    break;
                };
                let mut data_out = session.outgoing(data);
                let mut error_out = session.outgoing(error);
                let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
                let _ = data_out.send(prefix.clone()).await;
                let _ = error_out.send(prefix).await;
                let rt = shared.runtime.clone();
                let pod = sandbox_id.clone();
                forwards.push(tokio::spawn(async move {
                    portforward::forward(
                        &rt,
                        &pod,
                        Connection {
                            port,
                            data_in,
                            data_out,
                            error: error_out,
                        },
                    )
                    .await;
                }));
            }
            let gone = session.gone();
            tokio::select! {
                _ = futures_util::future::join_all(forwards) => {},
                () = gone => {},
            }
            session.close().await;
        }
        remote => {
            let wanted = Wanted::of(&remote);
            let (mut session, streams) =
                open_channels(ws, wanted, base64, protocol, &shared, &label).await;
            let gone = session.gone();
            remotecommand::serve(shared.runtime.clone(), remote, streams, gone).await;
            session.close().await;
        }
    }
    drop(permit);
}

/// Starts the channel session of an exec or attach and tells the client it
/// is up (an empty message on the first output channel).
async fn open_channels(
    ws: Ws,
    wanted: Wanted,
    base64: bool,
    protocol: &str,
    shared: &Shared,
    label: &str,
) -> (Channels, Streams) {
    let mut read = Vec::new();
    if wanted.stdin {
        read.push(STDIN);
    }
    if wanted.tty {
        read.push(RESIZE);
    }
    let (session, mut incoming) = Channels::start(ws, base64, &read, shared, label);
    let first = if wanted.stdout {
        STDOUT
    } else if wanted.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = session.outgoing(first).send_empty().await;
    let streams = Streams {
        stdin: incoming.remove(&STDIN),
        stdout: wanted.stdout.then(|| session.outgoing(STDOUT)),
        stderr: wanted.stderr.then(|| session.outgoing(STDERR)),
        resize: incoming.remove(&RESIZE),
        error: session.outgoing(ERROR),
        format: StatusFormat::of(protocol),
    };
    (session, streams)
}

/// A channel-framed WebSocket session: a reader routing messages to the read
/// channels, a writer framing what the handler sends.
struct Channels {
    out: mpsc::Sender<OutData>,
    close: mpsc::Sender<()>,
    closing: watch::Sender<bool>,
    gone: watch::Receiver<bool>,
    writer: tokio::task::JoinHandle<()>,
}

impl Channels {
    fn start(
        ws: Ws,
        base64: bool,
        read: &[u8],
        shared: &Shared,
        label: &str,
    ) -> (Channels, HashMap<u8, Incoming>) {
        let (sink, mut source) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (close_tx, close_rx) = mpsc::channel(1);
        let (gone_tx, gone_rx) = watch::channel(false);
        let (closing_tx, mut closing) = watch::channel(false);
        let (dead_tx, dead) = watch::channel(false);
        let activity = Arc::new(Activity::new());
        let budget = Budget::new();
        let mut senders = HashMap::new();
        let mut incoming = HashMap::new();
        for &c in read {
            let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
            senders.insert(c, tx);
            incoming.insert(c, Incoming::new(rx, None));
        }
        let writer = tokio::spawn(write_loop(
            sink,
            out_rx,
            close_rx,
            base64,
            activity.clone(),
            dead_tx,
        ));
        let stop_writer = writer.abort_handle();
        let idle = shared.idle;
        let label = label.to_string();
        tokio::spawn(async move {
            // Once crustd closed the session, the client has LINGER to close too.
            let mut linger: Option<Instant> = None;
            loop {
                // Only data counts: the pings and pongs of an open session do not.
                let limit = linger.unwrap_or_else(|| activity.last() + idle);
                let next = tokio::select! {
                    next = source.next() => next,
                    () = tokio::time::sleep_until(limit) => {
                        if linger.is_none() {
                            if activity.last() + idle > Instant::now() {
                                continue;
                            }
                            tracing::info!(session = %label, idle_s = idle.as_secs(), "closing an idle streaming session");
                        }
                        break;
                    }
                    _ = async { closing.wait_for(|c| *c).await.is_ok() }, if linger.is_none() => {
                        linger = Some(Instant::now() + LINGER);
                        continue;
                    }
                };
                let msg = match next {
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(session = %label, error = %e, "WebSocket session ended");
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                let (channel, payload) = match msg {
                    Message::Binary(b) if !b.is_empty() => (b[0], b.slice(1..)),
                    Message::Text(t) if !t.is_empty() => {
                        let bytes = t.as_bytes();
                        let Ok(data) = BASE64.decode(&bytes[1..]) else {
                            tracing::info!(session = %label, "ignoring a message that is not base64");
                            continue;
                        };
                        (bytes[0].wrapping_sub(b'0'), Bytes::from(data))
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                activity.touch();
                if channel == CLOSE_CHANNEL {
                    if let Some(c) = payload.first() {
                        senders.remove(c);
                    }
                    continue;
                }
                if let Some(tx) = senders.get(&channel)
                    && !payload.is_empty()
                {
                    // Spent budget holds the session (TCP back-pressure)
                    // until the channels' readers catch up or the client is
                    // found gone.
                    match until_dead(&dead, queue(&budget, tx, payload)).await {
                        None => break,
                        Some(false) => {
                            senders.remove(&channel);
                        }
                        Some(true) => {}
                    }
                }
            }
            stop_writer.abort();
            let _ = gone_tx.send(true);
        });
        (
            Channels {
                out: out_tx,
                close: close_tx,
                closing: closing_tx,
                gone: gone_rx,
                writer,
            },
            incoming,
        )
    }

    fn outgoing(&self, channel: u8) -> Outgoing {
        Outgoing::new(u32::from(channel), self.out.clone(), None)
    }

    fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut gone = self.gone.clone();
        async move {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    /// Sends what is queued and a close frame; the client then has
    /// [`LINGER`] to close its side.
    async fn close(&mut self) {
        let _ = self.close.send(()).await;
        let _ = (&mut self.writer).await;
        let _ = self.closing.send(true);
    }
}

async fn write_loop<S>(
    mut sink: S,
    mut out: mpsc::Receiver<OutData>,
    mut close: mpsc::Receiver<()>,
    base64: bool,
    activity: Arc<Activity>,
    dead: watch::Sender<bool>,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + PING_PERIOD, PING_PERIOD);
    let frame = |d: OutData| -> Option<Message> {
        if d.fin && d.data.is_empty() {
            return None;
        }
        let channel = u8::try_from(d.stream).unwrap_or(ERROR);
        Some(if base64 {
            let mut text = String::with_capacity(1 + d.data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            BASE64.encode_string(&d.data, &mut text);
            Message::text(text)
        } else {
            let mut b = BytesMut::with_capacity(1 + d.data.len());
            b.extend_from_slice(&[channel]);
            b.extend_from_slice(&d.data);
            Message::Binary(b.freeze())
        })
    };
    loop {
        tokio::select! {
            biased;
            _ = close.recv() => {
                while let Ok(d) = out.try_recv() {
                    if let Some(m) = frame(d)
                        && sink.send(m).await.is_err()
                    {
                        return;
                    }
                }
                let _ = sink.send(normal_close()).await;
                let _ = sink.close().await;
                return;
            }
            Some(d) = out.recv() => {
                activity.touch();
                if let Some(m) = frame(d)
                    && sink.send(m).await.is_err()
                {
                    let _ = dead.send(true);
                    return;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    let _ = dead.send(true);
                    return;
                }
            }
        }
    }
}

/// Carries SPDY bytes between a WebSocket (one binary message per write) and
/// the SPDY session's end of an in-memory pipe.
async fn bridge(ws: Ws, pipe: tokio::io::DuplexStream) {
    let (mut sink, mut source) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(pipe);
    let inbound = async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if to_spdy.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    };
    let outbound = async move {
        let mut buf = BytesMut::with_capacity(MAX_CHUNK);
        loop {
            buf.reserve(MAX_CHUNK);
            match from_spdy.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sink
                        .send(Message::Binary(buf.split().freeze()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    };
    // Either side ending ends the session: the client left, or SPDY closed.
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}
