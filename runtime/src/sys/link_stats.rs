//! Network interface counters of pods, read over rtnetlink from inside each
//! pod's pinned network namespace.
//!
//! A short-lived thread of its own enters the namespaces one after another
//! (setns affects only the calling thread) and ends: a netlink socket belongs
//! to the namespace it was opened in, and no pooled thread is ever left in a
//! pod's namespace.

use std::io;
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns};

/// One interface's cumulative counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The interface name inside the pod (`eth0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on sending.
    pub tx_dropped: u64,
}

/// The counters of every interface but `lo` in each network namespace
/// pinned at `netns`, in order; one namespace's failure does not hide the
/// others' figures.
pub fn read_each(netns: &[PathBuf]) -> Vec<io::Result<Vec<InterfaceCounters>>> {
    if netns.is_empty() {
        return Vec::new();
    }
    let paths = netns.to_vec();
    let count = paths.len();
    std::thread::Builder::new()
        .name("crust-netstats".into())
        .spawn(move || paths.iter().map(|p| read_in(p)).collect())
        .and_then(|t| {
            t.join()
                .map_err(|_| io::Error::other("the network statistics thread panicked"))
        })
        .unwrap_or_else(|e| {
            (0..count)
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect()
        })
}

/// Enters the namespace at `netns` (on this dedicated thread) and dumps its links.
fn read_in(netns: &Path) -> io::Result<Vec<InterfaceCounters>> {
    let ns = std::fs::File::open(netns)?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    dump_links()
}

/// RTM_GETLINK dump of the calling thread's network namespace.
fn dump_links() -> io::Result<Vec<InterfaceCounters>> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut reply = Vec::with_capacity(32 * 1024);
    loop {
        reply.clear();
        let n = socket.recv(&mut reply, 0)?;
        if n == 0 {
            return Err(io::Error::other("netlink closed the link dump early"));
        }
        let mut offset = 0;
        while offset < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .map_err(|e| io::Error::other(format!("decoding a netlink reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io::Error::from_raw_os_error(code));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    if let Some(c) = counters(&link) {
                        out.push(c);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The counters of one link; `None` for `lo` and links without statistics.
fn counters(link: &LinkMessage) -> Option<InterfaceCounters> {
    let mut name = None;
    let mut stats = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Stats64(s) => stats = Some(*s),
            _ => {}
        }
    }
    let name = name.filter(|n| n != "lo")?;
    let s = stats?;
    Some(InterfaceCounters {
        name,
        rx_bytes: s.rx_bytes,
        rx_packets: s.rx_packets,
        rx_errors: s.rx_errors,
        rx_dropped: s.rx_dropped,
        tx_bytes: s.tx_bytes,
        tx_packets: s.tx_packets,
        tx_errors: s.tx_errors,
        tx_dropped: s.tx_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_this_namespace_without_lo() {
        // The test's own namespace: every link but lo, each with a name.
        let links = dump_links().expect("RTM_GETLINK dump");
        assert!(links.iter().all(|l| l.name != "lo" && !l.name.is_empty()));
        let missing = read_each(&[PathBuf::from("/nonexistent/netns")]);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].is_err());
    }
}
