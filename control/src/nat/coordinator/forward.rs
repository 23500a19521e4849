//! Connection requests across bootstraps (`docs/federation.md`, "Connecting across
//! bootstraps"): a CONNECT_REQUEST for a peer registered at another bootstrap goes there as a
//! FORWARD_CONNECT; that bootstrap, which has the target's signalling session, sends the target
//! its PUNCH_ME_NOW and answers with the requester's, which this one passes on.
//!
//! Only the bootstraps on the allow-list ([`super::CoordinatorConfig::peer_bootstraps`]) may
//! forward here, and only to them does this one forward: they are known by the peer ID their
//! connection proved, never by address.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::punch::PunchEnd;
use super::{millis_rounded, Coordinator, CoordinatorAction, SessionId, Timer};
use crate::nat::candidate::{self, Mapping};
use crate::nat::message::{Candidate, ErrorCode, Message, MAX_CANDIDATES};
use crate::PeerId;

/// A CONNECT_REQUEST sent on to another bootstrap, waiting for its answer.
#[derive(Debug)]
pub(super) struct Forward {
    /// The requester's session here and its request number.
    session: SessionId,
    request: u64,
    requester: PeerId,
    target: PeerId,
    /// The session to the target's bootstrap, once the driver found it.
    link: Option<SessionId>,
    sent: Instant,
}

/// What FORWARD_CONNECT carries of the requester.
pub(super) struct Forwarded {
    pub(super) request: u64,
    pub(super) requester: PeerId,
    pub(super) target: PeerId,
    pub(super) flags: u8,
    pub(super) delay_ms: u32,
    pub(super) candidates: Vec<Candidate>,
}

impl Coordinator {
    /// Whether connection requests for peers registered elsewhere are forwarded.
    pub(super) fn forwards(&self) -> bool {
        !self.config.peer_bootstraps.is_empty()
    }

    /// Whether `peer` is a bootstrap on the allow-list: its session is a link between
    /// bootstraps, not a peer's registration to announce.
    pub fn is_peer_bootstrap(&self, peer: PeerId) -> bool {
        self.config.peer_bootstraps.contains(&peer)
    }

    /// A CONNECT_REQUEST of `requester` (on `session`) for `target`, not registered here: asks
    /// the driver for the link to the target's bootstrap ([`CoordinatorAction::Forward`]).
    pub(super) fn forward_connect(
        &mut self,
        now: Instant,
        session: SessionId,
        requester: PeerId,
        request: u64,
        target: PeerId,
    ) {
        let forward = self.next_forward;
        self.next_forward = self.next_forward.wrapping_add(1);
        let forward_entry = Forward { session, request, requester, target, link: None, sent: now };
        self.forwarded.insert(forward, forward_entry);
        self.timers.push(Reverse((now + self.config.forward_timeout, Timer::Forward { forward })));
        self.actions.push_back(CoordinatorAction::Forward { forward, target });
    }

    /// The driver found `link`, the signalling session to the target's bootstrap, for the
    /// [`CoordinatorAction::Forward`] numbered `forward`: sends FORWARD_CONNECT on it.
    pub fn forward_via(&mut self, now: Instant, forward: u64, link: SessionId) {
        let Some(entry) = self.forwarded.get_mut(&forward) else { return };
        entry.link = Some(link);
        let (session, requester, target) = (entry.session, entry.requester, entry.target);
        let cap = self.config.max_compensated_rtt;
        let rtt = self.sessions.get(&session).map_or(Duration::ZERO, |s| s.rtt.min(cap));
        let message = Message::ForwardConnect {
            request: forward,
            requester,
            target,
            flags: candidate::punch_flags(self.mapping_of(requester, now), Mapping::Unknown),
            delay_ms: millis_rounded(rtt / 2),
            candidates: self.candidates_of(requester, now),
        };
        self.send(link, message);
        self.stats.forwards_sent += 1;
    }

    /// No link to the target's bootstrap for `forward` (the registry does not know the target,
    /// or its bootstrap is not on the allow-list or not connected): the requester hears why.
    pub fn forward_failed(&mut self, forward: u64, reason: &str) {
        let Some(entry) = self.forwarded.remove(&forward) else { return };
        self.stats.forwards_failed += 1;
        self.send_error(entry.session, entry.request, ErrorCode::UnknownPeer, reason);
    }

    /// A message from the bootstrap at the other end of `link`. An answer to a forward
    /// (PUNCH_ME_NOW or ERROR echoing its number, on the link it went out on) goes on to the
    /// requester and `None` comes back; anything else is returned for the node's own traversal.
    pub fn forward_answer(&mut self, now: Instant, link: SessionId, message: Message) -> Option<Message> {
        let forward = match &message {
            Message::PunchMeNow { request, .. } | Message::Error { request, .. } => *request,
            _ => return Some(message),
        };
        if self.forwarded.get(&forward).is_none_or(|entry| entry.link != Some(link)) {
            return Some(message);
        }
        let entry = self.forwarded.remove(&forward)?;
        let elapsed = now.saturating_duration_since(entry.sent);
        // The requester may have gone or reconnected meanwhile: its new session asks again.
        let current = self.current_session(entry.requester) == Some(entry.session);
        match message {
            Message::PunchMeNow { round, peer, role, flags, start_in_ms, token, candidates, .. } => {
                self.stats.forwards_punched += 1;
                self.actions.push_back(CoordinatorAction::Forwarded { elapsed, punched: true });
                if current {
                    let request = entry.request;
                    let punch =
                        Message::PunchMeNow { round, request, peer, role, flags, start_in_ms, token, candidates };
                    self.send(entry.session, punch);
                    // Where a direct path is uncertain, the requester is sent to the target's
                    // bootstrap for the relay at once, as one bootstrap grants it with the punch
                    // (docs/nat-traversal.md, "Connect at once").
                    let (requester_mapping, target_mapping) = candidate::flag_mappings(flags);
                    if self.config.relay_at_once && candidate::direct_uncertain(requester_mapping, target_mapping) {
                        self.relay_across(entry.session, request, entry.target);
                    }
                }
            }
            Message::Error { code, reason, .. } => {
                self.stats.forwards_failed += 1;
                self.actions.push_back(CoordinatorAction::Forwarded { elapsed, punched: false });
                if current {
                    self.send_error(entry.session, entry.request, code, &reason);
                }
            }
            _ => {}
        }
        None
    }

    /// A forward whose answer is overdue: the requester hears it failed.
    pub(super) fn forward_expired(&mut self, now: Instant, forward: u64) {
        let Some(entry) = self.forwarded.remove(&forward) else { return };
        self.stats.forwards_failed += 1;
        let elapsed = now.saturating_duration_since(entry.sent);
        self.actions.push_back(CoordinatorAction::Forwarded { elapsed, punched: false });
        self.send_error(entry.session, entry.request, ErrorCode::UnknownPeer, "the target's bootstrap did not answer");
    }

    /// FORWARD_CONNECT on `session`: from a bootstrap on the allow-list, for a peer registered
    /// here, sends both PUNCH_ME_NOWs: the target's directly, the requester's through `session`.
    /// Both start at the same moment: the requester's travels one hop further.
    pub(super) fn forwarded_connect(&mut self, now: Instant, session: SessionId, forwarded: Forwarded) {
        let Forwarded { request, requester, target, flags, delay_ms, candidates } = forwarded;
        let from = self.sessions.get(&session).and_then(|s| s.peer);
        if !from.is_some_and(|bootstrap| self.is_peer_bootstrap(bootstrap)) {
            self.stats.forwards_refused += 1;
            self.send_error(
                session,
                request,
                ErrorCode::NotAuthenticated,
                "FORWARD_CONNECT is taken only from the bootstraps on this one's allow-list",
            );
            return;
        }
        if self.registered_peer(session, request).is_none() {
            return;
        }
        let Some(target_session) = self.current_session(target).filter(|_| target != requester) else {
            self.send_error(session, request, ErrorCode::UnknownPeer, "the target peer is not registered here");
            return;
        };
        let cap = self.config.max_compensated_rtt;
        let rtt_of = |s: SessionId| self.sessions.get(&s).map_or(Duration::ZERO, |s| s.rtt.min(cap));
        // One-way delays of the two PUNCH_ME_NOWs: the requester's crosses the link, then goes
        // from its bootstrap to it (capped like an RTT here).
        let to_requester = rtt_of(session) / 2 + Duration::from_millis(u64::from(delay_ms)).min(cap / 2);
        let to_target = rtt_of(target_session) / 2;
        let d = to_requester.max(to_target) + self.config.punch_margin;
        let round = self.next_round();
        let (mapping_requester, _) = candidate::flag_mappings(flags);
        let mut candidates: Vec<Candidate> =
            candidates.into_iter().filter(|c| super::acceptable(c).is_ok()).take(MAX_CANDIDATES).collect();
        candidates.dedup_by_key(|c| c.address);
        // The requester's PUNCH_ME_NOW goes out on the link, which passes it on.
        let initiator = PunchEnd {
            peer: requester,
            session,
            mapping: mapping_requester,
            start_in_ms: millis_rounded(d.saturating_sub(to_requester)),
            candidates,
        };
        let responder = PunchEnd {
            peer: target,
            session: target_session,
            mapping: self.mapping_of(target, now),
            start_in_ms: millis_rounded(d.saturating_sub(to_target)),
            candidates: self.candidates_of(target, now),
        };
        self.send_punch_round(round, request, initiator, responder);
        self.stats.forwards_received += 1;
    }
}
