//! Sending from one core: every batch the core sends leaves through its [`Transmitter`], which
//! routes path aliases (direct, or framed for the relay), maps IPv4 destinations for a
//! dual-stack socket, and keeps the one batch the kernel refused for back-pressure.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use quinn_proto::Transmit;

use crate::address::unmapped;
use crate::backend::{Backend, OutBatch, SendRefused};
use crate::relay::{frame_segments, is_alias, PathRoute, PathTable, RELAY_HEADER_LEN};
use crate::stats::{bump, CoreStats};

/// Largest UDP payload one GSO send may carry (65 535 minus the IPv4 and UDP headers).
pub(crate) const MAX_GSO_BYTES: usize = 65_507;

/// A core's backend, with what every send needs: the routes of path aliases, the socket's
/// family, the counters, and the batch kept from back-pressure.
pub(crate) struct Transmitter<B> {
    pub(crate) backend: B,
    /// Routes of path aliases (peer role); the receive path reads them too.
    pub(crate) paths: PathTable,
    /// A batch the kernel refused for back-pressure; sent before anything else.
    blocked: Option<OutBatch>,
    stats: Arc<CoreStats>,
    /// The socket is IPv6 (dual-stack): IPv4 peers are addressed as IPv4-mapped IPv6.
    ipv6_socket: bool,
}

impl<B: Backend> Transmitter<B> {
    pub(crate) fn new(backend: B, stats: Arc<CoreStats>, ipv6_socket: bool) -> Self {
        Self { backend, paths: PathTable::new(), blocked: None, stats, ipv6_socket }
    }

    /// Whether a batch is kept from back-pressure (others are dropped until it leaves).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Send the batch kept from back-pressure, if any; false when the kernel refuses it again.
    pub(crate) fn retry_blocked(&mut self) -> bool {
        if let Some(batch) = self.blocked.take() {
            if let Err(SendRefused::WouldBlock(batch)) = self.backend.send(batch) {
                self.blocked = Some(batch);
                return false;
            }
        }
        true
    }

    /// Send a batch addressed as quinn-proto (or the control thread) addressed it: a path alias
    /// goes by its route, through the relay or direct. Returns false when the batch was dropped
    /// (no route for the alias, or the socket is applying back-pressure to an earlier batch).
    pub(crate) fn transmit(&mut self, mut batch: OutBatch) -> bool {
        if is_alias(&batch.destination) {
            let segments = batch.segments() as u64;
            // An alias given to `connect` may be written IPv4-mapped; the table keeps it plain.
            match self.paths.route(&unmapped(batch.destination)) {
                None => {
                    bump(&self.stats.alias_dropped_no_route, segments);
                    return false;
                }
                Some(PathRoute::Direct(to)) => {
                    bump(&self.stats.alias_sent_direct, segments);
                    batch.destination = to;
                }
                Some(PathRoute::Relay { relay, channel }) => {
                    bump(&self.stats.alias_sent_relay, segments);
                    return self.send_relayed(batch, relay, channel);
                }
            }
        }
        self.send_raw(batch)
    }

    /// Send a batch in relay frames to `relay`: a header in front of every segment, and no more
    /// segments per send than fit the kernel's 64 KiB GSO limit once they have grown.
    fn send_relayed(&mut self, mut batch: OutBatch, relay: SocketAddr, channel: u32) -> bool {
        let (ecn, src_ip) = (batch.ecn, batch.src_ip);
        let segment = if batch.segment_size == 0 { batch.buf.len().max(1) } else { batch.segment_size };
        // The core sizes its batches to leave room for the headers; this only splits batches built
        // for a larger segment than the path's (never seen), rather than have the kernel refuse them.
        let per_send = (MAX_GSO_BYTES / (segment + RELAY_HEADER_LEN)).max(1) * segment;
        let mut all_sent = true;
        loop {
            let rest = (batch.buf.len() > per_send).then(|| {
                let mut rest = self.backend.take_buffer();
                rest.extend_from_slice(batch.buf.get(per_send..).unwrap_or_default());
                batch.buf.truncate(per_send);
                rest
            });
            let segment_size = frame_segments(&mut batch.buf, segment, channel);
            all_sent &= self.send_raw(OutBatch { destination: relay, ecn, src_ip, segment_size, buf: batch.buf });
            match rest {
                Some(buf) => batch = OutBatch { destination: relay, ecn, src_ip, segment_size: segment, buf },
                None => return all_sent,
            }
        }
    }

    /// Hand a batch to the backend as it is (its destination made IPv4-mapped on a dual-stack
    /// socket). A batch refused for back-pressure is kept and sent first next turn; while one is
    /// kept, others are dropped (UDP: QUIC retransmits). Returns false when dropped.
    pub(crate) fn send_raw(&mut self, mut batch: OutBatch) -> bool {
        if self.blocked.is_some() {
            return false;
        }
        if let SocketAddr::V4(v4) = batch.destination {
            if self.ipv6_socket {
                batch.destination = SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port());
            }
        }
        if let Err(SendRefused::WouldBlock(batch)) = self.backend.send(batch) {
            self.blocked = Some(batch);
        }
        true
    }
}

/// A batch for `transmit`, still addressed as quinn-proto addressed it (perhaps to an alias).
pub(crate) fn to_batch(transmit: &Transmit, buf: Vec<u8>) -> OutBatch {
    OutBatch {
        destination: transmit.destination,
        ecn: transmit.ecn,
        src_ip: transmit.src_ip,
        segment_size: transmit.segment_size.unwrap_or(transmit.size),
        buf,
    }
}
