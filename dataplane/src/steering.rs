//! The reuseport BPF program that steers each received datagram to the socket of the core that
//! owns its connection, read from the destination connection ID (see [`crate::cid`]).
//!
//! The kernel runs a classic BPF program attached with `SO_ATTACH_REUSEPORT_CBPF` for every
//! datagram that reaches the group (net/core/sock_reuseport.c, `run_bpf_filter`): the program sees
//! the UDP payload (the UDP header is pulled), and its return value is an index into the group's
//! sockets, which are kept in the order they joined (bind order, so core order here). An index at
//! or beyond the number of sockets makes the kernel fall back to its 4-tuple hash, as without a
//! program. A load beyond the payload ends the program with 0, which would pick socket 0: every
//! offset is checked against the length first.
//!
//! Decisions, from the first bytes (RFC 9000 §17):
//!
//! - short header (`0b01xx_xxxx`): core byte at offset 1, the DCID's first byte;
//! - long-header Handshake (type 2, version not 0) with an 8-byte DCID: core byte at offset 6;
//! - anything else falls back to the hash: Initial and 0-RTT carry a DCID the client chose (the
//!   new connection is placed by the kernel's keyed hash, not by a byte the client picks), Retry
//!   and Version Negotiation are not addressed to a connection of ours, and first bytes with both
//!   high bits clear are the node's own datagrams (0x21 control, 0x22 relay frames).
//!
//! The core byte is reduced modulo the number of sockets, so a client's random ID (which the
//! owning core's check would reject anyway) still lands on a real socket. The hand-off path stays
//! in place: whatever the program gets wrong (a hashed Initial on a client node, a GRO batch that
//! mixes IDs, a socket that left the group and shifted the indices) still reaches its owner.

use libc::sock_filter;

use crate::cid::CID_LEN;

/// The program's answer when the kernel should use its 4-tuple hash: any index at or beyond the
/// number of sockets does.
pub const FALLBACK: u32 = u32::MAX;

/// Shortest short-header datagram whose DCID can be one of ours: first byte and 8-byte DCID.
const SHORT_MIN: u32 = 1 + CID_LEN as u32;
/// Shortest long-header datagram whose DCID can be one of ours: first byte, version, DCID
/// length, 8-byte DCID.
const LONG_MIN: u32 = 6 + CID_LEN as u32;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

/// A conditional jump at `at` to `on_true` or `on_false` (absolute indices, both after `at`).
fn jump(at: usize, code: u32, k: u32, on_true: usize, on_false: usize) -> sock_filter {
    let rel = |to: usize| u8::try_from(to.saturating_sub(at + 1)).unwrap_or(u8::MAX);
    sock_filter { code: (libc::BPF_JMP | code | libc::BPF_K) as u16, jt: rel(on_true), jf: rel(on_false), k }
}

/// The CID-steering program for a group of `sockets` sockets (one per core, in core order).
/// `sockets` of 0 is treated as 1.
pub fn cid_steering_program(sockets: u32) -> Vec<sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_LEN, BPF_MISC,
        BPF_MOD, BPF_RET, BPF_TAX, BPF_TXA, BPF_W,
    };
    // Instruction indices of the jump targets.
    const SHORT: usize = 18;
    const REDUCE: usize = 19;
    const FALL: usize = 21;
    vec![
        // 0: X = A = payload length; too short for any ID of ours: hash.
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        jump(1, BPF_JGE, SHORT_MIN, 2, FALL),
        stmt(BPF_MISC | BPF_TAX, 0),
        // 3: the header form, from the two high bits of the first byte.
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xc0),
        jump(5, BPF_JEQ, 0x40, SHORT, 6),
        // 6: a long header with the fixed bit, long enough, of type Handshake, version not 0.
        jump(6, BPF_JEQ, 0xc0, 7, FALL),
        stmt(BPF_MISC | BPF_TXA, 0),
        jump(8, BPF_JGE, LONG_MIN, 9, FALL),
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0x30),
        jump(11, BPF_JEQ, 0x20, 12, FALL),
        stmt(BPF_LD | BPF_W | BPF_ABS, 1),
        jump(13, BPF_JEQ, 0, FALL, 14),
        // 14: the DCID can be ours only when it is 8 bytes long; its first byte names the core.
        stmt(BPF_LD | BPF_B | BPF_ABS, 5),
        jump(15, BPF_JEQ, CID_LEN as u32, 16, FALL),
        stmt(BPF_LD | BPF_B | BPF_ABS, 6),
        stmt(BPF_JMP | BPF_JA, (REDUCE - 18) as u32),
        // 18: short header: the DCID starts at offset 1.
        stmt(BPF_LD | BPF_B | BPF_ABS, 1),
        // 19: a byte beyond the group (a client's random ID) still picks a real socket.
        stmt(BPF_ALU | BPF_MOD | BPF_K, sockets.max(1)),
        stmt(BPF_RET | BPF_A, 0),
        // 21:
        stmt(BPF_RET | BPF_K, FALLBACK),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{CidKey, CoreCidGenerator};
    use quinn_proto::ConnectionIdGenerator;

    /// Runs a classic BPF program over `packet` the way the kernel does for a reuseport group:
    /// a load beyond the packet ends the program with 0. Knows the instructions the steering
    /// program uses, and fails the test on any other.
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |offset: u32, size: usize| -> Option<u32> {
            let start = offset as usize;
            let bytes = packet.get(start..start + size)?;
            Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        };
        loop {
            let insn = program[pc];
            let code = u32::from(insn.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_LEN => a = packet.len() as u32,
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match load(insn.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => match load(insn.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_MISC | libc::BPF_TAX => x = a,
                c if c == libc::BPF_MISC | libc::BPF_TXA => a = x,
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= insn.k,
                c if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= insn.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == insn.k { insn.jt } else { insn.jf })
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += usize::from(if a >= insn.k { insn.jt } else { insn.jf })
                }
                c if c == libc::BPF_RET | libc::BPF_A => return a,
                c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
                other => panic!("instruction {other:#x} at {} not interpreted", pc - 1),
            }
        }
    }

    fn our_cid(core: u8) -> Vec<u8> {
        CoreCidGenerator::new(core, CidKey::random()).generate_cid().to_vec()
    }

    fn short(cid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x43];
        packet.extend_from_slice(cid);
        packet.extend_from_slice(&[0xaa; 40]);
        packet
    }

    /// A long-header packet of `kind` (0 Initial, 1 0-RTT, 2 Handshake, 3 Retry), QUIC v1.
    fn long(kind: u8, version: u32, dcid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc0 | (kind << 4) | 0x01];
        packet.extend_from_slice(&version.to_be_bytes());
        packet.push(dcid.len() as u8);
        packet.extend_from_slice(dcid);
        packet.push(8);
        packet.extend_from_slice(&our_cid(0));
        packet.extend_from_slice(&[0x55; 60]);
        packet
    }

    #[test]
    fn short_and_handshake_packets_go_to_the_core_in_their_id() {
        let program = cid_steering_program(2);
        for core in [0u8, 1] {
            assert_eq!(run(&program, &short(&our_cid(core))), u32::from(core), "short header, core {core}");
            assert_eq!(run(&program, &long(2, 1, &our_cid(core))), u32::from(core), "Handshake, core {core}");
        }
        // The shortest packets that still carry a whole ID.
        assert_eq!(run(&program, &short(&our_cid(1))[..9]), 1);
        assert_eq!(run(&program, &long(2, 1, &our_cid(1))[..14]), 1);
    }

    #[test]
    fn core_bytes_beyond_the_group_are_reduced_into_it() {
        let program = cid_steering_program(3);
        for byte in [3u8, 4, 200, 255] {
            let mut cid = our_cid(0);
            cid[0] = byte;
            assert_eq!(run(&program, &short(&cid)), u32::from(byte) % 3);
            assert_eq!(run(&program, &long(2, 1, &cid)), u32::from(byte) % 3);
        }
    }

    #[test]
    fn everything_else_falls_back_to_the_hash() {
        let program = cid_steering_program(2);
        let cid = our_cid(1);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("Initial", long(0, 1, &cid)),
            ("0-RTT", long(1, 1, &cid)),
            ("Retry", long(3, 1, &cid)),
            ("version negotiation", long(2, 0, &cid)),
            ("Handshake with a 20-byte DCID", long(2, 1, &[1u8; 20])),
            ("Handshake with a 4-byte DCID", long(2, 1, &[1u8; 4])),
            ("Handshake cut inside its DCID", long(2, 1, &cid)[..13].to_vec()),
            ("control datagram", [&[0x21u8][..], &[1; 40]].concat()),
            ("relay frame", [&[0x22u8][..], &[1; 40]].concat()),
            ("long header without the fixed bit", { [&[0xa0u8][..], &long(2, 1, &cid)[1..]].concat() }),
            ("3 bytes", vec![0x41, 1, 1]),
            ("short header cut inside its DCID", short(&cid)[..8].to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, packet) in cases {
            assert_eq!(run(&program, &packet), FALLBACK, "{what}");
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_a_return() {
        for sockets in [1, 2, 7, 256] {
            let program = cid_steering_program(sockets);
            let last = program.last().map(|i| u32::from(i.code) & 0x07);
            assert_eq!(last, Some(libc::BPF_RET));
            for (at, insn) in program.iter().enumerate() {
                let code = u32::from(insn.code);
                if code & 0x07 == libc::BPF_JMP {
                    let targets = if code == libc::BPF_JMP | libc::BPF_JA {
                        vec![insn.k as usize]
                    } else {
                        vec![usize::from(insn.jt), usize::from(insn.jf)]
                    };
                    for offset in targets {
                        assert!(at + 1 + offset < program.len(), "jump at {at} leaves the program");
                    }
                }
            }
        }
    }
}
