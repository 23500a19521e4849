//! What one core does with the relay frames it receives: unwrap those from the relay of one of
//! its path aliases (peer role), forward those between the ends of an allocation (bootstrap role),
//! gathering each burst into one GSO send; and the upkeep of its forwarding table, with the
//! channels handed to the backend to forward below the core (`offload.rs`: the decisions; here
//! their I/O through [`RelayOffload`]).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use quinn_proto::EcnCodepoint;

use crate::address::unmapped;
use crate::backend::{Backend, OutBatch, RecvMeta};
use crate::cid::Generation;
use crate::relay::offload::{entry_for, ChannelCounters, ChannelEntry, Offloads, RelayOffload};
use crate::relay::{ForwardingTable, RelayAllocation, RelayDrop, RelayFrameView, RELAY_HEADER_LEN};
use crate::stats::{bump, CoreStats};
use crate::transmit::{Transmitter, MAX_GSO_BYTES};

/// How often expired relay allocations are swept from the forwarding table (until then their
/// frames count as `expired`).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Relay frames on a channel this core does not know, held until an alias routes over it: the
/// bootstrap grants a relay to both ends at once and the requester starts its handshake at once,
/// so its first frames can arrive before the grant that installs the channel here. Without the
/// hold they are lost and the handshake waits out a 1 s probe timeout.
const EARLY_FRAMES_HELD: usize = 16;
/// How long an early frame is held (the requester retransmits after about this long anyway).
const EARLY_HOLD: Duration = Duration::from_secs(1);

/// What a received relay frame leaves for the core.
pub(crate) enum Received {
    /// Nothing: forwarded, queued to forward, or dropped and counted.
    Handled,
    /// The datagram inside a frame from an alias's relay, now from the alias.
    FromAlias(RecvMeta, BytesMut),
}

/// A relay frame on a channel not (yet) known here.
struct EarlyFrame {
    arrived: Instant,
    meta: RecvMeta,
    channel: u32,
    data: BytesMut,
}

/// One core's relay state: the allocations it forwards, and the burst being gathered.
pub(crate) struct RelayIo {
    table: ForwardingTable,
    /// Frames on unknown channels, oldest first, at most [`EARLY_FRAMES_HELD`].
    early: VecDeque<EarlyFrame>,
    /// Forwarded relay frames being gathered into one GSO send (same destination and size);
    /// sent once the received batch is handled.
    forwarding: Option<OutBatch>,
    next_sweep: Instant,
    stats: Arc<CoreStats>,
    /// This process's generation: frames on another one's channels are counted apart.
    generation: Generation,
    /// Channels forwarded below the core (the af-xdp backend's XDP program).
    offloads: Offloads,
}

impl RelayIo {
    pub(crate) fn new(stats: Arc<CoreStats>, generation: Generation) -> Self {
        Self {
            table: ForwardingTable::new(),
            early: VecDeque::new(),
            forwarding: None,
            next_sweep: Instant::now(),
            stats,
            generation,
            offloads: Offloads::default(),
        }
    }

    /// Forward relay frames on this allocation (install or renew). A renewal of a channel this
    /// core put below it renews the entry, keeping its counters; other ends start afresh.
    pub(crate) fn install<B: Backend>(&mut self, allocation: RelayAllocation, now: Instant, backend: &mut B) {
        self.install_with(allocation, now, backend.relay_offload());
    }

    fn install_with(&mut self, allocation: RelayAllocation, now: Instant, offload: Option<&mut dyn RelayOffload>) {
        let channel = allocation.channel;
        let same_ends = |old: &RelayAllocation| (old.a, old.b) == (unmapped(allocation.a), unmapped(allocation.b));
        let renewal = self.table.get(channel).is_some_and(|(old, _)| same_ends(old));
        if !renewal {
            if let Some(offload) = offload.filter(|_| self.offloads.is_offloaded(channel)) {
                self.withdraw(channel, now, offload);
            }
            self.offloads.forget(channel);
            self.table.install(allocation, now);
        } else {
            self.table.install(allocation, now);
            if let Some(offload) = offload.filter(|_| self.offloads.is_offloaded(channel)) {
                self.renew_offload(channel, now, offload);
            }
        }
        self.publish();
    }

    /// Stop forwarding `channel`.
    pub(crate) fn remove<B: Backend>(&mut self, channel: u32, now: Instant, backend: &mut B) {
        self.remove_with(channel, now, backend.relay_offload());
    }

    fn remove_with(&mut self, channel: u32, now: Instant, offload: Option<&mut dyn RelayOffload>) {
        if let Some(offload) = offload.filter(|_| self.offloads.is_offloaded(channel)) {
            self.withdraw(channel, now, offload);
        }
        self.offloads.forget(channel);
        self.table.remove(channel);
        self.publish();
    }

    /// Read the counters of the channels below the core and forget the allocations that
    /// expired, at most once per [`SWEEP_INTERVAL`].
    pub(crate) fn sweep<B: Backend>(&mut self, now: Instant, backend: &mut B) {
        self.sweep_with(now, backend.relay_offload());
    }

    fn sweep_with(&mut self, now: Instant, offload: Option<&mut dyn RelayOffload>) {
        if now < self.next_sweep || (self.table.is_empty() && !self.offloads.any_offloaded()) {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        if let Some(offload) = offload {
            self.check_offloads(now, offload);
        }
        if self.table.purge_expired(now) > 0 {
            let table = &self.table;
            self.offloads.retain(|channel| table.get(channel).is_some());
            self.publish();
        }
    }

    /// When the core must wake to sweep: while channels are below it, their counters are read
    /// (metrics, limits) even if no frame reaches the core.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.offloads.any_offloaded().then_some(self.next_sweep)
    }

    /// Take back every channel below the core (the core stops; the entries would outlive it in
    /// the map until the program goes).
    pub(crate) fn withdraw_all<B: Backend>(&mut self, backend: &mut B) {
        self.withdraw_all_with(Instant::now(), backend.relay_offload());
    }

    fn withdraw_all_with(&mut self, now: Instant, offload: Option<&mut dyn RelayOffload>) {
        let Some(offload) = offload else { return };
        for channel in self.offloads.offloaded_channels() {
            self.withdraw(channel, now, offload);
        }
    }

    /// Fold each channel's counters in, and take back those whose allocation expired, was
    /// removed or is used up (their frames are then dropped and counted by user space), and
    /// those over their rate (their frames then meet the user-space token bucket).
    fn check_offloads(&mut self, now: Instant, offload: &mut dyn RelayOffload) {
        for channel in self.offloads.offloaded_channels() {
            let Some((_, over_rate)) = self.fold(channel, now, offload) else { continue };
            let done = self
                .table
                .get(channel)
                .is_none_or(|(allocation, used)| now >= allocation.expires || used >= allocation.byte_limit);
            if done || over_rate {
                self.withdraw(channel, now, offload);
            }
            if over_rate && !done {
                self.table.empty_buckets(channel, now);
            }
        }
    }

    /// Put `channel` below the core if the backend can reach both ends (an IPv6 end or one on
    /// another interface has no hop: never); it stays in user space for good when the backend
    /// cannot take it (another core's entry, a full map).
    fn try_offload(&mut self, channel: u32, now: Instant, offload: &mut dyn RelayOffload) {
        let Some((&allocation, used)) = self.table.get(channel) else { return };
        let (Some(mac_a), Some(mac_b)) = (offload.hop(allocation.a, now), offload.hop(allocation.b, now)) else {
            // A hop not learned (yet): the next frame tries again.
            return;
        };
        let entry = offload
            .clock_ns(allocation.expires)
            .ok()
            .and_then(|expiry_ns| entry_for(&allocation, used, (mac_a, mac_b), expiry_ns, ChannelCounters::default()));
        let inserted = match entry.map(|entry| offload.insert(channel, &entry)) {
            Some(Ok(inserted)) => inserted,
            Some(Err(error)) => {
                tracing::debug!(channel, %error, "relay channel not offloaded; forwarded by the core");
                false
            }
            None => false,
        };
        if inserted {
            self.offloads.offloaded(channel, now, allocation.rate_limit);
        } else {
            self.offloads.keep_in_user_space(channel);
        }
    }

    /// Renew the entry of `channel` from its (renewed) allocation, keeping its counters and hops.
    fn renew_offload(&mut self, channel: u32, now: Instant, offload: &mut dyn RelayOffload) {
        let Some((entry, _)) = self.fold(channel, now, offload) else { return };
        let Some((&allocation, used)) = self.table.get(channel) else { return };
        let renewed = offload
            .clock_ns(allocation.expires)
            .ok()
            .and_then(|expiry_ns| entry_for(&allocation, used, (entry.a.1, entry.b.1), expiry_ns, entry.counters));
        // The counts between the reading and the replacement are lost to the new entry: a few
        // microseconds of frames (see docs/af-xdp.md).
        match renewed.map(|renewed| offload.replace(channel, &renewed)) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => self.offloads.forget(channel),
            Some(Err(error)) => {
                tracing::debug!(channel, %error, "relay channel not renewed below the core; forwarded by the core");
                self.withdraw(channel, now, offload);
            }
            None => self.withdraw(channel, now, offload),
        }
    }

    /// Read `channel`'s entry and fold what the backend forwarded since the last reading into
    /// the table's byte count and the relay's counters: the entry, and whether it went over the
    /// rate. `None` when this core owns no entry for it (one that vanished is forgotten).
    fn fold(&mut self, channel: u32, now: Instant, offload: &mut dyn RelayOffload) -> Option<(ChannelEntry, bool)> {
        let entry = match offload.read(channel) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                self.offloads.forget(channel);
                return None;
            }
            Err(error) => {
                tracing::debug!(channel, %error, "cannot read a relay channel's counters");
                return None;
            }
        };
        let rate_limit = self.table.get(channel).map_or(u32::MAX, |(allocation, _)| allocation.rate_limit);
        let folded = self.offloads.fold(channel, entry.counters, now, rate_limit)?;
        self.table.charge(channel, folded.since.bytes);
        bump(&self.stats.relay_forwarded, folded.since.packets);
        bump(&self.stats.relay_forwarded_bytes, folded.since.bytes);
        bump(&self.stats.relay_xdp_forwarded, folded.since.packets);
        Some((entry, folded.over_rate))
    }

    /// Take `channel` back from below the core, its last counts folded in: its frames reach
    /// user space again, which keeps it for the rest of the allocation.
    fn withdraw(&mut self, channel: u32, now: Instant, offload: &mut dyn RelayOffload) {
        if self.fold(channel, now, offload).is_none() && !self.offloads.is_offloaded(channel) {
            return;
        }
        if let Err(error) = offload.remove(channel) {
            tracing::warn!(channel, %error, "cannot remove a relay channel from the XDP map");
        }
        self.offloads.keep_in_user_space(channel);
    }
    fn publish(&self) {
        self.stats.relay_allocations.store(self.table.len() as u64, Ordering::Relaxed);
    }

    /// A relay frame: from the relay of one of our aliases (peer role), or to forward between the
    /// ends of an allocation (bootstrap role).
    pub(crate) fn receive<B: Backend>(
        &mut self,
        now: Instant,
        meta: RecvMeta,
        mut data: BytesMut,
        tx: &mut Transmitter<B>,
    ) -> Received {
        let Ok(channel) = RelayFrameView::new_checked(&data[..]).map(|frame| frame.channel()) else {
            self.stats.relay_drop(RelayDrop::Malformed);
            return Received::Handled;
        };
        if let Some(alias) = tx.paths.alias_for_relay(meta.remote, channel) {
            bump(&self.stats.alias_received_relay, 1);
            data.advance(RELAY_HEADER_LEN);
            let meta = RecvMeta { remote: alias, len: data.len(), stride: data.len(), ..meta };
            return Received::FromAlias(meta, data);
        }
        // A frame from an end on a channel below the core is one the program passed up (over
        // the limit, expired, or not seen by it): its counts first, so that user space judges it
        // on the budget both share. (Others are dropped without a read: no system call for
        // each spoofed frame.)
        let below = self.offloads.is_offloaded(channel)
            && self
                .table
                .get(channel)
                .is_some_and(|(allocation, _)| [allocation.a, allocation.b].contains(&meta.remote));
        if let Some(offload) = tx.backend.relay_offload().filter(|_| below) {
            self.fold(channel, now, offload);
        }
        match self.table.forward(now, meta.remote, channel, data.len()) {
            // Forwarded unchanged, from the local address it arrived on, with its ECN codepoint
            // (as a TURN relay does, RFC 8656 §12), so congestion marks reach the peer.
            Ok(destination) => {
                self.forward(tx, destination, meta.ecn, meta.local_ip, &data);
                if let Some(offload) = tx.backend.relay_offload() {
                    let from_a = self.table.get(channel).is_some_and(|(allocation, _)| allocation.b == destination);
                    if self.offloads.forwarded(channel, from_a) {
                        self.try_offload(channel, now, offload);
                    }
                }
            }
            Err(reason @ (RelayDrop::Expired | RelayDrop::ByteLimit)) if below => {
                // Done below the core: its frames meet user space's count from now on.
                if let Some(offload) = tx.backend.relay_offload() {
                    self.withdraw(channel, now, offload);
                }
                self.stats.relay_drop(reason);
            }
            Err(RelayDrop::UnknownChannel) => {
                // Counted now, as every frame on a channel unknown when it arrives; one delivered
                // later is counted again in `alias_received_relay`.
                self.count_unknown(channel);
                self.hold_early(now, meta, channel, data);
            }
            Err(reason) => self.stats.relay_drop(reason),
        }
        Received::Handled
    }

    /// Keep a frame on an unknown channel a moment, forgetting the oldest and the stale ones.
    fn hold_early(&mut self, now: Instant, meta: RecvMeta, channel: u32, data: BytesMut) {
        while self.early.front().is_some_and(|oldest| {
            self.early.len() >= EARLY_FRAMES_HELD || now.saturating_duration_since(oldest.arrived) > EARLY_HOLD
        }) {
            self.early.pop_front();
        }
        self.early.push_back(EarlyFrame { arrived: now, meta, channel, data });
    }

    fn count_unknown(&self, channel: u32) {
        // The high half of a channel names the generation that allocated it (0: none).
        if [0, self.generation].contains(&((channel >> 16) as Generation)) {
            self.stats.relay_drop(RelayDrop::UnknownChannel);
        } else {
            bump(&self.stats.foreign_generation, 1);
        }
    }

    /// The held frames from `relay` on `channel`, now that `alias` routes over it: each as the
    /// datagram inside it, from the alias. Stale ones are forgotten.
    pub(crate) fn take_early(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        channel: u32,
        alias: SocketAddr,
    ) -> Vec<(RecvMeta, BytesMut)> {
        if self.early.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        self.early.retain_mut(|frame| {
            if now.saturating_duration_since(frame.arrived) > EARLY_HOLD {
                return false;
            }
            if frame.meta.remote != relay || frame.channel != channel {
                return true;
            }
            let mut data = std::mem::take(&mut frame.data);
            data.advance(RELAY_HEADER_LEN);
            taken.push((RecvMeta { remote: alias, len: data.len(), stride: data.len(), ..frame.meta }, data));
            false
        });
        bump(&self.stats.alias_received_relay, taken.len() as u64);
        taken
    }

    /// Queue a frame to forward. A peer's frames come in bursts of equal size (full packets), so
    /// consecutive frames to one destination share a GSO send, as the core's own transmits do:
    /// one send per burst rather than per frame keeps the backend's send slots free.
    fn forward<B: Backend>(
        &mut self,
        tx: &mut Transmitter<B>,
        destination: SocketAddr,
        ecn: Option<EcnCodepoint>,
        src_ip: Option<IpAddr>,
        frame: &[u8],
    ) {
        let max_segments = tx.backend.max_gso_segments();
        if let Some(batch) = &mut self.forwarding {
            let joins = batch.destination == destination
                && batch.ecn == ecn
                && batch.src_ip == src_ip
                && frame.len() <= batch.segment_size
                // Only the last segment may be shorter: the batch must end on a full one.
                && batch.buf.len() % batch.segment_size.max(1) == 0
                && batch.segments() < max_segments
                && batch.buf.len() + frame.len() <= MAX_GSO_BYTES;
            if joins {
                batch.buf.extend_from_slice(frame);
                return;
            }
        }
        self.flush(tx);
        let mut buf = tx.backend.take_buffer();
        buf.extend_from_slice(frame);
        self.forwarding = Some(OutBatch { destination, ecn, src_ip, segment_size: frame.len(), buf });
    }

    /// Send the burst being gathered, if any.
    pub(crate) fn flush<B: Backend>(&mut self, tx: &mut Transmitter<B>) {
        let Some(batch) = self.forwarding.take() else { return };
        let (frames, bytes) = (batch.segments() as u64, batch.buf.len() as u64);
        let stats = &self.stats;
        if tx.is_blocked() {
            if let Some(counter) = stats.relay_drops.get(RelayDrop::SendBlocked.index()) {
                bump(counter, frames);
            }
            return;
        }
        // Counted before the send, so a reader who saw the datagram arrive also sees the count.
        bump(&stats.relay_forwarded, frames);
        bump(&stats.relay_forwarded_bytes, bytes);
        tx.send_raw(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::read;

    fn frame(channel: u32, payload: &[u8]) -> BytesMut {
        let mut data = BytesMut::new();
        data.extend_from_slice(&[crate::relay::RELAY_MARKER]);
        data.extend_from_slice(&channel.to_be_bytes());
        data.extend_from_slice(payload);
        data
    }

    fn meta(remote: &str, len: usize) -> RecvMeta {
        RecvMeta { remote: remote.parse().unwrap(), len, stride: len, ecn: None, local_ip: None }
    }

    #[test]
    fn frames_before_their_channel_are_delivered_once_it_is_routed() {
        let stats = Arc::new(CoreStats::default());
        let mut relay = RelayIo::new(stats.clone(), 1);
        let now = Instant::now();
        let bootstrap: SocketAddr = "192.0.2.1:9000".parse().unwrap();
        let alias: SocketAddr = "240.0.0.1:1".parse().unwrap();
        let channel = 0x0007_0001;
        relay.hold_early(now, meta("192.0.2.1:9000", 9), channel, frame(channel, b"Init"));
        relay.hold_early(now, meta("192.0.2.1:9000", 9), channel + 1, frame(channel + 1, b"other"));
        relay.hold_early(now, meta("198.51.100.9:9000", 9), channel, frame(channel, b"spoof"));
        let taken = relay.take_early(now + Duration::from_millis(6), bootstrap, channel, alias);
        assert_eq!(taken.len(), 1, "only the frame from that relay on that channel");
        assert_eq!(taken[0].0.remote, alias);
        assert_eq!(&taken[0].1[..], b"Init", "the datagram inside the frame");
        assert!(relay.take_early(now, bootstrap, channel, alias).is_empty(), "delivered once");
        assert_eq!(stats.alias_received_relay.load(Ordering::Relaxed), 1);
        // The others go stale.
        let later = now + EARLY_HOLD + Duration::from_millis(1);
        assert!(relay.take_early(later, bootstrap, channel + 1, alias).is_empty(), "stale frames are not delivered");
        assert!(relay.early.is_empty());
    }

    #[test]
    fn at_most_so_many_frames_are_held() {
        let mut relay = RelayIo::new(Arc::new(CoreStats::default()), 1);
        let now = Instant::now();
        for _ in 0..EARLY_FRAMES_HELD + 5 {
            relay.hold_early(now, meta("192.0.2.1:9000", 9), 0x0001_0009, frame(0x0001_0009, b"x"));
        }
        assert_eq!(relay.early.len(), EARLY_FRAMES_HELD, "the oldest forgotten");
    }

    /// A map and hop table in memory; `forward` plays the program.
    #[derive(Default)]
    struct FakeOffload {
        entries: std::collections::HashMap<u32, ChannelEntry>,
        hops: std::collections::HashMap<SocketAddr, crate::frame::MacAddress>,
        clock_base: Option<Instant>,
    }

    impl FakeOffload {
        fn with_hops(ends: &[SocketAddr]) -> Self {
            let hops = ends.iter().enumerate().map(|(i, end)| (*end, [2, 0, 0, 0, 0, i as u8])).collect();
            Self { hops, ..Self::default() }
        }

        fn forward(&mut self, channel: u32, bytes: u64) {
            let entry = self.entries.get_mut(&channel).unwrap();
            entry.counters.bytes += bytes;
            entry.counters.packets += 1;
        }
    }

    impl RelayOffload for FakeOffload {
        fn hop(&mut self, end: SocketAddr, _now: Instant) -> Option<crate::frame::MacAddress> {
            self.hops.get(&end).copied()
        }
        fn clock_ns(&self, at: Instant) -> std::io::Result<u64> {
            // Nanoseconds since the base instant, plus a second.
            let base = self.clock_base.unwrap();
            Ok(crate::relay::offload::clock_at(at, base, 1_000_000_000))
        }
        fn insert(&mut self, channel: u32, entry: &ChannelEntry) -> std::io::Result<bool> {
            if self.entries.contains_key(&channel) {
                return Ok(false);
            }
            self.entries.insert(channel, *entry);
            Ok(true)
        }
        fn replace(&mut self, channel: u32, entry: &ChannelEntry) -> std::io::Result<bool> {
            Ok(self.entries.insert(channel, *entry).is_some())
        }
        fn read(&self, channel: u32) -> std::io::Result<Option<ChannelEntry>> {
            Ok(self.entries.get(&channel).copied())
        }
        fn remove(&mut self, channel: u32) -> std::io::Result<bool> {
            Ok(self.entries.remove(&channel).is_some())
        }
    }

    const CHANNEL: u32 = 0x0001_0009;

    fn allocation(now: Instant) -> RelayAllocation {
        RelayAllocation {
            channel: CHANNEL,
            a: "192.0.2.1:1000".parse().unwrap(),
            b: "198.51.100.2:2000".parse().unwrap(),
            expires: now + Duration::from_secs(60),
            byte_limit: 100_000,
            rate_limit: u32::MAX,
        }
    }

    /// `relay` with `alloc` installed, a frame forwarded each way by user space (100 bytes each),
    /// and the channel offered to `offload`.
    fn offloaded(alloc: RelayAllocation, now: Instant, offload: &mut FakeOffload) -> (RelayIo, Arc<CoreStats>) {
        let stats = Arc::new(CoreStats::default());
        let mut relay = RelayIo::new(stats.clone(), 1);
        offload.clock_base = Some(now);
        relay.install_with(alloc, now, Some(offload));
        for (from, from_a) in [(alloc.a, true), (alloc.b, false)] {
            relay.table.forward(now, from, CHANNEL, 100).unwrap();
            if relay.offloads.forwarded(CHANNEL, from_a) {
                relay.try_offload(CHANNEL, now, offload);
            }
        }
        (relay, stats)
    }

    #[test]
    fn a_channel_goes_below_the_core_with_what_remains_and_a_renewal_keeps_its_counters() {
        let now = Instant::now();
        let alloc = allocation(now);
        let mut offload = FakeOffload::with_hops(&[alloc.a, alloc.b]);
        let (mut relay, stats) = offloaded(alloc, now, &mut offload);
        let entry = offload.entries[&CHANNEL];
        assert_eq!(entry.byte_limit, 100_000 - 200, "what user space has not carried");
        assert_eq!(entry.expiry_ns, 61_000_000_000, "the allocation's expiry on the backend's clock");
        assert_eq!((entry.a.1, entry.b.1), ([2, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 1]));
        // The program forwards 3 frames; a renewal an hour on keeps their counts and the budget.
        for _ in 0..3 {
            offload.forward(CHANNEL, 1_000);
        }
        let renewed = RelayAllocation { expires: now + Duration::from_secs(3_600), ..alloc };
        relay.install_with(renewed, now, Some(&mut offload));
        let entry = offload.entries[&CHANNEL];
        assert_eq!(entry.counters, ChannelCounters { bytes: 3_000, packets: 3 });
        assert_eq!(entry.byte_limit, 100_000 - 200, "the entry's own count goes on against the same limit");
        assert_eq!(entry.expiry_ns, 3_601_000_000_000);
        assert_eq!(relay.table.get(CHANNEL).unwrap().1, 3_200, "one budget: user space's and the program's bytes");
        assert_eq!(read(&stats.relay_xdp_forwarded), 3);
        assert_eq!((read(&stats.relay_forwarded), read(&stats.relay_forwarded_bytes)), (3, 3_000));
        // Another core gets the same command: the entry is this core's, nothing changes there.
        let mut other = RelayIo::new(Arc::new(CoreStats::default()), 1);
        other.install_with(renewed, now, Some(&mut offload));
        assert_eq!(offload.entries[&CHANNEL].counters.packets, 3);
        // Other ends on the channel: a new allocation, taken back from the program.
        let moved = RelayAllocation { b: "198.51.100.3:2000".parse().unwrap(), ..alloc };
        offload.forward(CHANNEL, 500);
        relay.install_with(moved, now, Some(&mut offload));
        assert!(offload.entries.is_empty());
        assert_eq!(read(&stats.relay_xdp_forwarded), 4, "the last counts are folded in first");
        assert!(!relay.offloads.is_offloaded(CHANNEL));
    }

    #[test]
    fn a_channel_over_its_rate_falls_back_to_an_empty_user_space_bucket() {
        let now = Instant::now();
        let alloc = RelayAllocation { rate_limit: 20_000, ..allocation(now) };
        let mut offload = FakeOffload::with_hops(&[alloc.a, alloc.b]);
        let (mut relay, _) = offloaded(alloc, now, &mut offload);
        assert!(relay.offloads.is_offloaded(CHANNEL));
        // Within the rate: it stays.
        offload.forward(CHANNEL, 20_000);
        relay.sweep_with(now + Duration::from_secs(1), Some(&mut offload));
        assert!(offload.entries.contains_key(&CHANNEL));
        // 50 KB in the next second at 20 KB/s: back to user space, whose bucket starts empty.
        offload.forward(CHANNEL, 50_000);
        let later = now + Duration::from_secs(2);
        relay.sweep_with(later, Some(&mut offload));
        assert!(offload.entries.is_empty(), "taken back from the program");
        assert_eq!(relay.table.forward(later, alloc.a, CHANNEL, 100), Err(RelayDrop::RateLimit));
        assert_eq!(relay.table.forward(later + Duration::from_millis(10), alloc.a, CHANNEL, 100), Ok(alloc.b));
        assert!(!relay.offloads.forwarded(CHANNEL, false), "not offered again for this allocation");
    }

    #[test]
    fn expiry_a_used_up_budget_removal_and_stopping_take_channels_back() {
        let now = Instant::now();
        let alloc = allocation(now);
        let mut offload = FakeOffload::with_hops(&[alloc.a, alloc.b]);
        // Expired: out of the map and out of the table at the next sweep.
        let (mut relay, _) = offloaded(alloc, now, &mut offload);
        relay.sweep_with(alloc.expires, Some(&mut offload));
        assert!(offload.entries.is_empty() && relay.table.is_empty());
        assert!(!relay.offloads.any_offloaded());
        // Used up: out of the map, still in the table (its frames are dropped as over the limit).
        let (mut relay, _) = offloaded(alloc, now, &mut offload);
        offload.forward(CHANNEL, 100_000 - 200);
        relay.sweep_with(now + Duration::from_secs(1), Some(&mut offload));
        assert!(offload.entries.is_empty());
        assert_eq!(relay.table.forward(now, alloc.a, CHANNEL, 1), Err(RelayDrop::ByteLimit));
        // Removed, and stopping.
        let (mut relay, _) = offloaded(alloc, now, &mut offload);
        assert_eq!(relay.next_deadline(), Some(relay.next_sweep), "the core wakes to read the counters");
        relay.remove_with(CHANNEL, now, Some(&mut offload));
        assert!(offload.entries.is_empty() && relay.table.is_empty());
        let (mut relay, _) = offloaded(alloc, now, &mut offload);
        relay.withdraw_all_with(now, Some(&mut offload));
        assert!(offload.entries.is_empty());
        // An end whose hop is unknown (not on the program's interface): never offered.
        let mut one_hop = FakeOffload::with_hops(&[alloc.a]);
        let (relay, _) = offloaded(alloc, now, &mut one_hop);
        assert!(one_hop.entries.is_empty() && !relay.offloads.is_offloaded(CHANNEL));
    }
}
