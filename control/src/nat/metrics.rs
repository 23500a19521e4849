//! NAT traversal counters, written by the traversal driver and read at each scrape.
//!
//! Attempts are counted where they are known: a peer counts its own, a bootstrap counts what
//! peers REPORT to it; `nat_traversal_success_rate` is computed over both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::traversal::TraversalStats;
use super::Outcome;

/// Shortest and longest time-to-connect recorded (others are clamped), in nanoseconds.
const MIN_CONNECT_NS: u64 = 1_000;
const MAX_CONNECT_NS: u64 = 600_000_000_000;

/// Counters and the time-to-direct histogram of NAT traversal.
#[derive(Debug, Default)]
pub struct NatMetrics {
    own: [AtomicU64; 3],
    reported: [AtomicU64; 3],
    upgrades: AtomicU64,
    registered_peers: AtomicU64,
    punches: AtomicU64,
    relay_grants: AtomicU64,
    rejected_rate: AtomicU64,
    rejected_malformed: AtomicU64,
    time_to_direct: Mutex<Option<Histogram<u64>>>,
    first_byte: Mutex<Option<Histogram<u64>>>,
    traversal: Mutex<TraversalStats>,
    relays_renewed: AtomicU64,
    /// Discover datagrams answered on the alternate addresses, and refused past the rate cap.
    discovery: [AtomicU64; 2],
    /// Connection requests this node forwarded to another bootstrap: punched, failed.
    forwards: [AtomicU64; 2],
    forwards_received: AtomicU64,
    forwards_refused: AtomicU64,
    relays_across: AtomicU64,
    forward_time: Mutex<Option<Histogram<u64>>>,
}

/// What the coordinator of this node has done, as last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorCounts {
    /// Peers registered now.
    pub registered_peers: u64,
    /// Hole punches coordinated since start.
    pub punches: u64,
    /// Relay allocations granted since start.
    pub relay_grants: u64,
    /// Signalling messages refused for the sender's rate.
    pub rate_limited: u64,
    /// Signalling messages that could not be used.
    pub malformed: u64,
    /// FORWARD_CONNECTs from other bootstraps coordinated here.
    pub forwards_received: u64,
    /// FORWARD_CONNECTs refused: the sender is not on the allow-list.
    pub forwards_refused: u64,
    /// Relays handed across: peers sent to their target's bootstrap for a relay (RELAY_AT).
    pub relays_across: u64,
}

/// A consistent-enough view for one scrape.
#[derive(Debug, Clone)]
pub struct NatSnapshot {
    /// Attempts by outcome (direct, relayed, failed): this node's own plus those reported to it.
    pub attempts: [u64; 3],
    /// Relayed connections that moved to a direct path.
    pub upgrades: u64,
    /// The coordinator's counts.
    pub coordinator: CoordinatorCounts,
    /// Time to a direct path (a direct connection, or a relayed one moved to a direct path),
    /// in nanoseconds.
    pub time_to_direct: Option<Histogram<u64>>,
    /// Time to the first connection that carries the application's bytes (direct, or through the
    /// relay), in nanoseconds.
    pub first_byte: Option<Histogram<u64>>,
    /// This node's own traversal: probes, many-probe rounds.
    pub traversal: TraversalStats,
    /// Relay allocations renewed by the coordinator.
    pub relays_renewed: u64,
    /// Discover datagrams answered on the alternate addresses, and refused past the rate cap.
    pub discovery: [u64; 2],
    /// Connection requests this node forwarded to another bootstrap: punched, failed.
    pub forwards: [u64; 2],
    /// From a forwarded CONNECT_REQUEST to the other bootstrap's answer, in nanoseconds.
    pub forward_time: Option<Histogram<u64>>,
}

impl NatSnapshot {
    /// Share of attempts that connected (direct or relayed); `None` before the first attempt.
    pub fn success_rate(&self) -> Option<f64> {
        let [direct, relayed, failed] = self.attempts;
        let total = direct + relayed + failed;
        (total > 0).then(|| (direct + relayed) as f64 / total as f64)
    }
}

fn index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Direct => 0,
        Outcome::Relayed => 1,
        Outcome::Failed => 2,
    }
}

impl NatMetrics {
    /// One of this node's own attempts ended.
    pub fn attempt(&self, outcome: Outcome, connect: Duration) {
        self.count(&self.own, outcome, connect);
        if outcome != Outcome::Failed {
            record(&self.first_byte, connect);
        }
    }

    /// A peer reported how its attempt ended (this node coordinated it).
    pub fn reported(&self, outcome: Outcome, connect: Duration) {
        self.count(&self.reported, outcome, connect);
    }

    fn count(&self, counters: &[AtomicU64; 3], outcome: Outcome, connect: Duration) {
        if let Some(counter) = counters.get(index(outcome)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == Outcome::Direct {
            record(&self.time_to_direct, connect);
        }
    }

    /// An alternate address answered a discover datagram (`answered`), or refused one past its
    /// rate cap.
    pub fn discover(&self, answered: bool) {
        if let Some(counter) = self.discovery.get(usize::from(!answered)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A relayed connection moved to a direct path, `after` its connect request when this node
    /// made it (the responder's side knows no request time).
    pub fn upgraded(&self, after: Option<Duration>) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
        if let Some(after) = after {
            record(&self.time_to_direct, after);
        }
    }

    /// A connection request this node forwarded was answered with a punch (`punched`) or failed,
    /// `elapsed` after it came in.
    pub fn forwarded(&self, elapsed: Duration, punched: bool) {
        if let Some(counter) = self.forwards.get(usize::from(!punched)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        record(&self.forward_time, elapsed);
    }

    /// Publish the coordinator's counts.
    pub fn set_coordinator(&self, counts: CoordinatorCounts) {
        self.registered_peers.store(counts.registered_peers, Ordering::Relaxed);
        self.punches.store(counts.punches, Ordering::Relaxed);
        self.relay_grants.store(counts.relay_grants, Ordering::Relaxed);
        self.rejected_rate.store(counts.rate_limited, Ordering::Relaxed);
        self.rejected_malformed.store(counts.malformed, Ordering::Relaxed);
        self.forwards_received.store(counts.forwards_received, Ordering::Relaxed);
        self.forwards_refused.store(counts.forwards_refused, Ordering::Relaxed);
        self.relays_across.store(counts.relays_across, Ordering::Relaxed);
    }

    /// Publish this node's traversal counters and the coordinator's renewals.
    pub fn set_traversal(&self, stats: TraversalStats, relays_renewed: u64) {
        if let Ok(mut slot) = self.traversal.lock() {
            *slot = stats;
        }
        self.relays_renewed.store(relays_renewed, Ordering::Relaxed);
    }

    /// The values for one scrape.
    pub fn snapshot(&self) -> NatSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let attempts =
            [0, 1, 2].map(|i| self.own.get(i).map(load).unwrap_or(0) + self.reported.get(i).map(load).unwrap_or(0));
        NatSnapshot {
            attempts,
            upgrades: load(&self.upgrades),
            coordinator: CoordinatorCounts {
                registered_peers: load(&self.registered_peers),
                punches: load(&self.punches),
                relay_grants: load(&self.relay_grants),
                rate_limited: load(&self.rejected_rate),
                malformed: load(&self.rejected_malformed),
                forwards_received: load(&self.forwards_received),
                forwards_refused: load(&self.forwards_refused),
                relays_across: load(&self.relays_across),
            },
            time_to_direct: self.time_to_direct.lock().ok().and_then(|h| h.clone()),
            first_byte: self.first_byte.lock().ok().and_then(|h| h.clone()),
            traversal: self.traversal.lock().map(|t| *t).unwrap_or_default(),
            relays_renewed: load(&self.relays_renewed),
            discovery: self.discovery.each_ref().map(load),
            forwards: self.forwards.each_ref().map(load),
            forward_time: self.forward_time.lock().ok().and_then(|h| h.clone()),
        }
    }
}

/// Records `duration` in the histogram of `slot`, created on first use.
fn record(slot: &Mutex<Option<Histogram<u64>>>, duration: Duration) {
    let Ok(mut slot) = slot.lock() else { return };
    if slot.is_none() {
        *slot = Histogram::new_with_bounds(MIN_CONNECT_NS, MAX_CONNECT_NS, 2).ok();
    }
    if let Some(histogram) = slot.as_mut() {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX).clamp(MIN_CONNECT_NS, MAX_CONNECT_NS);
        let _ = histogram.record(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_rate_counts_own_and_reported_attempts() {
        let metrics = NatMetrics::default();
        assert_eq!(metrics.snapshot().success_rate(), None);
        metrics.attempt(Outcome::Direct, Duration::from_millis(120));
        metrics.reported(Outcome::Relayed, Duration::from_secs(3));
        metrics.reported(Outcome::Failed, Duration::from_secs(10));
        metrics.attempt(Outcome::Failed, Duration::from_secs(10));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.attempts, [1, 1, 2]);
        assert_eq!(snapshot.success_rate(), Some(0.5));
        let histogram = snapshot.time_to_direct.unwrap();
        assert_eq!(histogram.len(), 1);
        assert!(histogram.value_at_quantile(0.5).abs_diff(120_000_000) < 2_000_000);
        assert_eq!(snapshot.first_byte.unwrap().len(), 1, "one own attempt connected");
    }

    #[test]
    fn a_relayed_connection_moved_to_a_direct_path_counts_in_time_to_direct() {
        let metrics = NatMetrics::default();
        metrics.attempt(Outcome::Relayed, Duration::from_millis(40));
        metrics.upgraded(Some(Duration::from_millis(900)));
        metrics.upgraded(None);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.upgrades, 2);
        let direct = snapshot.time_to_direct.unwrap();
        assert_eq!(direct.len(), 1);
        assert!(direct.value_at_quantile(0.5).abs_diff(900_000_000) < 10_000_000);
        let first = snapshot.first_byte.unwrap();
        assert!(first.value_at_quantile(0.5).abs_diff(40_000_000) < 1_000_000);
    }
}
