//! Probe datagrams: the connectivity checks two peers send each other from their node sockets
//! while punching (RFC 8445 §7.2 in spirit), and the mapping discovery a peer asks of a
//! bootstrap's alternate port (RFC 5780 §4.3 in spirit; see `docs/nat-traversal.md`).
//!
//! ```text
//! 0x21, version (u8, = 1), kind (u8: 1 probe, 2 ack, 3 discover, 4 discovered), token (16 bytes), transaction (u64)
//! [ack, discovered] address the datagram came from: family (u8: 4 or 6), ip (4 or 16 bytes), port (u16)
//! [discover] 19 zero bytes, so that the answer is never longer than the question
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
    /// To a bootstrap's alternate address: "where do you see me from?"
    Discover,
    /// The alternate address's answer: "your discover came from `observed`."
    Discovered {
        /// The discover's source address as the bootstrap's alternate address saw it.
        observed: SocketAddr,
    },
}

/// A decoded probe datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Probe or ack.
    pub kind: ProbeKind,
    /// The punch round's token (from PUNCH_ME_NOW): only the two peers of the round know it. A
    /// discover carries a random one of the asking peer's, which the answer echoes.
    pub token: [u8; 16],
    /// Chosen by the prober, echoed by the ack.
    pub transaction: u64,
}

use super::wire::{address_at, address_len, address_len_at, array_at, emit_address, u64_at, u8_at, WireError};

/// Version of the probe encoding.
pub const VERSION: u8 = 1;
/// Length of a probe (an ack adds the observed address: 7 bytes for IPv4, 19 for IPv6).
pub const PROBE_LEN: usize = field::OBSERVED;
/// Length of a discover: padded to the longest answer (an IPv6 address), so that answering
/// never amplifies.
pub const DISCOVER_LEN: usize = field::OBSERVED + 19;

/// Kind numbers.
const KIND_PROBE: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DISCOVER: u8 = 3;
const KIND_DISCOVERED: u8 = 4;

/// Byte offsets of the fields.
mod field {
    use std::ops::Range;

    pub const MARKER: usize = 0;
    pub const VERSION: usize = 1;
    pub const KIND: usize = 2;
    pub const TOKEN: Range<usize> = 3..19;
    pub const TRANSACTION: Range<usize> = 19..27;
    /// Ack only.
    pub const OBSERVED: usize = 27;
}

/// A probe datagram read in place: a zero-copy view over its bytes.
///
/// [`ProbeView::new_checked`] accepts only a buffer with the marker, version 1, a known kind and
/// exactly the length that kind calls for. Accessors never panic: on a buffer that has not passed
/// [`ProbeView::check_len`], bytes beyond its end read as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ProbeView<T> {
    /// A view over `buffer` without any check.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view over `buffer` that has passed [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer);
        view.check_len()?;
        Ok(view)
    }

    /// Check marker, version and kind, and that the buffer holds exactly the datagram's layout:
    /// [`WireError::Truncated`] if shorter, [`WireError::TrailingBytes`] if longer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        // Each header byte is checked as soon as it is there, so that a datagram that is not a
        // probe at all says so rather than "truncated".
        let marker = *buf.get(field::MARKER).ok_or(WireError::Truncated)?;
        if marker != MARKER {
            return Err(WireError::BadMarker(marker));
        }
        let version = *buf.get(field::VERSION).ok_or(WireError::Truncated)?;
        if version != VERSION {
            return Err(WireError::UnknownVersion(version));
        }
        let needed = match *buf.get(field::KIND).ok_or(WireError::Truncated)? {
            KIND_PROBE => PROBE_LEN,
            KIND_ACK | KIND_DISCOVERED => field::OBSERVED + address_len_at(buf, field::OBSERVED)?,
            KIND_DISCOVER => DISCOVER_LEN,
            _ => return Err(WireError::BadField("probe kind")),
        };
        match buf.len().cmp(&needed) {
            std::cmp::Ordering::Less => Err(WireError::Truncated),
            std::cmp::Ordering::Greater => Err(WireError::TrailingBytes),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// The bytes under the view.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The first byte ([`MARKER`]).
    pub fn marker(&self) -> u8 {
        u8_at(self.buffer.as_ref(), field::MARKER)
    }

    /// The encoding version (1).
    pub fn version(&self) -> u8 {
        u8_at(self.buffer.as_ref(), field::VERSION)
    }

    /// The kind number: 1 probe, 2 ack.
    pub fn kind(&self) -> u8 {
        u8_at(self.buffer.as_ref(), field::KIND)
    }

    /// The punch round's token.
    pub fn token(&self) -> [u8; 16] {
        array_at(self.buffer.as_ref(), field::TOKEN.start)
    }

    /// The prober's transaction number.
    pub fn transaction(&self) -> u64 {
        u64_at(self.buffer.as_ref(), field::TRANSACTION.start)
    }

    /// Decode the datagram. Run on a checked view; on an unchecked one the result is only as good
    /// as the bytes (missing ones read as zero).
    pub fn to_probe(&self) -> Result<Probe, WireError> {
        let kind = match self.kind() {
            KIND_PROBE => ProbeKind::Probe,
            KIND_ACK => ProbeKind::Ack { observed: address_at(self.buffer.as_ref(), field::OBSERVED)? },
            KIND_DISCOVERED => ProbeKind::Discovered { observed: address_at(self.buffer.as_ref(), field::OBSERVED)? },
            KIND_DISCOVER => {
                let padding = self.buffer.as_ref().get(field::OBSERVED..DISCOVER_LEN).unwrap_or_default();
                if padding.iter().any(|&b| b != 0) {
                    return Err(WireError::BadField("discover padding"));
                }
                ProbeKind::Discover
            }
            _ => return Err(WireError::BadField("probe kind")),
        };
        Ok(Probe { kind, token: self.token(), transaction: self.transaction() })
    }
}

impl Probe {
    /// Decode one probe datagram: the whole buffer must be exactly one datagram of a known kind.
    pub fn parse(buf: &[u8]) -> Result<Probe, WireError> {
        ProbeView::new_checked(buf)?.to_probe()
    }

    /// Bytes [`Self::emit`] appends.
    pub fn encoded_len(&self) -> usize {
        match &self.kind {
            ProbeKind::Probe => PROBE_LEN,
            ProbeKind::Ack { observed } | ProbeKind::Discovered { observed } => PROBE_LEN + address_len(observed),
            ProbeKind::Discover => DISCOVER_LEN,
        }
    }

    /// Append the datagram to `out`. An IPv6 observed address loses its flow label and scope ID
    /// (local to the sender's host).
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(MARKER);
        out.push(VERSION);
        out.push(match self.kind {
            ProbeKind::Probe => KIND_PROBE,
            ProbeKind::Ack { .. } => KIND_ACK,
            ProbeKind::Discover => KIND_DISCOVER,
            ProbeKind::Discovered { .. } => KIND_DISCOVERED,
        });
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.transaction.to_be_bytes());
        match &self.kind {
            ProbeKind::Ack { observed } | ProbeKind::Discovered { observed } => emit_address(out, observed),
            ProbeKind::Discover => out.resize(out.len() + (DISCOVER_LEN - PROBE_LEN), 0),
            ProbeKind::Probe => {}
        }
    }

    /// What a bootstrap's alternate address sends back for `datagram`, received from `from`: a
    /// [`ProbeKind::Discovered`] for a well-formed discover, nothing for anything else (no error
    /// goes back to an address that may be forged). Never longer than `datagram`.
    pub fn answer_discover(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let question = Probe::parse(datagram).ok().filter(|p| p.kind == ProbeKind::Discover)?;
        let answer = Probe { kind: ProbeKind::Discovered { observed: from }, ..question };
        let mut out = Vec::with_capacity(DISCOVER_LEN);
        answer.emit(&mut out);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::nat::wire::tests::socket_addr;

    fn encode(probe: &Probe) -> Vec<u8> {
        let mut out = Vec::new();
        probe.emit(&mut out);
        out
    }

    fn probe() -> impl Strategy<Value = Probe> {
        let kind = prop_oneof![
            Just(ProbeKind::Probe),
            socket_addr().prop_map(|observed| ProbeKind::Ack { observed }),
            Just(ProbeKind::Discover),
            socket_addr().prop_map(|observed| ProbeKind::Discovered { observed }),
        ];
        (kind, any::<[u8; 16]>(), any::<u64>()).prop_map(|(kind, token, transaction)| Probe {
            kind,
            token,
            transaction,
        })
    }

    /// A probe and an ack, written out byte by byte from the layout in docs/nat-traversal.md.
    fn known_encodings() -> Vec<(Probe, Vec<u8>)> {
        let token = [0x5a; 16];
        let transaction = 0x0102_0304_0506_0708;
        vec![
            (
                Probe { kind: ProbeKind::Probe, token, transaction },
                [&[0x21, 1, 1][..], &[0x5a; 16], &[1, 2, 3, 4, 5, 6, 7, 8]].concat(),
            ),
            (
                Probe { kind: ProbeKind::Ack { observed: "198.51.100.7:62000".parse().unwrap() }, token, transaction },
                [&[0x21, 1, 2][..], &[0x5a; 16], &[1, 2, 3, 4, 5, 6, 7, 8], &[4, 198, 51, 100, 7, 0xf2, 0x30]].concat(),
            ),
            (
                Probe { kind: ProbeKind::Ack { observed: "[2001:db8::2]:1".parse().unwrap() }, token, transaction },
                [
                    &[0x21, 1, 2][..],
                    &[0x5a; 16],
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    &[6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1],
                ]
                .concat(),
            ),
            (
                Probe { kind: ProbeKind::Discover, token, transaction },
                [&[0x21, 1, 3][..], &[0x5a; 16], &[1, 2, 3, 4, 5, 6, 7, 8], &[0; 19]].concat(),
            ),
            (
                Probe {
                    kind: ProbeKind::Discovered { observed: "198.51.100.7:62000".parse().unwrap() },
                    token,
                    transaction,
                },
                [&[0x21, 1, 4][..], &[0x5a; 16], &[1, 2, 3, 4, 5, 6, 7, 8], &[4, 198, 51, 100, 7, 0xf2, 0x30]].concat(),
            ),
        ]
    }

    #[test]
    fn a_discover_is_answered_with_its_source_and_never_amplified() {
        let question = encode(&Probe { kind: ProbeKind::Discover, token: [7; 16], transaction: 9 });
        for from in ["198.51.100.7:62000", "[2001:db8::2]:1"] {
            let from: SocketAddr = from.parse().unwrap();
            let answer = Probe::answer_discover(&question, from).unwrap();
            assert!(answer.len() <= question.len(), "{} bytes answer {} bytes", answer.len(), question.len());
            let answer = Probe::parse(&answer).unwrap();
            assert_eq!(
                answer,
                Probe { kind: ProbeKind::Discovered { observed: from }, token: [7; 16], transaction: 9 }
            );
        }
        // Anything else gets no answer: probes, acks, answers, short or padded-with-data discovers.
        let from: SocketAddr = "198.51.100.7:62000".parse().unwrap();
        for (other, _) in known_encodings().into_iter().filter(|(p, _)| p.kind != ProbeKind::Discover) {
            assert_eq!(Probe::answer_discover(&encode(&other), from), None, "{other:?}");
        }
        assert_eq!(Probe::answer_discover(&question[..PROBE_LEN], from), None);
        let mut dirty = question.clone();
        dirty[DISCOVER_LEN - 1] = 1;
        assert_eq!(Probe::parse(&dirty), Err(WireError::BadField("discover padding")));
        assert_eq!(Probe::answer_discover(&dirty, from), None);
    }

    #[test]
    fn known_encodings_of_probe_and_ack() {
        for (probe, bytes) in known_encodings() {
            assert_eq!(encode(&probe), bytes, "emit {probe:?}");
            assert_eq!(probe.encoded_len(), bytes.len());
            assert_eq!(Probe::parse(&bytes), Ok(probe));
            let view = ProbeView::new_checked(&bytes).unwrap();
            assert_eq!(
                (view.marker(), view.version(), view.token(), view.transaction()),
                (MARKER, 1, probe.token, probe.transaction)
            );
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let (_, ack) = known_encodings().remove(1);
        assert_eq!(Probe::parse(&[]), Err(WireError::Truncated));
        // A QUIC long header packet, or the relay frame marker: not a probe.
        assert_eq!(Probe::parse(&[0xc0, 0, 0, 0, 1]), Err(WireError::BadMarker(0xc0)));
        assert_eq!(Probe::parse(&[0x22, 1, 1]), Err(WireError::BadMarker(0x22)));
        assert_eq!(Probe::parse(&[0x21]), Err(WireError::Truncated));
        assert_eq!(Probe::parse(&[0x21, 2, 1]), Err(WireError::UnknownVersion(2)));
        assert_eq!(Probe::parse(&[0x21, 1]), Err(WireError::Truncated));
        for kind in [0, 5, 0xff] {
            let mut bytes = ack.clone();
            bytes[2] = kind;
            assert_eq!(Probe::parse(&bytes), Err(WireError::BadField("probe kind")));
        }
        let mut bad_family = ack.clone();
        bad_family[PROBE_LEN] = 5;
        assert_eq!(Probe::parse(&bad_family), Err(WireError::BadAddressFamily(5)));
        // A probe carrying an address, or an ack with one byte too many.
        let mut probe_with_address = ack.clone();
        probe_with_address[2] = 1;
        assert_eq!(Probe::parse(&probe_with_address), Err(WireError::TrailingBytes));
        let mut long_ack = ack.clone();
        long_ack.push(0);
        assert_eq!(Probe::parse(&long_ack), Err(WireError::TrailingBytes));
    }

    proptest! {
        #[test]
        fn round_trip(probe in probe()) {
            let bytes = encode(&probe);
            prop_assert_eq!(bytes.len(), probe.encoded_len());
            prop_assert_eq!(Probe::parse(&bytes), Ok(probe));
        }

        #[test]
        fn every_truncation_is_rejected(probe in probe()) {
            let bytes = encode(&probe);
            for cut in 0..bytes.len() {
                prop_assert_eq!(Probe::parse(&bytes[..cut]), Err(WireError::Truncated), "cut at {}", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(probe) = Probe::parse(&bytes) {
                prop_assert_eq!(encode(&probe), bytes);
            }
        }

        #[test]
        fn mutated_probes_never_panic(probe in probe(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&probe);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(probe) = Probe::parse(&bytes) {
                prop_assert_eq!(encode(&probe), bytes);
            }
        }
    }
}
