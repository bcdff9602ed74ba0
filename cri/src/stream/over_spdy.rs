//! Sessions over SPDY: gathers the streams client-go opens for an exec or
//! attach (by their `streamType` header) and hands port-forward sessions on.

use std::sync::Arc;
use std::time::Duration;

use crust_runtime::Runtime;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Shared;
use super::portforward;
use super::remotecommand::{self, StatusFormat, Streams, Wanted};
use super::spdy::session::{Limits, Session, SpdyStream, StreamPermit};
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
        remote => {
            serve_remote_command(session, remote, &protocol, &label, shared.runtime.clone()).await
        }
    }
}

/// `channel.k8s.io` and `v2.channel.k8s.io` have no resize stream.
fn supports_resize(protocol: &str) -> bool {
    !matches!(protocol, "" | "channel.k8s.io" | "v2.channel.k8s.io")
}

/// Waits for the client's streams, runs the exec or attach on them, and
/// closes the session when it is done. Streams the client opens later are
/// ignored.
async fn serve_remote_command(
    mut session: Session,
    pending: Pending,
    protocol: &str,
    label: &str,
    runtime: Arc<Runtime>,
) {
    let wanted = Wanted::of(&pending);
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(wanted.tty && supports_resize(protocol));
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
    let mut permits: Vec<StreamPermit> = Vec::new();
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    for s in got {
        let stream_type = s.header("streamtype").to_string();
        permits.push(s.permit);
        match stream_type.as_str() {
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
    let work = remotecommand::serve(runtime, pending, streams, session.gone());
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
