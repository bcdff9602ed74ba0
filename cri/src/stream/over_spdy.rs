//! Sessions over SPDY: gathers the streams client-go opens for an exec or
//! attach (by their `streamType` header) and hands port-forward sessions on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use super::portforward;
use super::remotecommand::{self, StatusFormat, Streams};
use super::spdy::session::{Limits, Session, SpdyStream};
use super::tokens::Pending;

/// How long the client may take to open the streams of an exec or attach.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one upgraded connection.
pub async fn serve<IO>(
    io: IO,
    pending: Pending,
    protocol: String,
    label: String,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let session = Session::start(
        io,
        Limits {
            streams: shared.streams.clone(),
            idle: shared.idle,
            label: label.clone(),
        },
    );
    match pending {
        Pending::PortForward { sandbox_id, .. } => {
            portforward::serve_spdy(shared.runtime.clone(), sandbox_id, session).await
        }
        Pending::Exec { container_id, req } => {
            let wanted = Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                resize: req.tty && supports_resize(&protocol),
            };
            serve_remote_command(session, wanted, &protocol, &label, |streams, gone| {
                remotecommand::serve_exec(shared.runtime.clone(), container_id, req, streams, gone)
            })
            .await
        }
        Pending::Attach {
            container_id,
            req,
            tty,
            stdin_once,
        } => {
            let wanted = Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                resize: tty && supports_resize(&protocol),
            };
            serve_remote_command(session, wanted, &protocol, &label, |streams, gone| {
                remotecommand::serve_attach(
                    shared.runtime.clone(),
                    container_id,
                    req,
                    stdin_once,
                    streams,
                    gone,
                )
            })
            .await
        }
    }
}

/// `channel.k8s.io` and `v2.channel.k8s.io` have no resize stream.
fn supports_resize(protocol: &str) -> bool {
    !matches!(protocol, "" | "channel.k8s.io" | "v2.channel.k8s.io")
}

/// The streams an exec or attach needs besides the error stream.
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
}

/// Waits for the client's streams, runs `body` on them, and closes the session
/// when it is done. Streams the client opens later are refused.
async fn serve_remote_command<F, Fut>(
    mut session: Session,
    wanted: Wanted,
    protocol: &str,
    label: &str,
    body: F,
) where
    F: FnOnce(Streams, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(wanted.resize);
    let mut got: Vec<SpdyStream> = Vec::new();
    let collected = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while got.len() < expected {
            match session.next_stream().await {
                Some(s) => got.push(s),
                None => return false,
            }
        }
        true
    })
    .await;
    if collected != Ok(true) {
        tracing::info!(session = %label, expected, got = got.len(), "the client did not open its streams; closing");
        session.close().await;
        return;
    }
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    for s in got {
        permits.push(s.permit);
        match s
            .headers
            .iter()
            .find(|(n, _)| n == "streamtype")
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
        {
            "error" => error = Some(s.outgoing),
            "stdin" => stdin = Some(s.incoming),
            "stdout" => stdout = Some(s.outgoing),
            "stderr" => stderr = Some(s.outgoing),
            "resize" => resize = Some(s.incoming),
            other => {
                tracing::info!(session = %label, stream_type = other, "ignoring a stream of unknown type")
            }
        }
    }
    let Some(error) = error else {
        tracing::info!(session = %label, "the client opened no error stream; closing");
        session.close().await;
        return;
    };
    let streams = Streams {
        stdin,
        stdout,
        stderr,
        resize,
        error,
        format: StatusFormat::of(protocol),
    };
    let gone = Box::pin(session.gone());
    let work = body(streams, gone);
    tokio::pin!(work);
    let mut open = true;
    loop {
        tokio::select! {
            () = &mut work => break,
            s = session.next_stream(), if open => match s {
                Some(extra) => tracing::info!(session = %label, stream = extra.id, "ignoring an extra stream"),
                None => open = false,
            },
        }
    }
    drop(permits);
    session.close().await;
}
