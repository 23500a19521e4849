//! What one core does with the relay frames it receives: unwrap those from the relay of one of
//! its path aliases (peer role), forward those between the ends of an allocation (bootstrap role),
//! gathering each burst into one GSO send; and the upkeep of its forwarding table.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use quinn_proto::EcnCodepoint;

use crate::backend::{Backend, OutBatch, RecvMeta};
use crate::cid::Generation;
use crate::relay::{ForwardingTable, RelayAllocation, RelayDrop, RelayFrameView, RELAY_HEADER_LEN};
use crate::stats::{bump, CoreStats};
use crate::transmit::{Transmitter, MAX_GSO_BYTES};

/// How often expired relay allocations are swept from the forwarding table (until then their
/// frames count as `expired`).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a received relay frame leaves for the core.
pub(crate) enum Received {
    /// Nothing: forwarded, queued to forward, or dropped and counted.
    Handled,
    /// The datagram inside a frame from an alias's relay, now from the alias.
    FromAlias(RecvMeta, BytesMut),
}

/// One core's relay state: the allocations it forwards, and the burst being gathered.
pub(crate) struct RelayIo {
    table: ForwardingTable,
    /// Forwarded relay frames being gathered into one GSO send (same destination and size);
    /// sent once the received batch is handled.
    forwarding: Option<OutBatch>,
    next_sweep: Instant,
    stats: Arc<CoreStats>,
    /// This process's generation: frames on another one's channels are counted apart.
    generation: Generation,
}

impl RelayIo {
    pub(crate) fn new(stats: Arc<CoreStats>, generation: Generation) -> Self {
        Self { table: ForwardingTable::new(), forwarding: None, next_sweep: Instant::now(), stats, generation }
    }

    /// Forward relay frames on this allocation (install or renew).
    pub(crate) fn install(&mut self, allocation: RelayAllocation, now: Instant) {
        self.table.install(allocation, now);
        self.publish();
    }

    /// Stop forwarding `channel`.
    pub(crate) fn remove(&mut self, channel: u32) {
        self.table.remove(channel);
        self.publish();
    }

    /// Forget the allocations that expired, at most once per [`SWEEP_INTERVAL`].
    pub(crate) fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep || self.table.is_empty() {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        if self.table.purge_expired(now) > 0 {
            self.publish();
        }
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
        match self.table.forward(now, meta.remote, channel, data.len()) {
            // Forwarded unchanged, from the local address it arrived on, with its ECN codepoint
            // (as a TURN relay does, RFC 8656 §12), so congestion marks reach the peer.
            Ok(destination) => self.forward(tx, destination, meta.ecn, meta.local_ip, &data),
            // The high half of a channel names the generation that allocated it (0: none).
            Err(RelayDrop::UnknownChannel) if ![0, self.generation].contains(&((channel >> 16) as Generation)) => {
                bump(&self.stats.foreign_generation, 1)
            }
            Err(reason) => self.stats.relay_drop(reason),
        }
        Received::Handled
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
