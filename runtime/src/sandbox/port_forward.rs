//! PortForward: connections to a port on a pod's loopback, made from inside the
//! pod's network namespace.

use std::sync::Arc;

use super::SandboxState;
use crate::runtime::Runtime;
use crate::{Error, Result};

impl Runtime {
    /// Checks a port-forward before its URL is handed out: the pod exists and
    /// is ready. Returns the pod's full id.
    pub fn check_port_forward(&self, id: &str) -> Result<String> {
        let sandbox = self.sandbox_entry(id)?.snapshot();
        if sandbox.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready; port-forward needs a ready pod",
                sandbox.id
            )));
        }
        Ok(sandbox.id)
    }

    /// Connects to `port` on the pod's loopback (the host's, for a host-network pod).
    pub async fn port_forward_connect(
        self: &Arc<Self>,
        id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        if port == 0 {
            return Err(Error::invalid("port 0 cannot be forwarded"));
        }
        let sandbox = self.sandbox_entry(id)?.snapshot();
        if sandbox.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let netns = sandbox.netns.clone();
        let stream = self
            .blocking(move |_| Ok(crate::sys::netns::connect_loopback(netns.as_deref(), port)))
            .await?
            .and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "connecting to port {port} in pod sandbox {}: {e}",
                    sandbox.id
                ))
            })?;
        Ok(stream)
    }
}
