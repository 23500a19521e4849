//! Which connection attempts a core takes on, and for how long it waits for their handshakes.
//!
//! A server keeps state for every Initial it accepts, before the client has proved it can receive
//! at its address. Under a flood of Initials that never go further, that state is what fills the
//! memory. Three defences, all per core:
//!
//! - **Retry** (RFC 9000 §8.1): the client must echo a token before the core keeps anything for
//!   it. It costs the client one round trip, so [`RetryPolicy::Auto`] asks for it only once
//!   `retry_threshold` handshakes are in flight;
//! - a **cap on half-open connections**: beyond `max_half_open`, attempts are refused
//!   (CONNECTION_REFUSED, no state kept);
//! - a **handshake timeout**, much shorter than the idle timeout: a connection that has not
//!   completed its handshake by then is closed (CONNECTION_CLOSE, within the anti-amplification
//!   budget) and its state dropped at once.
//!
//! This module holds the decisions and the half-open bookkeeping, without I/O; the core loop
//! applies them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When to ask clients to prove their address with a Retry before any state is kept for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryPolicy {
    /// Once `retry_threshold` handshakes are in flight on a core.
    #[default]
    Auto,
    /// For every new client (one more round trip each).
    Always,
    /// Never (the half-open cap and the handshake timeout still hold).
    Never,
}

/// How a core admits new connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// When to send Retry.
    pub retry: RetryPolicy,
    /// Handshakes in flight on one core from which [`RetryPolicy::Auto`] sends Retry.
    pub retry_threshold: usize,
    /// Half-open connections one core holds at most; attempts beyond are refused.
    pub max_half_open: usize,
    /// A connection accepted this long ago whose handshake has not completed is closed and dropped.
    pub handshake_timeout: Duration,
}

impl AdmissionConfig {
    /// Defaults: Retry past 64 handshakes in flight per core, at most 1,024 half-open connections
    /// per core, 10 s to complete a handshake (the idle timeout is 30 s; an Initial lost three
    /// times is still retransmitted within 10 s at the initial RTT of 333 ms).
    pub const DEFAULT: Self = Self {
        retry: RetryPolicy::Auto,
        retry_threshold: 64,
        max_half_open: 1024,
        handshake_timeout: Duration::from_secs(10),
    };
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a connection attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The node is shutting down, or handing its port over and the attempt named this process
    /// (answered with CONNECTION_REFUSED).
    Draining,
    /// The port is handed over to a successor and the attempt reached this process through a
    /// steering table not yet updated: dropped without an answer or state, so that the client's
    /// retransmission finds the successor.
    HandedOver,
    /// The core holds `max_half_open` handshakes already.
    HalfOpenLimit,
    /// The QUIC engine refused it (a malformed or unacceptable first flight).
    Rejected,
}

impl RefuseReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [RefuseReason; 4] =
        [RefuseReason::Draining, RefuseReason::HandedOver, RefuseReason::HalfOpenLimit, RefuseReason::Rejected];

    /// The `reason` label of `quic_handshakes_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::Draining => "draining",
            RefuseReason::HandedOver => "handed_over",
            RefuseReason::HalfOpenLimit => "half_open_limit",
            RefuseReason::Rejected => "rejected",
        }
    }
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    Retry,
    Refuse(RefuseReason),
    /// Drop without an answer or state.
    Ignore(RefuseReason),
}

/// Whether a core takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    Open,
    /// Shutting down: every attempt is refused.
    Closed,
    /// A successor serves new connections on the same port.
    HandedOver,
}

/// A connection attempt as the admission decision sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// The client echoed a valid Retry or address validation token.
    pub(crate) validated: bool,
    /// A Retry may still be sent (the client has not been through one already).
    pub(crate) may_retry: bool,
    /// The client's first destination connection ID names this process (a 10-byte ID that
    /// happens to carry its generation, one in 2^24): steering always brings it here.
    pub(crate) names_this_process: bool,
}

/// One core's half-open connections and the admission policy over them.
#[derive(Debug)]
pub(crate) struct Admission {
    config: AdmissionConfig,
    /// Accepted connections whose handshake has not completed.
    in_flight: usize,
    /// (deadline, connection index, created) in acceptance order, so deadlines only grow. An
    /// entry whose connection completed, closed or was replaced is skipped when it comes due.
    deadlines: VecDeque<(Instant, usize, Instant)>,
}

impl Admission {
    pub(crate) fn new(config: AdmissionConfig) -> Self {
        Self { config, in_flight: 0, deadlines: VecDeque::new() }
    }

    /// Handshakes in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// What to do with `attempt` given the core's `intake`.
    pub(crate) fn decide(&self, attempt: Attempt, intake: Intake) -> Admit {
        match intake {
            Intake::Open => {}
            Intake::Closed => return Admit::Refuse(RefuseReason::Draining),
            // Steering sends such an attempt here every time: refuse it, or the client waits out
            // its idle timeout.
            Intake::HandedOver if attempt.names_this_process => return Admit::Refuse(RefuseReason::Draining),
            // Only a steering table that has not yet followed a member's departure (the kernel
            // moves sockets within the group) sends anything else here; the successor answers
            // the client's retransmission once the table is updated.
            Intake::HandedOver => return Admit::Ignore(RefuseReason::HandedOver),
        }
        if !attempt.validated && attempt.may_retry {
            let retry = match self.config.retry {
                RetryPolicy::Always => true,
                RetryPolicy::Auto => self.in_flight >= self.config.retry_threshold,
                RetryPolicy::Never => false,
            };
            if retry {
                return Admit::Retry;
            }
        }
        if self.in_flight >= self.config.max_half_open {
            return Admit::Refuse(RefuseReason::HalfOpenLimit);
        }
        Admit::Accept
    }

    /// The connection at `index`, created at `created`, was accepted: its handshake is in flight.
    pub(crate) fn started(&mut self, index: usize, created: Instant) {
        self.in_flight += 1;
        self.deadlines.push_back((created + self.config.handshake_timeout, index, created));
    }

    /// A handshake counted by `started` completed or ended.
    pub(crate) fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The next handshake deadline, for the loop's sleep.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _, _)| at)
    }

    /// The next (index, created) whose deadline has passed by `now`. The caller checks that the
    /// connection at `index` is still the one created then and still half-open.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(usize, Instant)> {
        match self.deadlines.front() {
            Some(&(at, index, created)) if at <= now => {
                self.deadlines.pop_front();
                Some((index, created))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Attempt = Attempt { validated: false, may_retry: true, names_this_process: false };
    const VALIDATED: Attempt = Attempt { validated: true, may_retry: false, names_this_process: false };

    fn admission(retry: RetryPolicy) -> Admission {
        Admission::new(AdmissionConfig {
            retry,
            retry_threshold: 2,
            max_half_open: 4,
            handshake_timeout: Duration::from_secs(1),
        })
    }

    fn fill(a: &mut Admission, n: usize, now: Instant) {
        for index in 0..n {
            a.started(index, now);
        }
    }

    #[test]
    fn auto_retries_only_past_the_threshold() {
        let now = Instant::now();
        let mut a = admission(RetryPolicy::Auto);
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Accept);
        fill(&mut a, 2, now);
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Retry);
        // A client that came back with a valid token is not sent round again.
        assert_eq!(a.decide(VALIDATED, Intake::Open), Admit::Accept);
        a.finished();
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Accept);
    }

    #[test]
    fn always_and_never() {
        let a = admission(RetryPolicy::Always);
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Retry);
        assert_eq!(a.decide(VALIDATED, Intake::Open), Admit::Accept);
        let mut a = admission(RetryPolicy::Never);
        fill(&mut a, 3, Instant::now());
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Accept);
    }

    #[test]
    fn the_half_open_cap_refuses_validated_clients_too() {
        let mut a = admission(RetryPolicy::Auto);
        fill(&mut a, 4, Instant::now());
        assert_eq!(a.decide(VALIDATED, Intake::Open), Admit::Refuse(RefuseReason::HalfOpenLimit));
        // A fresh client is asked to retry first: that keeps no state.
        assert_eq!(a.decide(FRESH, Intake::Open), Admit::Retry);
        assert_eq!(
            a.decide(Attempt { validated: false, may_retry: false, names_this_process: false }, Intake::Open),
            Admit::Refuse(RefuseReason::HalfOpenLimit)
        );
    }

    #[test]
    fn draining_refuses_everything() {
        let a = admission(RetryPolicy::Always);
        assert_eq!(a.decide(FRESH, Intake::Closed), Admit::Refuse(RefuseReason::Draining));
        assert_eq!(a.decide(VALIDATED, Intake::Closed), Admit::Refuse(RefuseReason::Draining));
    }

    #[test]
    fn handed_over_refuses_only_what_names_this_process() {
        let a = admission(RetryPolicy::Always);
        assert_eq!(a.decide(FRESH, Intake::HandedOver), Admit::Ignore(RefuseReason::HandedOver));
        assert_eq!(a.decide(VALIDATED, Intake::HandedOver), Admit::Ignore(RefuseReason::HandedOver));
        let ours = Attempt { names_this_process: true, ..FRESH };
        assert_eq!(a.decide(ours, Intake::HandedOver), Admit::Refuse(RefuseReason::Draining));
    }

    #[test]
    fn deadlines_come_due_in_acceptance_order() {
        let t0 = Instant::now();
        let mut a = admission(RetryPolicy::Never);
        a.started(7, t0);
        a.started(3, t0 + Duration::from_millis(500));
        assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(a.pop_expired(t0 + Duration::from_millis(999)), None);
        assert_eq!(a.pop_expired(t0 + Duration::from_secs(1)), Some((7, t0)));
        assert_eq!(a.pop_expired(t0 + Duration::from_secs(1)), None);
        assert_eq!(a.pop_expired(t0 + Duration::from_secs(2)), Some((3, t0 + Duration::from_millis(500))));
        assert_eq!(a.next_deadline(), None);
    }
}
