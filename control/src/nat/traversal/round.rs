//! Punch rounds: one per PUNCH_ME_NOW, pairing the candidates into checks, probing them in
//! priority order until a pair is valid (RFC 8445 §7.2), learning peer-reflexive candidates, and
//! taking what a many-probe round found (a guessed port that answered, an extra socket that won).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::attempt::Phase;
use super::spray::{Spray, SprayState};
use super::{Traversal, TraversalAction};
use crate::nat::candidate::{self, Mapping, Pair};
use crate::nat::coordinator::SessionId;
use crate::nat::message::{Candidate, CandidateKind, PunchRole};
use crate::nat::probe::{Probe, ProbeKind};
use crate::PeerId;

#[derive(Debug)]
pub(super) struct Check {
    pub(super) remote: SocketAddr,
    pub(super) priority: u64,
    /// Reused by retransmissions, like a STUN transaction (RFC 8489 §6.2.1).
    pub(super) transaction: u64,
    pub(super) last_sent: Option<Instant>,
    pub(super) valid: bool,
}

/// One PUNCH_ME_NOW's round (identified by its token).
#[derive(Debug)]
pub(super) struct Round {
    pub(super) peer: PeerId,
    pub(super) role: PunchRole,
    pub(super) checks: Vec<Check>,
    pub(super) next_probe: Instant,
    /// Own probing stops here (or when a pair became valid).
    pub(super) probe_until: Instant,
    /// Probes of the other peer are answered until here.
    pub(super) answer_until: Instant,
    pub(super) probing: bool,
    pub(super) spray: Option<Spray>,
}

/// The fields of a PUNCH_ME_NOW a round is made of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Punch {
    pub(super) request: u64,
    pub(super) peer: PeerId,
    pub(super) role: PunchRole,
    pub(super) flags: u8,
    pub(super) start_in_ms: u32,
    pub(super) token: [u8; 16],
}

impl Traversal {
    pub(super) fn punch_me_now(&mut self, now: Instant, session: SessionId, punch: Punch, candidates: &[Candidate]) {
        let Punch { request, peer, role, flags, start_in_ms, token } = punch;
        if self.rounds.contains_key(&token) {
            return;
        }
        if role == PunchRole::Initiator {
            let Some(id) = self.attempt_waiting_for(session, request) else { return };
            let Some(attempt) = self.attempts.get_mut(&id) else { return };
            match attempt.phase {
                _ if attempt.peer != peer => return,
                Phase::AwaitingPunch { .. } => attempt.phase = Phase::Punching { token },
                // Connecting at once through the relay granted with this punch: the round runs on
                // as that connection's upgrade.
                Phase::ConnectingRelayed { .. } => {}
                _ => return,
            }
        }
        let local = self.local_candidates();
        let checks = candidate::check_list(&local, candidates, role == PunchRole::Initiator)
            .into_iter()
            .map(|Pair { remote, priority, .. }| Check {
                remote: remote.address,
                priority,
                transaction: self.random.next_u64(),
                last_sent: None,
                valid: false,
            })
            .collect();
        let start = now + Duration::from_millis(u64::from(start_in_ms));
        let spray = self.spray_for(start, flags, candidates);
        // Two-sided guessing needs longer than one punch (docs/nat-traversal.md).
        let two_sided =
            matches!(candidate::flag_mappings(flags), (Mapping::EndpointDependent, Mapping::EndpointDependent));
        let probe_until =
            start + if two_sided && spray.is_some() { self.config.birthday_timeout } else { self.config.punch_timeout };
        self.rounds.insert(
            token,
            Round {
                peer,
                role,
                checks,
                next_probe: start,
                probe_until,
                answer_until: probe_until + self.config.punch_timeout,
                probing: true,
                spray,
            },
        );
    }

    /// `from` sent this round a probe (or an asymmetric ack): it becomes a peer-reflexive candidate
    /// (RFC 8445 §7.3.1.3) and gets a triggered check (§7.3.1.4) unless one went out recently.
    pub(super) fn learn_and_check(&mut self, now: Instant, token: [u8; 16], from: SocketAddr) {
        let local = self.local_candidates();
        let interval = self.config.probe_interval;
        let Some(round) = self.rounds.get_mut(&token) else { return };
        let index = match round.checks.iter().position(|c| c.remote == from) {
            Some(index) => index,
            None => {
                let learned = Candidate {
                    kind: CandidateKind::PeerReflexive,
                    priority: candidate::priority(CandidateKind::PeerReflexive, u16::MAX),
                    address: from,
                };
                let controlling = round.role == PunchRole::Initiator;
                let Some(pair) = candidate::check_list(&local, &[learned], controlling).into_iter().next() else {
                    return;
                };
                let transaction = self.random.next_u64();
                round.checks.push(Check {
                    remote: from,
                    priority: pair.priority,
                    transaction,
                    last_sent: None,
                    valid: false,
                });
                round.checks.len() - 1
            }
        };
        if !round.probing || now >= round.probe_until {
            return;
        }
        let Some(check) = round.checks.get_mut(index) else { return };
        if check.valid || check.last_sent.is_some_and(|at| now < at + interval / 2) {
            return;
        }
        check.last_sent = Some(now);
        let probe = Probe { kind: ProbeKind::Probe, token, transaction: check.transaction };
        self.stats.probes_sent += 1;
        self.actions.push_back(TraversalAction::SendProbe { to: from, probe });
    }

    /// A probe of the round `token` to `address` was acknowledged from there.
    /// A pair of the round `token` to `address` is valid: from the node socket, or (`bridged`) from
    /// the round's kept extra socket.
    pub(super) fn pair_valid(&mut self, token: [u8; 16], address: SocketAddr, bridged: bool) {
        let Some(round) = self.rounds.get(&token) else { return };
        if !round.probing {
            return;
        }
        // The first valid pair is enough (RFC 8445 §8.1.1 aggressive nomination in spirit).
        let (peer, role) = (round.peer, round.role);
        self.stop_probing(token);
        let attempt =
            self.attempts.iter().find(|(_, a)| a.phase == Phase::Punching { token }).map(|(id, a)| (*id, a.upgrade));
        let bridge = bridged.then_some(token);
        match (role, attempt) {
            (PunchRole::Initiator, Some((id, false))) => {
                if let Some(state) = self.attempts.get_mut(&id) {
                    state.phase = Phase::ConnectingDirect { address };
                }
                let action = match bridge {
                    Some(token) => TraversalAction::ConnectBridged { attempt: id, peer, token, remote: address },
                    None => TraversalAction::ConnectDirect { attempt: id, peer, address },
                };
                self.actions.push_back(action);
            }
            (PunchRole::Initiator, Some((id, true))) => {
                self.attempts.remove(&id);
                self.move_to_direct(peer, address, bridge);
            }
            // The responder accepts the initiator's connection. Where they already share a relayed
            // one (connected at once, or earlier), its path moves here.
            (PunchRole::Initiator, None) | (PunchRole::Responder, _) => self.move_to_direct(peer, address, bridge),
        }
    }

    pub(super) fn drive_round(&mut self, now: Instant, token: [u8; 16]) {
        let interval = self.config.probe_interval;
        let sockets = self.config.spray_sockets;
        let Some(round) = self.rounds.get_mut(&token) else { return };
        if !round.probing {
            // A kept extra socket goes on probing for the round's probing time, so that the other
            // side learns its mapping even if the ack that made it win was lost.
            if let Some(Spray::Sockets { targets, first_transaction, state: SprayState::Kept { .. } }) = &round.spray {
                if now < round.next_probe {
                    return;
                }
                if now >= round.probe_until {
                    round.next_probe = round.probe_until;
                    return;
                }
                round.next_probe = now + interval;
                for &to in targets {
                    let first_transaction = *first_transaction;
                    self.actions.push_back(TraversalAction::SprayProbe { token, to, first_transaction });
                    self.stats.spray_probes_sent += 1;
                }
            }
            return;
        }
        if now >= round.probe_until {
            self.stop_probing(token);
            let attempt = self.attempts.iter().find(|(_, a)| a.phase == Phase::Punching { token }).map(|(id, _)| *id);
            if let Some(id) = attempt {
                self.punch_failed(now, id, "no direct path found");
            }
            return;
        }
        if let Some(Spray::Guesses { ip, transaction, guesser, next_batch, batch }) = &mut round.spray {
            if now >= *next_batch {
                // A fresh set each interval: the ports covered grow until a guess meets a mapping.
                *next_batch = now + interval;
                let probe = Probe { kind: ProbeKind::Probe, token, transaction: *transaction };
                for port in guesser.next_batch(*batch) {
                    let to = SocketAddr::new(*ip, port);
                    self.actions.push_back(TraversalAction::SendProbe { to, probe });
                    self.stats.guesses_sent += 1;
                }
            }
        }
        if now < round.next_probe {
            return;
        }
        round.next_probe = now + interval;
        round.checks.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut sent = 0;
        for check in round.checks.iter_mut().filter(|c| !c.valid) {
            check.last_sent = Some(now);
            let probe = Probe { kind: ProbeKind::Probe, token, transaction: check.transaction };
            self.actions.push_back(TraversalAction::SendProbe { to: check.remote, probe });
            sent += 1;
        }
        self.stats.probes_sent += sent;
        match &mut round.spray {
            Some(Spray::Sockets { targets, first_transaction, state }) => {
                if *state == SprayState::Idle {
                    *state = SprayState::Open;
                    self.actions.push_back(TraversalAction::SprayOpen { token, sockets });
                }
                if *state == SprayState::Open {
                    for &to in targets.iter() {
                        let first_transaction = *first_transaction;
                        self.actions.push_back(TraversalAction::SprayProbe { token, to, first_transaction });
                        self.stats.spray_probes_sent += u64::from(sockets);
                    }
                }
            }
            Some(Spray::Guesses { .. }) | None => {}
        }
    }

    /// The round `token` stops its own probing (it still answers the other peer's probes); extra
    /// sockets it opened and did not keep are closed.
    pub(super) fn stop_probing(&mut self, token: [u8; 16]) {
        let Some(round) = self.rounds.get_mut(&token) else { return };
        round.probing = false;
        if let Some(Spray::Sockets { state, .. }) = &mut round.spray {
            if *state == SprayState::Open {
                self.actions.push_back(TraversalAction::SprayClose { token });
            }
            if matches!(*state, SprayState::Open | SprayState::Idle) {
                *state = SprayState::Closed;
            }
        }
    }

    /// A guessed port of the EDM side answered: `address` is a mapping of one of its sockets.
    pub(super) fn guess_hit(&mut self, now: Instant, token: [u8; 16], address: SocketAddr) {
        let Some(round) = self.rounds.get_mut(&token) else { return };
        if !round.checks.iter().any(|c| c.remote == address) {
            let transaction = self.random.next_u64();
            let priority = candidate::pair_priority(
                candidate::priority(CandidateKind::PeerReflexive, u16::MAX),
                candidate::priority(CandidateKind::PeerReflexive, u16::MAX),
            );
            round.checks.push(Check { remote: address, priority, transaction, last_sent: Some(now), valid: true });
        }
        self.pair_valid(token, address, false);
    }

    /// Extra socket `socket` of round `token` reached the other peer at `remote`.
    pub(super) fn spray_won(&mut self, token: [u8; 16], socket: u16, remote: SocketAddr) {
        let Some(Round { spray: Some(Spray::Sockets { state, .. }), .. }) = self.rounds.get_mut(&token) else {
            return;
        };
        *state = SprayState::Kept { socket, remote };
        self.stats.spray_wins += 1;
        self.actions.push_back(TraversalAction::SprayKeep { token, socket, remote });
        self.pair_valid(token, remote, true);
    }
}
