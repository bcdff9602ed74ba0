//! A client for the CRI streaming server (the URLs that Exec, Attach and
//! PortForward return), speaking SPDY/3.1 and WebSocket the way client-go
//! does (kubelet, kubectl and crictl all use client-go), written from the
//! protocol and independent of crustd's server code.
//!
//! - [`remote_command`]: an exec or attach session ([`RemoteCommand`]):
//!   stdin, stdout, stderr, terminal resize and the error stream, whose
//!   `v4`/`v5` JSON status gives the exit code ([`Outcome`]).
//! - [`port_forward`]: a port-forward session ([`PortForward`]) carrying many
//!   connections ([`PortForwardConn`]) to pod ports.
//! - [`upgrade_status`]: the HTTP status a bare upgrade attempt gets.
//!
//! Receive queues are bounded: a test that stops calling into a session
//! makes the client stop reading the socket, so the server sees TCP
//! backpressure. [`spdy`] and [`websocket`] expose the raw connections for
//! tests that need to misbehave on purpose.

mod http;
#[cfg(test)]
mod peer_tests;
mod pipe;
mod portforward;
mod remotecommand;
pub mod spdy;
pub mod spdy_frame;
mod spdy_io;
pub mod websocket;

pub use pipe::{Chunk, Inbound};
pub use portforward::{
    PortForward, PortForwardConn, PortForwardOptions, port_forward, port_forward_with,
};
pub use remotecommand::{Outcome, RemoteCommand, remote_command};

/// `remotecommand` protocol v1 (no resize, error stream carries text).
pub const STREAM_PROTOCOL_V1: &str = "channel.k8s.io";
/// v2: stdin/stdout/stderr/error streams, text errors.
pub const STREAM_PROTOCOL_V2: &str = "v2.channel.k8s.io";
/// v3: adds the resize stream.
pub const STREAM_PROTOCOL_V3: &str = "v3.channel.k8s.io";
/// v4: the error stream carries a JSON `metav1.Status` with the exit code.
pub const STREAM_PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// v5: v4 plus the WebSocket stream-close signal (`[255, channel]`).
pub const STREAM_PROTOCOL_V5: &str = "v5.channel.k8s.io";
/// The WebSocket base64 framing of v1 (text messages).
pub const BASE64_PROTOCOL_V1: &str = "base64.channel.k8s.io";
/// The WebSocket base64 framing of v4.
pub const BASE64_PROTOCOL_V4: &str = "v4.base64.channel.k8s.io";
/// The port-forward protocol over SPDY.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// How a session reaches the streaming server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 upgrade to SPDY/3.1 (client-go's default; POST).
    Spdy,
    /// WebSocket (GET) with the Kubernetes channel subprotocols.
    WebSocket,
}

/// Which streams an exec or attach session uses; must match the CRI request
/// that produced the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr (never with `tty`, as in client-go).
    pub stderr: bool,
    /// A terminal: stderr is merged into stdout and resize is available.
    pub tty: bool,
    /// Offered subprotocols, most preferred first; empty means client-go's
    /// default for the transport ([`default_protocols`]).
    pub protocols: Vec<String>,
    /// SPDY client behaviour (WINDOW_UPDATE, PING); client-go's by default.
    pub spdy: spdy::SpdyConfig,
}

impl StreamOptions {
    /// stdout and stderr, no stdin, no tty.
    pub fn output() -> Self {
        Self {
            stdout: true,
            stderr: true,
            ..Self::default()
        }
    }

    /// stdin, stdout and stderr, no tty.
    pub fn interactive() -> Self {
        Self {
            stdin: true,
            ..Self::output()
        }
    }

    /// stdin and stdout on a terminal.
    pub fn terminal() -> Self {
        Self {
            stdin: true,
            stdout: true,
            tty: true,
            ..Self::default()
        }
    }

    /// The same options offering only `protocols`.
    pub fn with_protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols = protocols.iter().map(|p| p.to_string()).collect();
        self
    }
}

/// What the server answered instead of switching protocols.
#[derive(Debug, Clone)]
pub struct UpgradeError {
    /// The HTTP status (404 for an unknown token, 400/403 for a failed
    /// protocol negotiation, ...).
    pub status: u16,
    /// The response body (the server's error text), trimmed.
    pub body: String,
    /// The response headers (e.g. `X-Accepted-Stream-Protocol-Versions`).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unable to upgrade connection: HTTP {}: {}",
            self.status, self.body
        )
    }
}

impl std::error::Error for UpgradeError {}

/// client-go's offered exec/attach protocols: SPDY `NewSPDYExecutor` offers
/// v5..v1; the WebSocket executor (`NewWebSocketExecutor`) offers only v5.
pub fn default_protocols(transport: Transport) -> Vec<String> {
    match transport {
        Transport::Spdy => vec![
            STREAM_PROTOCOL_V5,
            STREAM_PROTOCOL_V4,
            STREAM_PROTOCOL_V3,
            STREAM_PROTOCOL_V2,
            STREAM_PROTOCOL_V1,
        ],
        Transport::WebSocket => vec![STREAM_PROTOCOL_V5],
    }
    .into_iter()
    .map(String::from)
    .collect()
}

/// Every exec/attach protocol a kubelet-style server may accept over
/// WebSocket, newest first.
pub fn all_websocket_protocols() -> Vec<String> {
    [
        STREAM_PROTOCOL_V5,
        STREAM_PROTOCOL_V4,
        BASE64_PROTOCOL_V4,
        STREAM_PROTOCOL_V1,
        BASE64_PROTOCOL_V1,
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The remotecommand version of a negotiated protocol: `vN.` prefix → N,
/// anything else (including "" — no negotiation) → 1.
pub fn protocol_version(protocol: &str) -> u8 {
    protocol
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

/// The HTTP status a plain upgrade attempt on `url` gets (101 when it would
/// be accepted), without speaking further. Offers client-go's protocols for
/// the kind of URL (`/portforward/` or exec/attach); over WebSocket it
/// offers every exec protocol, so an old server's 403 for an unsupported
/// protocol does not hide a 404. The attempt may consume a valid token.
pub async fn upgrade_status(url: &str, transport: Transport) -> anyhow::Result<u16> {
    let port_forward = url.contains("/portforward/");
    match transport {
        Transport::Spdy => {
            let protocols = if port_forward {
                vec![PORT_FORWARD_PROTOCOL.to_string()]
            } else {
                default_protocols(Transport::Spdy)
            };
            spdy::probe(url, "POST", &protocols).await
        }
        Transport::WebSocket => {
            let protocols = if port_forward {
                portforward::default_websocket_protocols()
            } else {
                all_websocket_protocols()
            };
            websocket::probe(url, &protocols).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_protocols() {
        assert_eq!(protocol_version(STREAM_PROTOCOL_V5), 5);
        assert_eq!(protocol_version(STREAM_PROTOCOL_V4), 4);
        assert_eq!(protocol_version(BASE64_PROTOCOL_V4), 4);
        assert_eq!(protocol_version(STREAM_PROTOCOL_V2), 2);
        assert_eq!(protocol_version(STREAM_PROTOCOL_V1), 1);
        assert_eq!(protocol_version(BASE64_PROTOCOL_V1), 1);
        assert_eq!(protocol_version(""), 1);
    }

    #[test]
    fn client_go_defaults() {
        assert_eq!(
            default_protocols(Transport::Spdy),
            [
                "v5.channel.k8s.io",
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
                "channel.k8s.io"
            ]
        );
        assert_eq!(
            default_protocols(Transport::WebSocket),
            ["v5.channel.k8s.io"]
        );
    }
}
