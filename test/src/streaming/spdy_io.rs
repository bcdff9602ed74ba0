//! The machinery behind [`super::spdy::SpdyConnection`]: shared connection
//! state, the writer task (the only owner of the header compressor, so
//! frames are compressed in wire order), the reader task (frame dispatch,
//! flow-control bookkeeping, the backpressure point) and the PING task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc, oneshot};

use super::pipe::Chunk;
use super::spdy::{SpdyConfig, WindowUpdates};
use super::spdy_frame::{
    FLAG_FIN, Frame, HeaderCompressor, HeaderDecompressor, Headers, SETTINGS_INITIAL_WINDOW_SIZE,
    STATUS_REFUSED_STREAM, encode, read_frame,
};

pub(super) enum Out {
    Frame(Frame),
    Shutdown,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) control: mpsc::UnboundedSender<Out>,
    pub(super) data: mpsc::Sender<Out>,
    pub(super) window_changed: Notify,
    pub(super) config: SpdyConfig,
}

pub(super) struct State {
    pub(super) next_id: u32,
    pub(super) next_ping: u32,
    pub(super) streams: HashMap<u32, Entry>,
    /// Set once the server sent WINDOW_UPDATE or an initial window setting.
    pub(super) flow_enforced: bool,
    pub(super) initial_window: i64,
    pub(super) session_window: i64,
    pub(super) goaway: bool,
    /// Why the connection ended (reader side).
    pub(super) closed: Option<String>,
    /// Why writing failed.
    pub(super) write_failed: Option<String>,
    /// Consumed bytes not credited yet (stream id, 0 for the session).
    pub(super) owed: HashMap<u32, u64>,
}

pub(super) struct Entry {
    pub(super) inbound: Option<mpsc::Sender<Chunk>>,
    pub(super) reply: Option<oneshot::Sender<Result<Headers, String>>>,
    pub(super) send_window: i64,
    /// FIN or RST sent by the client.
    pub(super) local_done: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Fails once the connection ended or writing failed.
    pub(super) fn ensure_open(&self) -> Result<()> {
        let st = lock(&self.state);
        match st.closed.as_ref().or(st.write_failed.as_ref()) {
            Some(reason) => bail!("connection closed: {reason}"),
            None => Ok(()),
        }
    }

    /// Takes up to `want` bytes of send window (always tracked, only waited
    /// for once the server announced flow control).
    pub(super) async fn reserve(&self, id: u32, want: usize) -> Result<usize> {
        loop {
            let notified = self.window_changed.notified();
            {
                let mut st = lock(&self.state);
                if let Some(reason) = st.closed.as_ref().or(st.write_failed.as_ref()) {
                    bail!("connection closed: {reason}");
                }
                let enforced = st.flow_enforced;
                let session = st.session_window;
                let entry = st
                    .streams
                    .get_mut(&id)
                    .with_context(|| format!("unknown stream {id}"))?;
                let avail = if enforced {
                    entry.send_window.min(session)
                } else {
                    want as i64
                };
                if avail > 0 {
                    let n = avail.min(want as i64);
                    entry.send_window -= n;
                    st.session_window -= n;
                    return Ok(n as usize);
                }
            }
            notified.await;
        }
    }

    /// Credits `n` consumed (or discarded) bytes of `stream_id`: sends
    /// WINDOW_UPDATE for the stream and the session, or records them as owed
    /// while the client is not crediting yet (see [`WindowUpdates`]).
    pub(super) fn credit(&self, stream_id: u32, n: usize) {
        let mut st = lock(&self.state);
        if self.config.window_updates == WindowUpdates::Always || st.flow_enforced {
            drop(st);
            for id in [stream_id, 0] {
                self.send_window_update(id, n as u64);
            }
        } else {
            *st.owed.entry(stream_id).or_default() += n as u64;
            *st.owed.entry(0).or_default() += n as u64;
        }
    }

    /// Sends what was consumed before the server turned flow control on.
    fn pay_owed(&self) {
        let owed: Vec<(u32, u64)> = lock(&self.state).owed.drain().collect();
        for (id, n) in owed {
            self.send_window_update(id, n);
        }
    }

    fn send_window_update(&self, stream_id: u32, mut n: u64) {
        while n > 0 {
            let delta = n.min(0x7fff_ffff);
            n -= delta;
            let _ = self.control.send(Out::Frame(Frame::WindowUpdate {
                stream_id,
                delta: delta as u32,
            }));
        }
    }

    /// Records a write failure: sending stops, reading goes on (frames the
    /// server sent before it closed are still delivered).
    fn write_failed(&self, reason: String) {
        lock(&self.state).write_failed.get_or_insert(reason);
        self.window_changed.notify_waiters();
    }

    /// Marks the connection ended and fails every stream still open.
    pub(super) fn fail(&self, reason: &str) {
        let (replies, inbounds) = {
            let mut st = lock(&self.state);
            if st.closed.is_none() {
                st.closed = Some(reason.to_string());
            }
            let mut replies = Vec::new();
            let mut inbounds = Vec::new();
            for (id, e) in st.streams.iter_mut() {
                replies.extend(e.reply.take());
                if let Some(tx) = e.inbound.take() {
                    inbounds.push((*id, tx));
                }
            }
            (replies, inbounds)
        };
        for reply in replies {
            let _ = reply.send(Err(reason.to_string()));
        }
        for (id, tx) in inbounds {
            deliver(
                tx,
                Chunk::Ended(format!("stream {id} did not finish: {reason}")),
            );
        }
        self.window_changed.notify_waiters();
    }
}

/// Queues the end of a stream even if its queue is full (a task waits for
/// room), so the consumer can tell how the stream ended.
fn deliver(tx: mpsc::Sender<Chunk>, chunk: Chunk) {
    match tx.try_send(chunk) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(chunk)) => {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = tx.send(chunk).await;
                });
            }
        }
    }
}

pub(super) async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut control: mpsc::UnboundedReceiver<Out>,
    mut data: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
) {
    let mut compressor = match HeaderCompressor::new() {
        Ok(c) => c,
        Err(e) => {
            shared.write_failed(format!("{e:#}"));
            return;
        }
    };
    loop {
        let out = tokio::select! {
            biased;
            Some(out) = control.recv() => out,
            Some(out) = data.recv() => out,
            else => break,
        };
        let frame = match out {
            Out::Frame(frame) => frame,
            Out::Shutdown => {
                let _ = socket.shutdown().await;
                return;
            }
        };
        let written = match encode(&frame, &mut compressor) {
            Ok(bytes) => socket.write_all(&bytes).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            shared.write_failed(format!("writing to the server: {e:#}"));
            return;
        }
    }
}

pub(super) async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    let mut decompressor = HeaderDecompressor::new();
    let reason = loop {
        let frame = match read_frame(&mut reader, &mut decompressor).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break format!("reading from the server: {e:#}"),
        };
        if let Err(e) = handle_frame(&shared, frame).await {
            break format!("{e:#}");
        }
    };
    shared.fail(&reason);
}

async fn handle_frame(shared: &Shared, frame: Frame) -> Result<()> {
    match frame {
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        } => {
            let (reply, _finished) = {
                let mut st = lock(&shared.state);
                match st.streams.get_mut(&stream_id) {
                    Some(e) => (
                        e.reply.take(),
                        (flags & FLAG_FIN != 0).then(|| e.inbound.take()),
                    ),
                    None => (None, None),
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(Ok(headers));
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let len = data.len();
            let tx = lock(&shared.state)
                .streams
                .get(&stream_id)
                .and_then(|e| e.inbound.clone());
            if len > 0 {
                // The backpressure point: wait for room in the stream's queue.
                let delivered = match tx {
                    Some(tx) => tx.send(Chunk::Data(data)).await.is_ok(),
                    None => false,
                };
                if !delivered {
                    shared.credit(stream_id, len);
                }
            }
            if flags & FLAG_FIN != 0
                && let Some(e) = lock(&shared.state).streams.get_mut(&stream_id)
            {
                e.inbound = None;
            }
        }
        Frame::RstStream { stream_id, status } => {
            let (reply, inbound) = {
                let mut st = lock(&shared.state);
                match st.streams.get_mut(&stream_id) {
                    Some(e) => {
                        e.local_done = true;
                        (e.reply.take(), e.inbound.take())
                    }
                    None => (None, None),
                }
            };
            let message = format!("stream {stream_id} reset by the server (status {status})");
            if let Some(reply) = reply {
                let _ = reply.send(Err(message.clone()));
            }
            // spdystream (client-go) reads a reset stream as end-of-file.
            if let Some(tx) = inbound {
                deliver(tx, Chunk::Ended(message));
            }
        }
        Frame::Settings { entries, .. } => {
            let mut st = lock(&shared.state);
            let was_enforced = st.flow_enforced;
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = i64::from(value) - st.initial_window;
                    st.initial_window = i64::from(value);
                    st.flow_enforced = true;
                    for e in st.streams.values_mut() {
                        e.send_window += delta;
                    }
                }
            }
            let now_enforced = st.flow_enforced && !was_enforced;
            drop(st);
            if now_enforced {
                shared.pay_owed();
            }
            shared.window_changed.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut st = lock(&shared.state);
            let now_enforced = !st.flow_enforced;
            st.flow_enforced = true;
            if stream_id == 0 {
                st.session_window += i64::from(delta);
            } else if let Some(e) = st.streams.get_mut(&stream_id) {
                e.send_window += i64::from(delta);
            }
            drop(st);
            if now_enforced {
                shared.pay_owed();
            }
            shared.window_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // Echo the server's (even) pings; ours come back odd.
            if id % 2 == 0 {
                let _ = shared.control.send(Out::Frame(Frame::Ping { id }));
            }
        }
        Frame::GoAway { .. } => {
            lock(&shared.state).goaway = true;
        }
        Frame::SynStream { stream_id, .. } => {
            // The server has no business opening streams in these protocols.
            let _ = shared.control.send(Out::Frame(Frame::RstStream {
                stream_id,
                status: STATUS_REFUSED_STREAM,
            }));
        }
        Frame::Headers { .. } | Frame::Unknown { .. } => {}
    }
    Ok(())
}

pub(super) async fn ping_loop(shared: Arc<Shared>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.tick().await;
    loop {
        interval.tick().await;
        let id = {
            let mut st = lock(&shared.state);
            if st.closed.is_some() || st.write_failed.is_some() {
                return;
            }
            let id = st.next_ping;
            st.next_ping = st.next_ping.wrapping_add(2) & 0x7fff_ffff;
            id
        };
        if shared.control.send(Out::Frame(Frame::Ping { id })).is_err() {
            return;
        }
    }
}
