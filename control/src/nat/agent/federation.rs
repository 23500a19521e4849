//! The agent's part in a federation of bootstraps (`docs/federation.md`): as a bootstrap, where a
//! request for a peer registered at another bootstrap goes (the link a CONNECT_REQUEST is
//! forwarded on, the bootstrap a relay is asked at); as a peer, the extra bootstraps it connects
//! to when told to ask a relay at its target's bootstrap (RELAY_AT).

use std::net::SocketAddr;
use std::time::Instant;

use ant_quic_dataplane::ConnId;

use super::{session_of, AgentAction, Bootstrap, NatAgent, FIRST_RECONNECT_DELAY};
use crate::nat::coordinator::SessionId;
use crate::nat::traversal::AttemptId;
use crate::PeerId;

/// Extra bootstraps (RELAY_AT) a node is connected to at most at once: each is a connection and
/// a registration, so a bootstrap that sends its peers elsewhere cannot make them hold many.
pub const MAX_EXTRA_BOOTSTRAPS: usize = 3;

impl NatAgent {
    /// Sends the forwarded request `forward` on the link to the bootstrap `target` is registered
    /// at, or tells the coordinator why it cannot.
    pub(super) fn route_forward(&mut self, now: Instant, forward: u64, target: PeerId) {
        let Some(bootstrap) = self.directory.as_ref().and_then(|lookup| lookup(target)) else {
            self.coordinator.forward_failed(forward, "the target peer is not registered at any bootstrap");
            return;
        };
        if !self.coordinator.is_peer_bootstrap(bootstrap) {
            // Its own entries are answered before a forward; others are not trusted.
            self.coordinator.forward_failed(forward, "the target's bootstrap is not on this one's allow-list");
            return;
        }
        match self.bootstraps.iter().find(|b| !b.extra && b.peer == Some(bootstrap)).and_then(|b| b.conn) {
            Some(conn) => self.coordinator.forward_via(now, forward, session_of(conn)),
            None => self.coordinator.forward_failed(forward, "the target's bootstrap is not connected to this one"),
        }
    }

    /// The peer on `session` needs a relay to `target`, registered elsewhere: names the
    /// target's bootstrap (RELAY_AT) when it is on the allow-list, at the address this node's
    /// configuration gives it (never the one the registry holds), or tells the peer why not.
    pub(super) fn route_relay_across(&mut self, session: SessionId, request: u64, target: PeerId) {
        let Some(bootstrap) = self.directory.as_ref().and_then(|lookup| lookup(target)) else {
            let reason = "the target peer is not registered at any bootstrap";
            self.coordinator.relay_across_failed(session, request, reason);
            return;
        };
        if !self.coordinator.is_peer_bootstrap(bootstrap) {
            let reason = "the target's bootstrap is not on this one's allow-list";
            self.coordinator.relay_across_failed(session, request, reason);
            return;
        }
        match self.bootstraps.iter().find(|b| !b.extra && b.peer == Some(bootstrap)).map(|b| b.address) {
            Some(address) => self.coordinator.relay_at(session, request, target, bootstrap, address),
            None => {
                let reason = "the target's bootstrap is not linked to this one";
                self.coordinator.relay_across_failed(session, request, reason);
            }
        }
    }

    /// The traversal follows a RELAY_AT for `attempt`: registers at `bootstrap` (pinned by its
    /// peer ID) at `address`, reusing a registration there if this node has one, and tells the
    /// traversal once registered.
    pub(super) fn visit_bootstrap(&mut self, now: Instant, attempt: AttemptId, bootstrap: PeerId, address: SocketAddr) {
        if bootstrap == self.local_peer {
            self.traversal.visit_failed(now, attempt, "it names this node");
            return;
        }
        let known = self.bootstraps.iter().position(|b| b.peer == Some(bootstrap) && b.in_use);
        if let Some(index) = known {
            let registered = self.bootstraps.get(index).and_then(|b| b.conn).map(session_of);
            match registered.filter(|session| self.traversal.observed_at(*session).is_some()) {
                Some(session) => self.traversal.visit_ready(now, attempt, session),
                None => {
                    if let Some(b) = self.bootstraps.get_mut(index) {
                        b.waiting.push(attempt);
                    }
                }
            }
            return;
        }
        let in_use = self.bootstraps.iter().filter(|b| b.extra && b.in_use).count();
        if in_use >= MAX_EXTRA_BOOTSTRAPS {
            let why = format!("this node is registered at {MAX_EXTRA_BOOTSTRAPS} extra bootstraps already");
            self.traversal.visit_failed(now, attempt, &why);
            return;
        }
        let slot = Bootstrap {
            address,
            peer: Some(bootstrap),
            conn: None,
            reconnect_at: None,
            delay: FIRST_RECONNECT_DELAY,
            handover: None,
            extra: true,
            in_use: true,
            waiting: vec![attempt],
        };
        let index = match self.bootstraps.iter().position(|b| b.extra && !b.in_use) {
            Some(index) => {
                if let Some(free) = self.bootstraps.get_mut(index) {
                    *free = slot;
                }
                index
            }
            None => {
                self.bootstraps.push(slot);
                self.bootstraps.len() - 1
            }
        };
        tracing::info!(%bootstrap, %address, "registering at the target's bootstrap for a relay");
        self.connect_bootstrap(index);
    }

    /// `conn`'s bootstrap observed this node: the relays waiting for that registration are asked.
    pub(super) fn registered_at(&mut self, now: Instant, conn: ConnId) {
        let Some(bootstrap) = self.bootstraps.iter_mut().find(|b| b.conn == Some(conn)) else { return };
        for attempt in std::mem::take(&mut bootstrap.waiting) {
            self.traversal.visit_ready(now, attempt, session_of(conn));
        }
    }

    /// Extra bootstrap `index` failed or was lost (`why`): the relays that waited for it fail,
    /// and its slot is free (an extra bootstrap is not reconnected).
    pub(super) fn extra_failed(&mut self, now: Instant, index: usize, why: &str) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        tracing::info!(bootstrap = %bootstrap.address, why, "extra bootstrap connection ended");
        let waiting = std::mem::take(&mut bootstrap.waiting);
        bootstrap.conn = None;
        bootstrap.reconnect_at = None;
        bootstrap.handover = None;
        bootstrap.in_use = false;
        for attempt in waiting {
            self.traversal.visit_failed(now, attempt, why);
        }
    }

    /// Closes the extra bootstraps nothing goes through any more (no relay path, no relay being
    /// asked there, nobody waiting for the registration).
    pub(super) fn release_idle_extras(&mut self) {
        for bootstrap in self.bootstraps.iter_mut().filter(|b| b.extra && b.in_use && b.waiting.is_empty()) {
            let Some(conn) = bootstrap.conn else { continue };
            let session = session_of(conn);
            if self.traversal.observed_at(session).is_none() || self.traversal.uses_session(session) {
                continue;
            }
            tracing::info!(bootstrap = %bootstrap.address, "extra bootstrap no longer used: closing");
            bootstrap.conn = None;
            bootstrap.in_use = false;
            self.retired.insert(conn);
            self.actions.push_back(AgentAction::Close { conn, reason: "relay across bootstraps ended" });
        }
    }

    /// `peer`, registered here, is seen at `observed` with `candidates`: the shared registry
    /// hears it, unless another bootstrap of the allow-list, linked to this one, holds the peer
    /// there. Then the peer came only to be relayed (RELAY_AT) or registers with both: its entry
    /// stays that bootstrap's, and this one does not delete it when the peer leaves here. It is
    /// announced from here once that bootstrap no longer holds it.
    pub(super) fn announce(&mut self, peer: PeerId, observed: SocketAddr, candidates: Vec<SocketAddr>) {
        if self.held_elsewhere(peer) {
            self.visitors.insert(peer, (observed, candidates));
            return;
        }
        self.visitors.remove(&peer);
        self.actions.push_back(AgentAction::Registered { peer, observed, candidates });
    }

    /// Visitors whose other bootstrap no longer holds them (they left it, or it is not linked any
    /// more) are announced from here.
    pub(super) fn announce_visitors_left_alone(&mut self) {
        let alone: Vec<PeerId> = self.visitors.keys().copied().filter(|peer| !self.held_elsewhere(*peer)).collect();
        for peer in alone {
            if let Some((observed, candidates)) = self.visitors.remove(&peer) {
                tracing::debug!(%peer, "registered here and no longer elsewhere: announced");
                self.actions.push_back(AgentAction::Registered { peer, observed, candidates });
            }
        }
    }

    /// Whether the shared registry says `peer` is registered at another bootstrap of the
    /// allow-list that this one is linked to now.
    fn held_elsewhere(&self, peer: PeerId) -> bool {
        let linked = |bootstrap: PeerId| {
            self.coordinator.is_peer_bootstrap(bootstrap)
                && self.bootstraps.iter().any(|b| !b.extra && b.peer == Some(bootstrap) && b.conn.is_some())
        };
        // Not linked to any bootstrap of the list (a single bootstrap, a peer): no lookup at all.
        if !self.bootstraps.iter().filter_map(|b| b.peer.filter(|_| b.conn.is_some())).any(linked) {
            return false;
        }
        let Some(bootstrap) = self.directory.as_ref().and_then(|lookup| lookup(peer)) else { return false };
        bootstrap != self.local_peer && linked(bootstrap)
    }

    /// Whether bootstrap `index` is pinned by peer ID (its connection must prove it).
    pub fn pinned(&self, index: usize) -> bool {
        self.bootstraps.get(index).is_some_and(|b| b.peer.is_some())
    }

    /// Extra bootstraps this node is registered at, or connecting to, now (RELAY_AT).
    pub fn extra_bootstraps(&self) -> usize {
        self.bootstraps.iter().filter(|b| b.extra && b.in_use).count()
    }
}
