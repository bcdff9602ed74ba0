//! The client against tiny in-process servers: what goes on the wire during
//! the upgrade, SPDY flow control and PING, and the WebSocket channel
//! framing including the v5 close signal.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::spdy::{SpdyConfig, SpdyConnection, WindowUpdates};
use super::spdy_frame::{
    FLAG_FIN, Frame, HeaderCompressor, HeaderDecompressor, SETTINGS_INITIAL_WINDOW_SIZE, encode,
    header, read_frame,
};
use super::{StreamOptions, Transport, remote_command};

const T: Duration = Duration::from_secs(10);

async fn read_request_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        sock.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

struct FakeSpdy {
    sock: TcpStream,
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
    seen: Vec<Frame>,
}

impl FakeSpdy {
    async fn send(&mut self, frame: Frame) {
        let bytes = encode(&frame, &mut self.compressor).unwrap();
        self.sock.write_all(&bytes).await.unwrap();
    }

    /// Reads frames until one matches, keeping every frame in `seen`.
    /// Waits for the stream's (1) and the session's (0) WINDOW_UPDATE of
    /// `delta`, in either order.
    async fn expect_credits(&mut self, delta: u32) {
        let mut credited = Vec::new();
        while credited.len() < 2 {
            let got = self
                .expect(
                    "credit",
                    |f| matches!(f, Frame::WindowUpdate { delta: d, .. } if *d == delta),
                )
                .await;
            if let Frame::WindowUpdate { stream_id, .. } = got {
                credited.push(stream_id);
            }
        }
        credited.sort_unstable();
        assert_eq!(credited, [0, 1], "credits of {delta}");
    }

    async fn expect(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            let frame = tokio::time::timeout(T, read_frame(&mut self.sock, &mut self.decompressor))
                .await
                .unwrap_or_else(|_| panic!("no {what}; saw {:?}", self.seen))
                .unwrap()
                .unwrap_or_else(|| panic!("connection closed before {what}"));
            self.seen.push(frame.clone());
            if want(&frame) {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn spdy_upgrade_flow_control_and_ping() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exec/tok", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut sock).await;
        assert!(head.starts_with("POST /exec/tok HTTP/1.1\r\n"), "{head}");
        for line in [
            "Connection: Upgrade\r\n",
            "Upgrade: SPDY/3.1\r\n",
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
            "X-Stream-Protocol-Version: v3.channel.k8s.io\r\n",
            "Content-Length: 0\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing from {head}");
        }
        sock.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").await.unwrap();
        let mut peer = FakeSpdy {
            sock,
            compressor: HeaderCompressor::new().unwrap(),
            decompressor: HeaderDecompressor::new(),
            seen: Vec::new(),
        };
        // Announce flow control and ping the client right away.
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 10)],
        })
        .await;
        peer.send(Frame::Ping { id: 2 }).await;
        let syn = peer
            .expect("SYN_STREAM", |f| matches!(f, Frame::SynStream { .. }))
            .await;
        let Frame::SynStream {
            stream_id, headers, ..
        } = syn
        else {
            unreachable!()
        };
        assert_eq!(stream_id, 1);
        assert_eq!(header(&headers, "streamtype"), Some("stdin"));
        assert_eq!(headers[0].0, "streamtype", "names go lower-case");
        peer.send(Frame::SynReply {
            stream_id,
            flags: 0,
            headers: vec![],
        })
        .await;
        peer.send(Frame::Data {
            stream_id,
            flags: 0,
            data: b"hello".to_vec(),
        })
        .await;
        // The client may send 10 bytes only, until it gets more window.
        let first = peer
            .expect("data", |f| matches!(f, Frame::Data { .. }))
            .await;
        assert_eq!(
            first,
            Frame::Data {
                stream_id,
                flags: 0,
                data: vec![b'x'; 10]
            }
        );
        peer.send(Frame::WindowUpdate {
            stream_id,
            delta: 100,
        })
        .await;
        let second = peer
            .expect("more data", |f| matches!(f, Frame::Data { .. }))
            .await;
        assert_eq!(
            second,
            Frame::Data {
                stream_id,
                flags: 0,
                data: vec![b'x'; 15]
            }
        );
        peer.expect("FIN", |f| {
            matches!(f, Frame::Data { flags, data, .. } if *flags == FLAG_FIN && data.is_empty())
        })
        .await;
        peer.expect("GOAWAY", |f| matches!(f, Frame::GoAway { .. }))
            .await;
        let seen = peer.seen;
        assert!(
            seen.contains(&Frame::Ping { id: 2 }),
            "PING not echoed: {seen:?}"
        );
        for stream in [stream_id, 0] {
            assert!(
                seen.contains(&Frame::WindowUpdate {
                    stream_id: stream,
                    delta: 5
                }),
                "no WINDOW_UPDATE for stream {stream}: {seen:?}"
            );
        }
    });
    let protocols = [
        "v4.channel.k8s.io".to_string(),
        "v3.channel.k8s.io".to_string(),
    ];
    let conn = SpdyConnection::connect(&url, "POST", &protocols, Default::default())
        .await
        .unwrap();
    assert_eq!(conn.protocol(), "v4.channel.k8s.io");
    let mut stream = conn
        .create_stream(vec![("streamType".into(), vec!["stdin".into()])])
        .await
        .unwrap();
    assert_eq!(stream.inbound.recv().await.unwrap().unwrap(), b"hello");
    stream.writer.send(&[b'x'; 25]).await.unwrap();
    stream.writer.close().await.unwrap();
    conn.close().await;
    server.await.unwrap();
}

async fn accept_spdy(listener: TcpListener) -> FakeSpdy {
    let (mut sock, _) = listener.accept().await.unwrap();
    read_request_head(&mut sock).await;
    sock.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
    )
    .await
    .unwrap();
    FakeSpdy {
        sock,
        compressor: HeaderCompressor::new().unwrap(),
        decompressor: HeaderDecompressor::new(),
        seen: Vec::new(),
    }
}

/// Without flow control from the server the client sends no WINDOW_UPDATE
/// (as client-go); once the server turns it on, what was consumed is paid.
#[tokio::test]
async fn spdy_credits_only_a_flow_controlling_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/portforward/tok", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut peer = accept_spdy(listener).await;
        peer.expect("SYN_STREAM", |f| matches!(f, Frame::SynStream { .. }))
            .await;
        peer.send(Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![],
        })
        .await;
        peer.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: b"abc".to_vec(),
        })
        .await;
        peer.expect("ack", |f| matches!(f, Frame::Data { .. }))
            .await;
        assert!(
            !peer
                .seen
                .iter()
                .any(|f| matches!(f, Frame::WindowUpdate { .. })),
            "credited without flow control: {:?}",
            peer.seen
        );
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        })
        .await;
        peer.expect_credits(3).await;
    });
    let conn = SpdyConnection::connect(&url, "POST", &[], SpdyConfig::default())
        .await
        .unwrap();
    let mut stream = conn
        .create_stream(vec![("streamtype".into(), vec!["data".into()])])
        .await
        .unwrap();
    assert_eq!(stream.inbound.recv().await.unwrap().unwrap(), b"abc");
    stream.writer.send(b"ack").await.unwrap();
    server.await.unwrap();
}

/// `WindowUpdates::Always` credits from the start.
#[tokio::test]
async fn spdy_always_credits_when_asked() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exec/tok", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut peer = accept_spdy(listener).await;
        peer.expect("SYN_STREAM", |f| matches!(f, Frame::SynStream { .. }))
            .await;
        peer.send(Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![],
        })
        .await;
        peer.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: b"abcd".to_vec(),
        })
        .await;
        peer.expect_credits(4).await;
    });
    let config = SpdyConfig {
        window_updates: WindowUpdates::Always,
        ping_period: None,
    };
    let conn = SpdyConnection::connect(&url, "POST", &[], config)
        .await
        .unwrap();
    let mut stream = conn
        .create_stream(vec![("streamtype".into(), vec!["stdout".into()])])
        .await
        .unwrap();
    assert_eq!(stream.inbound.read_to_end().await.unwrap(), b"abcd");
    assert_eq!(stream.inbound.end_note(), None, "FIN is a clean end");
    server.await.unwrap();
}

#[tokio::test]
async fn spdy_refusal_is_an_upgrade_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exec/nope", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        read_request_head(&mut sock).await;
        sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n")
            .await
            .unwrap();
    });
    let err = remote_command(&url, Transport::Spdy, StreamOptions::output())
        .await
        .unwrap_err();
    let refused = err.downcast_ref::<super::UpgradeError>().unwrap();
    assert_eq!((refused.status, refused.body.as_str()), (404, "not found"));
}

#[allow(clippy::result_large_err)] // tungstenite's handshake callback type
mod ws {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// A WebSocket exec server choosing `chosen`; returns what the client sent.
    async fn serve(chosen: &'static str, listener: TcpListener) -> (String, Vec<Message>) {
        let (sock, _) = listener.accept().await.unwrap();
        let mut offered = String::new();
        let mut ws =
            tokio_tungstenite::accept_hdr_async(sock, |req: &Request, mut resp: Response| {
                offered = req
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", chosen.parse().unwrap());
                Ok(resp)
            })
            .await
            .unwrap();
        let base64 = chosen.contains("base64");
        let msg = |channel: u8, data: &[u8]| {
            super::super::websocket::encode_message(base64, channel, data)
        };
        // kubelet's "ready" message: an empty frame on stdout.
        ws.send(msg(1, b"")).await.unwrap();
        let mut received = Vec::new();
        while received.len() < 3 {
            match ws.next().await.unwrap().unwrap() {
                Message::Ping(_) | Message::Pong(_) => {}
                m => received.push(m),
            }
        }
        ws.send(msg(1, b"out")).await.unwrap();
        ws.send(msg(2, b"err")).await.unwrap();
        ws.send(msg(3, br#"{"metadata":{},"status":"Success"}"#))
            .await
            .unwrap();
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await
        .unwrap();
        (offered, received)
    }

    #[tokio::test]
    async fn v5_binary_framing_and_close_signal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/exec/tok", listener.local_addr().unwrap());
        let server = tokio::spawn(serve("v5.channel.k8s.io", listener));
        let opts = StreamOptions {
            protocols: vec!["v5.channel.k8s.io".into(), "v4.channel.k8s.io".into()],
            ..StreamOptions::terminal()
        };
        let mut rc = remote_command(&url, Transport::WebSocket, opts)
            .await
            .unwrap();
        assert_eq!(rc.protocol(), "v5.channel.k8s.io");
        rc.write_stdin(b"in").await.unwrap();
        rc.resize(80, 24).await.unwrap();
        rc.close_stdin().await.unwrap();
        let out = rc.finish(T).await.unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice()),
            (&b"out"[..], &b"err"[..])
        );
        assert_eq!(out.exit_code, Some(0));
        assert!(out.unclean_ends.is_empty(), "{:?}", out.unclean_ends);
        let (offered, received) = server.await.unwrap();
        assert_eq!(offered, "v5.channel.k8s.io, v4.channel.k8s.io");
        assert_eq!(
            received,
            [
                Message::binary(b"\x00in".to_vec()),
                Message::binary(b"\x04{\"Width\":80,\"Height\":24}\n".to_vec()),
                Message::binary(vec![255, 0]),
            ]
        );
    }

    #[tokio::test]
    async fn v4_base64_framing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/attach/tok", listener.local_addr().unwrap());
        let server = tokio::spawn(serve("v4.base64.channel.k8s.io", listener));
        let opts = StreamOptions::interactive().with_protocols(&["v4.base64.channel.k8s.io"]);
        let mut rc = remote_command(&url, Transport::WebSocket, opts)
            .await
            .unwrap();
        assert_eq!(rc.version(), 4);
        rc.write_stdin(b"a").await.unwrap();
        rc.write_stdin(b"bc").await.unwrap();
        assert!(rc.close_stdin().await.is_err(), "v4 has no close signal");
        rc.resize(1, 2).await.unwrap();
        let out = rc.finish(T).await.unwrap();
        assert_eq!(out.stdout, b"out");
        assert_eq!(out.exit_code, Some(0));
        let (_, received) = server.await.unwrap();
        assert_eq!(
            received,
            [
                Message::text("0YQ=="),
                Message::text("0YmM="),
                Message::text("4eyJXaWR0aCI6MSwiSGVpZ2h0IjoyfQo="),
            ]
        );
    }
}
