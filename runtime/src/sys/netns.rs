//! Connections made from inside a pod's network namespace, for port-forward.
//!
//! A short-lived thread of its own enters the namespace (setns affects only the
//! calling thread), connects, and ends: the socket stays in the namespace it
//! was made in, and no pooled thread is ever left in a pod's namespace.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// How long a connection to a pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback of the network namespace pinned at
/// `netns` (the host's own for `None`): IPv4 first, then IPv6, as a port-forward
/// to `localhost:PORT` does.
pub fn connect_loopback(netns: Option<&Path>, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = netns else {
        return connect(port);
    };
    let netns: PathBuf = netns.to_path_buf();
    std::thread::Builder::new()
        .name("crust-netns".into())
        .spawn(move || {
            let ns = std::fs::File::open(&netns)?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            connect(port)
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the port-forward thread panicked")))
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(first) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| first)
        }
    }
}
