//! Bounded per-stream receive queues between a connection's reader task and
//! the test. The reader awaits room before reading the next frame from the
//! socket, so a test that stops reading stops the client reading the socket,
//! and the server sees real TCP backpressure.

use anyhow::{Result, anyhow};
use tokio::sync::mpsc;

/// What the reader task hands a stream. The sender being dropped is a clean
/// end of stream (FIN, or a WebSocket close with code 1000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes.
    Data(Vec<u8>),
    /// An end that client-go reads as end-of-file although it was not a clean
    /// one (SPDY: RST_STREAM from the server, the connection going away);
    /// the text says what happened and stays readable via [`Inbound::end_note`].
    Ended(String),
    /// An end that client-go reports as an error (WebSocket: a close other
    /// than 1000, a dropped connection, a malformed message).
    Failed(String),
}

/// How many chunks (DATA frames or WebSocket messages) a stream buffers
/// before the reader task stops reading the socket.
pub const QUEUE_CHUNKS: usize = 8;

/// Called with the byte count of every chunk the consumer takes (SPDY sends
/// WINDOW_UPDATE from it).
pub type ConsumeHook = Box<dyn FnMut(usize) + Send + Sync>;

/// Creates a bounded queue for one stream.
pub fn queue(hook: Option<ConsumeHook>) -> (mpsc::Sender<Chunk>, Inbound) {
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    (
        tx,
        Inbound {
            rx,
            hook,
            skip: 0,
            prefix: Vec::new(),
            ended: false,
            end_note: None,
        },
    )
}

/// The receiving end of one stream.
pub struct Inbound {
    rx: mpsc::Receiver<Chunk>,
    hook: Option<ConsumeHook>,
    /// Leading bytes still to set aside (WebSocket port-forward port prefix).
    skip: usize,
    prefix: Vec<u8>,
    ended: bool,
    end_note: Option<String>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Inbound {
    /// Sets the first `n` bytes the stream delivers aside (see [`Self::prefix`]).
    pub fn skip_prefix(&mut self, n: usize) {
        self.skip = n;
    }

    /// The bytes set aside by [`Self::skip_prefix`] so far.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Whether the stream has ended (cleanly or not).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// How the stream ended when that was not a clean end (see
    /// [`Chunk::Ended`] and [`Chunk::Failed`]).
    pub fn end_note(&self) -> Option<&str> {
        self.end_note.as_deref()
    }

    /// The next non-empty chunk, `Ok(None)` at the end of the stream (clean
    /// or [`Chunk::Ended`]), or the error of a [`Chunk::Failed`] end.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            match self.rx.recv().await {
                None => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(Chunk::Ended(note)) => {
                    self.ended = true;
                    self.end_note = Some(note);
                    return Ok(None);
                }
                Some(Chunk::Failed(e)) => {
                    self.ended = true;
                    self.end_note = Some(e.clone());
                    return Err(anyhow!(e));
                }
                Some(Chunk::Data(mut data)) => {
                    if let Some(hook) = self.hook.as_mut() {
                        hook(data.len());
                    }
                    if self.skip > 0 {
                        let n = self.skip.min(data.len());
                        self.prefix.extend(data.drain(..n));
                        self.skip -= n;
                    }
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads until the end of the stream.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = self.recv().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn delivers_chunks_then_end_and_reports_consumption() {
        let consumed = Arc::new(AtomicUsize::new(0));
        let seen = consumed.clone();
        let (tx, mut rx) = queue(Some(Box::new(move |n| {
            seen.fetch_add(n, Ordering::SeqCst);
        })));
        tx.send(Chunk::Data(b"ab".to_vec())).await.unwrap();
        tx.send(Chunk::Data(vec![])).await.unwrap();
        tx.send(Chunk::Data(b"c".to_vec())).await.unwrap();
        drop(tx);
        assert_eq!(rx.read_to_end().await.unwrap(), b"abc");
        assert_eq!(consumed.load(Ordering::SeqCst), 3);
        assert!(rx.is_ended());
        assert_eq!(rx.end_note(), None);
    }

    #[tokio::test]
    async fn reports_errors_and_bounds_the_queue() {
        let (tx, mut rx) = queue(None);
        for _ in 0..QUEUE_CHUNKS {
            tx.try_send(Chunk::Data(vec![1])).unwrap();
        }
        assert!(
            tx.try_send(Chunk::Data(vec![1])).is_err(),
            "queue must be bounded"
        );
        for _ in 0..QUEUE_CHUNKS {
            rx.recv().await.unwrap();
        }
        tx.send(Chunk::Failed("dropped".into())).await.unwrap();
        assert!(rx.recv().await.is_err());
        assert_eq!(rx.recv().await.unwrap(), None);
        assert_eq!(rx.end_note(), Some("dropped"));

        let (tx, mut rx) = queue(None);
        tx.send(Chunk::Ended("reset".into())).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), None);
        assert_eq!(rx.end_note(), Some("reset"));
    }

    #[tokio::test]
    async fn skips_a_prefix_across_chunks() {
        let (tx, mut rx) = queue(None);
        rx.skip_prefix(2);
        tx.send(Chunk::Data(vec![0x50])).await.unwrap();
        tx.send(Chunk::Data(vec![0x1f, b'x'])).await.unwrap();
        drop(tx);
        assert_eq!(rx.read_to_end().await.unwrap(), b"x");
        assert_eq!(rx.prefix(), [0x50, 0x1f]);
    }
}
