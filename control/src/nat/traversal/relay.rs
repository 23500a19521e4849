//! Relay paths: the bootstrap's RELAY_GRANT installs an alias routed through the relay, the
//! initiator renews the allocation while its connection lives, and a lapsed one is removed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::attempt::Phase;
use super::upgrade::Upgrade;
use super::{AttemptId, Traversal, TraversalAction};
use crate::nat::coordinator::SessionId;
use crate::nat::message::Message;
use crate::PeerId;

#[derive(Debug)]
pub(super) struct RelayPath {
    pub(super) alias: SocketAddr,
    /// The bootstrap session that granted (and renews) the allocation.
    pub(super) session: SessionId,
    pub(super) relay: SocketAddr,
    pub(super) channel: u32,
    /// When the allocation lapses unless a RELAY_GRANT renews it.
    pub(super) expires: Instant,
    pub(super) direct: Option<SocketAddr>,
    pub(super) upgrade: Option<Upgrade>,
    /// Initiator only: the attempt whose connection runs on this path. It renews the allocation
    /// while that connection lives; `None` on the responder, which follows the grants it gets.
    pub(super) attempt: Option<AttemptId>,
    /// Initiator only: when to send the next renewing RELAY_REQUEST.
    pub(super) renew_at: Option<Instant>,
    /// The request number of the renewing RELAY_REQUEST outstanding.
    pub(super) renew_request: Option<u64>,
}

impl Traversal {
    pub(super) fn relay_grant(
        &mut self,
        now: Instant,
        session: SessionId,
        request: u64,
        peer: PeerId,
        channel: u32,
        lifetime_s: u32,
    ) {
        let Some(relay) = self.bootstraps.get(&session).map(|b| b.address) else { return };
        let lifetime = Duration::from_secs(u64::from(lifetime_s));
        // Asked for after a punch that found nothing, or granted at once with the punch (the
        // bootstrap found a direct path uncertain): either way the connection goes through it now.
        // The grant of a relay asked at the target's bootstrap comes from there (RELAY_AT).
        let asked = self.attempt_waiting_for(session, request).or_else(|| self.visit_waiting_for(session, request));
        let waiting = asked.filter(|id| {
            self.attempts.get(id).is_some_and(|a| {
                a.peer == peer
                    && (matches!(a.phase, Phase::AwaitingRelay { .. })
                        || !a.upgrade && matches!(a.phase, Phase::AwaitingPunch { .. } | Phase::Punching { .. }))
            })
        });
        let renewing = request != 0 && self.relay_paths.get(&peer).is_some_and(|p| p.renew_request == Some(request));
        if waiting.is_none() && (request == 0 || renewing) {
            if let Some(path) = self.relay_paths.get_mut(&peer) {
                // A renewal (ours, or the other peer's seen from this end): the allocation lives on,
                // and the route changes only if the bootstrap moved it.
                path.expires = now + lifetime;
                path.session = session;
                if path.attempt.is_some() {
                    path.renew_at = Some(now + renewal_delay(lifetime));
                    path.renew_request = None;
                }
                if (path.relay, path.channel) != (relay, channel) {
                    (path.relay, path.channel) = (relay, channel);
                    let alias = path.alias;
                    self.actions.push_back(TraversalAction::InstallRelayPath { peer, alias, relay, channel });
                }
                return;
            }
        }
        // A grant this peer did not ask for (or no longer waits for) changes nothing.
        if request != 0 && waiting.is_none() {
            return;
        }
        let alias = self.alias_of(peer);
        self.relay_paths.insert(
            peer,
            RelayPath {
                alias,
                session,
                relay,
                channel,
                expires: now + lifetime,
                direct: None,
                upgrade: None,
                attempt: waiting,
                renew_at: waiting.map(|_| now + renewal_delay(lifetime)),
                renew_request: None,
            },
        );
        self.actions.push_back(TraversalAction::InstallRelayPath { peer, alias, relay, channel });
        if let Some(id) = waiting {
            if let Some(state) = self.attempts.get_mut(&id) {
                state.phase = Phase::ConnectingRelayed { relay };
            }
            self.actions.push_back(TraversalAction::ConnectRelayed { attempt: id, peer, alias });
        }
    }

    pub(super) fn drive_relay_path(&mut self, now: Instant, peer: PeerId) {
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        if path.expires <= now && !path.kept_past_expiry() {
            self.remove_relay_path(peer);
            return;
        }
        if path.renew_at.is_some_and(|at| at <= now) {
            // Renew through the bootstrap that granted it, or any other one (which allocates anew:
            // the grant then moves the route).
            let session = Some(path.session)
                .filter(|s| self.bootstraps.contains_key(s))
                .or_else(|| self.bootstraps.keys().next().copied());
            let request = self.fresh_request();
            let Some(path) = self.relay_paths.get_mut(&peer) else { return };
            // Until the grant arrives, retry now and then: the bootstrap may have refused (rate limit).
            path.renew_at = Some(now + self.config.punch_timeout.max(renewal_retry(path.expires, now)));
            if let Some(session) = session {
                path.renew_request = Some(request);
                self.signal(session, Message::RelayRequest { request, target: peer });
            }
        }
        self.drive_upgrade(now, peer);
    }

    /// Forgets the relay path to `peer` and tells the driver to remove its route.
    pub(super) fn remove_relay_path(&mut self, peer: PeerId) {
        if let Some(path) = self.relay_paths.remove(&peer) {
            self.actions.push_back(TraversalAction::RemovePath { alias: path.alias });
        }
    }

    /// The alias of `peer`: one address in 240.0.0.0/4 (reserved, never a real peer) per peer, kept
    /// for the traversal's lifetime so that a connection's remote address never changes.
    pub(super) fn alias_of(&mut self, peer: PeerId) -> SocketAddr {
        if let Some(alias) = self.aliases.get(&peer) {
            return *alias;
        }
        let ip = Ipv4Addr::from(0xF000_0000 | (self.next_alias & 0x0FFF_FFFF));
        self.next_alias = self.next_alias.wrapping_add(1);
        let alias = SocketAddr::V4(SocketAddrV4::new(ip, 1));
        self.aliases.insert(peer, alias);
        alias
    }
}

impl RelayPath {
    /// The initiator keeps a path that moved to a direct route for as long as its connection lives,
    /// whether or not the allocation behind it is still renewed.
    pub(super) fn kept_past_expiry(&self) -> bool {
        self.attempt.is_some() && self.direct.is_some()
    }
}

/// When to renew an allocation granted for `lifetime`: at 80 % of it, which leaves a renewal
/// time to travel and a retry before the allocation lapses.
fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8)
}

/// How long to wait before retrying a renewal that got no grant: a tenth of what is left.
fn renewal_retry(expires: Instant, now: Instant) -> Duration {
    expires.saturating_duration_since(now) / 10
}
