//! Exec over any transport: the client's streams (stdin, stdout, stderr,
//! resize, error) wired to a process `runc exec` started, and its end reported
//! on the error stream in the format the negotiated protocol uses.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crust_runtime::Runtime;
use crust_runtime::container::{AttachRequest, AttachStream, ExecReader, ExecRequest, ExecWriter};
use crust_runtime::sys::pty::Pty;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::channel::{Incoming, MAX_CHUNK, Outgoing};
use super::tokens::Pending;

/// How long output may keep flowing after the process ended (a background
/// child can hold the pipes open).
const DRAIN: Duration = Duration::from_secs(2);

/// After a detach, output is still relayed until it pauses this long...
const DETACH_QUIET: Duration = Duration::from_millis(200);
/// ...or for at most this long.
const DETACH_LIMIT: Duration = Duration::from_secs(2);

/// Largest resize message accepted.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// How the error stream reports the end of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    /// `channel.k8s.io` to `v3.channel.k8s.io`: plain text, nothing on success.
    Text,
    /// `v4.channel.k8s.io` and later: a Kubernetes `Status` object as JSON.
    Json,
}

/// The remote-command protocols crustd speaks over SPDY, most preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

impl StatusFormat {
    /// The format of a negotiated protocol.
    pub fn of(protocol: &str) -> StatusFormat {
        if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        }
    }
}

/// The client's side of an exec or attach session.
pub struct Streams {
    /// Input for the process.
    pub stdin: Option<Incoming>,
    /// Its output.
    pub stdout: Option<Outgoing>,
    /// Its error output.
    pub stderr: Option<Outgoing>,
    /// Terminal sizes, as JSON objects `{"Width":..,"Height":..}`.
    pub resize: Option<Incoming>,
    /// Where the outcome goes.
    pub error: Outgoing,
    /// How to write the outcome.
    pub format: StatusFormat,
}

/// The client's streams an exec or attach uses besides the error stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Input for the process.
    pub stdin: bool,
    /// Its output.
    pub stdout: bool,
    /// Its error output.
    pub stderr: bool,
    /// A terminal, and so terminal sizes (where the protocol has them).
    pub tty: bool,
}

impl Wanted {
    /// The streams of `pending`; none for a port-forward.
    pub fn of(pending: &Pending) -> Wanted {
        match pending {
            Pending::Exec { req, .. } => Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            },
            Pending::Attach { req, tty, .. } => Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: *tty,
            },
            Pending::PortForward { .. } => Wanted::default(),
        }
    }
}

/// Runs the exec or attach `pending` stands for on the client's streams,
/// whatever the transport (a port-forward runs nothing here).
pub async fn serve(
    runtime: Arc<Runtime>,
    pending: Pending,
    streams: Streams,
    gone: impl Future<Output = ()>,
) {
    match pending {
        Pending::Exec { container_id, req } => {
            serve_exec(runtime, container_id, req, streams, gone).await
        }
        Pending::Attach {
            container_id,
            req,
            stdin_once,
            ..
        } => serve_attach(runtime, container_id, req, stdin_once, streams, gone).await,
        Pending::PortForward { .. } => {}
    }
}

/// How a command ended, as the error stream tells it.
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// It could not be run, or the session failed.
    Failed(String),
}

/// Runs an exec session to its end: the process exits, or the client goes away
/// (`gone` resolves), in which case the process is killed.
async fn serve_exec(
    runtime: Arc<Runtime>,
    container_id: String,
    req: ExecRequest,
    mut streams: Streams,
    gone: impl Future<Output = ()>,
) {
    let mut process = match runtime.exec_streaming(&container_id, &req).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(container = %container_id, error = %e, "streamed exec could not start");
            report(&mut streams, Outcome::Failed(e.to_string()), &req.cmd).await;
            return;
        }
    };
    tracing::info!(container = %container_id, cmd = ?req.cmd, tty = req.tty, "streamed exec started");
    let (stop_tx, stop) = watch::channel(false);
    let stdout = spawn_output(process.stdout.take(), streams.stdout.take(), stop.clone());
    let stderr = spawn_output(process.stderr.take(), streams.stderr.take(), stop.clone());
    let stdin = spawn_input(streams.stdin.take(), process.stdin.take());
    let resize = spawn_resize(streams.resize.take(), process.terminal.take());

    let ended = tokio::select! {
        ended = process.wait() => Some(ended),
        () = gone => None,
    };
    let Some(ended) = ended else {
        tracing::info!(container = %container_id, cmd = ?req.cmd, "exec client went away; killing the process");
        drop(process);
        for task in [&stdin, &resize] {
            task.abort();
        }
        stdout.abort();
        stderr.abort();
        return;
    };
    stdin.abort();
    resize.abort();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(DRAIN).await;
        let _ = stop_tx.send(true);
    });
    for out in [stdout, stderr] {
        if let Ok(Some(mut o)) = out.await {
            o.finish().await;
        }
    }
    timer.abort();
    let outcome = match ended {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    if let Outcome::Exited(code) = &outcome {
        tracing::info!(container = %container_id, cmd = ?req.cmd, exit_code = code, "streamed exec ended");
    }
    report(&mut streams, outcome, &req.cmd).await;
}

/// Writes the outcome on the error stream and closes every stream.
pub async fn report(streams: &mut Streams, outcome: Outcome, cmd: &[String]) {
    for s in [streams.stdout.as_mut(), streams.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        s.finish().await;
    }
    if let Some(text) = status_message(streams.format, &outcome, cmd) {
        let _ = streams.error.send(Bytes::from(text)).await;
    }
    streams.error.finish().await;
}

/// What the error stream carries for `outcome`; `None` for nothing.
pub fn status_message(format: StatusFormat, outcome: &Outcome, cmd: &[String]) -> Option<String> {
    let (message, reason, causes) = match outcome {
        Outcome::Exited(0) => {
            return match format {
                StatusFormat::Json => {
                    Some(json!({"metadata": {}, "status": "Success"}).to_string())
                }
                StatusFormat::Text => None,
            };
        }
        Outcome::Exited(code) => (
            format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            ),
            "NonZeroExitCode",
            json!([{"reason": "ExitCode", "message": code.to_string()}]),
        ),
        Outcome::Failed(msg) => (msg.clone(), "InternalError", json!([{"message": msg}])),
    };
    Some(match format {
        StatusFormat::Text => message,
        StatusFormat::Json => {
            let mut status = json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "details": {"causes": causes},
            });
            if reason == "InternalError" {
                status["code"] = json!(500);
            }
            status.to_string()
        }
    })
}

/// Copies a process's output to the client until its end (or `stop`), and
/// hands the stream back so it can be finished.
fn spawn_output(
    from: Option<ExecReader>,
    to: Option<Outgoing>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Option<Outgoing>> {
    tokio::spawn(async move {
        let (Some(mut from), Some(mut to)) = (from, to) else {
            return None;
        };
        let mut buf = BytesMut::with_capacity(MAX_CHUNK);
        loop {
            buf.reserve(MAX_CHUNK);
            let n = tokio::select! {
                n = from.read_buf(&mut buf) => n,
                _ = stop.wait_for(|s| *s) => break,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if to.send(buf.split().freeze()).await.is_err() {
                        break;
                    }
                }
            }
        }
        Some(to)
    })
}

/// Copies the client's input to the process; its end closes the process's stdin.
fn spawn_input(from: Option<Incoming>, to: Option<ExecWriter>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (Some(mut from), Some(mut to)) = (from, to) else {
            return;
        };
        while let Some(data) = from.recv().await {
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    })
}

/// A terminal size as client-go sends it.
#[derive(Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Splits the resize stream into terminal sizes (client-go writes one JSON
/// object per size, with nothing between them).
#[derive(Default)]
struct SizeParser {
    pending: Vec<u8>,
}

impl SizeParser {
    /// Takes more of the stream; returns the complete sizes in it, or `None`
    /// when the stream is not JSON sizes.
    fn push(&mut self, data: &[u8]) -> Option<Vec<(u16, u16)>> {
        self.pending.extend_from_slice(data);
        let mut values =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<TerminalSize>();
        let mut sizes = Vec::new();
        let mut used = 0;
        while let Some(size) = values.next() {
            match size {
                Ok(s) => {
                    used = values.byte_offset();
                    sizes.push((s.width, s.height));
                }
                Err(e) if e.is_eof() => break,
                Err(_) => return None,
            }
        }
        self.pending.drain(..used);
        (self.pending.len() <= MAX_RESIZE_MESSAGE).then_some(sizes)
    }
}

/// Applies the client's terminal sizes to the process's terminal.
fn spawn_resize(from: Option<Incoming>, terminal: Option<Pty>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (Some(mut from), Some(terminal)) = (from, terminal) else {
            return;
        };
        let mut parser = SizeParser::default();
        while let Some(data) = from.recv().await {
            let Some(sizes) = parser.push(&data) else {
                return;
            };
            for (width, height) in sizes {
                if let Err(e) = terminal.resize(width, height) {
                    tracing::debug!(error = %e, "resizing the exec's terminal");
                }
            }
        }
    })
}

/// Runs an attach session: the container's output to the client, the
/// client's input and terminal sizes to the container, until the container's
/// output ends, the client goes away, or the client's stdin ends (which
/// detaches it; with `stdin_once` the container's stdin closes and the session
/// lasts until its output ends).
async fn serve_attach(
    runtime: Arc<Runtime>,
    container_id: String,
    req: AttachRequest,
    stdin_once: bool,
    mut streams: Streams,
    gone: impl Future<Output = ()>,
) {
    let (mut output, mut input) = match runtime.attach(&container_id, &req).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(container = %container_id, error = %e, "attach failed");
            report(&mut streams, Outcome::Failed(e.to_string()), &[]).await;
            return;
        }
    };
    tracing::info!(container = %container_id, stdin = req.stdin, "attached");
    let mut stdout = streams.stdout.take();
    let mut stderr = streams.stderr.take();
    let ended = {
        let last_output = std::sync::Mutex::new(tokio::time::Instant::now());
        // Ends with the reason the output stopped early, if it did.
        let to_client = async {
            loop {
                let (stream, data) = match output.next().await {
                    Ok(Some(piece)) => piece,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::info!(container = %container_id, error = %e, "attach output ended early");
                        return Some(e.to_string());
                    }
                };
                *last_output.lock().unwrap_or_else(|p| p.into_inner()) =
                    tokio::time::Instant::now();
                let target = match stream {
                    AttachStream::Stdout => stdout.as_mut(),
                    AttachStream::Stderr => stderr.as_mut(),
                };
                if let Some(t) = target
                    && let Err(e) = t.send(data).await
                {
                    tracing::debug!(error = %e, "sending attach output to the client");
                    return None;
                }
            }
        };
        let mut stdin = streams.stdin.take();
        let mut resize = streams.resize.take();
        let to_container = async {
            let mut parser = SizeParser::default();
            loop {
                tokio::select! {
                    data = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match data {
                        Some(d) => {
                            if input.stdin(&d).await.is_err() {
                                return false;
                            }
                        }
                        None => {
                            let _ = input.close_stdin().await;
                            // Detach, unless the container's stdin closing ends it.
                            if !stdin_once {
                                return true;
                            }
                            stdin = None;
                        }
                    },
                    data = async { resize.as_mut()?.recv().await }, if resize.is_some() => match data.and_then(|d| parser.push(&d)) {
                        Some(sizes) => {
                            for (w, h) in sizes {
                                let _ = input.resize(w, h).await;
                            }
                        }
                        None => resize = None,
                    },
                    else => std::future::pending::<()>().await,
                }
            }
        };
        // Once the client detaches, output the container still writes in answer
        // to its last input reaches it, until the output pauses.
        let quiet = async {
            let detached = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(DETACH_QUIET / 4).await;
                let last = *last_output.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                if now >= detached + DETACH_LIMIT || now >= last.max(detached) + DETACH_QUIET {
                    return;
                }
            }
        };
        tokio::pin!(to_client);
        tokio::pin!(to_container);
        tokio::pin!(gone);
        tokio::select! {
            failed = &mut to_client => Some(failed),
            detached = &mut to_container => {
                if detached {
                    tokio::select! {
                        failed = &mut to_client => Some(failed),
                        () = quiet => Some(None),
                        () = &mut gone => None,
                    }
                } else {
                    None
                }
            }
            () = &mut gone => None,
        }
    };
    tracing::info!(container = %container_id, "attach session ended");
    if let Some(failed) = ended {
        streams.stdout = stdout;
        streams.stderr = stderr;
        let outcome = match failed {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Exited(0),
        };
        report(&mut streams, outcome, &[]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Vec<String> {
        vec!["sh".into(), "-c".into(), "exit 7".into()]
    }

    #[test]
    fn v4_reports_success_and_exit_codes_as_status_json() {
        let ok = status_message(StatusFormat::Json, &Outcome::Exited(0), &cmd()).unwrap();
        assert_eq!(ok, r#"{"metadata":{},"status":"Success"}"#);
        let seven = status_message(StatusFormat::Json, &Outcome::Exited(7), &cmd()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&seven).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
    }

    #[test]
    fn older_protocols_report_text_and_nothing_on_success() {
        assert_eq!(
            status_message(StatusFormat::Text, &Outcome::Exited(0), &cmd()),
            None
        );
        let failed = Outcome::Failed("no such file".into());
        assert_eq!(
            status_message(StatusFormat::Text, &failed, &cmd()).unwrap(),
            "no such file"
        );
        assert_eq!(StatusFormat::of("v5.channel.k8s.io"), StatusFormat::Json);
        assert_eq!(StatusFormat::of("channel.k8s.io"), StatusFormat::Text);
    }
}
