//! Telling the driver who is registered here, for a registry shared with other bootstraps
//! (`crate::registry`): on register, address change and unregister only.

use std::cmp::Reverse;
use std::time::Instant;

use super::{Coordinator, CoordinatorAction};
use crate::PeerId;

impl Coordinator {
    /// `peer` registered, moved or changed its candidates: [`CoordinatorAction::Registered`] with
    /// where it is seen now (the registry drops repeats: a refreshed candidate writes nothing).
    pub(super) fn announce(&mut self, now: Instant, peer: PeerId) {
        if !self.config.announce_registrations || self.is_peer_bootstrap(peer) {
            return;
        }
        let Some(registration) = self.peers.get(&peer) else { return };
        let Some(session) = self.sessions.get(&registration.session) else { return };
        let mut added: Vec<_> = registration.added.iter().filter(|a| a.expires > now).map(|a| a.candidate).collect();
        added.sort_by_key(|c| (Reverse(c.priority), c.address));
        let candidates = added.into_iter().map(|c| c.address).collect();
        self.actions.push_back(CoordinatorAction::Registered { peer, observed: session.observed, candidates });
    }

    /// `peer` is no longer registered here.
    pub(super) fn announce_gone(&mut self, peer: PeerId) {
        if self.config.announce_registrations && !self.is_peer_bootstrap(peer) {
            self.actions.push_back(CoordinatorAction::Unregistered { peer });
        }
    }
}
