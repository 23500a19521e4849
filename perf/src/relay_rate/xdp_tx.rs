//! The ceiling of the veth relay runs, a minimal XDP_TX forwarder
//! (`xdp::bench_programs::xdp_tx_forwarder`), and the pass-all program for the peer's end,
//! attached to an interface.

use ant_quic_dataplane::sys::bpf::{Insn, Program, XdpLink};
use ant_quic_dataplane::sys::xdp::interface_index;
use ant_quic_dataplane::xdp::bench_programs::{pass_all, xdp_tx_forwarder};
use anyhow::{anyhow, Result};

/// An XDP program attached to an interface; dropping it detaches it.
pub struct Attached {
    // Detached first, then the program released.
    _link: XdpLink,
    _program: Program,
}

impl Attached {
    fn attach(interface: &str, code: &[Insn], name: &str) -> Result<Self> {
        let ifindex = interface_index(interface).map_err(|e| anyhow!("interface {interface}: {e}"))?;
        let program = Program::load_xdp(code, name).map_err(|e| anyhow!("loading {name}: {e}"))?;
        let link = XdpLink::attach(&program, ifindex).map_err(|e| anyhow!("attaching {name}: {e}"))?;
        Ok(Self { _link: link, _program: program })
    }

    /// The XDP_TX forwarder on `interface` (of the calling thread's namespace): frames to
    /// `relay_port` go back out to `receiver_port`.
    pub fn xdp_tx(interface: &str, relay_port: u16, receiver_port: u16) -> Result<Self> {
        let code = xdp_tx_forwarder(relay_port, receiver_port).map_err(|e| anyhow!("the forwarder: {e}"))?;
        Self::attach(interface, &code, "aq_xdp_tx")
    }

    /// The pass-all program on `interface`: on a veth it makes the device take XDP_TX frames.
    pub fn pass_all(interface: &str) -> Result<Self> {
        let code = pass_all().map_err(|e| anyhow!("the pass program: {e}"))?;
        Self::attach(interface, &code, "aq_pass")
    }
}
