//! Per-core counters. Each core is the only writer of its own [`CoreStats`]; other threads (the
//! control thread, tests) read them without making the core wait.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Connections accepted from peers.
    pub connections_accepted: AtomicU64,
    /// Connections opened to peers.
    pub connections_opened: AtomicU64,
    /// Connections currently alive on this core.
    pub connections_active: AtomicU64,
    /// Handshakes completed.
    pub handshakes_completed: AtomicU64,
    /// Loop turns (for liveness: it moves while the core runs).
    pub loop_turns: AtomicU64,
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

    /// Count a dropped datagram.
    pub fn drop_datagram(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::HandoffQueueFull => &self.drops_handoff_full,
            DropReason::Malformed => &self.drops_malformed,
            DropReason::Refused => &self.drops_refused,
        };
        bump(counter, 1);
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
