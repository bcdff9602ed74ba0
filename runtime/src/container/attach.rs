//! Attach: a session on the container's own stdio, through the attach socket
//! its crust-shim serves (`<bundle>/attach.sock`; the protocol is
//! `crust_shim_protocol::attach`). The shim outlives crustd, so a container started before a
//! crustd restart can be attached to like any other.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crust_shim_protocol::attach;
use crust_shim_protocol::control::decode_answer;
use crust_shim_protocol::files::ATTACH_SOCK;

use crate::runtime::Runtime;
use crate::{Error, Result};

/// Largest output frame accepted from the shim.
const MAX_FRAME: usize = 1 << 20;

/// Which of the container's streams a session carries.
pub use crust_shim_protocol::attach::Request as AttachRequest;

/// Which stream a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachStream {
    /// The container's stdout (or its terminal).
    Stdout,
    /// Its stderr.
    Stderr,
}

/// The container's output, as the shim forwards it.
pub struct AttachOutput {
    r: BufReader<OwnedReadHalf>,
}

impl AttachOutput {
    /// The next piece of output; `None` once the container's output has ended.
    pub async fn next(&mut self) -> std::io::Result<Option<(AttachStream, Bytes)>> {
        let mut head = [0u8; attach::HEADER_LEN];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (kind, len) = attach::decode_header(&head);
        if kind == attach::CUT_OFF {
            return Err(std::io::Error::other(
                "crust-shim cut this client off: it fell too far behind the container's output",
            ));
        }
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the shim sent an oversized attach frame",
            ));
        }
        let mut data = vec![0u8; len];
        self.r.read_exact(&mut data).await?;
        let stream = if kind == attach::STDERR {
            AttachStream::Stderr
        } else {
            AttachStream::Stdout
        };
        Ok(Some((stream, Bytes::from(data))))
    }
}

/// Input and terminal control for the container.
pub struct AttachInput {
    w: OwnedWriteHalf,
}

impl AttachInput {
    async fn frame(&mut self, kind: u8, data: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large")
        })?;
        self.w.write_all(&attach::encode_header(kind, len)).await?;
        self.w.write_all(data).await
    }

    /// Writes to the container's stdin.
    pub async fn stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.frame(attach::STDIN_DATA, data).await
    }

    /// Says this client's input has ended (with `stdin_once`, the container's
    /// stdin closes).
    pub async fn close_stdin(&mut self) -> std::io::Result<()> {
        self.frame(attach::STDIN_CLOSE, &[]).await
    }

    /// Resizes the container's terminal.
    pub async fn resize(&mut self, width: u16, height: u16) -> std::io::Result<()> {
        self.frame(attach::RESIZE, &attach::encode_resize(width, height))
            .await
    }
}

impl Runtime {
    /// Checks an attach before a URL is handed out for it; returns the
    /// container's full id and whether its stdin closes after one client
    /// (`stdin_once`).
    pub async fn check_attach(
        self: &Arc<Self>,
        id: &str,
        req: &AttachRequest,
    ) -> Result<(String, bool)> {
        if !req.stdin && !req.stdout && !req.stderr {
            return Err(Error::invalid(
                "attach needs at least one of stdin, stdout and stderr",
            ));
        }
        let c = self.running_container(id, "attach").await?;
        if req.stdin && !c.config.stdin {
            return Err(Error::FailedPrecondition(format!(
                "container {} was created without stdin, so nothing can be written to it; attach without stdin",
                c.id
            )));
        }
        Ok((c.id, c.config.stdin_once))
    }

    /// Attaches to a running container's stdio.
    pub async fn attach(
        self: &Arc<Self>,
        id: &str,
        req: &AttachRequest,
    ) -> Result<(AttachOutput, AttachInput)> {
        let c = self.running_container(id, "attach").await?;
        // Through a descriptor of the bundle: the socket's own path may be
        // longer than a unix socket address holds.
        let dir = std::fs::File::open(&c.bundle)
            .map_err(|e| Error::internal(format!("opening the bundle of {}: {e}", c.id)))?;
        let short = format!("/proc/self/fd/{}/{ATTACH_SOCK}", dir.as_raw_fd());
        let stream = UnixStream::connect(&short).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "cannot reach the shim of container {} to attach ({e}); a container started by an older crust must be restarted to be attached to",
                c.id
            ))
        })?;
        drop(dir);
        let (r, mut w) = stream.into_split();
        w.write_all(req.encode().as_bytes())
            .await
            .map_err(|e| Error::internal(format!("asking the shim of {} to attach: {e}", c.id)))?;
        let mut r = BufReader::new(r);
        let mut answer = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            (&mut r).take(4096).read_line(&mut answer),
        )
        .await
        .map_err(|_| Error::internal(format!("the shim of {} did not answer the attach", c.id)))?
        .map_err(|e| Error::internal(format!("reading the shim's attach answer: {e}")))?;
        match decode_answer(&answer) {
            Ok(()) => Ok((AttachOutput { r }, AttachInput { w })),
            Err(msg) => Err(Error::FailedPrecondition(format!(
                "cannot attach to container {}: {msg}",
                c.id
            ))),
        }
    }
}
