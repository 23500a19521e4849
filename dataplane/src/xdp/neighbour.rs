//! The next hop's MAC address for a remote address, learned from received frames: a server
//! answers through the hop each packet came from, so the source MAC of a datagram from `addr` is
//! where frames to `addr` go. The table keeps any `Copy` value per address (the backend keeps the
//! MAC and the local address the datagram was sent to). Sans-IO: the caller passes the time.
//!
//! An entry unused (neither learned again nor looked up) for [`Neighbours::expiry`] goes, so a
//! router replaced on the path is not written to forever; the table holds at most
//! [`Neighbours::capacity`] entries, the oldest learned going first, so spoofed sources cannot
//! grow it without bound. An unknown address has no hop: the caller sends through the kernel,
//! which resolves it (ARP, neighbour discovery).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::frame::MacAddress;

/// How long an entry lives without use.
pub const EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Entries kept at most.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry<H> {
    hop: H,
    last_used: Instant,
    /// Which learning put the address in the table: matches its place in `order`.
    learned: u64,
}

/// Remote address → next hop's MAC address (or another `H` learned from the frames from it).
#[derive(Debug)]
pub struct Neighbours<H = MacAddress> {
    entries: HashMap<IpAddr, Entry<H>>,
    /// Addresses in the order they were first learned, with the learning's number; a pair whose
    /// number no longer matches the entry (removed, learned anew) is stale and skipped.
    order: VecDeque<(IpAddr, u64)>,
    next_learned: u64,
    capacity: usize,
    expiry: Duration,
    last_sweep: Option<Instant>,
}

impl<H: Copy> Default for Neighbours<H> {
    fn default() -> Self {
        Self::new(CAPACITY, EXPIRY)
    }
}

impl<H: Copy> Neighbours<H> {
    /// A table of at most `capacity` entries (at least 1), each going after `expiry` unused.
    pub fn new(capacity: usize, expiry: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_learned: 0,
            capacity: capacity.max(1),
            expiry,
            last_sweep: None,
        }
    }

    /// Entries kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long an entry lives unused.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Entries in the table (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A frame from `addr` came through `hop`.
    pub fn learn(&mut self, addr: IpAddr, hop: H, now: Instant) {
        self.sweep_now_and_then(now);
        let addr = addr.to_canonical();
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.hop = hop;
            entry.last_used = now;
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((oldest, learned)) = self.order.pop_front() else { break };
            if self.entries.get(&oldest).is_some_and(|e| e.learned == learned) {
                self.entries.remove(&oldest);
            }
        }
        let learned = self.next_learned;
        self.next_learned += 1;
        self.entries.insert(addr, Entry { hop, last_used: now, learned });
        self.order.push_back((addr, learned));
    }

    /// The hop to send to `addr` through, if one was learned and has not expired; a hit counts as
    /// a use.
    pub fn lookup(&mut self, addr: IpAddr, now: Instant) -> Option<H> {
        let addr = addr.to_canonical();
        let entry = self.entries.get_mut(&addr)?;
        if now.saturating_duration_since(entry.last_used) >= self.expiry {
            self.entries.remove(&addr);
            return None;
        }
        entry.last_used = now;
        Some(entry.hop)
    }

    /// Drop every entry unused for the expiry time.
    pub fn sweep(&mut self, now: Instant) {
        let expiry = self.expiry;
        self.entries.retain(|_, entry| now.saturating_duration_since(entry.last_used) < expiry);
        let entries = &self.entries;
        self.order.retain(|(addr, learned)| entries.get(addr).is_some_and(|e| e.learned == *learned));
        self.last_sweep = Some(now);
    }

    /// Sweep at most once per tenth of the expiry time, so that learning stays cheap.
    fn sweep_now_and_then(&mut self, now: Instant) {
        match self.last_sweep {
            Some(last) if now.saturating_duration_since(last) < self.expiry / 10 => {}
            Some(_) => self.sweep(now),
            None => self.last_sweep = Some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn mac(last: u8) -> MacAddress {
        [2, 0, 0, 0, 0, last]
    }

    #[test]
    fn an_unknown_address_has_no_hop_and_a_learned_one_has_the_frames_source() {
        let now = Instant::now();
        let mut table = Neighbours::default();
        assert_eq!(table.lookup(ip(1), now), None);
        table.learn(ip(1), mac(7), now);
        assert_eq!(table.lookup(ip(1), now), Some(mac(7)));
        assert_eq!(table.lookup(ip(2), now), None);
        // The path changed: the newest hop wins.
        table.learn(ip(1), mac(8), now);
        assert_eq!(table.lookup(ip(1), now), Some(mac(8)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let now = Instant::now();
        let mut table = Neighbours::default();
        table.learn(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()), mac(1), now);
        assert_eq!(table.lookup(ip(1), now), Some(mac(1)));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        table.learn(v6, mac(2), now);
        assert_eq!(table.lookup(v6, now), Some(mac(2)));
    }

    #[test]
    fn entries_unused_for_the_expiry_time_go_and_used_ones_stay() {
        let start = Instant::now();
        let expiry = Duration::from_secs(300);
        let mut table = Neighbours::new(16, expiry);
        table.learn(ip(1), mac(1), start);
        table.learn(ip(2), mac(2), start);
        // ip(2) is used halfway; ip(1) is not.
        assert_eq!(table.lookup(ip(2), start + expiry / 2), Some(mac(2)));
        let later = start + expiry + Duration::from_secs(1);
        assert_eq!(table.lookup(ip(1), later), None, "unused for longer than the expiry");
        assert_eq!(table.lookup(ip(2), later), Some(mac(2)), "used within the expiry");
        // A sweep removes expired entries nobody looks up.
        table.learn(ip(3), mac(3), later);
        table.sweep(later + expiry);
        assert!(table.is_empty(), "{table:?}");
    }

    #[test]
    fn learning_sweeps_expired_entries_without_a_lookup() {
        let start = Instant::now();
        let expiry = Duration::from_secs(300);
        let mut table = Neighbours::new(CAPACITY, expiry);
        for last in 0..100 {
            table.learn(ip(last), mac(last), start);
        }
        table.learn(ip(200), mac(200), start + expiry * 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(ip(200), start + expiry * 2), Some(mac(200)));
    }

    #[test]
    fn a_full_table_forgets_the_oldest_learned_first() {
        let now = Instant::now();
        let mut table = Neighbours::new(3, EXPIRY);
        for last in 1..=3 {
            table.learn(ip(last), mac(last), now);
        }
        // Learning ip(1) again does not make it newer in the learning order, but does not
        // duplicate it either.
        table.learn(ip(1), mac(11), now);
        table.learn(ip(4), mac(4), now);
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup(ip(1), now), None, "the oldest learned went");
        for last in 2..=4 {
            assert_eq!(table.lookup(ip(last), now), Some(mac(last)));
        }
        // Many more addresses than the cap: the table never grows past it.
        for last in 10..=250 {
            table.learn(ip(last), mac(last), now);
            assert!(table.len() <= 3);
        }
        assert_eq!(table.lookup(ip(250), now), Some(mac(250)));
        assert!(table.order.len() <= 3, "no stale order entries pile up: {}", table.order.len());
    }
}
