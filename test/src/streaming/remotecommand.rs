//! Exec and attach sessions (client-go's `remotecommand` executors).
//!
//! SPDY: streams are created in client-go's order, each waiting for its
//! SYN_REPLY: error, stdin, stdout, stderr (not with a tty), resize (tty and
//! v3+), each with the single header `streamtype`. The client half-closes only
//! stdin; when the session ends it resets every stream it did not finish and
//! sends GOAWAY, like client-go's `Connection.Close`. WebSocket: channels 0
//! stdin, 1 stdout, 2 stderr, 3 error, 4 resize; the session ends with the
//! server's close frame.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::future::{BoxFuture, FutureExt, select_all};
use serde_json::Value;

use super::pipe::Inbound;
use super::spdy::{SpdyConnection, StreamWriter};
use super::spdy_frame::Headers;
use super::websocket::WsConnection;
use super::{StreamOptions, Transport, default_protocols, protocol_version};

/// WebSocket channel numbers (`remotecommand` constants).
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// What a finished session produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Everything received on stdout (with a tty: the terminal output).
    pub stdout: Vec<u8>,
    /// Everything received on stderr.
    pub stderr: Vec<u8>,
    /// v4+: 0 for a `Success` status, the `ExitCode` cause of a
    /// `NonZeroExitCode` failure; `None` otherwise (v1-v3 carry no code, and
    /// an empty error stream — which client-go takes for success — has none).
    pub exit_code: Option<i32>,
    /// v4+: the message of a `Failure` status; v1-v3: the error text.
    pub error: Option<String>,
    /// v4+: the status object as received.
    pub status_json: Option<Value>,
    /// Streams that did not end cleanly (FIN or close 1000), and how
    /// (e.g. `"stdout: stream 5 reset by the server (status 5)"`); client-go
    /// reads those ends as end-of-file.
    pub unclean_ends: Vec<String>,
}

impl Outcome {
    /// stdout as text (lossy UTF-8).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An upgraded exec or attach session.
pub struct RemoteCommand {
    protocol: String,
    version: u8,
    opts: StreamOptions,
    io: Option<Io>,
    out: Outputs,
}

impl std::fmt::Debug for RemoteCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCommand")
            .field("protocol", &self.protocol)
            .field("opts", &self.opts)
            .finish()
    }
}

enum Io {
    Spdy {
        conn: SpdyConnection,
        stdin: Option<StreamWriter>,
        resize: Option<StreamWriter>,
    },
    Ws {
        conn: WsConnection,
        stdin_closed: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stdout,
    Stderr,
    Error,
    /// SPDY: the server's side of stdin; client-go closes stdin when it ends.
    StdinRemote,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Error => "error",
            Kind::StdinRemote => "stdin",
        }
    }
}

/// One stream's next chunk, tagged with the stream.
type Received = (Kind, Result<Option<Vec<u8>>>);

/// The receive side: what has arrived so far on each stream.
struct Outputs {
    streams: Vec<(Kind, Inbound)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
    failure: Option<String>,
}

impl Outputs {
    fn open(&self) -> bool {
        self.streams
            .iter()
            .any(|(k, s)| *k != Kind::StdinRemote && !s.is_ended())
    }

    /// Waits for the next chunk on any open stream and files it; `false`
    /// once every output stream has ended. Cancel-safe.
    async fn pump_once(&mut self) -> Result<bool> {
        if let Some(failure) = &self.failure {
            bail!("{failure}");
        }
        if !self.open() {
            return Ok(false);
        }
        let pending: Vec<BoxFuture<'_, Received>> = self
            .streams
            .iter_mut()
            .filter(|(_, s)| !s.is_ended())
            .map(|(kind, s)| {
                let kind = *kind;
                async move { (kind, s.recv().await) }.boxed()
            })
            .collect();
        let ((kind, received), _, _) = select_all(pending).await;
        match received {
            Ok(Some(data)) => match kind {
                Kind::Stdout => self.stdout.extend_from_slice(&data),
                Kind::Stderr => self.stderr.extend_from_slice(&data),
                Kind::Error => self.error.extend_from_slice(&data),
                Kind::StdinRemote => {}
            },
            Ok(None) => {}
            Err(e) => {
                let failure = format!("{}: {e:#}", kind.name());
                self.failure = Some(failure.clone());
                bail!("{failure}");
            }
        }
        Ok(self.open())
    }

    /// Pumps until everything ended or failed, then waits forever (for use
    /// alongside a send, so the server never blocks on unread output).
    async fn pump_forever(&mut self) {
        while let Ok(true) = self.pump_once().await {}
        std::future::pending::<()>().await;
    }

    fn stdin_remote_ended(&self) -> bool {
        self.streams
            .iter()
            .any(|(k, s)| *k == Kind::StdinRemote && s.is_ended())
    }

    fn unclean_ends(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter_map(|(k, s)| s.end_note().map(|n| format!("{}: {n}", k.name())))
            .collect()
    }

    fn summary(&self) -> String {
        format!(
            "stdout so far {:?}, stderr so far {:?}, error stream so far {:?}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr),
            String::from_utf8_lossy(&self.error)
        )
    }
}

fn stream_type(value: &str) -> Headers {
    vec![("streamtype".to_string(), vec![value.to_string()])]
}

/// Upgrades `url` and sets up the session's streams. SPDY uses POST like
/// client-go's executor (and crictl); WebSocket uses GET.
pub async fn remote_command(
    url: &str,
    transport: Transport,
    opts: StreamOptions,
) -> Result<RemoteCommand> {
    let protocols = if opts.protocols.is_empty() {
        default_protocols(transport)
    } else {
        opts.protocols.clone()
    };
    match transport {
        Transport::Spdy => spdy_session(url, &protocols, opts).await,
        Transport::WebSocket => ws_session(url, &protocols, opts).await,
    }
}

async fn spdy_session(
    url: &str,
    protocols: &[String],
    opts: StreamOptions,
) -> Result<RemoteCommand> {
    let conn = SpdyConnection::connect(url, "POST", protocols, opts.spdy).await?;
    let protocol = conn.protocol().to_string();
    let version = protocol_version(&protocol);
    let mut streams = Vec::new();
    let create = |kind: &'static str| {
        let conn = conn.clone();
        async move {
            conn.create_stream(stream_type(kind))
                .await
                .with_context(|| format!("creating the {kind} stream"))
        }
    };
    let error = create("error").await?;
    streams.push((Kind::Error, error.inbound));
    let mut stdin = None;
    if opts.stdin {
        let s = create("stdin").await?;
        streams.push((Kind::StdinRemote, s.inbound));
        stdin = Some(s.writer);
    }
    if opts.stdout {
        streams.push((Kind::Stdout, create("stdout").await?.inbound));
    }
    if opts.stderr && !opts.tty {
        streams.push((Kind::Stderr, create("stderr").await?.inbound));
    }
    let mut resize = None;
    if opts.tty && version >= 3 {
        resize = Some(create("resize").await?.writer);
    }
    Ok(RemoteCommand {
        protocol,
        version,
        opts,
        io: Some(Io::Spdy {
            conn,
            stdin,
            resize,
        }),
        out: Outputs::new(streams),
    })
}

async fn ws_session(url: &str, protocols: &[String], opts: StreamOptions) -> Result<RemoteCommand> {
    let conn = WsConnection::connect(url, protocols, &[STDOUT, STDERR, ERROR]).await?;
    let protocol = conn.protocol().to_string();
    // client-go insists on a protocol it offered (tungstenite checks too).
    ensure!(
        protocols.is_empty() || protocols.contains(&protocol),
        "the server chose {protocol:?}, not one of {protocols:?}"
    );
    let version = protocol_version(&protocol);
    // All output channels are read whatever the options say, so stray
    // output never blocks the connection.
    let streams = vec![
        (Kind::Stdout, conn.take_channel(STDOUT)?),
        (Kind::Stderr, conn.take_channel(STDERR)?),
        (Kind::Error, conn.take_channel(ERROR)?),
    ];
    Ok(RemoteCommand {
        protocol,
        version,
        opts,
        io: Some(Io::Ws {
            conn,
            stdin_closed: false,
        }),
        out: Outputs::new(streams),
    })
}

impl Outputs {
    fn new(streams: Vec<(Kind, Inbound)>) -> Self {
        Self {
            streams,
            stdout: Vec::new(),
            stderr: Vec::new(),
            error: Vec::new(),
            failure: None,
        }
    }
}

impl RemoteCommand {
    /// The negotiated subprotocol ("" if the server chose none).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The remotecommand version in use (1 to 5).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The options the session was opened with.
    pub fn options(&self) -> &StreamOptions {
        &self.opts
    }

    /// Sends `data` on stdin, reading output meanwhile (so a command that
    /// echoes cannot deadlock against the test).
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        ensure!(self.opts.stdin, "the session was opened without stdin");
        let Self { io, out, .. } = self;
        let io = io.as_mut().context("the session is closed")?;
        if out.stdin_remote_ended()
            && let Io::Spdy {
                stdin: Some(writer),
                ..
            } = io
        {
            // client-go closes stdin once the server closed its side.
            let _ = writer.close().await;
        }
        let send = async {
            match io {
                Io::Spdy { stdin, .. } => {
                    let writer = stdin.as_mut().context("no stdin stream")?;
                    writer.send(data).await
                }
                Io::Ws { conn, stdin_closed } => {
                    ensure!(!*stdin_closed, "stdin is closed");
                    conn.send(STDIN, data).await
                }
            }
        };
        tokio::select! {
            sent = send => sent,
            () = out.pump_forever() => unreachable!("pump_forever never returns"),
        }
    }

    /// Closes stdin: SPDY half-closes the stdin stream (FIN); WebSocket v5
    /// sends the close signal `[255, 0]`; older WebSocket protocols cannot.
    pub async fn close_stdin(&mut self) -> Result<()> {
        ensure!(self.opts.stdin, "the session was opened without stdin");
        let version = self.version;
        let protocol = self.protocol.clone();
        match self.io()? {
            Io::Spdy { stdin, .. } => stdin.as_mut().context("no stdin stream")?.close().await,
            Io::Ws { conn, stdin_closed } => {
                ensure!(
                    version >= 5,
                    "{protocol:?} has no way to close stdin (v5.channel.k8s.io has)"
                );
                conn.close_channel(STDIN).await?;
                *stdin_closed = true;
                Ok(())
            }
        }
    }

    /// Sends a terminal size as client-go does: `{"Width":W,"Height":H}` and
    /// a newline (Go's `json.Encoder`), one write on the resize stream
    /// (SPDY, tty and v3+ only) or channel 4 (WebSocket, sent whatever the
    /// session; the server decides).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let payload = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        let why = format!(
            "no resize stream (tty: {}, protocol {:?})",
            self.opts.tty, self.protocol
        );
        match self.io()? {
            Io::Spdy { resize, .. } => {
                let writer = resize.as_mut().context(why)?;
                writer.send(payload.as_bytes()).await
            }
            Io::Ws { conn, .. } => conn.send(RESIZE, payload.as_bytes()).await,
        }
    }

    /// Reads output until stdout contains `needle`; returns all of stdout so
    /// far (it stays in the [`Outcome`] of [`Self::finish`] too).
    pub async fn read_stdout_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let contains =
            |hay: &[u8]| needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle);
        let wait = async {
            loop {
                if contains(&self.out.stdout) {
                    return Ok(());
                }
                if !self.out.pump_once().await? {
                    ensure!(
                        contains(&self.out.stdout),
                        "the session ended before stdout contained {:?}",
                        String::from_utf8_lossy(needle)
                    );
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(())) => Ok(self.out.stdout.clone()),
            Ok(Err(e)) => Err(e.context(self.out.summary())),
            Err(_) => Err(anyhow!(
                "stdout did not contain {:?} within {timeout:?}; {}",
                String::from_utf8_lossy(needle),
                self.out.summary()
            )),
        }
    }

    /// Reads every stream to its end (as client-go does before returning),
    /// closes the connection like client-go and decodes the error stream.
    pub async fn finish(mut self, timeout: Duration) -> Result<Outcome> {
        let drained = tokio::time::timeout(timeout, async {
            while self.out.pump_once().await? {}
            Ok::<_, anyhow::Error>(())
        })
        .await;
        let summary = self.out.summary();
        match drained {
            Err(_) => {
                self.disconnect_io();
                bail!("the session did not end within {timeout:?}; {summary}");
            }
            Ok(Err(e)) => {
                self.close_io().await;
                return Err(e.context(summary));
            }
            Ok(Ok(())) => self.close_io().await,
        }
        let mut outcome = Outcome {
            stdout: std::mem::take(&mut self.out.stdout),
            stderr: std::mem::take(&mut self.out.stderr),
            unclean_ends: self.out.unclean_ends(),
            ..Outcome::default()
        };
        let error = std::mem::take(&mut self.out.error);
        if error.is_empty() {
            return Ok(outcome);
        }
        if self.version < 4 {
            outcome.error = Some(String::from_utf8_lossy(&error).into_owned());
            return Ok(outcome);
        }
        let status: Value = serde_json::from_slice(&error).with_context(|| {
            format!(
                "error stream protocol error: not a JSON status: {:?}",
                String::from_utf8_lossy(&error)
            )
        })?;
        let (exit_code, message) = decode_status(&status)?;
        outcome.exit_code = exit_code;
        outcome.error = message;
        outcome.status_json = Some(status);
        Ok(outcome)
    }

    /// Drops the connection abruptly, like a client that went away.
    pub fn disconnect(mut self) {
        self.disconnect_io();
    }

    fn io(&mut self) -> Result<&mut Io> {
        self.io.as_mut().context("the session is closed")
    }

    fn disconnect_io(&mut self) {
        match self.io.take() {
            Some(Io::Spdy { conn, .. }) => conn.disconnect(),
            Some(Io::Ws { conn, .. }) => conn.disconnect(),
            None => {}
        }
    }

    /// client-go's end of a session: SPDY resets the unfinished streams and
    /// sends GOAWAY; gorilla's WebSocket `Close` just drops the socket.
    async fn close_io(&mut self) {
        match self.io.take() {
            Some(Io::Spdy { conn, .. }) => conn.close().await,
            Some(Io::Ws { conn, .. }) => drop(conn),
            None => {}
        }
    }
}

/// Decodes a v4 `metav1.Status` as client-go's `errorDecoderV4`: `Success` →
/// exit 0; `Failure` with reason `NonZeroExitCode` → the `ExitCode` cause
/// (which must be a number 0-255); any other failure → its message.
pub fn decode_status(status: &Value) -> Result<(Option<i32>, Option<String>)> {
    let message = status["message"].as_str().map(String::from);
    match status["status"].as_str() {
        Some("Success") => Ok((Some(0), None)),
        Some("Failure") => {
            if status["reason"].as_str() != Some("NonZeroExitCode") {
                return Ok((None, Some(message.unwrap_or_default())));
            }
            let causes = status["details"]["causes"]
                .as_array()
                .context("error stream protocol error: details must be set")?;
            let cause = causes
                .iter()
                .find(|c| c["reason"].as_str() == Some("ExitCode"))
                .context("error stream protocol error: no ExitCode cause given")?;
            let text = cause["message"].as_str().unwrap_or_default();
            let code: u8 = text.parse().with_context(|| {
                format!("error stream protocol error: invalid exit code value {text:?}")
            })?;
            Ok((Some(i32::from(code)), message))
        }
        _ => bail!("error stream protocol error: unknown error: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_statuses_like_client_go() {
        assert_eq!(
            decode_status(&json!({"metadata":{},"status":"Success"})).unwrap(),
            (Some(0), None)
        );
        let exit7 = json!({
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: exit status 7",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}
        });
        assert_eq!(
            decode_status(&exit7).unwrap(),
            (
                Some(7),
                Some("command terminated with non-zero exit code: exit status 7".into())
            )
        );
        let internal = json!({"status": "Failure", "message": "boom", "reason": "InternalError"});
        assert_eq!(
            decode_status(&internal).unwrap(),
            (None, Some("boom".into()))
        );
        assert!(decode_status(&json!({"status": "Failure", "reason": "NonZeroExitCode"})).is_err());
        let bad_code = json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "300"}]}});
        assert!(decode_status(&bad_code).is_err());
        assert!(decode_status(&json!({"status": "Weird"})).is_err());
    }
}
