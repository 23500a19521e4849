//! The node-wide half of the AF_XDP backend: the redirect program attached once, to the
//! interface that holds the listen address, and one AF_XDP socket per core on the RX queue of the
//! core's index, each put in the program's socket map before its core starts.

use std::net::SocketAddr;

use super::xdp::XdpParams;
use crate::sys::interfaces::{interface_addresses, interface_mac};
use crate::sys::xdp::{interface_mtu, XskConfig, XskSocket};
use crate::xdp::{Filter, Redirect};

/// The program attached and each core's socket, or one line saying why not.
/// `offload_relays`: whether the cores put established relay channels in the program's map.
pub fn attach(
    listen: SocketAddr,
    interface: Option<&str>,
    cores: usize,
    offload_relays: bool,
) -> Result<(Redirect, Vec<XdpParams>), String> {
    let interface = match interface {
        Some(name) => name.to_owned(),
        None => interface_of(listen)?,
    };
    let redirect = Redirect::attach(&interface, &Filter::for_bound(listen)).map_err(|e| e.to_string())?;
    let queues = redirect.queues();
    if cores > queues as usize {
        return Err(format!(
            "{cores} cores but interface {interface} has {queues} RX queues (one AF_XDP socket per queue): \
             run at most {queues} cores (--cores) or add queues (ethtool -L {interface} combined {cores})"
        ));
    }
    let mac = interface_mac(&interface).map_err(|e| format!("interface {interface}: {e}"))?;
    let mtu = interface_mtu(&interface).map_err(|e| format!("interface {interface}: MTU: {e}"))?;
    let mut per_core = Vec::with_capacity(cores);
    for queue in 0..cores as u32 {
        let socket = XskSocket::open(redirect.ifindex(), queue, XskConfig::default()).map_err(|e| e.to_string())?;
        redirect.add_socket(queue, &socket).map_err(|e| e.to_string())?;
        let relay_channels = redirect.relay_channels();
        per_core.push(XdpParams { socket, local: listen, mac, mtu, relay_channels, offload_relays });
    }
    let copy_mode = per_core.first().map(|p| p.socket.mode());
    tracing::info!(
        interface,
        sockets = cores,
        queues,
        ?copy_mode,
        "AF_XDP backend: the node's datagrams come from the XDP program's sockets"
    );
    if (cores as u32) < queues {
        tracing::warn!(
            interface,
            cores,
            queues,
            "more RX queues than cores: datagrams arriving on the other queues reach the node through its UDP sockets"
        );
    }
    Ok((redirect, per_core))
}

/// The interface holding `listen`'s address.
fn interface_of(listen: SocketAddr) -> Result<String, String> {
    let ip = listen.ip().to_canonical();
    if ip.is_unspecified() {
        return Err(format!(
            "the af-xdp backend attaches to one interface: listen on one of its addresses instead of {listen}, \
             or name it with [node] xdp_interface"
        ));
    }
    let addresses = interface_addresses().map_err(|e| format!("cannot list the interfaces: {e}"))?;
    addresses
        .into_iter()
        .find(|a| a.ip.to_canonical() == ip)
        .map(|a| a.name)
        .ok_or_else(|| format!("no interface holds the listen address {ip}"))
}
