//! The client side of the Kubernetes channel protocols over WebSocket, as
//! client-go's WebSocket executor speaks them: `Sec-WebSocket-Protocol`
//! offers, one message per write with a leading channel byte (binary
//! protocols) or a leading `'0' + channel` character and base64 payload
//! (`base64.channel.k8s.io` protocols, text messages), the v5 close signal
//! `[255, channel]`, and a ping every 5 s. A close frame with code 1000 ends
//! every channel cleanly; any other end is an error on every open channel.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::UpgradeError;
use super::http::{self, UPGRADE_TIMEOUT};
use super::pipe::{self, Chunk, Inbound};

/// The request header offering subprotocols.
pub const PROTOCOL_HEADER: &str = "Sec-WebSocket-Protocol";
/// The v5 stream-close signal's first byte (`remotecommand.StreamClose`).
pub const CLOSE_SIGNAL: u8 = 255;
/// client-go's WebSocket heartbeat period.
pub const PING_PERIOD: Duration = Duration::from_secs(5);

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// One upgraded WebSocket connection carrying numbered channels.
pub struct WsConnection {
    protocol: String,
    base64: bool,
    sink: Arc<tokio::sync::Mutex<Sink>>,
    inbound: Mutex<HashMap<u8, Inbound>>,
    fd: i32,
    tasks: Vec<JoinHandle<()>>,
    closed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnection")
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// Whether a subprotocol uses the base64 text framing.
pub fn is_base64(protocol: &str) -> bool {
    protocol.contains("base64.channel.k8s.io")
}

/// One channel message: binary `[channel, data...]`, or for base64 protocols
/// text `'0'+channel` followed by base64 of the data.
pub fn encode_message(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0'.wrapping_add(channel)));
        text.push_str(&STANDARD.encode(data));
        Message::text(text)
    } else {
        let mut bytes = Vec::with_capacity(1 + data.len());
        bytes.push(channel);
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    }
}

/// The channel and payload of a data message; `None` for pings, pongs and
/// empty messages. Text messages must carry the base64 framing.
pub fn decode_message(message: &Message) -> Result<Option<(u8, Vec<u8>)>> {
    match message {
        Message::Binary(bytes) => Ok(bytes.split_first().map(|(c, d)| (*c, d.to_vec()))),
        Message::Text(text) => {
            let bytes = text.as_bytes();
            let Some((c, rest)) = bytes.split_first() else {
                return Ok(None);
            };
            ensure!(
                c.is_ascii_digit(),
                "text message without a channel digit: {:?}",
                text.as_str()
            );
            let data = STANDARD
                .decode(rest)
                .with_context(|| format!("bad base64 in {:?}", text.as_str()))?;
            Ok(Some((c - b'0', data)))
        }
        _ => Ok(None),
    }
}

/// Sends the upgrade and returns the HTTP status without speaking further.
pub async fn probe(url: &str, protocols: &[String]) -> Result<u16> {
    match handshake(url, protocols).await {
        Ok(_) => Ok(101),
        Err(e) => match e.downcast_ref::<UpgradeError>() {
            Some(refused) => Ok(refused.status),
            None => Err(e),
        },
    }
}

async fn handshake(
    url: &str,
    protocols: &[String],
) -> Result<(WebSocketStream<TcpStream>, String, i32)> {
    let target = http::parse_url(url)?;
    let exchange = async {
        let tcp = TcpStream::connect(&target.authority)
            .await
            .with_context(|| format!("connecting to {}", target.authority))?;
        tcp.set_nodelay(true)?;
        let fd = tcp.as_raw_fd();
        let mut request = format!("ws://{}{}", target.authority, target.path)
            .into_client_request()
            .context("building the WebSocket request")?;
        if !protocols.is_empty() {
            request.headers_mut().insert(
                PROTOCOL_HEADER,
                HeaderValue::from_str(&protocols.join(", "))
                    .context("subprotocols are not a valid header value")?,
            );
        }
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((ws, response)) => {
                let protocol = response
                    .headers()
                    .get(PROTOCOL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                Ok((ws, protocol, fd))
            }
            Err(WsError::Http(response)) => Err(UpgradeError {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .trim()
                    .to_string(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect(),
            }
            .into()),
            Err(e) => Err(anyhow!(e).context("WebSocket handshake")),
        }
    };
    tokio::time::timeout(UPGRADE_TIMEOUT, exchange)
        .await
        .context("the WebSocket upgrade timed out")?
}

impl WsConnection {
    /// Upgrades `url` (GET) offering `protocols` and starts demultiplexing
    /// `channels` (the ones the server may write) into bounded queues; take
    /// them with [`Self::take_channel`]. Messages on other channels are
    /// dropped, as client-go does.
    pub async fn connect(url: &str, protocols: &[String], channels: &[u8]) -> Result<Self> {
        let (ws, protocol, fd) = handshake(url, protocols).await?;
        let base64 = is_base64(&protocol);
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for &channel in channels {
            let (tx, rx) = pipe::queue(None);
            senders.insert(channel, tx);
            receivers.insert(channel, rx);
        }
        let closed = Arc::new(Mutex::new(None));
        let reader = tokio::spawn(read_loop(stream, senders, closed.clone()));
        let pinger = tokio::spawn(ping_loop(sink.clone()));
        Ok(Self {
            protocol,
            base64,
            sink,
            inbound: Mutex::new(receivers),
            fd,
            tasks: vec![reader, pinger],
            closed,
        })
    }

    /// The negotiated subprotocol ("" if the server chose none).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Takes the receive queue of `channel` (once).
    pub fn take_channel(&self, channel: u8) -> Result<Inbound> {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&channel)
            .with_context(|| format!("channel {channel} is not available"))
    }

    /// Sends `data` on `channel` as one message.
    pub async fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        self.send_message(encode_message(self.base64, channel, data))
            .await
    }

    /// Sends the v5 close signal for `channel`: binary `[255, channel]`.
    pub async fn close_channel(&self, channel: u8) -> Result<()> {
        self.send_message(Message::binary(vec![CLOSE_SIGNAL, channel]))
            .await
    }

    /// Sends any message as is.
    pub async fn send_message(&self, message: Message) -> Result<()> {
        if let Some(reason) = self.closed_reason() {
            bail!("connection closed: {reason}");
        }
        self.sink
            .lock()
            .await
            .send(message)
            .await
            .context("writing to the WebSocket")
    }

    /// Sends a normal close frame and flushes it.
    pub async fn close(&self) {
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sink = self.sink.lock().await;
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    }

    /// Why the connection ended, once the reader saw it end.
    pub fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Shuts the socket down at once (both directions), like a client that
    /// went away.
    pub fn disconnect(&self) {
        // SAFETY: `self.sink` owns half of the socket, so `fd` stays open
        // (and is not reused) for as long as `self` is alive.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for WsConnection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn read_loop(
    mut stream: SplitStream<WebSocketStream<TcpStream>>,
    senders: HashMap<u8, mpsc::Sender<Chunk>>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let end: Result<(), String> = loop {
        let message = match stream.next().await {
            None => break Err("the connection ended without a close frame".into()),
            Some(Err(e)) => break Err(format!("reading from the WebSocket: {e}")),
            Some(Ok(message)) => message,
        };
        if let Message::Close(frame) = &message {
            break match frame {
                Some(f) if f.code == CloseCode::Normal => Ok(()),
                Some(f) => Err(format!(
                    "the server closed the WebSocket with code {} ({:?})",
                    u16::from(f.code),
                    f.reason.as_str()
                )),
                None => Err("the server closed the WebSocket without a status code".into()),
            };
        }
        match decode_message(&message) {
            Ok(Some((channel, data))) if !data.is_empty() => {
                if let Some(tx) = senders.get(&channel) {
                    // The backpressure point: wait for room in the queue.
                    let _ = tx.send(Chunk::Data(data)).await;
                }
            }
            Ok(_) => {}
            Err(e) => break Err(format!("{e:#}")),
        }
    };
    *closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(match &end {
        Ok(()) => "the server closed the WebSocket".into(),
        Err(e) => e.clone(),
    });
    if let Err(reason) = end {
        for (channel, tx) in senders {
            let message = format!("channel {channel} did not finish: {reason}");
            tokio::spawn(async move {
                let _ = tx.send(Chunk::Failed(message)).await;
            });
        }
    }
}

async fn ping_loop(sink: Arc<tokio::sync::Mutex<Sink>>) {
    let mut interval = tokio::time::interval(PING_PERIOD);
    interval.tick().await;
    loop {
        interval.tick().await;
        if sink
            .lock()
            .await
            .send(Message::Ping(Default::default()))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_framing_puts_the_channel_first() {
        let m = encode_message(false, 0, b"foo\n");
        assert_eq!(m, Message::binary(vec![0, b'f', b'o', b'o', b'\n']));
        assert_eq!(
            decode_message(&Message::binary(vec![1, b'\n'])).unwrap(),
            Some((1, b"\n".to_vec()))
        );
        // The server's "connection is ready" message: a bare channel byte.
        assert_eq!(
            decode_message(&Message::binary(vec![1])).unwrap(),
            Some((1, vec![]))
        );
        assert_eq!(decode_message(&Message::binary(vec![])).unwrap(), None);
    }

    #[test]
    fn base64_framing_matches_the_kubernetes_example() {
        // wsstream's doc: "foo\n" on channel 0 is "0Zm9vCg==".
        assert_eq!(
            encode_message(true, 0, b"foo\n"),
            Message::text("0Zm9vCg==")
        );
        assert_eq!(
            decode_message(&Message::text("1Cg==")).unwrap(),
            Some((1, b"\n".to_vec()))
        );
        assert_eq!(
            decode_message(&Message::text("3")).unwrap(),
            Some((3, vec![]))
        );
        assert!(decode_message(&Message::text("x")).is_err());
        assert!(decode_message(&Message::text("1!!")).is_err());
    }

    #[test]
    fn protocols_pick_the_framing() {
        assert!(is_base64("v4.base64.channel.k8s.io"));
        assert!(is_base64("base64.channel.k8s.io"));
        assert!(!is_base64("v5.channel.k8s.io"));
        assert!(!is_base64(""));
    }
}
