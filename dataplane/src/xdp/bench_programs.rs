//! Two tiny XDP programs for benchmarks and tests, written with [`super::asm`]: a minimal XDP_TX
//! forwarder, the ceiling the XDP relay program is measured against, and a program that passes
//! every frame (on a veth, the peer's end takes XDP_TX frames only with a program attached).
//! Neither is used by the node.

use super::asm::{Asm, AsmError, Cmp, Size, R0, R1, R2, R3, R4, R5, R6, R7, R8};
use super::program::{XDP_PASS, XDP_TX};
use crate::sys::bpf::Insn;

use super::program::{
    loaded16, ETHERTYPE_AT, ETH_HLEN, IPPROTO_UDP, IPV4_HLEN, IPV4_VERSION_IHL5, MD_DATA, MD_DATA_END, UDP_HLEN,
};

// Offsets in an Ethernet/IPv4 (IHL 5)/UDP frame.
const IP: i16 = ETH_HLEN as i16;
const IP_PROTOCOL: i16 = IP + 9;
const IP_SRC: i16 = IP + 12;
const IP_DST: i16 = IP + 16;
const UDP_SRC_PORT: i16 = IP + IPV4_HLEN as i16;
const UDP_DST_PORT: i16 = UDP_SRC_PORT + 2;
const UDP_CHECKSUM: i16 = UDP_SRC_PORT + 6;

/// The minimal XDP_TX forwarder. For an IPv4 (IHL 5) UDP frame to `relay_port` it swaps the MAC
/// addresses and the IP addresses, sets the UDP ports to (`relay_port` → `receiver_port`),
/// clears the UDP checksum (none, as IPv4 allows) and sends the frame back out of the interface
/// (XDP_TX); every other frame is passed. No map, no lookup, no counters. The IPv4 header
/// checksum stays right: swapping the addresses does not change the sum.
pub fn xdp_tx_forwarder(relay_port: u16, receiver_port: u16) -> Result<Vec<Insn>, AsmError> {
    let mut asm = Asm::default();
    let pass = asm.label();
    asm.load(Size::W, R2, R1, MD_DATA);
    asm.load(Size::W, R3, R1, MD_DATA_END);
    asm.mov(R4, R2);
    asm.add_imm(R4, ETH_HLEN + IPV4_HLEN + UDP_HLEN);
    asm.jump_reg(Cmp::Gt, R4, R3, pass);
    asm.load(Size::H, R5, R2, ETHERTYPE_AT);
    asm.jump_imm(Cmp::Ne, R5, loaded16(0x0800), pass);
    asm.load(Size::B, R5, R2, IP);
    asm.jump_imm(Cmp::Ne, R5, IPV4_VERSION_IHL5, pass);
    asm.load(Size::B, R5, R2, IP_PROTOCOL);
    asm.jump_imm(Cmp::Ne, R5, IPPROTO_UDP, pass);
    asm.load(Size::H, R5, R2, UDP_DST_PORT);
    asm.jump_imm(Cmp::Ne, R5, loaded16(relay_port), pass);
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
    asm.store_imm(Size::H, R2, UDP_SRC_PORT, loaded16(relay_port));
    asm.store_imm(Size::H, R2, UDP_DST_PORT, loaded16(receiver_port));
    asm.store_imm(Size::H, R2, UDP_CHECKSUM, 0);
    asm.mov_imm(R0, XDP_TX as i32);
    asm.exit();
    asm.place(pass);
    asm.mov_imm(R0, XDP_PASS as i32);
    asm.exit();
    asm.finish()
}

/// A program that passes every frame.
pub fn pass_all() -> Result<Vec<Insn>, AsmError> {
    let mut asm = Asm::default();
    asm.mov_imm(R0, XDP_PASS as i32);
    asm.exit();
    asm.finish()
}
