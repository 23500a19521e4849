//! The reuseport BPF program that steers each received datagram to the socket of the process
//! generation and core that own its connection, read from the destination connection ID (see
//! [`crate::cid`]).
//!
//! The kernel runs a classic BPF program attached with `SO_ATTACH_REUSEPORT_CBPF` for every
//! datagram that reaches the group (net/core/sock_reuseport.c, `run_bpf_filter`): the program sees
//! the UDP payload (the UDP header is pulled), and its return value is an index into the group's
//! sockets. An index at or beyond the number of sockets makes the kernel fall back to its 4-tuple
//! hash over every socket of the group, as without a program. A load beyond the payload ends the
//! program with 0, which would pick socket 0: every offset is checked against the length first.
//!
//! The group's order is the order its sockets joined; a socket that leaves is replaced by the last
//! one (see `docs/takeover.md`). The program therefore carries an explicit table, for each
//! generation sharing the port, of the group index of each of its cores' sockets
//! ([`SteeringTable`]); the newest process builds it and checks it with probes ([`crate::probe`]).
//!
//! Decisions, from the first bytes (RFC 9000 §17):
//!
//! - short header (`0b01xx_xxxx`) with room for a whole ID: generation at offsets 2..4, core at 1;
//! - long header (any type) whose DCID is 10 bytes long: generation at 7..9, core at 6; once the
//!   server has answered, Initial and Handshake packets carry the server's ID, so a handshake in
//!   progress on the old process stays there during a takeover;
//! - relay frame (0x22): the channel's high 16 bits name the generation that allocated it, and its
//!   low byte picks the core (each core has every channel);
//! - probe (0x23, [`crate::probe::PROBE_LEN`] bytes): the index it asks for;
//! - anything else (a client's first Initial or 0-RTT, control datagrams 0x21, a generation no
//!   longer in the table) goes to the newest generation: by the kernel's keyed 4-tuple hash when it
//!   is alone in the group, else by a byte of the datagram (the client's DCID for an Initial).
//!
//! A core byte beyond a generation's cores (a forged ID, whose owner's check would reject it
//! anyway) is reduced modulo their number, so it still lands on a real socket. The hand-off path
//! stays in place: whatever lands on the wrong core of the right process still reaches its owner.

use libc::sock_filter;

use crate::cid::{Generation, CID_LEN, GENERATION_OFFSET};
use crate::probe::{PROBE_LEN, PROBE_MARKER};
use crate::relay::{RELAY_HEADER_LEN, RELAY_MARKER};

/// The program's answer when the kernel should use its 4-tuple hash: any index at or beyond the
/// number of sockets does.
pub const FALLBACK: u32 = u32::MAX;

/// Most instructions a classic BPF program may have (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// The group indices of one generation's sockets, by core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSockets {
    /// The generation.
    pub generation: Generation,
    /// `indices[core]`: where core `core`'s socket sits in the reuseport group.
    pub indices: Vec<u32>,
}

impl GenerationSockets {
    /// A generation whose `cores` sockets sit in core order from `first` on (as they are right
    /// after binding: a joining socket goes to the end of the group).
    pub fn contiguous(generation: Generation, first: u32, cores: usize) -> Self {
        let indices = (0..cores).map(|core| first + core as u32).collect();
        Self { generation, indices }
    }
}

/// Every generation sharing the port, and where the traffic of none of them goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringTable {
    /// Oldest first; the last is the newest, which takes new connections.
    pub generations: Vec<GenerationSockets>,
    /// New connections (and anything no generation claims) by the kernel's 4-tuple hash. Only
    /// right when the newest generation's sockets are the only ones in the group: the hash picks
    /// among all of them.
    pub hash_new_connections: bool,
}

impl SteeringTable {
    /// One process alone on the port, its sockets in core order.
    pub fn single(generation: Generation, cores: usize) -> Self {
        Self { generations: vec![GenerationSockets::contiguous(generation, 0, cores)], hash_new_connections: true }
    }

    /// The group's size: every socket of every generation.
    pub fn sockets(&self) -> usize {
        self.generations.iter().map(|g| g.indices.len()).sum()
    }
}

/// Why a table cannot become a program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SteeringError {
    /// No generation, or one without sockets.
    #[error("the steering table names no socket for some generation")]
    Empty,
    /// A jump the layout cannot express (a bug in the program's layout).
    #[error("the steering program's layout has a backward jump")]
    Backward,
    /// More instructions than the kernel takes.
    #[error("the steering table needs {0} instructions; the kernel takes at most {MAX_INSTRUCTIONS}")]
    TooLong(usize),
}

/// A jump target: an instruction index known once the program is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

/// A tiny assembler: conditional jumps only ever skip the next one or two instructions (classic
/// BPF encodes them in 8 bits), and reach labels through unconditional `ja` (32-bit offsets).
#[derive(Default)]
struct Assembler {
    code: Vec<sock_filter>,
    /// `(instruction, label)`: `ja` instructions whose offset is set once labels are placed.
    fixups: Vec<(usize, Label)>,
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn place(&mut self, label: Label) {
        if let Some(slot) = self.labels.get_mut(label.0) {
            *slot = Some(self.code.len());
        }
    }

    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push(sock_filter { code: code as u16, jt: 0, jf: 0, k });
    }

    fn goto(&mut self, label: Label) {
        self.fixups.push((self.code.len(), label));
        self.stmt(libc::BPF_JMP | libc::BPF_JA, 0);
    }

    /// `if A <op> k` then go to `then` (or fall through on `None`), else to `otherwise`.
    fn branch(&mut self, op: u32, k: u32, then: Option<Label>, otherwise: Option<Label>) {
        let code = (libc::BPF_JMP | op | libc::BPF_K) as u16;
        match (then, otherwise) {
            (None, None) => {}
            (None, Some(otherwise)) => {
                self.code.push(sock_filter { code, jt: 1, jf: 0, k });
                self.goto(otherwise);
            }
            (Some(then), None) => {
                self.code.push(sock_filter { code, jt: 0, jf: 1, k });
                self.goto(then);
            }
            (Some(then), Some(otherwise)) => {
                self.code.push(sock_filter { code, jt: 0, jf: 1, k });
                self.goto(then);
                self.goto(otherwise);
            }
        }
    }

    /// X = the core byte at `core_at`, A = the generation at `generation_at`, then to `dispatch`.
    fn dispatch_on(&mut self, core_at: u32, generation_at: u32, dispatch: Label) {
        self.stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, core_at);
        self.stmt(libc::BPF_MISC | libc::BPF_TAX, 0);
        self.stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, generation_at);
        self.goto(dispatch);
    }

    /// The program, or `None` if a label was never placed or lies behind its jump (classic BPF
    /// only jumps forward).
    fn finish(mut self) -> Option<Vec<sock_filter>> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels.get(label.0).copied().flatten()?;
            let offset = target.checked_sub(at + 1)?;
            self.code.get_mut(at)?.k = u32::try_from(offset).ok()?;
        }
        Some(self.code)
    }
}

/// The steering program for `table`.
pub fn steering_program(table: &SteeringTable) -> Result<Vec<sock_filter>, SteeringError> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_JEQ, BPF_JGE, BPF_K, BPF_LD, BPF_LEN, BPF_MISC,
        BPF_MOD, BPF_RET, BPF_TAX, BPF_TXA, BPF_W,
    };
    if table.generations.is_empty() || table.generations.iter().any(|g| g.indices.is_empty()) {
        return Err(SteeringError::Empty);
    }
    let cid_len = CID_LEN as u32;
    let generation_at = GENERATION_OFFSET as u32;
    let mut asm = Assembler::default();
    let (short, long, relay, probe, dispatch, default) =
        (asm.label(), asm.label(), asm.label(), asm.label(), asm.label(), asm.label());
    let blocks: Vec<Label> = table.generations.iter().map(|_| asm.label()).collect();

    // X = payload length for the bounds checks, then the core byte once found.
    asm.stmt(BPF_LD | BPF_W | BPF_LEN, 0);
    asm.stmt(BPF_MISC | BPF_TAX, 0);
    asm.branch(BPF_JGE, 1, None, Some(default));
    asm.stmt(BPF_LD | BPF_B | BPF_ABS, 0);
    asm.stmt(BPF_ALU | BPF_AND | BPF_K, 0xc0);
    asm.branch(BPF_JEQ, 0x40, Some(short), None);
    asm.branch(BPF_JEQ, 0xc0, Some(long), None);
    asm.stmt(BPF_LD | BPF_B | BPF_ABS, 0);
    asm.branch(BPF_JEQ, u32::from(RELAY_MARKER), Some(relay), None);
    asm.branch(BPF_JEQ, u32::from(PROBE_MARKER), Some(probe), Some(default));

    // Short header: core at 1, generation right after it.
    asm.place(short);
    asm.stmt(BPF_MISC | BPF_TXA, 0);
    asm.branch(BPF_JGE, 1 + cid_len, None, Some(default));
    asm.dispatch_on(1, 1 + generation_at, dispatch);

    // Long header: a DCID of our length at offset 6 (after version and DCID length).
    asm.place(long);
    asm.stmt(BPF_MISC | BPF_TXA, 0);
    asm.branch(BPF_JGE, 6 + cid_len, None, Some(default));
    asm.stmt(BPF_LD | BPF_B | BPF_ABS, 5);
    asm.branch(BPF_JEQ, cid_len, None, Some(default));
    asm.dispatch_on(6, 6 + generation_at, dispatch);

    // Relay frame: channel at 1..5, generation in its high half, core from its low byte.
    asm.place(relay);
    asm.stmt(BPF_MISC | BPF_TXA, 0);
    asm.branch(BPF_JGE, RELAY_HEADER_LEN as u32, None, Some(default));
    asm.dispatch_on(4, 1, dispatch);

    // Probe: the index it asks for.
    asm.place(probe);
    asm.stmt(BPF_MISC | BPF_TXA, 0);
    asm.branch(BPF_JEQ, PROBE_LEN as u32, None, Some(default));
    asm.stmt(BPF_LD | BPF_H | BPF_ABS, 1);
    asm.stmt(BPF_RET | BPF_A, 0);

    // A = generation, X = core byte.
    asm.place(dispatch);
    for (generation, block) in table.generations.iter().zip(&blocks) {
        asm.branch(BPF_JEQ, u32::from(generation.generation), Some(*block), None);
    }
    asm.goto(default);

    // Nobody's: the newest generation.
    asm.place(default);
    if table.hash_new_connections {
        asm.stmt(BPF_RET | BPF_K, FALLBACK);
    } else {
        // Spread by the byte at offset 6 (an Initial's first DCID byte, which the client keeps for
        // every Initial of the connection), or 0 in a shorter datagram.
        let (short_datagram, spread) = (asm.label(), asm.label());
        asm.stmt(BPF_MISC | BPF_TXA, 0);
        asm.branch(BPF_JGE, 7, None, Some(short_datagram));
        asm.stmt(BPF_LD | BPF_B | BPF_ABS, 6);
        asm.goto(spread);
        asm.place(short_datagram);
        asm.stmt(BPF_LD | BPF_IMM, 0);
        asm.place(spread);
        asm.stmt(BPF_MISC | BPF_TAX, 0);
        if let Some(newest) = blocks.last() {
            asm.goto(*newest);
        }
    }

    for (generation, block) in table.generations.iter().zip(&blocks) {
        asm.place(*block);
        let cores = generation.indices.len() as u32;
        asm.stmt(BPF_MISC | BPF_TXA, 0);
        asm.stmt(BPF_ALU | BPF_MOD | BPF_K, cores);
        let contiguous = generation.indices.windows(2).all(|w| w[1] == w[0] + 1);
        match generation.indices.first() {
            Some(&first) if contiguous => {
                asm.stmt(BPF_ALU | libc::BPF_ADD | BPF_K, first);
                asm.stmt(BPF_RET | BPF_A, 0);
            }
            _ => {
                for (core, &index) in generation.indices.iter().enumerate() {
                    // if A == core: return index (the return is the skipped-over instruction).
                    asm.code.push(sock_filter {
                        code: (libc::BPF_JMP | BPF_JEQ | BPF_K) as u16,
                        jt: 0,
                        jf: 1,
                        k: core as u32,
                    });
                    asm.stmt(BPF_RET | BPF_K, index);
                }
                asm.stmt(BPF_RET | BPF_K, FALLBACK);
            }
        }
    }

    let program = asm.finish().ok_or(SteeringError::Backward)?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SteeringError::TooLong(program.len()));
    }
    Ok(program)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cid::{CidKey, CoreCidGenerator};
    use quinn_proto::ConnectionIdGenerator;

    /// Runs a classic BPF program over `packet` the way the kernel does for a reuseport group:
    /// a load beyond the packet ends the program with 0. Knows the instructions the steering
    /// program uses, and fails the test on any other.
    pub(crate) fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |offset: u32, size: usize| -> Option<u32> {
            let start = offset as usize;
            let bytes = packet.get(start..start + size)?;
            Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        };
        for _ in 0..10_000 {
            let insn = program[pc];
            let code = u32::from(insn.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_LEN => a = packet.len() as u32,
                c if c == libc::BPF_LD | libc::BPF_IMM => a = insn.k,
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match load(insn.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => match load(insn.k, 2) {
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
                c if c == libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K => a = a.wrapping_add(insn.k),
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
        panic!("the program did not end");
    }

    fn our_cid(generation: Generation, core: u8) -> Vec<u8> {
        CoreCidGenerator::new(core, generation, CidKey::random()).generate_cid().to_vec()
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
        packet.extend_from_slice(&[0x11; 8]);
        packet.extend_from_slice(&[0x55; 60]);
        packet
    }

    fn relay(channel: u32) -> Vec<u8> {
        let mut frame = vec![RELAY_MARKER];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&[0x40; 30]);
        frame
    }

    fn program(table: &SteeringTable) -> Vec<sock_filter> {
        steering_program(table).unwrap()
    }

    #[test]
    fn alone_on_the_port_ids_pick_their_core_and_new_connections_the_hash() {
        let program = program(&SteeringTable::single(1, 2));
        for core in [0u8, 1] {
            let cid = our_cid(1, core);
            assert_eq!(run(&program, &short(&cid)), u32::from(core), "short header, core {core}");
            assert_eq!(run(&program, &long(2, 1, &cid)), u32::from(core), "Handshake, core {core}");
            assert_eq!(run(&program, &long(0, 1, &cid)), u32::from(core), "Initial with our ID, core {core}");
        }
        // The shortest packets that still carry a whole ID.
        assert_eq!(run(&program, &short(&our_cid(1, 1))[..1 + CID_LEN]), 1);
        assert_eq!(run(&program, &long(2, 1, &our_cid(1, 1))[..6 + CID_LEN]), 1);
        // A client's first Initial (8-byte random DCID), control datagrams, garbage: the hash.
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("client Initial", long(0, 1, &[7u8; 8])),
            ("0-RTT", long(1, 1, &[7u8; 8])),
            ("Initial with a 20-byte DCID", long(0, 1, &[1u8; 20])),
            ("Handshake cut inside its DCID", long(2, 1, &our_cid(1, 1))[..13].to_vec()),
            ("control datagram", [&[0x21u8][..], &[1; 40]].concat()),
            ("3 bytes", vec![0x41, 1, 1]),
            ("short header cut inside its DCID", short(&our_cid(1, 0))[..8].to_vec()),
            ("unknown generation", short(&our_cid(9, 1))),
            ("empty", Vec::new()),
        ];
        for (what, packet) in cases {
            assert_eq!(run(&program, &packet), FALLBACK, "{what}");
        }
    }

    #[test]
    fn core_bytes_beyond_the_cores_are_reduced_into_them() {
        let program = program(&SteeringTable::single(1, 3));
        for byte in [3u8, 4, 200, 255] {
            let mut cid = our_cid(1, 0);
            cid[0] = byte;
            assert_eq!(run(&program, &short(&cid)), u32::from(byte) % 3);
            assert_eq!(run(&program, &long(2, 1, &cid)), u32::from(byte) % 3);
        }
    }

    /// The table during a takeover: generation 4 (old, 2 cores at 0..2) and 5 (new, 3 cores
    /// appended at 2..5).
    fn takeover() -> SteeringTable {
        SteeringTable {
            generations: vec![GenerationSockets::contiguous(4, 0, 2), GenerationSockets::contiguous(5, 2, 3)],
            hash_new_connections: false,
        }
    }

    #[test]
    fn during_a_takeover_each_generation_keeps_its_traffic() {
        let program = program(&takeover());
        for core in 0..2u8 {
            let cid = our_cid(4, core);
            for packet in [short(&cid), long(2, 1, &cid), long(0, 1, &cid), long(1, 1, &cid)] {
                assert_eq!(run(&program, &packet), u32::from(core), "old generation, core {core}");
            }
        }
        for core in 0..3u8 {
            let cid = our_cid(5, core);
            assert_eq!(run(&program, &short(&cid)), 2 + u32::from(core), "new generation, core {core}");
            assert_eq!(run(&program, &long(2, 1, &cid)), 2 + u32::from(core));
        }
        // Relay channels carry the generation that allocated them in their high half.
        assert!((0..2).contains(&run(&program, &relay(4 << 16 | 0x1234))));
        assert!((2..5).contains(&run(&program, &relay(5 << 16 | 0x1234))));
        assert!((2..5).contains(&run(&program, &relay(0x0001_0001))), "unknown channel: the newest");
    }

    #[test]
    fn during_a_takeover_new_connections_go_to_the_newest_and_never_to_the_hash() {
        let program = program(&takeover());
        for first in 0..=255u8 {
            let mut dcid = [first; 8];
            dcid[1] = 4; // an old generation's number in the wrong place changes nothing
            for packet in [
                long(0, 1, &dcid),
                long(1, 1, &dcid),
                [&[0x21u8][..], &[first; 30]].concat(),
                short(&our_cid(77, first)),
                vec![0x40, 1],
                Vec::new(),
            ] {
                let index = run(&program, &packet);
                assert!((2..5).contains(&index), "{packet:?} went to {index}");
            }
        }
        // One connection's Initials all carry the client's DCID: they all reach one core.
        let dcid = [0x9a; 8];
        assert_eq!(run(&program, &long(0, 1, &dcid)), run(&program, &long(0, 1, &dcid)[..80]));
    }

    #[test]
    fn sockets_moved_by_a_departure_are_found_through_the_table() {
        // After the old generation's two sockets left a group of 5, the kernel moved the last
        // sockets into their slots: core 2 at 0, core 1 at 1, core 0 at 2.
        let table = SteeringTable {
            generations: vec![GenerationSockets { generation: 5, indices: vec![2, 1, 0] }],
            hash_new_connections: true,
        };
        let program = program(&table);
        for (core, index) in [(0u8, 2u32), (1, 1), (2, 0), (3, 2), (5, 0)] {
            assert_eq!(run(&program, &short(&our_cid(5, core))), index, "core byte {core}");
        }
    }

    #[test]
    fn probes_pick_the_index_they_name() {
        let program = program(&takeover());
        for index in [0u16, 1, 4, 5, 300] {
            let mut probe = vec![PROBE_MARKER];
            probe.extend_from_slice(&index.to_be_bytes());
            probe.resize(PROBE_LEN, 0);
            assert_eq!(run(&program, &probe), u32::from(index));
            let longer = [&probe[..], &[0]].concat();
            assert!((2..5).contains(&run(&program, &longer)), "a probe of the wrong length is nobody's");
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_a_return() {
        let tables = [
            SteeringTable::single(1, 1),
            SteeringTable::single(3, 256),
            takeover(),
            SteeringTable {
                generations: vec![
                    GenerationSockets { generation: 1, indices: (0..256).rev().collect() },
                    GenerationSockets { generation: 2, indices: (256..512).rev().collect() },
                ],
                hash_new_connections: false,
            },
        ];
        for table in tables {
            let program = program(&table);
            assert!(program.len() <= MAX_INSTRUCTIONS);
            let last = program.last().map(|i| u32::from(i.code) & 0x07);
            assert!(matches!(last, Some(libc::BPF_RET) | Some(libc::BPF_JMP)));
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
        let empty = steering_program(&SteeringTable { generations: vec![], hash_new_connections: true });
        assert_eq!(empty.err(), Some(SteeringError::Empty));
    }
}
