//! Relay allocations: RELAY_REQUEST grants a channel between two registered peers' observed
//! addresses, a request for a pair that holds one renews it, and a peer's new observed address
//! moves its allocations.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Coordinator, CoordinatorAction, SessionId, Timer};
use crate::nat::message::{ErrorCode, Message};
use crate::PeerId;

/// One relay allocation: a channel between two peers, each at the address this bootstrap observed.
#[derive(Debug)]
pub(super) struct Relay {
    pub(super) a: PeerId,
    pub(super) b: PeerId,
    pub(super) a_address: SocketAddr,
    pub(super) b_address: SocketAddr,
    pub(super) expires: Instant,
}

impl Coordinator {
    pub(super) fn relay_request(&mut self, now: Instant, session: SessionId, request: u64, target: PeerId) {
        let Some(requester) = self.registered_peer(session, request) else { return };
        if target != requester && self.current_session(target).is_none() && self.forwards() {
            // The relay is asked where the target is registered (docs/federation.md).
            self.relay_across(session, request, target);
            return;
        }
        let Some(target_session) = self.current_session(target).filter(|_| target != requester) else {
            self.send_error(session, request, ErrorCode::UnknownPeer, "the target peer is not registered here");
            return;
        };
        if let Err(reason) = self.allocate_relay(now, (session, requester), (target_session, target), request) {
            self.send_error(session, request, ErrorCode::RelayRefused, reason);
        }
    }

    /// Grants (or renews) the allocation between `requester` and `target`, answering `request`
    /// with RELAY_GRANT to both; says why when it cannot.
    pub(super) fn allocate_relay(
        &mut self,
        now: Instant,
        (session, requester): (SessionId, PeerId),
        (target_session, target): (SessionId, PeerId),
        request: u64,
    ) -> Result<(), &'static str> {
        let held = self
            .relays
            .iter()
            .find(|(_, r)| (r.a, r.b) == (requester, target) || (r.a, r.b) == (target, requester))
            .map(|(channel, _)| *channel);
        if let Some(channel) = held {
            self.renew_relay(now, (session, requester), target, request, channel);
            return Ok(());
        }
        let relays_of = |p: PeerId| self.relays.values().filter(|r| r.a == p || r.b == p).count();
        if relays_of(requester) >= self.config.max_relays_per_peer
            || relays_of(target) >= self.config.max_relays_per_peer
        {
            return Err("relay allocations per peer exhausted");
        }
        let Some(channel) = self.fresh_channel() else { return Err("no free relay channel") };
        let observed = |s: SessionId| self.sessions.get(&s).map(|s| s.observed);
        let (Some(a_address), Some(b_address)) = (observed(session), observed(target_session)) else {
            return Err("a peer of the pair has no observed address");
        };
        let expires = now + self.config.relay_lifetime;
        self.relays.insert(channel, Relay { a: requester, b: target, a_address, b_address, expires });
        // Anti-reflection: the relay only ever sends to where it observed a registered peer, never
        // to an address a peer merely claimed.
        self.grant_relay(channel, (session, requester), (target_session, target), request);
        self.stats.relays_granted += 1;
        Ok(())
    }

    /// A RELAY_REQUEST on `session` for a pair that holds the allocation of `channel`: the same
    /// channel lives `relay_lifetime` longer. The data plane is told again (same ends: it keeps
    /// what the allocation carried, so a renewal cannot reset the byte limit) and both peers get a
    /// RELAY_GRANT, which is how the other end learns that its path lives on.
    pub(super) fn renew_relay(
        &mut self,
        now: Instant,
        (session, requester): (SessionId, PeerId),
        target: PeerId,
        request: u64,
        channel: u32,
    ) {
        let observed = |peer: PeerId| {
            let session = self.peers.get(&peer).map(|r| r.session)?;
            self.sessions.get(&session).map(|s| (session, s.observed))
        };
        let Some(relay) = self.relays.get(&channel) else { return };
        // The ends keep their order, so that the data plane sees the same allocation.
        let (Some((_, a_address)), Some((_, b_address)), Some((target_session, _))) =
            (observed(relay.a), observed(relay.b), observed(target))
        else {
            return;
        };
        let expires = now + self.config.relay_lifetime;
        let Some(relay) = self.relays.get_mut(&channel) else { return };
        relay.expires = expires;
        (relay.a_address, relay.b_address) = (a_address, b_address);
        self.grant_relay(channel, (session, requester), (target_session, target), request);
        self.stats.relays_renewed += 1;
    }

    /// The allocation of `channel`, just made or renewed: schedule its expiry, tell the data plane,
    /// and send RELAY_GRANT to both peers (the requester's answers `request`, the target's is
    /// unsolicited).
    fn grant_relay(
        &mut self,
        channel: u32,
        (session, requester): (SessionId, PeerId),
        (target_session, target): (SessionId, PeerId),
        request: u64,
    ) {
        let Some(&Relay { a_address: a, b_address: b, expires, .. }) = self.relays.get(&channel) else { return };
        self.timers.push(Reverse((expires, Timer::Relay { channel })));
        let (byte_limit, rate_limit) = (self.config.relay_byte_limit, self.config.relay_rate_limit);
        self.actions.push_back(CoordinatorAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit });
        let lifetime_s = u32::try_from(self.config.relay_lifetime.as_secs()).unwrap_or(u32::MAX);
        let grant = |request, peer| Message::RelayGrant { request, peer, channel, lifetime_s, byte_limit, rate_limit };
        // The target's grant first: the requester starts through the relay as soon as its own
        // arrives, and the target must know the channel by the time the first frame does.
        self.send(target_session, grant(0, requester));
        self.send(session, grant(request, target));
    }

    /// A channel no allocation holds: the generation in the high 16 bits, a random non-zero low
    /// half.
    pub(super) fn fresh_channel(&mut self) -> Option<u32> {
        let prefix = u32::from(self.config.channel_prefix) << 16;
        let free =
            |relays: &HashMap<u32, Relay>, low: u16| low != 0 && !relays.contains_key(&(prefix | u32::from(low)));
        // Random draws find one at once unless the 65 535 are nearly all taken; then a scan does.
        for _ in 0..16 {
            let low = (self.random.next_u64() >> 48) as u16;
            if free(&self.relays, low) {
                return Some(prefix | u32::from(low));
            }
        }
        let start = (self.random.next_u64() >> 48) as u16;
        (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|low| free(&self.relays, *low))
            .map(|low| prefix | u32::from(low))
    }

    /// Re-installs `peer`'s relay allocations toward its new observed address.
    pub(super) fn move_relays(&mut self, peer: PeerId, observed: SocketAddr) {
        let (byte_limit, rate_limit) = (self.config.relay_byte_limit, self.config.relay_rate_limit);
        let mut moved: Vec<CoordinatorAction> = Vec::new();
        for (channel, relay) in self.relays.iter_mut() {
            let before = (relay.a_address, relay.b_address);
            if relay.a == peer {
                relay.a_address = observed;
            }
            if relay.b == peer {
                relay.b_address = observed;
            }
            if (relay.a_address, relay.b_address) != before {
                moved.push(CoordinatorAction::InstallRelay {
                    channel: *channel,
                    a: relay.a_address,
                    b: relay.b_address,
                    expires: relay.expires,
                    byte_limit,
                    rate_limit,
                });
            }
        }
        moved.sort_by_key(|action| match action {
            CoordinatorAction::InstallRelay { channel, .. } => *channel,
            _ => 0,
        });
        self.actions.extend(moved);
    }
}
