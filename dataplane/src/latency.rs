//! Per-core latency histograms (handshake duration, RTT samples, loop-turn time).
//!
//! Each core records into its own [`LatencySet`]; about every [`PUBLISH_INTERVAL`] of activity (or
//! sooner when the control thread asks) it pushes the set into a bounded lock-free queue and starts
//! a fresh one. The control thread adds the sets up. Recording is a few nanoseconds (an index
//! computation and an increment) and never waits for anyone. With the `metrics` feature off the
//! recorder does nothing and compiles to nothing.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

/// Largest value a histogram holds (longer values are clamped to it): one hour, in nanoseconds.
pub const MAX_NANOS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept: 2 gives 1 % resolution in ~36 KiB per histogram.
const SIGNIFICANT_DIGITS: u8 = 2;
/// How often a busy core hands its histograms over.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// Sets a core may have queued for the control thread; when full, the core keeps adding to its
/// current set (nothing is lost, it is only handed over later).
pub(crate) const LATENCY_QUEUE_CAPACITY: usize = 16;

/// One histogram in nanoseconds with the bounds every latency histogram shares.
pub fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_NANOS, SIGNIFICANT_DIGITS).ok()
}

/// The latency histograms of one core over some interval, in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencySet {
    /// From connection creation (connect, or first Initial accepted) to the `Connected` event.
    pub handshake: Histogram<u64>,
    /// Smoothed RTT of each connection, sampled at most every 100 ms and at close.
    pub rtt: Histogram<u64>,
    /// Time a core spends on one loop turn (excluding the sleep).
    pub loop_turn: Histogram<u64>,
}

impl LatencySet {
    /// Empty histograms; `None` only if hdrhistogram refuses the constant bounds.
    pub fn new() -> Option<Self> {
        Some(Self { handshake: new_histogram()?, rtt: new_histogram()?, loop_turn: new_histogram()? })
    }

    /// Zero every count, keeping the memory.
    pub fn reset(&mut self) {
        self.handshake.reset();
        self.rtt.reset();
        self.loop_turn.reset();
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        // Same bounds everywhere, so adding cannot fail; a failure would only lose counts.
        let _ = self.handshake.add(&other.handshake);
        let _ = self.rtt.add(&other.rtt);
        let _ = self.loop_turn.add(&other.loop_turn);
    }
}

/// A core's recording side.
#[derive(Debug)]
pub(crate) struct Recorder {
    #[cfg(feature = "metrics")]
    current: Option<Box<LatencySet>>,
    #[cfg(feature = "metrics")]
    recorded: bool,
    #[cfg(feature = "metrics")]
    last_publish: Instant,
}

#[cfg(feature = "metrics")]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(MAX_NANOS).clamp(1, MAX_NANOS)
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            current: LatencySet::new().map(Box::new),
            #[cfg(feature = "metrics")]
            recorded: false,
            #[cfg(feature = "metrics")]
            last_publish: Instant::now(),
        }
    }

    #[inline]
    pub(crate) fn handshake(&mut self, _d: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(set) = &mut self.current {
            set.handshake.saturating_record(nanos(_d));
            self.recorded = true;
        }
    }

    #[inline]
    pub(crate) fn rtt(&mut self, _d: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(set) = &mut self.current {
            set.rtt.saturating_record(nanos(_d));
            self.recorded = true;
        }
    }

    #[inline]
    pub(crate) fn loop_turn(&mut self, _d: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(set) = &mut self.current {
            set.loop_turn.saturating_record(nanos(_d));
            self.recorded = true;
        }
    }

    /// Hand the current set to `queue` when the interval passed (or `force`) and it holds
    /// anything; continue with an emptied set from `spare` (or a new one). Never blocks: a full
    /// queue keeps the set for later.
    #[inline]
    pub(crate) fn maybe_publish(
        &mut self,
        _now: std::time::Instant,
        _queue: &ArrayQueue<Box<LatencySet>>,
        _spare: &ArrayQueue<Box<LatencySet>>,
        _force: bool,
    ) {
        #[cfg(feature = "metrics")]
        if self.recorded && (_force || _now.duration_since(self.last_publish) >= PUBLISH_INTERVAL) {
            self.last_publish = _now;
            if _queue.is_full() {
                // Nobody is collecting (no control thread, or it is behind): keep recording into
                // the current set rather than allocate one that could not be handed over.
                return;
            }
            let Some(fresh) = _spare.pop().or_else(|| LatencySet::new().map(Box::new)) else { return };
            let Some(full) = self.current.replace(fresh) else { return };
            match _queue.push(full) {
                Ok(()) => self.recorded = false,
                Err(full) => self.current = Some(full),
            }
        }
    }
}
