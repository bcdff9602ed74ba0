//! Port-forward sessions.
//!
//! SPDY (client-go's `PortForwarder`, kubectl and crictl): protocol
//! `portforward.k8s.io`; per forwarded connection an error stream, which the
//! client half-closes at once, then a data stream, both with headers
//! `streamtype` (error/data), `port` and `requestid` (a counter from 0,
//! shared by the pair). When the pod side is done client-go resets the data
//! stream ([`PortForwardConn::reset`]).
//!
//! WebSocket (kubelet's streaming code; client-go itself only tunnels SPDY
//! through the API server): the server opens one connection per port of the
//! CRI `PortForwardRequest` at once (containerd 1.6 takes the ports from the
//! CRI request, not from the URL; kubelet's own server reads `port` query
//! parameters, which the client also sends); port `i` gets data channel `2i`
//! and error channel `2i+1`, each starting with the port as two
//! little-endian bytes. The channels end only when the WebSocket closes.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::http::with_query;
use super::pipe::Inbound;
use super::spdy::{SpdyConfig, SpdyConnection, StreamWriter};
use super::spdy_frame::Headers;
use super::websocket::WsConnection;
use super::{PORT_FORWARD_PROTOCOL, STREAM_PROTOCOL_V4, Transport};

/// How a port-forward session is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortForwardOptions {
    /// WebSocket: the ports of the CRI `PortForwardRequest`, in order (one
    /// connection per entry; also sent as `port` query parameters). SPDY:
    /// unused (each connection names its port).
    pub ports: Vec<u16>,
    /// Offered subprotocols; empty means `portforward.k8s.io` for SPDY and
    /// [`default_websocket_protocols`] for WebSocket.
    pub protocols: Vec<String>,
    /// SPDY client behaviour (WINDOW_UPDATE, PING); client-go's by default.
    pub spdy: SpdyConfig,
}

/// The WebSocket port-forward protocols offered by default:
/// `v4.channel.k8s.io` (kubelet's server) then `portforward.k8s.io` (same
/// binary channel framing).
pub fn default_websocket_protocols() -> Vec<String> {
    vec![
        STREAM_PROTOCOL_V4.to_string(),
        PORT_FORWARD_PROTOCOL.to_string(),
    ]
}

/// A port-forward session: many connections to pod ports over one upgraded
/// connection.
pub struct PortForward {
    protocol: String,
    inner: Inner,
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("protocol", &self.protocol)
            .finish()
    }
}

enum Inner {
    Spdy {
        conn: SpdyConnection,
        next_request: AtomicU64,
    },
    Ws {
        conn: Arc<WsConnection>,
        ports: Vec<u16>,
        used: Mutex<Vec<bool>>,
    },
}

/// Opens a port-forward session with default options (over WebSocket this
/// knows no port, so [`PortForward::connect`] fails: use
/// [`port_forward_with`]).
pub async fn port_forward(url: &str, transport: Transport) -> Result<PortForward> {
    port_forward_with(url, transport, PortForwardOptions::default()).await
}

/// Opens a port-forward session (SPDY: POST like client-go; WebSocket: GET
/// with the ports in the query).
pub async fn port_forward_with(
    url: &str,
    transport: Transport,
    opts: PortForwardOptions,
) -> Result<PortForward> {
    match transport {
        Transport::Spdy => {
            let protocols = if opts.protocols.is_empty() {
                vec![PORT_FORWARD_PROTOCOL.to_string()]
            } else {
                opts.protocols
            };
            let conn = SpdyConnection::connect(url, "POST", &protocols, opts.spdy).await?;
            let protocol = conn.protocol().to_string();
            // client-go's ForwardPorts refuses anything else.
            ensure!(
                protocols.contains(&protocol),
                "unable to negotiate protocol: client supports {protocols:?}, server returned {protocol:?}"
            );
            Ok(PortForward {
                protocol,
                inner: Inner::Spdy {
                    conn,
                    next_request: AtomicU64::new(0),
                },
            })
        }
        Transport::WebSocket => {
            let protocols = if opts.protocols.is_empty() {
                default_websocket_protocols()
            } else {
                opts.protocols
            };
            let pairs: Vec<(&str, String)> =
                opts.ports.iter().map(|p| ("port", p.to_string())).collect();
            let url = with_query(url, &pairs);
            let channels: Vec<u8> = (0..opts.ports.len() * 2)
                .map(|c| u8::try_from(c).context("too many ports for one WebSocket"))
                .collect::<Result<_>>()?;
            let conn = WsConnection::connect(&url, &protocols, &channels).await?;
            Ok(PortForward {
                protocol: conn.protocol().to_string(),
                inner: Inner::Ws {
                    conn: Arc::new(conn),
                    used: Mutex::new(vec![false; opts.ports.len()]),
                    ports: opts.ports,
                },
            })
        }
    }
}

fn pf_headers(stream_type: &str, port: u16, request_id: &str) -> Headers {
    [
        ("streamtype", stream_type.to_string()),
        ("port", port.to_string()),
        ("requestid", request_id.to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), vec![v]))
    .collect()
}

impl PortForward {
    /// The negotiated subprotocol.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a connection to `port` in the pod. SPDY: creates the error
    /// stream (half-closed at once) and the data stream of a new request id.
    /// WebSocket: takes the next unused channel pair of that port.
    pub async fn connect(&self, port: u16) -> Result<PortForwardConn> {
        match &self.inner {
            Inner::Spdy { conn, next_request } => {
                let request_id = next_request.fetch_add(1, Ordering::SeqCst).to_string();
                let mut error = conn
                    .create_stream(pf_headers("error", port, &request_id))
                    .await
                    .context("creating the error stream")?;
                // client-go: "we're not writing to this stream".
                error.writer.close().await?;
                let data = conn
                    .create_stream(pf_headers("data", port, &request_id))
                    .await
                    .context("creating the data stream")?;
                Ok(PortForwardConn {
                    port,
                    request_id,
                    data: data.inbound,
                    error: error.inbound,
                    writer: Writer::Spdy(data.writer),
                    error_text: None,
                })
            }
            Inner::Ws { conn, ports, used } => {
                let index = {
                    let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
                    let index = ports
                        .iter()
                        .enumerate()
                        .position(|(i, p)| *p == port && !used[i])
                        .with_context(|| {
                            format!("port {port} is not among the unused ports {ports:?} of this WebSocket")
                        })?;
                    used[index] = true;
                    index
                };
                let channel = u8::try_from(index * 2).context("channel out of range")?;
                let mut data = conn.take_channel(channel)?;
                let mut error = conn.take_channel(channel + 1)?;
                data.skip_prefix(2);
                error.skip_prefix(2);
                Ok(PortForwardConn {
                    port,
                    request_id: String::new(),
                    data,
                    error,
                    writer: Writer::Ws {
                        conn: conn.clone(),
                        channel,
                    },
                    error_text: None,
                })
            }
        }
    }

    /// Ends the session like client-go: SPDY resets the streams it did not
    /// finish and sends GOAWAY; WebSocket sends a normal close frame.
    pub async fn close(self) {
        match self.inner {
            Inner::Spdy { conn, .. } => conn.close().await,
            Inner::Ws { conn, .. } => conn.close().await,
        }
    }

    /// Drops the connection abruptly, like a client that went away.
    pub fn disconnect(self) {
        match self.inner {
            Inner::Spdy { conn, .. } => conn.disconnect(),
            Inner::Ws { conn, .. } => conn.disconnect(),
        }
    }
}

enum Writer {
    Spdy(StreamWriter),
    Ws {
        conn: Arc<WsConnection>,
        channel: u8,
    },
}

/// One forwarded connection: a duplex byte stream plus the error stream.
pub struct PortForwardConn {
    port: u16,
    request_id: String,
    data: Inbound,
    error: Inbound,
    writer: Writer,
    error_text: Option<Option<String>>,
}

impl std::fmt::Debug for PortForwardConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwardConn")
            .field("port", &self.port)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl PortForwardConn {
    /// The pod port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SPDY `requestid` of the stream pair ("" over WebSocket).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Sends bytes to the pod.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.writer {
            Writer::Spdy(writer) => writer.send(data).await,
            Writer::Ws { conn, channel } => conn.send(*channel, data).await,
        }
    }

    /// The next bytes from the pod; `Ok(None)` once the data stream ended.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let received = self.data.recv().await?;
        let prefix = self.data.prefix();
        if matches!(self.writer, Writer::Ws { .. }) && prefix.len() == 2 {
            let announced = u16::from_le_bytes([prefix[0], prefix[1]]);
            ensure!(
                announced == self.port,
                "the server announced port {announced} on the data channel of port {}",
                self.port
            );
        }
        Ok(received)
    }

    /// Reads until `needle` appears in what was received; returns it all.
    pub async fn read_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        let wait = async {
            while !all.windows(needle.len().max(1)).any(|w| w == needle) {
                match self.recv().await? {
                    Some(data) => all.extend_from_slice(&data),
                    None => bail!(
                        "the data stream ended before {:?} arrived; got {:?}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&all)
                    ),
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            anyhow!(
                "{:?} did not arrive within {timeout:?}",
                String::from_utf8_lossy(needle)
            )
        })??;
        Ok(all)
    }

    /// Reads until the data stream ends.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        let wait = async {
            while let Some(data) = self.recv().await? {
                all.extend_from_slice(&data);
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow!("the data stream did not end within {timeout:?}"))??;
        Ok(all)
    }

    /// Half-closes the data stream (SPDY FIN, as client-go does when the
    /// local connection hit EOF). The WebSocket port-forward protocol has no
    /// half-close.
    pub async fn shutdown_write(&mut self) -> Result<()> {
        match &mut self.writer {
            Writer::Spdy(writer) => writer.close().await,
            Writer::Ws { .. } => bail!("port-forward over WebSocket cannot half-close"),
        }
    }

    /// Resets the data stream (SPDY RST_STREAM CANCEL), as client-go does
    /// once the pod side of a connection is done.
    pub async fn reset(&mut self) -> Result<()> {
        match &mut self.writer {
            Writer::Spdy(writer) => writer.reset().await,
            Writer::Ws { .. } => bail!("port-forward over WebSocket has no per-connection reset"),
        }
    }

    /// The text the server sent on the error stream, read to its end (the
    /// server ends it when the forwarded connection is over), or why the
    /// error stream failed; `None` when it ended empty.
    pub async fn error(&mut self) -> Option<String> {
        if let Some(text) = &self.error_text {
            return text.clone();
        }
        let text = match self.error.read_to_end().await {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => Some(format!("the error stream failed: {e:#}")),
        };
        self.error_text = Some(text.clone());
        text
    }

    /// How the data stream ended if that was not a clean end.
    pub fn data_end_note(&self) -> Option<&str> {
        self.data.end_note()
    }
}
