//! The ceiling of the veth relay runs: a minimal XDP_TX forwarder. For an IPv4 (IHL 5) UDP frame
//! to the relay's port it swaps the MAC addresses and the IP addresses, sets the UDP ports to
//! (relay's port → receiver's port), clears the UDP checksum (none, as IPv4 allows) and sends the
//! frame back out of the interface (XDP_TX); every other frame is passed. No map, no lookup, no
//! counters: what forwarding a frame inside XDP costs at the least on this machine. The IPv4
//! header checksum stays valid, since swapping the addresses does not change the sum.

use ant_quic_dataplane::sys::bpf::{Insn, Program, XdpLink};
use ant_quic_dataplane::sys::xdp::interface_index;
use ant_quic_dataplane::xdp::asm::{Asm, Cmp, Size, R0, R1, R2, R3, R4, R5, R6, R7, R8};
use ant_quic_dataplane::xdp::program::{XDP_PASS, XDP_TX};
use anyhow::{anyhow, Result};

// Offsets in an Ethernet/IPv4 (IHL 5)/UDP frame, and in `struct xdp_md`.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const ETHERTYPE: i16 = 12;
const IP: i16 = 14;
const IP_PROTOCOL: i16 = IP + 9;
const IP_SRC: i16 = IP + 12;
const IP_DST: i16 = IP + 16;
const UDP_SRC_PORT: i16 = IP + 20;
const UDP_DST_PORT: i16 = UDP_SRC_PORT + 2;
const UDP_CHECKSUM: i16 = UDP_SRC_PORT + 6;
const HEADERS: i32 = 14 + 20 + 8;

/// A 16-bit field in network order as a load of it yields it (and a store of it writes it).
fn wire16(value: u16) -> i32 {
    i32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// The program: frames to UDP port `relay_port` go back out to `receiver_port`.
pub fn program(relay_port: u16, receiver_port: u16) -> Result<Vec<Insn>> {
    let mut asm = Asm::default();
    let pass = asm.label();
    asm.load(Size::W, R2, R1, MD_DATA);
    asm.load(Size::W, R3, R1, MD_DATA_END);
    asm.mov(R4, R2);
    asm.add_imm(R4, HEADERS);
    asm.jump_reg(Cmp::Gt, R4, R3, pass);
    asm.load(Size::H, R5, R2, ETHERTYPE);
    asm.jump_imm(Cmp::Ne, R5, wire16(0x0800), pass);
    asm.load(Size::B, R5, R2, IP);
    asm.jump_imm(Cmp::Ne, R5, 0x45, pass);
    asm.load(Size::B, R5, R2, IP_PROTOCOL);
    asm.jump_imm(Cmp::Ne, R5, 17, pass);
    asm.load(Size::H, R5, R2, UDP_DST_PORT);
    asm.jump_imm(Cmp::Ne, R5, wire16(relay_port), pass);
    // Swap the MAC addresses (6 bytes each: a word and a half-word).
    asm.load(Size::W, R4, R2, 0);
    asm.load(Size::H, R5, R2, 4);
    asm.load(Size::W, R6, R2, 6);
    asm.load(Size::H, R7, R2, 10);
    asm.store(Size::W, R2, 0, R6);
    asm.store(Size::H, R2, 4, R7);
    asm.store(Size::W, R2, 6, R4);
    asm.store(Size::H, R2, 10, R5);
    // Swap the IP addresses.
    asm.load(Size::W, R4, R2, IP_SRC);
    asm.load(Size::W, R8, R2, IP_DST);
    asm.store(Size::W, R2, IP_SRC, R8);
    asm.store(Size::W, R2, IP_DST, R4);
    asm.store_imm(Size::H, R2, UDP_SRC_PORT, wire16(relay_port));
    asm.store_imm(Size::H, R2, UDP_DST_PORT, wire16(receiver_port));
    asm.store_imm(Size::H, R2, UDP_CHECKSUM, 0);
    asm.mov_imm(R0, XDP_TX as i32);
    asm.exit();
    asm.place(pass);
    asm.mov_imm(R0, XDP_PASS as i32);
    asm.exit();
    asm.finish().map_err(|e| anyhow!("the XDP_TX forwarder does not assemble: {e}"))
}

/// The forwarder loaded and attached to `interface` (in the calling thread's namespace);
/// dropping it detaches it.
pub struct XdpTxForwarder {
    // Detached first, then the program released.
    _link: XdpLink,
    _program: Program,
}

impl XdpTxForwarder {
    pub fn attach(interface: &str, relay_port: u16, receiver_port: u16) -> Result<Self> {
        let ifindex = interface_index(interface).map_err(|e| anyhow!("interface {interface}: {e}"))?;
        let program = Program::load_xdp(&program(relay_port, receiver_port)?, "aq_xdp_tx")
            .map_err(|e| anyhow!("loading the XDP_TX forwarder: {e}"))?;
        let link = XdpLink::attach(&program, ifindex).map_err(|e| anyhow!("attaching the XDP_TX forwarder: {e}"))?;
        Ok(Self { _link: link, _program: program })
    }
}

/// An XDP program that passes every frame, attached to `interface` (in the calling thread's
/// namespace): on a veth it makes the device run NAPI, so frames sent to it with XDP_TX are taken.
pub struct XdpPass {
    _link: XdpLink,
    _program: Program,
}

impl XdpPass {
    pub fn attach(interface: &str) -> Result<Self> {
        let ifindex = interface_index(interface).map_err(|e| anyhow!("interface {interface}: {e}"))?;
        let mut asm = Asm::default();
        asm.mov_imm(R0, XDP_PASS as i32);
        asm.exit();
        let code = asm.finish().map_err(|e| anyhow!("the pass program does not assemble: {e}"))?;
        let program = Program::load_xdp(&code, "aq_pass").map_err(|e| anyhow!("loading the pass program: {e}"))?;
        let link = XdpLink::attach(&program, ifindex).map_err(|e| anyhow!("attaching the pass program: {e}"))?;
        Ok(Self { _link: link, _program: program })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarder_assembles() {
        assert!(program(4433, 5000).unwrap().len() > 20);
    }
}
