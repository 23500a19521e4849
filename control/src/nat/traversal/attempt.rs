//! A connection attempt's lifecycle: CONNECT_REQUEST, the fallback to a relay when the punch
//! found nothing, and the end (a REPORT to the bootstrap and [`TraversalEvent::AttemptFinished`]).

use std::net::SocketAddr;
use std::time::Instant;

use super::{AttemptId, Traversal, TraversalEvent};
use crate::nat::coordinator::SessionId;
use crate::nat::message::{ErrorCode, Message, Outcome};
use crate::PeerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// CONNECT_REQUEST sent; waiting for PUNCH_ME_NOW (or ERROR) until `deadline`.
    AwaitingPunch { deadline: Instant },
    /// The round with this token is probing.
    Punching { token: [u8; 16] },
    /// ConnectDirect went out; waiting for the connection's outcome.
    ConnectingDirect { address: SocketAddr },
    /// RELAY_REQUEST sent; waiting for RELAY_GRANT (or ERROR) until `deadline`.
    AwaitingRelay { deadline: Instant },
    /// ConnectRelayed went out; waiting for the connection's outcome.
    ConnectingRelayed { relay: SocketAddr },
}

/// An attempt's relay asked at its target's bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Visit {
    /// The target's bootstrap, as RELAY_AT named it.
    pub(super) bootstrap: PeerId,
    /// The signalling session registered there, once the driver reports it.
    pub(super) session: Option<SessionId>,
    /// The RELAY_REQUEST sent there (0 before).
    pub(super) request: u64,
}

#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) peer: PeerId,
    pub(super) session: SessionId,
    /// The CONNECT_REQUEST's number, which the REPORT names.
    pub(super) connect_request: u64,
    /// The request outstanding now (CONNECT_REQUEST, then RELAY_REQUEST).
    pub(super) request: u64,
    pub(super) started: Instant,
    pub(super) phase: Phase,
    /// A background retry of punching for a relayed peer: it ends quietly, and success moves the
    /// relay path instead of opening a connection.
    pub(super) upgrade: bool,
    /// The bootstraps to coordinate through, in the operator's order.
    pub(super) order: Vec<SessionId>,
    /// The addresses of the bootstraps asked so far, the current one last.
    pub(super) tried: Vec<SocketAddr>,
    /// The relay asked at the target's bootstrap (after RELAY_AT).
    pub(super) visit: Option<Visit>,
}

impl Traversal {
    pub(super) fn start_attempt(
        &mut self,
        now: Instant,
        session: SessionId,
        target: PeerId,
        upgrade: bool,
    ) -> AttemptId {
        let id = self.next_attempt;
        self.next_attempt += 1;
        let request = self.fresh_request();
        let deadline = now + self.config.answer_timeout;
        let tried = self.bootstraps.get(&session).map(|b| b.address).into_iter().collect();
        self.attempts.insert(
            id,
            Attempt {
                peer: target,
                session,
                connect_request: request,
                request,
                started: now,
                phase: Phase::AwaitingPunch { deadline },
                upgrade,
                order: Vec::new(),
                tried,
                visit: None,
            },
        );
        self.signal(session, Message::ConnectRequest { request, target });
        id
    }

    /// The punch of `attempt` found nothing usable: ask for a relay, or give up.
    pub(super) fn punch_failed(&mut self, now: Instant, attempt: AttemptId, why: &str) {
        let Some(state) = self.attempts.get(&attempt) else { return };
        if state.upgrade {
            // Retried at the next upgrade interval.
            self.attempts.remove(&attempt);
            return;
        }
        let (session, peer) = (state.session, state.peer);
        let deadline = now + self.config.answer_timeout;
        if state.visit.is_some() {
            // The relay is being asked at the target's bootstrap already: wait for its grant.
            if let Some(state) = self.attempts.get_mut(&attempt) {
                state.phase = Phase::AwaitingRelay { deadline };
            }
            return;
        }
        if !self.config.relay_fallback || !self.bootstraps.contains_key(&session) {
            self.fail(now, attempt, why.to_owned());
            return;
        }
        let request = self.fresh_request();
        if let Some(state) = self.attempts.get_mut(&attempt) {
            state.request = request;
            state.phase = Phase::AwaitingRelay { deadline };
        }
        self.signal(session, Message::RelayRequest { request, target: peer });
    }

    /// The first connected bootstrap of `order`, else any connected one, whose address is not in
    /// `tried`.
    pub(super) fn next_bootstrap(&self, order: &[SessionId], tried: &[SocketAddr]) -> Option<SessionId> {
        let untried = |session: &SessionId| self.bootstraps.get(session).is_some_and(|b| !tried.contains(&b.address));
        order.iter().copied().find(untried).or_else(|| self.bootstraps.keys().copied().find(untried))
    }

    /// The bootstrap coordinating `attempt` did not answer in time, or was lost (`why`): the same
    /// request (a fresh number) goes to the next bootstrap not yet tried, which starts it over
    /// with a CONNECT_REQUEST (a relay, too, needs both peers registered where it is asked). Each
    /// bootstrap address is asked once per attempt; with none left, the attempt fails.
    pub(super) fn fail_over(&mut self, now: Instant, attempt: AttemptId, why: &str) {
        let Some(state) = self.attempts.get(&attempt) else { return };
        let next = if state.upgrade { None } else { self.next_bootstrap(&state.order, &state.tried) };
        let (Some(next), Some(&from)) = (next, state.tried.last()) else {
            self.fail(now, attempt, why.to_owned());
            return;
        };
        let Some(to) = self.bootstraps.get(&next).map(|b| b.address) else { return };
        let request = self.fresh_request();
        let deadline = now + self.config.answer_timeout;
        let Some(state) = self.attempts.get_mut(&attempt) else { return };
        let (previous, peer) = (std::mem::replace(&mut state.phase, Phase::AwaitingPunch { deadline }), state.peer);
        state.session = next;
        state.visit = None;
        state.request = request;
        state.connect_request = request;
        state.tried.push(to);
        if let Phase::Punching { token } = previous {
            self.stop_probing(token);
        }
        self.signal(next, Message::ConnectRequest { request, target: peer });
        let reason = why.to_owned();
        self.events.push_back(TraversalEvent::Rerouted { attempt, peer, from, to, reason });
    }

    pub(super) fn fail(&mut self, now: Instant, attempt: AttemptId, reason: String) {
        let upgrade = self.attempts.get(&attempt).is_some_and(|a| a.upgrade);
        if upgrade {
            self.attempts.remove(&attempt);
            return;
        }
        self.finish(now, attempt, Outcome::Failed, None, Some(reason));
    }

    pub(super) fn finish(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        outcome: Outcome,
        remote: Option<SocketAddr>,
        reason: Option<String>,
    ) {
        let Some(state) = self.attempts.remove(&attempt) else { return };
        if let Phase::Punching { token } = state.phase {
            // Nobody waits for this round's pairs any more; it still answers the other peer.
            self.stop_probing(token);
        }
        let connect = now.saturating_duration_since(state.started);
        match outcome {
            Outcome::Direct => self.stats.attempts_direct += 1,
            Outcome::Relayed => self.stats.attempts_relayed += 1,
            Outcome::Failed => self.stats.attempts_failed += 1,
        }
        if self.bootstraps.contains_key(&state.session) {
            let connect_ms = u32::try_from(connect.as_millis()).unwrap_or(u32::MAX);
            self.signal(state.session, Message::Report { request: state.connect_request, outcome, connect_ms });
        }
        self.events.push_back(TraversalEvent::AttemptFinished {
            attempt,
            peer: state.peer,
            outcome,
            remote,
            connect,
            reason,
        });
    }

    /// The attempt whose outstanding request on `session` is `request` (0 names none).
    pub(super) fn attempt_waiting_for(&self, session: SessionId, request: u64) -> Option<AttemptId> {
        if request == 0 {
            return None;
        }
        self.attempts.iter().find(|(_, a)| a.session == session && a.request == request).map(|(id, _)| *id)
    }
}

/// The name of an ERROR code as `docs/nat-traversal.md` spells it.
pub(super) fn code_name(code: ErrorCode) -> String {
    match code {
        ErrorCode::Malformed => "malformed".to_owned(),
        ErrorCode::NotRegistered => "not_registered".to_owned(),
        ErrorCode::UnknownPeer => "unknown_peer".to_owned(),
        ErrorCode::RateLimited => "rate_limited".to_owned(),
        ErrorCode::RelayRefused => "relay_refused".to_owned(),
        ErrorCode::NotAuthenticated => "not_authenticated".to_owned(),
        ErrorCode::Other(code) => format!("error {code}"),
    }
}
