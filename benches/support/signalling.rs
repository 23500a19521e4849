//! NAT signalling inputs the CPU benches share: addresses, peer IDs, candidate sets as a peer
//! with a few interfaces has them, and the mix of messages a bootstrap reads and writes.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ant_quic_control::nat::candidate::priority;
use ant_quic_control::nat::{Candidate, CandidateKind, Message, Outcome, PunchRole};
use ant_quic_control::PeerId;

/// The round of the PUNCH_ME_NOW the messages carry (plus an offset where a bench varies it).
pub const PUNCH_ROUND: u64 = 0x0123_4567_89ab;

pub fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

pub fn v6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), port, 0, 0))
}

pub fn candidate(kind: CandidateKind, local_preference: u16, address: SocketAddr) -> Candidate {
    Candidate { kind, priority: priority(kind, local_preference), address }
}

/// A peer's candidates: its observed (server-reflexive) address, `hosts` IPv4 host addresses and
/// two IPv6 ones. `seed` varies the addresses.
pub fn candidates(seed: u8, hosts: u8) -> Vec<Candidate> {
    let mut list = vec![candidate(CandidateKind::ServerReflexive, u16::MAX, v4(198, 18, seed, 10, 40000))];
    for i in 0..hosts {
        list.push(candidate(CandidateKind::Host, u16::MAX - u16::from(i), v4(10, seed, i, 2, 5000)));
    }
    for i in 0..2u16 {
        list.push(candidate(CandidateKind::Host, 60000 - i, v6(u16::from(seed) << 8 | i, 5000)));
    }
    list
}

pub fn peer(n: u32) -> PeerId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[31] = 0xa5;
    PeerId(id)
}

/// A PUNCH_ME_NOW of round `round` with eight candidates.
pub fn punch_me_now(round: u64) -> Message {
    Message::PunchMeNow {
        round,
        request: 0xdead_beef,
        peer: peer(7),
        role: PunchRole::Initiator,
        flags: 0,
        start_in_ms: 70,
        token: [0x5a; 16],
        candidates: candidates(3, 5),
    }
}

/// Message `i` of a signalling stream as a bootstrap reads it from busy peers: every kind a peer
/// sends, and a PUNCH_ME_NOW of round `punch_round`, which only a bootstrap sends (it must still
/// delimit and decode it).
pub fn signalling_message(i: u64, punch_round: u64) -> Message {
    match i % 10 {
        0..=3 => Message::AddAddress {
            sequence: i,
            candidate: candidate(CandidateKind::Host, 65535, v4(10, 0, (i % 250) as u8, 2, 5000)),
        },
        4 | 5 => Message::ConnectRequest { request: i + 1, target: peer(i as u32) },
        6 => Message::Report { request: i, outcome: Outcome::Direct, connect_ms: 85 },
        7 => Message::RemoveAddress { sequence: i - 4 },
        8 => Message::ObservedAddress { sequence: i, address: v4(198, 18, 0, 10, 40000) },
        _ => punch_me_now(punch_round),
    }
}
