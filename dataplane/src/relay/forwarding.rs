//! The allocations one core forwards between two peers (bootstrap role): who may send on a
//! channel, until when, how many bytes and how fast.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use crate::address::unmapped;

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

    /// Install or renew an allocation (its ends unmapped: they come from another thread). A
    /// renewal with the same two ends keeps the bytes already carried and the buckets' state (a
    /// grant cannot be renewed to reset its limits); other ends start afresh.
    pub fn install(&mut self, allocation: RelayAllocation, now: Instant) {
        let allocation = RelayAllocation { a: unmapped(allocation.a), b: unmapped(allocation.b), ..allocation };
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

    /// The allocation of `channel` and the frame bytes it carried so far.
    pub fn get(&self, channel: u32) -> Option<(&RelayAllocation, u64)> {
        self.entries.get(&channel).map(|e| (&e.allocation, e.used))
    }

    /// Charge `bytes` forwarded elsewhere (by the XDP program) to `channel`'s byte limit.
    pub fn charge(&mut self, channel: u32, bytes: u64) {
        if let Some(entry) = self.entries.get_mut(&channel) {
            entry.used = entry.used.saturating_add(bytes);
        }
    }

    /// Empty both of `channel`'s token buckets at `now`: its frames were forwarded elsewhere as
    /// fast as they came, so its rate limit starts from nothing rather than from a full burst.
    pub fn empty_buckets(&mut self, channel: u32, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&channel) {
            for bucket in [&mut entry.a_to_b, &mut entry.b_to_a] {
                *bucket = TokenBucket { tokens: 0, last: now };
            }
        }
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
    /// is dropped (nothing is charged then). `source` is as the backend reported it (unmapped).
    pub fn forward(
        &mut self,
        now: Instant,
        source: SocketAddr,
        channel: u32,
        len: usize,
    ) -> Result<SocketAddr, RelayDrop> {
        let entry = self.entries.get_mut(&channel).ok_or(RelayDrop::UnknownChannel)?;
        let allocation = &entry.allocation;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
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
        // An end written IPv4-mapped (dual-stack socket) is the same end, once received.
        assert_eq!(table.forward(now, unmapped(addr("[::ffff:192.0.2.1]:1000")), 9, 100), Ok(alloc.b));
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
}
