//! Probe datagrams: the connectivity checks two peers send each other from their node sockets
//! while punching (RFC 8445 §7.2 in spirit; see `docs/nat-traversal.md`).
//!
//! ```text
//! 0x21, version (u8, = 1), kind (u8: 1 probe, 2 ack), token (16 bytes), transaction (u64)
//! [ack only] address the probe came from: family (u8: 4 or 6), ip (4 or 16 bytes), port (u16)
//! ```

use std::net::SocketAddr;

/// First byte of every probe datagram (two high bits clear: never a QUIC packet).
pub const MARKER: u8 = 0x21;

/// What a probe datagram says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// "Can you hear me?"
    Probe,
    /// "Yes: your probe came from `observed`."
    Ack {
        /// The probe's source address as the acking peer saw it (a peer-reflexive candidate).
        observed: SocketAddr,
    },
}

/// A decoded probe datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Probe or ack.
    pub kind: ProbeKind,
    /// The punch round's token (from PUNCH_ME_NOW): only the two peers of the round know it.
    pub token: [u8; 16],
    /// Chosen by the prober, echoed by the ack.
    pub transaction: u64,
}
