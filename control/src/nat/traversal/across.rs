//! Relays across bootstraps: RELAY_AT sends this peer to the bootstrap its target is registered
//! at (`docs/federation.md`, "Connecting across bootstraps"). The driver connects there, with
//! the bootstrap's peer ID pinned, and reports the registration ([`Traversal::visit_ready`]);
//! the RELAY_REQUEST then goes there and the grant is followed as with one bootstrap.
//!
//! Only a RELAY_AT that answers a request of an attempt of ours still waiting for a path, from
//! the bootstrap it was sent to and for the same target, is followed; any other is counted and
//! makes this peer connect nowhere.

use std::net::SocketAddr;
use std::time::Instant;

use super::attempt::{Attempt, Phase, Visit};
use super::{AttemptId, Traversal, TraversalAction};
use crate::nat::coordinator::SessionId;
use crate::nat::message::Message;
use crate::PeerId;

impl Traversal {
    /// RELAY_AT on `session`: the relay to `target` is to be asked at `bootstrap` (`address`).
    pub(super) fn relay_at(
        &mut self,
        now: Instant,
        session: SessionId,
        request: u64,
        target: PeerId,
        (bootstrap, address): (PeerId, SocketAddr),
    ) {
        let waiting = self.attempt_waiting_for(session, request).filter(|id| {
            self.attempts.get(id).is_some_and(|a| {
                a.peer == target
                    && !a.upgrade
                    && matches!(
                        a.phase,
                        Phase::AwaitingPunch { .. } | Phase::Punching { .. } | Phase::AwaitingRelay { .. }
                    )
            })
        });
        let Some(id) = waiting else {
            self.stats.relay_at_ignored += 1;
            tracing::debug!(%target, %bootstrap, %address, "RELAY_AT answering no request of ours: ignored");
            return;
        };
        let deadline = now + self.config.answer_timeout;
        let Some(attempt) = self.attempts.get_mut(&id) else { return };
        if attempt.visit.is_some() {
            // Already under way (a second answer of the same bootstrap, after the punch failed).
            return;
        }
        attempt.visit = Some(Visit { bootstrap, session: None, request: 0 });
        if let Phase::AwaitingRelay { .. } = attempt.phase {
            attempt.phase = Phase::AwaitingRelay { deadline };
        }
        self.stats.relay_at_followed += 1;
        self.actions.push_back(TraversalAction::VisitBootstrap { attempt: id, bootstrap, address });
    }

    /// The driver registered this peer at the bootstrap that [`TraversalAction::VisitBootstrap`]
    /// named for `attempt`, as `session`: the RELAY_REQUEST goes there.
    pub fn visit_ready(&mut self, now: Instant, attempt: AttemptId, session: SessionId) {
        if !self.bootstraps.contains_key(&session) {
            return;
        }
        let request = self.fresh_request();
        let deadline = now + self.config.answer_timeout;
        let Some(state) = self.attempts.get_mut(&attempt) else { return };
        let Some(visit) = state.visit.as_mut().filter(|v| v.session.is_none()) else { return };
        visit.session = Some(session);
        visit.request = request;
        if let Phase::AwaitingRelay { .. } = state.phase {
            state.phase = Phase::AwaitingRelay { deadline };
        }
        let target = state.peer;
        self.signal(session, Message::RelayRequest { request, target });
    }

    /// The bootstrap that [`TraversalAction::VisitBootstrap`] named for `attempt` could not be
    /// reached, did not prove its peer ID, or refused the relay (`why`). An attempt that waits
    /// for nothing else fails; one still punching goes on.
    pub fn visit_failed(&mut self, now: Instant, attempt: AttemptId, why: &str) {
        let Some(state) = self.attempts.get_mut(&attempt) else { return };
        let Some(visit) = state.visit.take() else { return };
        tracing::debug!(attempt, bootstrap = %visit.bootstrap, why, "relay at the target's bootstrap failed");
        if let Phase::AwaitingRelay { .. } = state.phase {
            self.fail(now, attempt, format!("no relay at the target's bootstrap {}: {why}", visit.bootstrap));
        }
    }

    /// The attempt whose RELAY_REQUEST `request` went to `session` at its target's bootstrap.
    pub(super) fn visit_waiting_for(&self, session: SessionId, request: u64) -> Option<AttemptId> {
        if request == 0 {
            return None;
        }
        let asked = |a: &Attempt| a.visit.is_some_and(|v| v.session == Some(session) && v.request == request);
        self.attempts.iter().find(|(_, a)| asked(a)).map(|(id, _)| *id)
    }

    /// Where bootstrap `session` observes this peer: `Some` once registered there.
    pub fn observed_at(&self, session: SessionId) -> Option<SocketAddr> {
        self.bootstraps.get(&session).and_then(|b| b.observed).map(|(_, address)| address)
    }

    /// Whether anything of this peer's goes through bootstrap `session`: a relay path it granted
    /// (and renews), or a relay asked there.
    pub fn uses_session(&self, session: SessionId) -> bool {
        self.relay_paths.values().any(|p| p.session == session)
            || self.attempts.values().any(|a| a.visit.is_some_and(|v| v.session == Some(session)))
    }

    /// Attempts whose relay was asked at `session`, which is gone: each goes on as
    /// [`Traversal::visit_failed`] says.
    pub(super) fn visits_lost(&mut self, now: Instant, session: SessionId) {
        let lost: Vec<AttemptId> = self
            .attempts
            .iter()
            .filter(|(_, a)| {
                a.visit.is_some_and(|v| v.session == Some(session))
                    && !matches!(a.phase, Phase::ConnectingRelayed { .. } | Phase::ConnectingDirect { .. })
            })
            .map(|(id, _)| *id)
            .collect();
        for attempt in lost {
            self.visit_failed(now, attempt, "the connection to it was lost");
        }
    }
}
