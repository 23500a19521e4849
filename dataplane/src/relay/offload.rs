//! Which relay channels one core hands to the backend to forward below it (the af-xdp backend's
//! XDP program, `docs/af-xdp.md`), and what its counters mean for the allocation's limits.
//! Sans-IO: the caller passes the time and the map's readings, and does what the answers say.
//!
//! A channel is offered once this core has forwarded a frame in each direction on it (so both
//! ends' hops are known) and only through a backend that can reach both ends ([`RelayOffload`]).
//! The core that inserts the channel's entry owns it: it folds the entry's counters into its
//! [`super::ForwardingTable`] (one byte budget for both paths), renews and removes it. A channel
//! whose entry another core holds, that the map refused, or that went over its rate stays in user
//! space for the rest of its allocation.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use super::{RelayAllocation, MIN_RATE_BURST};
use crate::frame::MacAddress;

/// What the program counted for a channel: relay-frame bytes (UDP payloads, header included)
/// and frames, both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    /// Relay-frame bytes forwarded.
    pub bytes: u64,
    /// Frames forwarded.
    pub packets: u64,
}

/// One channel as the backend forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelEntry {
    /// One end and the MAC its frames are sent to.
    pub a: (SocketAddrV4, MacAddress),
    /// The other end.
    pub b: (SocketAddrV4, MacAddress),
    /// Forwarded while the backend's CLOCK_MONOTONIC nanoseconds are below this.
    pub expiry_ns: u64,
    /// Forwarded while `counters.bytes` plus the frame stays within this.
    pub byte_limit: u64,
    /// What the backend counted (and, when writing, what the entry starts with: a renewal
    /// keeps them).
    pub counters: ChannelCounters,
}

/// A backend that forwards relay channels below the core: the hook of
/// [`crate::backend::Backend::relay_offload`].
pub trait RelayOffload {
    /// The MAC frames to `end` are sent to, if the backend can send them there itself: an IPv4
    /// end whose frames arrived on its interface.
    fn hop(&mut self, end: SocketAddr, now: Instant) -> Option<MacAddress>;
    /// `at` on the backend's clock (CLOCK_MONOTONIC nanoseconds).
    fn clock_ns(&self, at: Instant) -> io::Result<u64>;
    /// Start forwarding `channel`; `false` when an entry for it exists (another core's).
    fn insert(&mut self, channel: u32, entry: &ChannelEntry) -> io::Result<bool>;
    /// Replace the entry of `channel`; `false` when there is none.
    fn replace(&mut self, channel: u32, entry: &ChannelEntry) -> io::Result<bool>;
    /// The entry of `channel` (with the counters the backend keeps), if it has one.
    fn read(&self, channel: u32) -> io::Result<Option<ChannelEntry>>;
    /// Stop forwarding `channel`; whether there was an entry.
    fn remove(&mut self, channel: u32) -> io::Result<bool>;
}

/// `at` on a clock that reads `clock_now` at `now` (both CLOCK_MONOTONIC on Linux; the
/// difference is what matters, so a clock read a moment apart costs that moment).
pub fn clock_at(at: Instant, now: Instant, clock_now: u64) -> u64 {
    let ahead = at.saturating_duration_since(now).as_nanos();
    let behind = now.saturating_duration_since(at).as_nanos();
    let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
    let behind = u64::try_from(behind).unwrap_or(u64::MAX);
    clock_now.saturating_add(ahead).saturating_sub(behind)
}

/// The entry forwarding `allocation` after user space carried `used` of its bytes, starting from
/// `counters`: the byte limit is what remains of the allocation's, on top of what the entry has
/// counted. `None` unless both ends are IPv4 (the program forwards IPv4 only).
pub fn entry_for(
    allocation: &RelayAllocation,
    used: u64,
    hops: (MacAddress, MacAddress),
    expiry_ns: u64,
    counters: ChannelCounters,
) -> Option<ChannelEntry> {
    let (SocketAddr::V4(a), SocketAddr::V4(b)) = (allocation.a, allocation.b) else { return None };
    Some(ChannelEntry {
        a: (a, hops.0),
        b: (b, hops.1),
        expiry_ns,
        byte_limit: allocation.byte_limit.saturating_sub(used).saturating_add(counters.bytes),
        counters,
    })
}

/// What the counters read since the last reading mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Forwarded below the core since the last reading.
    pub since: ChannelCounters,
    /// The bytes overdrew the allocation's token bucket (its rate limit, one second's burst and
    /// at least [`MIN_RATE_BURST`], as in user space). The map counts both directions together,
    /// so this is stricter than user space: two directions each above half the rate trip it too.
    pub over_rate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in the map yet: frames seen in each direction.
    Learning { from_a: bool, from_b: bool },
    /// In the map, owned by this core: the last reading, when it was taken, and the token
    /// bucket the bytes below the core are charged to (nano-bytes; negative: over the rate).
    Offloaded { read: ChannelCounters, read_at: Instant, tokens: i128 },
    /// Forwarded in user space for the rest of the allocation.
    UserSpace,
}

const NANOS: i128 = 1_000_000_000;

/// The token bucket's depth for `rate`, in nano-bytes (as `ForwardingTable`'s).
fn bucket_depth(rate: u32) -> i128 {
    if rate == 0 {
        return 0;
    }
    i128::from(u64::from(rate).max(MIN_RATE_BURST)) * NANOS
}

/// The offload state of one core's channels.
#[derive(Debug, Default)]
pub struct Offloads {
    channels: HashMap<u32, State>,
}

impl Offloads {
    /// User space forwarded a frame on `channel`, from end a (`from_a`) or end b; whether the
    /// channel should be offered to the backend now (both directions seen, not in the map).
    pub fn forwarded(&mut self, channel: u32, from_a: bool) -> bool {
        let state = self.channels.entry(channel).or_insert(State::Learning { from_a: false, from_b: false });
        match state {
            State::Learning { from_a: a, from_b: b } => {
                if from_a {
                    *a = true;
                } else {
                    *b = true;
                }
                *a && *b
            }
            State::Offloaded { .. } | State::UserSpace => false,
        }
    }

    /// The backend took `channel` (with zero counters) at `now`; its bucket starts full for
    /// `rate_limit`.
    pub fn offloaded(&mut self, channel: u32, now: Instant, rate_limit: u32) {
        let tokens = bucket_depth(rate_limit);
        self.channels.insert(channel, State::Offloaded { read: ChannelCounters::default(), read_at: now, tokens });
    }

    /// `channel` stays in user space until it is forgotten.
    pub fn keep_in_user_space(&mut self, channel: u32) {
        self.channels.insert(channel, State::UserSpace);
    }

    /// Whether this core owns an entry for `channel`.
    pub fn is_offloaded(&self, channel: u32) -> bool {
        matches!(self.channels.get(&channel), Some(State::Offloaded { .. }))
    }

    /// The channels this core owns entries for.
    pub fn offloaded_channels(&self) -> Vec<u32> {
        let owned = self.channels.iter().filter(|(_, s)| matches!(s, State::Offloaded { .. }));
        owned.map(|(channel, _)| *channel).collect()
    }

    /// Whether any channel is in the map: the core must wake to read the counters.
    pub fn any_offloaded(&self) -> bool {
        self.channels.values().any(|s| matches!(s, State::Offloaded { .. }))
    }

    /// Keep only the channels `keep` says (their allocations are still installed).
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.channels.retain(|channel, _| keep(*channel));
    }

    /// Forget `channel` (its allocation was removed or replaced): it starts learning afresh.
    pub fn forget(&mut self, channel: u32) {
        self.channels.remove(&channel);
    }

    /// The entry's counters read `reading` at `now`: what was forwarded since the last reading,
    /// charged to the channel's bucket for `rate_limit` (bytes per second). `None` unless this
    /// core owns the channel's entry.
    pub fn fold(&mut self, channel: u32, reading: ChannelCounters, now: Instant, rate_limit: u32) -> Option<Folded> {
        let Some(State::Offloaded { read, read_at, tokens }) = self.channels.get_mut(&channel) else { return None };
        let since = ChannelCounters {
            bytes: reading.bytes.saturating_sub(read.bytes),
            packets: reading.packets.saturating_sub(read.packets),
        };
        let elapsed = i128::try_from(now.saturating_duration_since(*read_at).as_nanos()).unwrap_or(i128::MAX);
        let refill = elapsed.saturating_mul(i128::from(rate_limit));
        *tokens = tokens.saturating_add(refill).min(bucket_depth(rate_limit));
        *tokens = tokens.saturating_sub(i128::from(since.bytes).saturating_mul(NANOS));
        *read = reading;
        *read_at = (*read_at).max(now);
        Some(Folded { since, over_rate: *tokens < 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MAC_A: MacAddress = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: MacAddress = [2, 0, 0, 0, 0, 0xb];

    fn allocation(now: Instant) -> RelayAllocation {
        RelayAllocation {
            channel: 7,
            a: "192.0.2.1:1000".parse().unwrap(),
            b: "198.51.100.2:2000".parse().unwrap(),
            expires: now + Duration::from_secs(60),
            byte_limit: 10_000,
            rate_limit: 1_000,
        }
    }

    #[test]
    fn a_channel_is_offered_once_both_directions_were_forwarded_and_only_then() {
        let now = Instant::now();
        let mut offloads = Offloads::default();
        assert!(!offloads.forwarded(7, true));
        assert!(!offloads.forwarded(7, true), "one direction twice is still one direction");
        assert!(offloads.forwarded(7, false));
        // Offered until taken; then not any more.
        assert!(offloads.forwarded(7, true));
        offloads.offloaded(7, now, 1_000);
        assert!(offloads.is_offloaded(7) && offloads.any_offloaded());
        assert!(!offloads.forwarded(7, false));
        assert_eq!(offloads.offloaded_channels(), vec![7]);
        // Kept in user space: never offered again until forgotten.
        offloads.keep_in_user_space(7);
        assert!(!offloads.forwarded(7, true) && !offloads.forwarded(7, false));
        assert!(!offloads.any_offloaded());
        offloads.forget(7);
        assert!(!offloads.forwarded(7, false));
        assert!(offloads.forwarded(7, true));
    }

    #[test]
    fn the_entry_carries_what_remains_of_the_byte_limit_and_keeps_its_counters() {
        let now = Instant::now();
        let alloc = allocation(now);
        let entry = entry_for(&alloc, 2_500, (MAC_A, MAC_B), 99, ChannelCounters::default()).unwrap();
        assert_eq!(entry.byte_limit, 7_500, "what user space has not carried");
        assert_eq!(
            (entry.a, entry.b),
            (("192.0.2.1:1000".parse().unwrap(), MAC_A), ("198.51.100.2:2000".parse().unwrap(), MAC_B))
        );
        assert_eq!(entry.expiry_ns, 99);
        // A renewal after the program carried 3,000 (folded into `used`): the entry's own count
        // goes on, and its limit still ends at the allocation's.
        let kept = ChannelCounters { bytes: 3_000, packets: 3 };
        let renewed = entry_for(&alloc, 5_500, (MAC_A, MAC_B), 199, kept).unwrap();
        assert_eq!((renewed.byte_limit, renewed.counters), (7_500, kept));
        // Used up: nothing more.
        assert_eq!(entry_for(&alloc, 20_000, (MAC_A, MAC_B), 1, ChannelCounters::default()).unwrap().byte_limit, 0);
        let v6 = RelayAllocation { b: "[2001:db8::1]:2000".parse().unwrap(), ..alloc };
        assert_eq!(entry_for(&v6, 0, (MAC_A, MAC_B), 1, ChannelCounters::default()), None, "IPv4 only");
    }

    #[test]
    fn folding_gives_what_was_forwarded_since_the_last_reading_charged_to_the_rate_bucket() {
        let now = Instant::now();
        let mut offloads = Offloads::default();
        assert_eq!(offloads.fold(7, ChannelCounters::default(), now, 1_000), None, "not owned");
        // 1,000 B/s: the bucket holds MIN_RATE_BURST (16 KiB) and starts full.
        offloads.offloaded(7, now, 1_000);
        let t1 = now + Duration::from_secs(1);
        let folded = offloads.fold(7, ChannelCounters { bytes: 16_384, packets: 2 }, t1, 1_000).unwrap();
        assert_eq!(folded, Folded { since: ChannelCounters { bytes: 16_384, packets: 2 }, over_rate: false });
        // A second refills 1,000 bytes: 1,000 more pass, 1,001 do not.
        let t2 = t1 + Duration::from_secs(1);
        let folded = offloads.fold(7, ChannelCounters { bytes: 17_384, packets: 3 }, t2, 1_000).unwrap();
        assert_eq!(folded, Folded { since: ChannelCounters { bytes: 1_000, packets: 1 }, over_rate: false });
        let t3 = t2 + Duration::from_millis(500);
        let folded = offloads.fold(7, ChannelCounters { bytes: 17_885, packets: 4 }, t3, 1_000).unwrap();
        assert_eq!(folded, Folded { since: ChannelCounters { bytes: 501, packets: 1 }, over_rate: true });
        // Readings in tiny steps refill the same (no rounding loss), and nothing is folded twice.
        let mut offloads = Offloads::default();
        offloads.offloaded(8, now, 1_000);
        let mut t = now;
        let mut reading = ChannelCounters { bytes: 16_384, packets: 1 };
        assert!(!offloads.fold(8, reading, t, 1_000).unwrap().over_rate);
        for _ in 0..1_000 {
            t += Duration::from_micros(1_000);
            reading.bytes += 1;
            assert!(!offloads.fold(8, reading, t, 1_000).unwrap().over_rate, "1 byte per ms is the rate");
        }
        assert_eq!(offloads.fold(8, reading, t, 1_000).unwrap().since, ChannelCounters::default());
    }

    #[test]
    fn an_instant_converts_to_the_other_clock_by_its_distance_from_now() {
        let now = Instant::now();
        assert_eq!(clock_at(now + Duration::from_secs(2), now, 5_000_000_000), 7_000_000_000);
        assert_eq!(clock_at(now, now + Duration::from_secs(1), 5_000_000_000), 4_000_000_000);
        assert_eq!(clock_at(now, now + Duration::from_secs(9), 5), 0, "no wrap below zero");
    }
}
