//! One punch round: both PUNCH_ME_NOWs, for a pair registered here (`connect_request`) or a
//! requester at another bootstrap (`forwarded_connect`).

use super::{Coordinator, SessionId};
use crate::nat::candidate::{self, Mapping};
use crate::nat::message::{Candidate, Message, PunchRole};
use crate::PeerId;

/// One end of a punch round: the peer, the session its PUNCH_ME_NOW goes out on, its NAT
/// mapping, when it starts, and the candidates the other end probes.
pub(super) struct PunchEnd {
    pub(super) peer: PeerId,
    pub(super) session: SessionId,
    pub(super) mapping: Mapping,
    pub(super) start_in_ms: u32,
    pub(super) candidates: Vec<Candidate>,
}

impl Coordinator {
    /// A round number and token for a new punch round.
    pub(super) fn next_round(&mut self) -> (u64, [u8; 16]) {
        let round = self.next_round;
        self.next_round = self.next_round.wrapping_add(1);
        (round, self.random.token())
    }

    /// Sends both PUNCH_ME_NOWs of one round: the initiator's answers its `request`, each names
    /// the other end with its candidates, both carry the round's number and token.
    pub(super) fn send_punch_round(
        &mut self,
        (round, token): (u64, [u8; 16]),
        request: u64,
        initiator: PunchEnd,
        responder: PunchEnd,
    ) {
        let to_initiator = Message::PunchMeNow {
            round,
            request,
            peer: responder.peer,
            role: PunchRole::Initiator,
            flags: candidate::punch_flags(initiator.mapping, responder.mapping),
            start_in_ms: initiator.start_in_ms,
            token,
            candidates: responder.candidates,
        };
        let to_responder = Message::PunchMeNow {
            round,
            request: 0,
            peer: initiator.peer,
            role: PunchRole::Responder,
            flags: candidate::punch_flags(responder.mapping, initiator.mapping),
            start_in_ms: responder.start_in_ms,
            token,
            candidates: initiator.candidates,
        };
        self.send(initiator.session, to_initiator);
        self.send(responder.session, to_responder);
        self.stats.punches_coordinated += 1;
    }
}
