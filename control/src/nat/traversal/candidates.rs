//! This peer's own candidates (RFC 8445 §5.1): the host addresses and what the bootstraps
//! observed, and how they are announced to each bootstrap with ADD_ADDRESS.

use std::net::SocketAddr;

use super::Traversal;
use crate::nat::candidate;
use crate::nat::coordinator::SessionId;
use crate::nat::message::{Candidate, CandidateKind, Message};

/// Observed addresses (of other bootstraps, and of the bootstraps' alternate addresses) shared
/// with each bootstrap: enough to tell EIM from EDM (RFC 4787 §4.1), few enough to leave the
/// candidate slots to host addresses.
const MAX_SHARED_REFLEXIVE: usize = 3;
/// Server-reflexive candidates shared from other bootstraps rank just below the one the bootstrap
/// observed itself (which it adds at `u16::MAX`).
const SHARED_REFLEXIVE_PREFERENCE: u16 = u16::MAX - 1;

impl Traversal {
    /// This peer's own candidates: host addresses and what the bootstraps observed. They share the
    /// node socket as their base (see [`candidate::check_list`]).
    pub(super) fn local_candidates(&self) -> Vec<Candidate> {
        let hosts = self.hosts.iter().enumerate().map(|(index, (_, address))| host_candidate(index, *address));
        let reflexive = self.bootstraps.values().filter_map(|b| b.observed).map(|(_, address)| Candidate {
            kind: CandidateKind::ServerReflexive,
            priority: candidate::priority(CandidateKind::ServerReflexive, u16::MAX),
            address,
        });
        hosts.chain(reflexive).collect()
    }

    /// ADD_ADDRESS to bootstrap `session` for what the other bootstraps observed (bounded).
    pub(super) fn share_reflexive_with(&mut self, session: SessionId) {
        let to = self.bootstraps.get(&session).map(|b| b.address);
        // What this bootstrap's own alternate addresses observed comes first: with one bootstrap,
        // that is all it has to tell the mapping.
        let discovered = |b: &super::Bootstrap| -> Vec<(u64, SocketAddr)> {
            b.discoveries.iter().filter_map(|d| d.observed.map(|o| (d.sequence, o))).collect()
        };
        let own = self.bootstraps.get(&session).map(discovered).unwrap_or_default();
        let others = self
            .bootstraps
            .iter()
            // Another connection to the same address (a re-registration under way) saw the same
            // mapping: it tells nothing about how the NAT maps.
            .filter(|(other, b)| **other != session && Some(b.address) != to)
            .flat_map(|(_, b)| {
                b.observed.map(|(_, address)| (b.shared_sequence, address)).into_iter().chain(discovered(b))
            });
        let shared: Vec<(u64, SocketAddr)> = own
            .into_iter()
            .chain(others)
            // A host address seen as is means no NAT: nothing to tell, and the bootstrap would
            // replace the host candidate with it.
            .filter(|(_, address)| !self.hosts.iter().any(|(_, host)| host == address))
            .take(MAX_SHARED_REFLEXIVE)
            .collect();
        for (sequence, address) in shared {
            let candidate = Candidate {
                kind: CandidateKind::ServerReflexive,
                priority: candidate::priority(CandidateKind::ServerReflexive, SHARED_REFLEXIVE_PREFERENCE),
                address,
            };
            self.signal(session, Message::AddAddress { sequence, candidate });
        }
    }

    pub(super) fn add_address(&mut self, session: SessionId, index: usize) {
        let Some(&(sequence, address)) = self.hosts.get(index) else { return };
        let candidate = host_candidate(index, address);
        self.signal(session, Message::AddAddress { sequence, candidate });
    }
}

/// The host candidate at `index` of the preference order.
fn host_candidate(index: usize, address: SocketAddr) -> Candidate {
    let local_preference = u16::MAX.saturating_sub(u16::try_from(index).unwrap_or(u16::MAX));
    Candidate {
        kind: CandidateKind::Host,
        priority: candidate::priority(CandidateKind::Host, local_preference),
        address,
    }
}
