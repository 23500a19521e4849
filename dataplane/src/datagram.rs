//! What a datagram on the node socket is, from its first byte, before any QUIC processing; and
//! the control datagrams the cores pass to the control thread.
//!
//! Every QUIC packet has its high bit (long header) or its fixed bit (short header) set
//! (RFC 9000 §17.2, §17.3). The nodes never let a peer clear the fixed bit: they do not advertise
//! `grease_quic_bit` (RFC 9287 §3). First bytes with both bits clear are therefore free for the
//! node's own datagrams (`docs/nat-traversal.md`, "Datagrams on the node socket").

use std::net::SocketAddr;

use bytes::Bytes;

pub use crate::relay::RELAY_MARKER;

/// First byte of a control datagram (the NAT traversal probes and their acks).
pub const CONTROL_MARKER: u8 = 0x21;

/// The kinds of datagram on the node socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A QUIC packet (or something the QUIC endpoint must judge).
    Quic,
    /// A relay frame ([`RELAY_MARKER`]).
    Relay,
    /// A control datagram ([`CONTROL_MARKER`]), for the control thread.
    Control,
    /// A layout probe of a takeover ([`crate::probe::PROBE_MARKER`]), answered by the core.
    Probe,
    /// Neither QUIC nor ours: empty, or a first byte with both high bits clear. quinn-proto would
    /// drop it too (the fixed bit is required, RFC 9000 §17.3.1).
    NotQuic,
}

/// Classify a datagram by its first byte.
#[inline]
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(&RELAY_MARKER) => DatagramKind::Relay,
        Some(&CONTROL_MARKER) => DatagramKind::Control,
        Some(&crate::probe::PROBE_MARKER) => DatagramKind::Probe,
        Some(&first) if first & 0xc0 != 0 => DatagramKind::Quic,
        _ => DatagramKind::NotQuic,
    }
}

/// A control datagram received by a core, passed to the control thread as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlDatagram {
    /// The core that received it.
    pub core: usize,
    /// Who sent it (a path alias when it came through the relay on an alias's channel).
    pub source: SocketAddr,
    /// The whole datagram, [`CONTROL_MARKER`] included.
    pub bytes: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_decides() {
        assert_eq!(classify(&[0x22, 0, 0, 0, 1]), DatagramKind::Relay);
        assert_eq!(classify(&[0x21, 1, 1]), DatagramKind::Control);
        assert_eq!(classify(&[0xc3, 0, 0, 0, 1]), DatagramKind::Quic, "long header");
        assert_eq!(classify(&[0x41, 0xaa]), DatagramKind::Quic, "short header");
        assert_eq!(classify(&[0x80]), DatagramKind::Quic, "long header without fixed bit: quinn-proto decides");
        assert_eq!(classify(&[0x00, 1, 2]), DatagramKind::NotQuic);
        assert_eq!(classify(&[0x3f]), DatagramKind::NotQuic);
        assert_eq!(classify(&[]), DatagramKind::NotQuic);
    }
}
