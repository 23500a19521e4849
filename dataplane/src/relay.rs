//! Relay frames, and the two per-core tables that act on them: forwarding between the ends of an
//! allocation (bootstrap role) and path aliases (peer role). Wire format and roles:
//! `docs/nat-traversal.md`, "Datagrams on the node socket" and "Path aliases".
//!
//! ```text
//! 0x22, channel (u32, big-endian), QUIC packet
//! ```
//!
//! The relay never decrypts: the QUIC packet is end-to-end protected between the two peers
//! (RFC 9001), so forwarding is a table lookup, a byte count and a send. Both tables belong to
//! one core and are changed only by commands from the core's queue: no lock on the packet path.
//! Nothing here allocates per packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// First byte of every relay frame. Its two high bits are clear, so it is never the first byte of
/// a QUIC packet: long headers set the high bit, short headers the fixed bit (RFC 9000 §17.2,
/// §17.3), and no node negotiates clearing the fixed bit (RFC 9287).
pub const RELAY_MARKER: u8 = 0x22;
/// Bytes in front of the QUIC packet: marker and channel.
pub const RELAY_HEADER_LEN: usize = 5;

mod field {
    pub const MARKER: usize = 0;
    pub const CHANNEL: std::ops::Range<usize> = 1..5;
    pub const PAYLOAD: usize = 5;
}

/// Why bytes are not a relay frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the 5-byte header.
    #[error("relay frame shorter than its {RELAY_HEADER_LEN}-byte header")]
    Truncated,
    /// The first byte is not [`RELAY_MARKER`].
    #[error("not a relay frame (first byte is not 0x22)")]
    NotRelay,
}

/// A zero-copy view of a relay frame whose buffer is known to hold the whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RelayFrame<T> {
    /// A view of `buffer`, checked to be long enough for the header. The marker is not checked
    /// here (a buffer being filled has none yet); [`RelayRepr::parse`] checks it.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        if buffer.as_ref().len() < RELAY_HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The first byte ([`RELAY_MARKER`] in a valid frame).
    pub fn marker(&self) -> u8 {
        self.buffer.as_ref().get(field::MARKER).copied().unwrap_or(0)
    }

    /// The channel number.
    pub fn channel(&self) -> u32 {
        let bytes = self.buffer.as_ref().get(field::CHANNEL).and_then(|b| <[u8; 4]>::try_from(b).ok());
        bytes.map_or(0, u32::from_be_bytes)
    }

    /// The QUIC packet carried.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or_default()
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RelayFrame<T> {
    /// Set the first byte.
    pub fn set_marker(&mut self, marker: u8) {
        if let Some(byte) = self.buffer.as_mut().get_mut(field::MARKER) {
            *byte = marker;
        }
    }

    /// Set the channel number.
    pub fn set_channel(&mut self, channel: u32) {
        if let Some(bytes) = self.buffer.as_mut().get_mut(field::CHANNEL) {
            bytes.copy_from_slice(&channel.to_be_bytes());
        }
    }

    /// The QUIC packet carried, to fill in.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut().get_mut(field::PAYLOAD..).unwrap_or_default()
    }
}

/// A validated relay frame header (the payload is not interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayRepr {
    /// The channel of the allocation the frame belongs to.
    pub channel: u32,
}

impl RelayRepr {
    /// Validate the header of `frame`.
    pub fn parse<T: AsRef<[u8]>>(frame: &RelayFrame<T>) -> Result<Self, FrameError> {
        if frame.marker() != RELAY_MARKER {
            return Err(FrameError::NotRelay);
        }
        Ok(Self { channel: frame.channel() })
    }

    /// Length of a frame carrying `payload_len` bytes.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        RELAY_HEADER_LEN + payload_len
    }

    /// The header bytes.
    pub fn header(&self) -> [u8; RELAY_HEADER_LEN] {
        let c = self.channel.to_be_bytes();
        [RELAY_MARKER, c[0], c[1], c[2], c[3]]
    }

    /// Write the header into `frame` (the payload is the caller's).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut RelayFrame<T>) {
        frame.set_marker(RELAY_MARKER);
        frame.set_channel(self.channel);
    }
}

/// Put a relay header in front of every datagram of a GSO buffer, in place: `buf` holds
/// `segment_size`-byte datagrams back to back (the last may be shorter; 0 means one datagram).
/// Returns the new segment size (`segment_size + 5`). Reuses `buf`'s capacity; it grows only
/// when too small.
pub fn frame_segments(buf: &mut Vec<u8>, segment_size: usize, channel: u32) -> usize {
    let len = buf.len();
    let segment = if segment_size == 0 { len.max(1) } else { segment_size };
    let segments = len.div_ceil(segment);
    let framed = segment + RELAY_HEADER_LEN;
    let header = RelayRepr { channel }.header();
    buf.resize(len + segments * RELAY_HEADER_LEN, 0);
    // Last datagram first: each one moves to a higher offset, over bytes already moved or spare.
    for i in (0..segments).rev() {
        let start = i * segment;
        let end = (start + segment).min(len);
        let to = i * framed;
        buf.copy_within(start..end, to + RELAY_HEADER_LEN);
        if let Some(slot) = buf.get_mut(to..to + RELAY_HEADER_LEN) {
            slot.copy_from_slice(&header);
        }
    }
    framed
}

/// An IPv4-mapped IPv6 address as plain IPv4, as the core sees every peer (dual-stack sockets
/// report IPv4 peers mapped).
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding (bootstrap role)

/// Least token-bucket depth in bytes, so that a low rate limit still lets whole packets through
/// (QUIC packets on common paths are at most about 1.5 KB; the bucket holds a few).
pub const MIN_RATE_BURST: u64 = 16 * 1024;

/// A channel the relay forwards between two peers, installed by the control thread after a
/// RELAY_GRANT. Limits apply per core: a peer's frames normally all reach the same core
/// (`SO_REUSEPORT` hashes the 4-tuple), so per core is per direction in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAllocation {
    /// Channel number carried in the frames.
    pub channel: u32,
    /// One end (address as the relay sees it).
    pub a: SocketAddr,
    /// The other end.
    pub b: SocketAddr,
    /// Frames at or after this instant are dropped.
    pub expires: Instant,
    /// Frame bytes (header included) the allocation may carry, both directions together.
    pub byte_limit: u64,
    /// Frame bytes per second per direction (token bucket, burst of one second and at least
    /// [`MIN_RATE_BURST`]). 0 forwards nothing.
    pub rate_limit: u32,
}

/// Why a relay frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelayDrop {
    /// Shorter than the relay header.
    Malformed,
    /// No allocation for the channel.
    UnknownChannel,
    /// The sender is neither end of the allocation.
    WrongSource,
    /// The allocation expired.
    Expired,
    /// The allocation carried its byte limit.
    ByteLimit,
    /// The direction is over its rate.
    RateLimit,
    /// The socket was applying back-pressure (UDP: the peers' QUIC retransmits).
    SendBlocked,
}

impl RelayDrop {
    /// Every reason, in index order (`RelayDrop as usize`).
    pub const ALL: [RelayDrop; 7] = [
        Self::Malformed,
        Self::UnknownChannel,
        Self::WrongSource,
        Self::Expired,
        Self::ByteLimit,
        Self::RateLimit,
        Self::SendBlocked,
    ];

    /// Label value for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownChannel => "unknown_channel",
            Self::WrongSource => "wrong_source",
            Self::Expired => "expired",
            Self::ByteLimit => "byte_limit",
            Self::RateLimit => "rate_limit",
            Self::SendBlocked => "send_blocked",
        }
    }

    /// Index into per-reason counters.
    pub fn index(self) -> usize {
        match self {
            Self::Malformed => 0,
            Self::UnknownChannel => 1,
            Self::WrongSource => 2,
            Self::Expired => 3,
            Self::ByteLimit => 4,
            Self::RateLimit => 5,
            Self::SendBlocked => 6,
        }
    }
}

/// A token bucket in nano-bytes (bytes × 10⁹), so refills of a few nanoseconds are not lost to
/// rounding.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl TokenBucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self { tokens: Self::capacity(rate), last: now }
    }

    fn capacity(rate: u32) -> u128 {
        if rate == 0 {
            return 0;
        }
        u128::from(u64::from(rate).max(MIN_RATE_BURST)) * NANOS
    }

    fn take(&mut self, now: Instant, rate: u32, bytes: usize) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        let refill = elapsed.saturating_mul(u128::from(rate));
        self.tokens = self.tokens.saturating_add(refill).min(Self::capacity(rate));
        let cost = (bytes as u128).saturating_mul(NANOS);
        if cost > self.tokens {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

#[derive(Debug, Clone, Copy)]
struct ForwardEntry {
    allocation: RelayAllocation,
    /// Frame bytes forwarded so far, both directions.
    used: u64,
    a_to_b: TokenBucket,
    b_to_a: TokenBucket,
}

/// The allocations one core forwards, by channel.
#[derive(Debug, Default)]
pub struct ForwardingTable {
    entries: HashMap<u32, ForwardEntry>,
}

impl ForwardingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Install or renew an allocation. A renewal with the same two ends keeps the bytes already
    /// carried and the buckets' state (a grant cannot be renewed to reset its limits); other ends
    /// start afresh.
    pub fn install(&mut self, allocation: RelayAllocation, now: Instant) {
        let allocation = RelayAllocation { a: normalize(allocation.a), b: normalize(allocation.b), ..allocation };
        let fresh = ForwardEntry {
            allocation,
            used: 0,
            a_to_b: TokenBucket::full(allocation.rate_limit, now),
            b_to_a: TokenBucket::full(allocation.rate_limit, now),
        };
        let entry = self.entries.entry(allocation.channel).or_insert(fresh);
        if entry.allocation.a == allocation.a && entry.allocation.b == allocation.b {
            entry.allocation = allocation;
        } else {
            *entry = fresh;
        }
    }

    /// Remove the allocation of `channel`; whether there was one.
    pub fn remove(&mut self, channel: u32) -> bool {
        self.entries.remove(&channel).is_some()
    }

    /// Forget allocations that expired before `now`; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.allocation.expires > now);
        before - self.entries.len()
    }

    /// Allocations in the table (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where a `len`-byte frame on `channel` from `source` goes, charging its bytes; or why it
    /// is dropped (nothing is charged then).
    pub fn forward(
        &mut self,
        now: Instant,
        source: SocketAddr,
        channel: u32,
        len: usize,
    ) -> Result<SocketAddr, RelayDrop> {
        let entry = self.entries.get_mut(&channel).ok_or(RelayDrop::UnknownChannel)?;
        let allocation = &entry.allocation;
        let source = normalize(source);
        let (destination, bucket) = if source == allocation.a {
            (allocation.b, &mut entry.a_to_b)
        } else if source == allocation.b {
            (allocation.a, &mut entry.b_to_a)
        } else {
            return Err(RelayDrop::WrongSource);
        };
        if now >= allocation.expires {
            return Err(RelayDrop::Expired);
        }
        let len64 = len as u64;
        if entry.used.saturating_add(len64) > allocation.byte_limit {
            return Err(RelayDrop::ByteLimit);
        }
        if !bucket.take(now, allocation.rate_limit, len) {
            return Err(RelayDrop::RateLimit);
        }
        entry.used += len64;
        Ok(destination)
    }
}

// ---------------------------------------------------------------------------------------------
// Path aliases (peer role)

/// Whether `addr` is a path alias: 240.0.0.0/4 (reserved, RFC 1112 §4; never a real peer), also
/// when written IPv4-mapped.
pub fn is_alias(addr: &SocketAddr) -> bool {
    match normalize(*addr).ip() {
        IpAddr::V4(v4) => v4.octets()[0] & 0xf0 == 0xf0 && !v4.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

/// How datagrams to a path alias travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRoute {
    /// In relay frames on `channel`, through the relay at `relay`.
    Relay {
        /// The relay's (bootstrap's) address.
        relay: SocketAddr,
        /// The channel of the allocation.
        channel: u32,
    },
    /// Straight to the peer at this address.
    Direct(SocketAddr),
}

#[derive(Debug, Clone, Copy)]
struct AliasEntry {
    route: PathRoute,
    /// Relay frames from this relay and channel arrive from the alias. Kept after the route moves
    /// to a direct path, so frames still in flight through the relay are not lost.
    relay_in: Option<(SocketAddr, u32)>,
    /// Plain QUIC datagrams from this address arrive from the alias. Kept after the route moves
    /// back to the relay, for the same reason.
    direct_in: Option<SocketAddr>,
}

/// The path aliases one core knows. quinn-proto only ever sees the alias as the peer's address,
/// so changing the route is invisible to the connection (RFC 9000 §9 migration is not involved).
#[derive(Debug, Default)]
pub struct PathTable {
    aliases: HashMap<SocketAddr, AliasEntry>,
    by_channel: HashMap<(SocketAddr, u32), SocketAddr>,
    by_direct: HashMap<SocketAddr, SocketAddr>,
}

impl PathTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no alias is known (the receive path then skips its look-ups).
    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// Route `alias` over `route`, or forget it (`None`). Returns false, changing nothing, when
    /// `alias` is not an alias address or the route leads to an alias.
    pub fn set(&mut self, alias: SocketAddr, route: Option<PathRoute>) -> bool {
        let alias = normalize(alias);
        if !is_alias(&alias) {
            return false;
        }
        let Some(route) = route else {
            if let Some(old) = self.aliases.remove(&alias) {
                self.unlink(alias, old.relay_in, old.direct_in);
            }
            return true;
        };
        let route = match route {
            PathRoute::Relay { relay, channel } => PathRoute::Relay { relay: normalize(relay), channel },
            PathRoute::Direct(to) => PathRoute::Direct(normalize(to)),
        };
        let target = match route {
            PathRoute::Relay { relay, .. } => relay,
            PathRoute::Direct(to) => to,
        };
        if is_alias(&target) {
            return false;
        }
        let old = self.aliases.get(&alias).copied();
        let mut entry = old.unwrap_or(AliasEntry { route, relay_in: None, direct_in: None });
        entry.route = route;
        match route {
            PathRoute::Relay { relay, channel } => {
                let key = (relay, channel);
                if entry.relay_in != Some(key) {
                    self.unlink(alias, entry.relay_in, None);
                    entry.relay_in = Some(key);
                }
                self.by_channel.insert(key, alias);
            }
            PathRoute::Direct(to) => {
                if entry.direct_in != Some(to) {
                    self.unlink(alias, None, entry.direct_in);
                    entry.direct_in = Some(to);
                }
                self.by_direct.insert(to, alias);
            }
        }
        self.aliases.insert(alias, entry);
        true
    }

    /// Drop reverse entries that still point to `alias`.
    fn unlink(&mut self, alias: SocketAddr, relay_in: Option<(SocketAddr, u32)>, direct_in: Option<SocketAddr>) {
        if let Some(key) = relay_in {
            if self.by_channel.get(&key) == Some(&alias) {
                self.by_channel.remove(&key);
            }
        }
        if let Some(to) = direct_in {
            if self.by_direct.get(&to) == Some(&alias) {
                self.by_direct.remove(&to);
            }
        }
    }

    /// The route of `alias`.
    pub fn route(&self, alias: &SocketAddr) -> Option<PathRoute> {
        self.aliases.get(alias).map(|e| e.route)
    }

    /// The alias a relay frame from `relay` on `channel` comes from.
    pub fn alias_for_relay(&self, relay: SocketAddr, channel: u32) -> Option<SocketAddr> {
        self.by_channel.get(&(relay, channel)).copied()
    }

    /// The alias a plain datagram from `source` comes from (when `source` is, or was, the direct
    /// path of an alias).
    pub fn alias_for_direct(&self, source: SocketAddr) -> Option<SocketAddr> {
        self.by_direct.get(&source).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_known_bytes() {
        let bytes = [0x22, 0x01, 0x02, 0x03, 0x04, 0x40, 0xaa];
        let frame = RelayFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(RelayRepr::parse(&frame), Ok(RelayRepr { channel: 0x0102_0304 }));
        assert_eq!(frame.payload(), &[0x40, 0xaa]);
        // A frame may carry nothing (the relay forwards it; the peer's endpoint ignores it).
        let empty = RelayFrame::new_checked(&bytes[..5]).unwrap();
        assert_eq!(empty.payload(), &[] as &[u8]);
    }

    #[test]
    fn rejects_short_and_foreign_bytes() {
        for len in 0..RELAY_HEADER_LEN {
            assert_eq!(RelayFrame::new_checked(&[0x22u8; 4][..len.min(4)]), Err(FrameError::Truncated));
        }
        let probe = [0x21, 1, 1, 0, 0, 0];
        let frame = RelayFrame::new_checked(&probe[..]).unwrap();
        assert_eq!(RelayRepr::parse(&frame), Err(FrameError::NotRelay));
    }

    #[test]
    fn emits_known_bytes() {
        let mut buf = [0u8; 8];
        let repr = RelayRepr { channel: 0xdead_beef };
        assert_eq!(repr.buffer_len(3), 8);
        let mut frame = RelayFrame::new_checked(&mut buf[..]).unwrap();
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[1, 2, 3]);
        assert_eq!(buf, [0x22, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        assert_eq!(repr.header(), [0x22, 0xde, 0xad, 0xbe, 0xef]);
    }

    proptest! {
        #[test]
        fn round_trip(channel in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let repr = RelayRepr { channel };
            let mut buf = vec![0u8; repr.buffer_len(payload.len())];
            let mut frame = RelayFrame::new_checked(&mut buf[..]).unwrap();
            repr.emit(&mut frame);
            frame.payload_mut().copy_from_slice(&payload);
            let frame = RelayFrame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(RelayRepr::parse(&frame), Ok(repr));
            prop_assert_eq!(frame.payload(), &payload[..]);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = RelayFrame::new_checked(&bytes[..]) {
                let _ = RelayRepr::parse(&frame);
                prop_assert_eq!(frame.payload().len(), bytes.len() - RELAY_HEADER_LEN);
            } else {
                prop_assert!(bytes.len() < RELAY_HEADER_LEN);
            }
        }

        #[test]
        fn framing_segments_keeps_each_datagram(
            segment in 1usize..1500,
            count in 1usize..8,
            last in 1usize..1500,
            channel in any::<u32>(),
        ) {
            let last = last.min(segment);
            let datagrams: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = if i + 1 == count { last } else { segment };
                    (0..len).map(|j| (i * 31 + j) as u8).collect()
                })
                .collect();
            let mut buf = datagrams.concat();
            let framed = frame_segments(&mut buf, segment, channel);
            prop_assert_eq!(framed, segment + RELAY_HEADER_LEN);
            let chunks: Vec<&[u8]> = buf.chunks(framed).collect();
            prop_assert_eq!(chunks.len(), count);
            for (chunk, datagram) in chunks.iter().zip(&datagrams) {
                let frame = RelayFrame::new_checked(*chunk).unwrap();
                prop_assert_eq!(RelayRepr::parse(&frame), Ok(RelayRepr { channel }));
                prop_assert_eq!(frame.payload(), &datagram[..]);
            }
        }
    }

    #[test]
    fn framing_a_single_datagram_with_zero_segment_size() {
        let mut buf = vec![0x40, 1, 2];
        assert_eq!(frame_segments(&mut buf, 0, 7), 8);
        assert_eq!(buf, [0x22, 0, 0, 0, 7, 0x40, 1, 2]);
        let mut empty = Vec::new();
        frame_segments(&mut empty, 0, 7);
        assert!(empty.is_empty());
    }

    fn allocation(now: Instant) -> RelayAllocation {
        RelayAllocation {
            channel: 9,
            a: addr("192.0.2.1:1000"),
            b: addr("198.51.100.2:2000"),
            expires: now + Duration::from_secs(60),
            byte_limit: 1_000_000,
            rate_limit: 100_000,
        }
    }

    #[test]
    fn forwards_both_ways_and_only_between_the_ends() {
        let now = Instant::now();
        let mut table = ForwardingTable::new();
        let alloc = allocation(now);
        table.install(alloc, now);
        assert_eq!(table.len(), 1);
        assert_eq!(table.forward(now, alloc.a, 9, 100), Ok(alloc.b));
        assert_eq!(table.forward(now, alloc.b, 9, 100), Ok(alloc.a));
        // An end written IPv4-mapped (dual-stack socket) is the same end.
        assert_eq!(table.forward(now, addr("[::ffff:192.0.2.1]:1000"), 9, 100), Ok(alloc.b));
        assert_eq!(table.forward(now, addr("192.0.2.1:1001"), 9, 100), Err(RelayDrop::WrongSource));
        assert_eq!(table.forward(now, addr("203.0.113.5:1000"), 9, 100), Err(RelayDrop::WrongSource));
        assert_eq!(table.forward(now, alloc.a, 10, 100), Err(RelayDrop::UnknownChannel));
        assert!(table.remove(9));
        assert!(!table.remove(9));
        assert_eq!(table.forward(now, alloc.a, 9, 100), Err(RelayDrop::UnknownChannel));
    }

    #[test]
    fn expired_allocations_drop_then_are_purged() {
        let now = Instant::now();
        let mut table = ForwardingTable::new();
        let alloc = allocation(now);
        table.install(alloc, now);
        let later = alloc.expires - Duration::from_millis(1);
        assert_eq!(table.forward(later, alloc.a, 9, 100), Ok(alloc.b));
        assert_eq!(table.forward(alloc.expires, alloc.a, 9, 100), Err(RelayDrop::Expired));
        assert_eq!(table.purge_expired(later), 0);
        assert_eq!(table.purge_expired(alloc.expires), 1);
        assert!(table.is_empty());
        // Renewal moves the expiry.
        table.install(alloc, now);
        table.install(RelayAllocation { expires: alloc.expires + Duration::from_secs(60), ..alloc }, now);
        assert_eq!(table.forward(alloc.expires, alloc.a, 9, 100), Ok(alloc.b));
    }

    #[test]
    fn byte_limit_counts_both_directions_and_survives_renewal() {
        let now = Instant::now();
        let mut table = ForwardingTable::new();
        let alloc = RelayAllocation { byte_limit: 1000, ..allocation(now) };
        table.install(alloc, now);
        assert_eq!(table.forward(now, alloc.a, 9, 600), Ok(alloc.b));
        assert_eq!(table.forward(now, alloc.b, 9, 500), Err(RelayDrop::ByteLimit));
        assert_eq!(table.forward(now, alloc.b, 9, 400), Ok(alloc.a));
        assert_eq!(table.forward(now, alloc.a, 9, 1), Err(RelayDrop::ByteLimit));
        // Renewing the same grant does not reset what it carried.
        table.install(alloc, now);
        assert_eq!(table.forward(now, alloc.a, 9, 1), Err(RelayDrop::ByteLimit));
        // A new pair of ends on the channel is a new allocation.
        let other = RelayAllocation { b: addr("198.51.100.3:2000"), ..alloc };
        table.install(other, now);
        assert_eq!(table.forward(now, alloc.a, 9, 1000), Ok(other.b));
    }

    #[test]
    fn rate_limit_is_a_token_bucket_per_direction() {
        let now = Instant::now();
        let mut table = ForwardingTable::new();
        // 20 KB/s: the bucket holds one second's worth (above MIN_RATE_BURST).
        let alloc =
            RelayAllocation { rate_limit: 20_000, expires: now + Duration::from_secs(86_400), ..allocation(now) };
        table.install(alloc, now);
        for _ in 0..20 {
            assert_eq!(table.forward(now, alloc.a, 9, 1000), Ok(alloc.b));
        }
        assert_eq!(table.forward(now, alloc.a, 9, 1000), Err(RelayDrop::RateLimit));
        // The other direction has its own bucket.
        assert_eq!(table.forward(now, alloc.b, 9, 1000), Ok(alloc.a));
        // 50 ms refill 1000 bytes, exactly one more frame.
        let t = now + Duration::from_millis(50);
        assert_eq!(table.forward(t, alloc.a, 9, 1000), Ok(alloc.b));
        assert_eq!(table.forward(t, alloc.a, 9, 1000), Err(RelayDrop::RateLimit));
        // Refills in tiny steps add up (no rounding loss): 1000 steps of 50 µs = 1000 bytes.
        let mut t = t;
        for _ in 0..1000 {
            t += Duration::from_micros(50);
            let _ = table.forward(t, alloc.a, 9, 1_000_000_000);
        }
        assert_eq!(table.forward(t, alloc.a, 9, 1000), Ok(alloc.b));
        // A long pause refills only up to the bucket's depth.
        let t = t + Duration::from_secs(3600);
        let mut passed = 0;
        while table.forward(t, alloc.a, 9, 1000).is_ok() {
            passed += 1;
        }
        assert_eq!(passed, 20);
        // A rate below the burst floor still passes whole packets; rate 0 passes nothing.
        let slow = RelayAllocation { channel: 1, rate_limit: 100, ..alloc };
        table.install(slow, now);
        assert_eq!(table.forward(now, slow.a, 1, 1500), Ok(slow.b));
        let closed = RelayAllocation { channel: 2, rate_limit: 0, ..alloc };
        table.install(closed, now);
        assert_eq!(table.forward(now, closed.a, 2, 1), Err(RelayDrop::RateLimit));
        // Rate drops charge no bytes.
        let tight = RelayAllocation { channel: 3, rate_limit: 0, byte_limit: 10, ..alloc };
        table.install(tight, now);
        let _ = table.forward(now, tight.a, 3, 10);
        table.install(RelayAllocation { rate_limit: 1000, ..tight }, now);
        assert_eq!(table.forward(now + Duration::from_secs(1), tight.a, 3, 10), Ok(tight.b));
    }

    #[test]
    fn aliases_are_240_slash_4() {
        assert!(is_alias(&addr("240.0.0.1:1")));
        assert!(is_alias(&addr("254.1.2.3:1")));
        assert!(is_alias(&addr("[::ffff:240.0.0.1]:1")));
        assert!(!is_alias(&addr("255.255.255.255:1")));
        assert!(!is_alias(&addr("239.255.255.255:1")));
        assert!(!is_alias(&addr("127.0.0.1:1")));
        assert!(!is_alias(&addr("[fe80::1]:1")));
    }

    #[test]
    fn alias_routes_map_both_ways() {
        let mut paths = PathTable::new();
        let alias = addr("240.0.0.1:7");
        let relay = addr("192.0.2.10:9000");
        let direct = addr("198.51.100.7:4433");
        assert!(paths.is_empty());
        assert!(!paths.set(addr("10.0.0.1:7"), Some(PathRoute::Direct(direct))), "not an alias");
        assert!(!paths.set(alias, Some(PathRoute::Direct(addr("240.0.0.2:1")))), "route to an alias");
        assert!(paths.is_empty());

        assert!(paths.set(alias, Some(PathRoute::Relay { relay, channel: 5 })));
        assert_eq!(paths.route(&alias), Some(PathRoute::Relay { relay, channel: 5 }));
        assert_eq!(paths.alias_for_relay(relay, 5), Some(alias));
        assert_eq!(paths.alias_for_relay(relay, 6), None);
        assert_eq!(paths.alias_for_direct(direct), None);

        // Moving to the direct path keeps accepting frames still in flight through the relay.
        assert!(paths.set(alias, Some(PathRoute::Direct(direct))));
        assert_eq!(paths.route(&alias), Some(PathRoute::Direct(direct)));
        assert_eq!(paths.alias_for_direct(direct), Some(alias));
        assert_eq!(paths.alias_for_relay(relay, 5), Some(alias));

        // A new relay channel replaces the old one.
        assert!(paths.set(alias, Some(PathRoute::Relay { relay, channel: 6 })));
        assert_eq!(paths.alias_for_relay(relay, 5), None);
        assert_eq!(paths.alias_for_relay(relay, 6), Some(alias));
        assert_eq!(paths.alias_for_direct(direct), Some(alias));

        // Another alias taking the same direct address takes it over; forgetting the first alias
        // leaves the second's mapping alone.
        let other = addr("240.0.0.2:7");
        assert!(paths.set(other, Some(PathRoute::Direct(direct))));
        assert_eq!(paths.alias_for_direct(direct), Some(other));
        assert!(paths.set(alias, None));
        assert_eq!(paths.route(&alias), None);
        assert_eq!(paths.alias_for_relay(relay, 6), None);
        assert_eq!(paths.alias_for_direct(direct), Some(other));
        assert!(paths.set(other, None));
        assert!(paths.is_empty());
        assert_eq!(paths.alias_for_direct(direct), None);
    }
}
