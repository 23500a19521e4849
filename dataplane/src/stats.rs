//! Per-core counters. Each core is the only writer of its own [`CoreStats`]; other threads (the
//! control thread, tests) read them without making the core wait.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use quinn_proto::{ConnectionError, TransportErrorCode};

use crate::admission::RefuseReason;
use crate::relay::RelayDrop;

/// Upper bounds (inclusive) of the batch-size buckets: 1, 2, 4, 8, 16, 32, 64 and more.
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, u64::MAX];

/// A histogram of batch sizes (datagrams per system call or completion).
#[derive(Debug, Default)]
pub struct BatchHistogram {
    buckets: [AtomicU64; BATCH_BUCKETS.len()],
}

impl BatchHistogram {
    /// Count one batch of `n` datagrams.
    pub fn record(&self, n: usize) {
        let n = n as u64;
        let index = BATCH_BUCKETS.iter().position(|&bound| n <= bound).unwrap_or(BATCH_BUCKETS.len() - 1);
        if let Some(bucket) = self.buckets.get(index) {
            bump(bucket, 1);
        }
    }

    /// Batches counted per bucket, in the order of [`BATCH_BUCKETS`].
    pub fn snapshot(&self) -> [u64; BATCH_BUCKETS.len()] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// Batches of more than one datagram.
    pub fn multi(&self) -> u64 {
        self.snapshot().iter().skip(1).sum()
    }
}

/// Why a received datagram was dropped before reaching a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue to the core that owns the connection was full.
    HandoffQueueFull,
    /// The datagram was not QUIC or was malformed; the endpoint ignored it.
    Malformed,
    /// A connection attempt was refused (endpoint at capacity, or the node is draining).
    Refused,
    /// The first byte has both high bits clear and is not one of the node's own datagram kinds:
    /// no QUIC packet looks like that (RFC 9000 §17), so it never reaches the endpoint.
    NotQuic,
}

/// Counters of one core.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Datagrams received (after GRO splitting).
    pub rx_datagrams: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Datagrams sent (each GSO segment counts).
    pub tx_datagrams: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Datagrams per receive completion or system call.
    pub rx_batch: BatchHistogram,
    /// Datagrams per send system call or submission.
    pub tx_batch: BatchHistogram,
    /// Sends refused by the kernel for GSO, resent one datagram at a time.
    pub gso_fallbacks: AtomicU64,
    /// Send errors other than back-pressure (the datagrams were dropped; QUIC retransmits).
    pub tx_errors: AtomicU64,
    /// Times the receive path ran out of buffers (io_uring `ENOBUFS`: every provided buffer was
    /// still held); the kernel queues, then drops, datagrams until buffers are returned.
    pub rx_no_buffers: AtomicU64,
    /// Received datagrams dropped because they did not fit the receive buffer (`MSG_TRUNC`).
    pub rx_truncated: AtomicU64,
    /// AF_XDP backend: datagrams received in the AF_XDP socket's RX ring.
    pub xdp_rx_datagrams: AtomicU64,
    /// AF_XDP backend: datagrams received through the ordinary UDP socket (what the XDP program
    /// passed to the kernel: fragments, IP options, extension headers, VLAN tags, other queues).
    pub xdp_socket_rx_datagrams: AtomicU64,
    /// AF_XDP backend: datagrams sent as frames through the TX ring.
    pub xdp_tx_datagrams: AtomicU64,
    /// AF_XDP backend: datagrams sent through the ordinary UDP socket (no next hop learned yet,
    /// or too large for a UMEM frame).
    pub xdp_socket_tx_datagrams: AtomicU64,
    /// AF_XDP backend: frames in the RX ring that were not a datagram for the node (dropped).
    pub xdp_frames_not_ours: AtomicU64,
    /// Received datagrams handed to the core that owns their connection.
    pub handoffs_out: AtomicU64,
    /// Datagrams received from other cores through the hand-off queue.
    pub handoffs_in: AtomicU64,
    /// Datagrams dropped because the hand-off queue was full.
    pub drops_handoff_full: AtomicU64,
    /// Datagrams the endpoint found malformed or not QUIC.
    pub drops_malformed: AtomicU64,
    /// Connection attempts refused.
    pub drops_refused: AtomicU64,
    /// Datagrams that were neither QUIC nor one of the node's own kinds ([`DropReason::NotQuic`]).
    pub drops_not_quic: AtomicU64,
    /// Datagrams whose destination connection ID or relay channel names another generation of
    /// this node (a predecessor or successor sharing the port during a takeover); dropped.
    pub foreign_generation: AtomicU64,
    /// Relay frames forwarded to the other end of their allocation (bootstrap role).
    pub relay_forwarded: AtomicU64,
    /// Bytes of the relay frames forwarded (header included).
    pub relay_forwarded_bytes: AtomicU64,
    /// Of `relay_forwarded`, the frames the XDP program forwarded (af-xdp backend), counted when
    /// the core reads the channel map (about once a second).
    pub relay_xdp_forwarded: AtomicU64,
    /// Relay frames dropped, by [`RelayDrop`] (index: [`RelayDrop::index`]).
    pub relay_drops: [AtomicU64; RelayDrop::ALL.len()],
    /// Relay allocations in this core's forwarding table (a gauge; every core holds the same).
    pub relay_allocations: AtomicU64,
    /// Control datagrams (first byte 0x21) passed to the control thread.
    pub control_datagrams_in: AtomicU64,
    /// Control datagrams dropped: no receiver configured, or its channel full or gone.
    pub control_datagrams_dropped: AtomicU64,
    /// Datagrams from `NodeHandle::send_datagram` dropped because too many waited for a back-pressured
    /// socket.
    pub send_datagrams_dropped: AtomicU64,
    /// Datagrams to a path alias sent in relay frames (each GSO segment counts).
    pub alias_sent_relay: AtomicU64,
    /// Datagrams to a path alias sent straight to its direct address.
    pub alias_sent_direct: AtomicU64,
    /// Datagrams from a path alias that arrived in relay frames.
    pub alias_received_relay: AtomicU64,
    /// Datagrams from a path alias that arrived from its direct address.
    pub alias_received_direct: AtomicU64,
    /// Datagrams to a path alias dropped because the alias has no route.
    pub alias_dropped_no_route: AtomicU64,
    /// Connections accepted from peers.
    pub connections_accepted: AtomicU64,
    /// Connections opened to peers.
    pub connections_opened: AtomicU64,
    /// Connections currently alive on this core.
    pub connections_active: AtomicU64,
    /// Handshakes completed.
    pub handshakes_completed: AtomicU64,
    /// Times a connection's peer address changed: the peer migrated or its NAT rebound (quinn-proto
    /// follows after path validation; a return to the old address after a failed one counts too).
    pub peer_address_changes: AtomicU64,
    /// Times a connection's local address changed: its client moved to the node's preferred
    /// address (the patched quinn-proto follows only to that address).
    pub preferred_address_migrations: AtomicU64,
    /// Loop turns (for liveness: it moves while the core runs).
    pub loop_turns: AtomicU64,
    /// Nanoseconds the loop spent in its turns, sleep excluded: its rate is how busy the core is.
    pub busy_nanos: AtomicU64,
    /// Connections ended, by [`CloseClass`] (index: `CloseClass as usize`).
    pub closes: [AtomicU64; CloseClass::ALL.len()],
    /// Connections lost before their handshake completed.
    pub handshake_failures: AtomicU64,
    /// Connection attempts the endpoint refused to start (bad server name, no CIDs, ...).
    pub connect_failures: AtomicU64,
    /// Accepted connections whose handshake has not completed (a gauge).
    pub handshakes_in_flight: AtomicU64,
    /// Retry packets sent to make a client prove its address ([`crate::admission`]).
    pub retry_sent: AtomicU64,
    /// Connection attempts refused, by [`RefuseReason`] (index: `RefuseReason as usize`).
    pub handshakes_refused: [AtomicU64; RefuseReason::ALL.len()],
    /// Accepted connections dropped because their handshake did not complete in time.
    pub handshakes_timed_out: AtomicU64,
    /// Where the core is in its life ([`CoreStatus`] as a byte).
    status: AtomicU8,
    /// Why the core thread failed (error or panic message), set once.
    pub failure: OnceLock<String>,
}

impl CoreStats {
    /// Count a send that failed for a reason other than back-pressure. The first one is logged
    /// as a warning (it usually means a misconfiguration worth seeing), later ones at debug.
    pub fn send_failed(&self, error: &std::io::Error, destination: std::net::SocketAddr) {
        if read(&self.tx_errors) == 0 {
            tracing::warn!(%error, %destination, "UDP send failed; the datagrams are dropped and QUIC will retransmit");
        } else {
            tracing::debug!(%error, %destination, "UDP send failed");
        }
        bump(&self.tx_errors, 1);
    }

    /// Count a connection that ended.
    #[inline]
    pub fn count_close(&self, class: CloseClass) {
        if let Some(counter) = self.closes.get(class as usize) {
            bump(counter, 1);
        }
    }

    /// Connections ended with `class` so far.
    pub fn closes(&self, class: CloseClass) -> u64 {
        self.closes.get(class as usize).map_or(0, read)
    }

    /// Where the core is in its life.
    pub fn status(&self) -> CoreStatus {
        match self.status.load(Ordering::Acquire) {
            1 => CoreStatus::Running,
            2 => CoreStatus::Stopped,
            3 => CoreStatus::Failed,
            _ => CoreStatus::Starting,
        }
    }

    /// Set by the core thread (and its panic guard) only.
    pub fn set_status(&self, status: CoreStatus) {
        self.status.store(status as u8, Ordering::Release);
    }

    /// Count a dropped datagram.
    pub fn drop_datagram(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::HandoffQueueFull => &self.drops_handoff_full,
            DropReason::Malformed => &self.drops_malformed,
            DropReason::Refused => &self.drops_refused,
            DropReason::NotQuic => &self.drops_not_quic,
        };
        bump(counter, 1);
    }

    /// Count a refused connection attempt.
    pub fn refuse_handshake(&self, reason: RefuseReason) {
        if let Some(counter) = self.handshakes_refused.get(reason as usize) {
            bump(counter, 1);
        }
        self.drop_datagram(DropReason::Refused);
    }

    /// Connection attempts refused for `reason` so far.
    pub fn handshakes_refused(&self, reason: RefuseReason) -> u64 {
        self.handshakes_refused.get(reason as usize).map_or(0, read)
    }

    /// Count a relay frame that was not forwarded.
    #[inline]
    pub fn relay_drop(&self, reason: RelayDrop) {
        if let Some(counter) = self.relay_drops.get(reason.index()) {
            bump(counter, 1);
        }
    }

    /// Relay frames dropped for `reason` so far.
    pub fn relay_drops(&self, reason: RelayDrop) -> u64 {
        self.relay_drops.get(reason.index()).map_or(0, read)
    }
}

/// Where a core is in its life, as the control thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreStatus {
    /// The thread is setting up its socket and backend.
    Starting = 0,
    /// The loop runs.
    Running = 1,
    /// The loop ended normally (shutdown).
    Stopped = 2,
    /// The loop ended with an error or a panic; see [`CoreStats::failure`].
    Failed = 3,
}

impl CoreStatus {
    /// Lower-case name for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// How a connection ended (RFC 9000 §10: idle timeout, immediate close, stateless reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseClass {
    /// Closed by this node (application close or shutdown).
    Local = 0,
    /// The peer closed with an application close (graceful).
    PeerApplication = 1,
    /// The peer closed with a transport CONNECTION_CLOSE carrying an error code.
    PeerTransport = 2,
    /// This node detected a protocol violation.
    TransportError = 3,
    /// Idle timeout.
    TimedOut = 4,
    /// Stateless reset from the peer.
    Reset = 5,
    /// No common QUIC version.
    VersionMismatch = 6,
    /// Ran out of connection IDs.
    CidsExhausted = 7,
}

impl CloseClass {
    /// Every class, in index order.
    pub const ALL: [CloseClass; 8] = [
        Self::Local,
        Self::PeerApplication,
        Self::PeerTransport,
        Self::TransportError,
        Self::TimedOut,
        Self::Reset,
        Self::VersionMismatch,
        Self::CidsExhausted,
    ];

    /// Classify a connection's end.
    pub fn of(error: &ConnectionError) -> Self {
        match error {
            ConnectionError::VersionMismatch => Self::VersionMismatch,
            ConnectionError::TransportError(_) => Self::TransportError,
            // A transport close without error is a graceful end, like an application close.
            ConnectionError::ConnectionClosed(close) if close.error_code == TransportErrorCode::NO_ERROR => {
                Self::PeerApplication
            }
            ConnectionError::ConnectionClosed(_) => Self::PeerTransport,
            ConnectionError::ApplicationClosed(_) => Self::PeerApplication,
            ConnectionError::Reset => Self::Reset,
            ConnectionError::TimedOut => Self::TimedOut,
            ConnectionError::LocallyClosed => Self::Local,
            ConnectionError::CidsExhausted => Self::CidsExhausted,
        }
    }

    /// Label value for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::PeerApplication => "peer_application",
            Self::PeerTransport => "peer_transport_error",
            Self::TransportError => "transport_error",
            Self::TimedOut => "timed_out",
            Self::Reset => "reset",
            Self::VersionMismatch => "version_mismatch",
            Self::CidsExhausted => "cids_exhausted",
        }
    }

    /// Whether this end counts as an error (graceful closes do not).
    pub fn is_error(self) -> bool {
        !matches!(self, Self::Local | Self::PeerApplication)
    }
}

/// Add to a counter that only the owning core writes.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    // Single writer: a relaxed load+store avoids the locked read-modify-write.
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Read a counter.
#[inline]
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
