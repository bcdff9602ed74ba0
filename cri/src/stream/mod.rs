//! The streaming server: Exec, Attach and PortForward answer with a URL on it;
//! the client (kubelet proxying kubectl, or crictl) upgrades that URL to SPDY/3.1
//! or WebSocket and the session runs here, inside crustd.

pub mod channel;
pub(crate) mod http;
mod over_spdy;
mod over_websocket;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use crust_runtime::Runtime;
use tokio::sync::Semaphore;

use self::tokens::{Pending, Tokens};
use crate::config::StreamSection;

/// What every session of the server shares.
pub struct Shared {
    /// The runtime that runs execs and makes port-forward connections.
    pub runtime: Arc<Runtime>,
    /// Pending requests by token.
    pub tokens: Tokens,
    /// The server-wide stream limit.
    pub streams: Arc<Semaphore>,
    /// How long a session may carry nothing.
    pub idle: Duration,
}

/// The running server, as the CRI handlers see it.
pub struct StreamServer {
    shared: Arc<Shared>,
    base: String,
}

impl StreamServer {
    /// Binds the configured address and serves on it from now on.
    pub async fn start(cfg: &StreamSection, runtime: Arc<Runtime>) -> Result<StreamServer> {
        let ip: std::net::IpAddr = cfg
            .address
            .parse()
            .with_context(|| format!("stream.address {:?}", cfg.address))?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, cfg.port))
            .await
            .with_context(|| {
                format!(
                    "binding the streaming server to {}:{}",
                    cfg.address, cfg.port
                )
            })?;
        let addr = listener
            .local_addr()
            .context("the streaming server's address")?;
        let tls = http::tls_acceptor(cfg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            runtime,
            tokens: Tokens::new(Duration::from_secs(cfg.token_timeout)),
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            idle: Duration::from_secs(cfg.idle_timeout),
        });
        tracing::info!(address = %addr, scheme, "serving exec, attach and port-forward streams");
        tokio::spawn(http::serve(listener, tls, shared.clone()));
        Ok(StreamServer {
            shared,
            base: format!("{scheme}://{addr}"),
        })
    }

    /// The URL a client uses for `req`, valid once and for a short time; `None`
    /// when too many requests are waiting for their clients.
    pub fn url(&self, req: Pending) -> Option<String> {
        let kind = match req {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        };
        let token = self.shared.tokens.insert(req)?;
        Some(format!("{}/{kind}/{token}", self.base))
    }
}
