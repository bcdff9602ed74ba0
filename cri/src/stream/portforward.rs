//! Port-forward: each client connection is a pair of streams (data and error)
//! naming a port; crustd connects to that port on the pod's loopback from inside
//! its network namespace and copies bytes both ways. A failed connection is
//! reported on its error stream; the session carries on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use crust_runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::channel::{Incoming, MAX_CHUNK, Outgoing};
use super::spdy::session::{Session, SpdyStream};

/// How long a client may keep sending once the pod closed its side.
const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// The port-forward protocol crustd speaks over SPDY.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// How long the first stream of a pair waits for the other.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams of one connection request as they arrive.
struct Halves {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    since: Instant,
}

/// One forwarded connection's streams.
pub struct Connection {
    /// The port in the pod.
    pub port: u16,
    /// Bytes from the client.
    pub data_in: Incoming,
    /// Bytes to the client.
    pub data_out: Outgoing,
    /// Where a failure is reported.
    pub error: Outgoing,
}

/// Serves a SPDY port-forward session until the client goes away.
pub async fn serve_spdy(runtime: Arc<Runtime>, sandbox_id: String, mut session: Session) {
    let mut halves: HashMap<String, Halves> = HashMap::new();
    loop {
        // A pair the client never completed holds its streams only so long,
        // whether or not the client opens more streams meanwhile.
        let oldest = halves.values().map(|h| h.since).min();
        let stream = tokio::select! {
            s = session.next_stream() => match s {
                Some(s) => s,
                None => break,
            },
            () = until_expired(oldest) => {
                drop_expired(&mut halves, &sandbox_id);
                continue;
            }
        };
        let request = stream.header("requestid").to_string();
        let kind = stream.header("streamtype").to_string();
        let entry = halves.entry(request.clone()).or_insert_with(|| Halves {
            error: None,
            data: None,
            since: Instant::now(),
        });
        match kind.as_str() {
            "error" => entry.error = Some(stream),
            "data" => entry.data = Some(stream),
            other => {
                tracing::info!(pod = %sandbox_id, stream_type = other, "ignoring a port-forward stream of unknown type");
                continue;
            }
        }
        if entry.error.is_none() || entry.data.is_none() {
            continue;
        }
        if let Some(Halves {
            error: Some(mut error),
            data: Some(mut data),
            ..
        }) = halves.remove(&request)
        {
            error.permit.leave_session_share();
            data.permit.leave_session_share();
            let port = data.header("port").to_string();
            let rt = runtime.clone();
            let pod = sandbox_id.clone();
            tokio::spawn(async move {
                let permits = (error.permit, data.permit);
                let mut error_out = error.outgoing;
                let port = match port.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        let msg =
                            format!("invalid port {port:?}: a port is a number from 1 to 65535");
                        let _ = error_out.send(msg.into()).await;
                        error_out.finish().await;
                        return;
                    }
                };
                forward(
                    &rt,
                    &pod,
                    Connection {
                        port,
                        data_in: data.incoming,
                        data_out: data.outgoing,
                        error: error_out,
                    },
                )
                .await;
                drop(permits);
            });
        }
    }
    session.close().await;
}

/// Resolves once a half that arrived at `since` has waited [`PAIR_TIMEOUT`];
/// never without one.
async fn until_expired(since: Option<Instant>) {
    match since {
        Some(t) => tokio::time::sleep_until(t + PAIR_TIMEOUT).await,
        None => std::future::pending().await,
    }
}

/// Drops the halves whose pair did not come within [`PAIR_TIMEOUT`], which
/// gives their streams back.
fn drop_expired(halves: &mut HashMap<String, Halves>, sandbox_id: &str) {
    halves.retain(|request, h| {
        let keep = h.since.elapsed() < PAIR_TIMEOUT;
        if !keep {
            tracing::info!(pod = %sandbox_id, request, "dropping a port-forward stream whose pair never came");
        }
        keep
    });
}

/// Connects to the connection's port in the pod and copies both ways.
pub async fn forward(runtime: &Arc<Runtime>, sandbox_id: &str, mut conn: Connection) {
    let tcp = match runtime.port_forward_connect(sandbox_id, conn.port).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(pod = %sandbox_id, port = conn.port, error = %e, "port-forward connection failed");
            let msg = format!(
                "error forwarding port {} to pod {sandbox_id}: {e}",
                conn.port
            );
            let _ = conn.error.send(msg.into()).await;
            conn.error.finish().await;
            conn.data_out.finish().await;
            return;
        }
    };
    tracing::debug!(pod = %sandbox_id, port = conn.port, "port-forward connection open");
    let (mut read, mut write) = tcp.into_split();
    let mut data_in = conn.data_in;
    let to_pod = async move {
        while let Some(data) = data_in.recv().await {
            if write.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    let mut data_out = conn.data_out;
    let client_left = data_out.closed();
    let to_client = async move {
        let mut buf = BytesMut::with_capacity(MAX_CHUNK);
        loop {
            buf.reserve(MAX_CHUNK);
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if data_out.send(buf.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
        data_out.finish().await;
    };
    // The connection is over once the pod's side ends: the client may never
    // close its side (WebSocket has no half-close), so it gets a moment to
    // finish sending, as kubelet gives it. It is over too once the client
    // reset the stream or left, whatever the pod does.
    tokio::pin!(to_pod);
    tokio::pin!(to_client);
    tokio::pin!(client_left);
    tokio::select! {
        () = &mut to_pod => tokio::select! {
            () = to_client => {}
            () = client_left => {}
        },
        () = &mut to_client => {
            let _ = tokio::time::timeout(CLIENT_GRACE, to_pod).await;
        }
        () = &mut client_left => {}
    }
    conn.error.finish().await;
}
