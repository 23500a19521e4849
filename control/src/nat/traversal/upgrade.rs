//! The background upgrade of a relayed connection: punching is retried now and then, and a valid
//! pair moves the relay path to a direct (or bridged) route.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Traversal, TraversalAction, TraversalEvent};
use crate::PeerId;

#[derive(Debug)]
pub(super) struct Upgrade {
    pub(super) next: Instant,
    pub(super) left: u32,
}

impl Traversal {
    /// Starts the next background punch for the relayed `peer` when one is due.
    pub(super) fn drive_upgrade(&mut self, now: Instant, peer: PeerId) {
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        let Some(upgrade) = path.upgrade.as_mut().filter(|u| u.next <= now) else { return };
        upgrade.left = upgrade.left.saturating_sub(1);
        if upgrade.left == 0 {
            path.upgrade = None;
        } else {
            upgrade.next = now + self.config.upgrade_interval;
        }
        let session = path.session;
        let busy = self.attempts.values().any(|a| a.peer == peer);
        if !busy && self.bootstraps.contains_key(&session) {
            self.start_attempt(now, session, peer, true);
        }
    }

    pub(super) fn move_to_direct(&mut self, peer: PeerId, address: SocketAddr, bridge: Option<[u8; 16]>) {
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        if path.direct.is_some() {
            return;
        }
        path.direct = Some(address);
        path.upgrade = None;
        let alias = path.alias;
        self.stats.upgrades += 1;
        let action = match bridge {
            Some(token) => TraversalAction::SetPathBridged { alias, token, address },
            None => TraversalAction::SetPathDirect { alias, address },
        };
        self.actions.push_back(action);
        self.events.push_back(TraversalEvent::Upgraded { peer, alias, address });
    }
}
