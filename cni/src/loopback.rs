//! Brings up the loopback interface of the calling thread's network namespace over
//! rtnetlink, so a pod without CNI networking still has a working `lo`.

use anyhow::{Context, Result, bail};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The interface index of `lo` in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Sets `lo` up in the network namespace of the calling thread.
pub fn up() -> Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_INDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    socket.send(&buf, 0).context("sending RTM_SETLINK")?;

    let mut reply = Vec::with_capacity(8192);
    socket
        .recv(&mut reply, 0)
        .context("reading the netlink ack")?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .context("decoding the netlink ack")?;
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => bail!(
                "RTM_SETLINK lo up: {}",
                std::io::Error::from_raw_os_error(-code.get())
            ),
        },
        other => bail!("unexpected netlink reply to RTM_SETLINK: {other:?}"),
    }
}
