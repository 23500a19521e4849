//! The control thread of an ant-quic node: everything that is not per-packet.
//!
//! [`admin::AdminServer`] runs the control thread: the admin HTTP listener (`/metrics`, `/health`,
//! `/ready`), the [`liveness`] watch over the cores, and the [`metrics`] merge of what the cores
//! recorded. [`Totals`] adds up the per-core counters (for the shutdown summary).

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod liveness;
pub mod metrics;
pub mod nat;
mod peer_id;
pub mod registry;

pub use admin::{AdminServer, AdminView, PreviousGeneration};
pub use metrics::Metrics;
pub use peer_id::{BadPeerId, PeerId};

use std::fmt;
use std::sync::Arc;

use ant_quic_dataplane::stats::{read, CoreStats};

/// Counters of every core, added up. Reading never makes a core wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Receive completions or system calls that carried more than one datagram (GRO).
    pub rx_batched: u64,
    /// Sends that carried more than one datagram (GSO).
    pub tx_batched: u64,
    /// Sends the kernel refused for GSO and that were resent one datagram at a time.
    pub gso_fallbacks: u64,
    /// Sends that failed (datagrams dropped; QUIC retransmits).
    pub tx_errors: u64,
    /// Datagrams handed from the receiving core to the owning core.
    pub handoffs: u64,
    /// Datagrams dropped before reaching a connection (full queue, malformed, refused).
    pub drops: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections opened.
    pub opened: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Datagrams dropped because they belong to another generation of this node (a predecessor
    /// or successor sharing the port during a takeover).
    pub foreign_generation: u64,
}

impl Totals {
    /// Add up the counters of `cores`.
    pub fn collect(cores: &[Arc<CoreStats>]) -> Self {
        cores.iter().fold(Self::default(), |t, c| Self {
            rx_datagrams: t.rx_datagrams + read(&c.rx_datagrams),
            rx_bytes: t.rx_bytes + read(&c.rx_bytes),
            tx_datagrams: t.tx_datagrams + read(&c.tx_datagrams),
            tx_bytes: t.tx_bytes + read(&c.tx_bytes),
            rx_batched: t.rx_batched + c.rx_batch.multi(),
            tx_batched: t.tx_batched + c.tx_batch.multi(),
            gso_fallbacks: t.gso_fallbacks + read(&c.gso_fallbacks),
            tx_errors: t.tx_errors + read(&c.tx_errors),
            handoffs: t.handoffs + read(&c.handoffs_out),
            drops: t.drops + read(&c.drops_handoff_full) + read(&c.drops_malformed) + read(&c.drops_refused),
            accepted: t.accepted + read(&c.connections_accepted),
            opened: t.opened + read(&c.connections_opened),
            handshakes: t.handshakes + read(&c.handshakes_completed),
            foreign_generation: t.foreign_generation + read(&c.foreign_generation),
        })
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections accepted {} opened {} handshakes {}; received {} datagrams ({} bytes, {} GRO batches); \
             sent {} datagrams ({} bytes, {} GSO batches, {} GSO fallbacks, {} failed); {} handed between cores; {} dropped; \
             {} datagrams of another generation",
            self.accepted,
            self.opened,
            self.handshakes,
            self.rx_datagrams,
            self.rx_bytes,
            self.rx_batched,
            self.tx_datagrams,
            self.tx_bytes,
            self.tx_batched,
            self.gso_fallbacks,
            self.tx_errors,
            self.handoffs,
            self.drops,
            self.foreign_generation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ant_quic_dataplane::stats::bump;

    #[test]
    fn totals_add_up_every_core() {
        let cores: Vec<Arc<CoreStats>> = (0..3).map(|_| Arc::new(CoreStats::default())).collect();
        for (i, core) in cores.iter().enumerate() {
            bump(&core.rx_datagrams, 10 * (i as u64 + 1));
            bump(&core.drops_malformed, 1);
            core.tx_batch.record(1);
            core.tx_batch.record(45);
            bump(&core.foreign_generation, 2);
        }
        let totals = Totals::collect(&cores);
        assert_eq!(totals.rx_datagrams, 60);
        assert_eq!(totals.drops, 3);
        assert_eq!(totals.tx_batched, 3, "only multi-datagram sends count as batches");
        assert_eq!(totals.foreign_generation, 6);
        let line = totals.to_string();
        assert!(line.contains("received 60 datagrams"), "{line}");
        assert!(line.ends_with("; 3 dropped; 6 datagrams of another generation"), "{line}");
    }
}
