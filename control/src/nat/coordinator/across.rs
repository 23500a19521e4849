//! Relays across bootstraps (`docs/federation.md`, "Connecting across bootstraps"): a relay
//! allocation needs both peers' addresses as the relaying bootstrap observes them, so a peer
//! whose target is registered at another bootstrap of the federation is sent there (RELAY_AT):
//! it registers at that bootstrap and asks it for the relay, as with one bootstrap.
//!
//! Which bootstrap that is comes from the driver (the shared registry and the allow-list,
//! [`super::CoordinatorConfig::peer_bootstraps`]): the coordinator asks with
//! [`CoordinatorAction::RelayAcross`] and is told back, so it never reads the registry itself.

use std::net::SocketAddr;

use super::{Coordinator, CoordinatorAction, SessionId};
use crate::nat::message::{ErrorCode, Message};
use crate::PeerId;

impl Coordinator {
    /// The peer on `session` needs a relay to `target` (its RELAY_REQUEST `request`, or a
    /// forwarded connection request whose direct path is uncertain), and `target` is registered
    /// at another bootstrap: asks the driver which one.
    pub(super) fn relay_across(&mut self, session: SessionId, request: u64, target: PeerId) {
        self.actions.push_back(CoordinatorAction::RelayAcross { session, request, target });
    }

    /// The driver found where `target` is registered for a [`CoordinatorAction::RelayAcross`]:
    /// `bootstrap`, on the allow-list, at `address`. The requester on `session` hears RELAY_AT,
    /// unless it left meanwhile.
    pub fn relay_at(
        &mut self,
        session: SessionId,
        request: u64,
        target: PeerId,
        bootstrap: PeerId,
        address: SocketAddr,
    ) {
        let requester = self.sessions.get(&session).and_then(|s| s.peer);
        if requester.is_none_or(|peer| self.current_session(peer) != Some(session)) {
            return;
        }
        self.stats.relays_across += 1;
        self.send(session, Message::RelayAt { request, target, bootstrap, address });
    }

    /// No bootstrap of the allow-list has `target` for a [`CoordinatorAction::RelayAcross`]: the
    /// requester on `session` hears why, under `request`.
    pub fn relay_across_failed(&mut self, session: SessionId, request: u64, reason: &str) {
        if self.sessions.contains_key(&session) {
            self.send_error(session, request, ErrorCode::UnknownPeer, reason);
        }
    }
}
