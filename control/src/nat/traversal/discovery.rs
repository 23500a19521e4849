//! Mapping discovery with one bootstrap (RFC 5780 §4.3 in spirit): a bootstrap names its
//! alternate addresses (OTHER_ADDRESS: another port, and another IP where it has one); this peer
//! sends a discover datagram from its node socket to each and learns where that address sees it.
//! The answer is shared with every bootstrap as a server-reflexive candidate, as what other
//! bootstraps observed is: the same public port as the bootstrap's own observation means
//! endpoint-independent mapping, another port endpoint-dependent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Traversal, TraversalAction, TraversalEvent};
use crate::nat::coordinator::SessionId;
use crate::nat::message::Message;
use crate::nat::probe::{Probe, ProbeKind};

/// Alternate addresses asked per bootstrap at most (RFC 5780 has three: other port, other IP,
/// both); more are ignored.
pub(super) const MAX_ALTERNATES: usize = 3;
/// Discover datagrams sent to one alternate address before giving up (lost, or filtered on the
/// way): at 0, 250, 750 ms and 1.75 s, given up at 2.75 s, within a connect request's wait for
/// the registration to settle.
const DISCOVER_TRIES: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The wait doubles from [`FIRST_RETRY`] up to this.
const LAST_WAIT: Duration = Duration::from_secs(1);

/// One alternate address of a bootstrap, asked where it sees this peer.
#[derive(Debug)]
pub(super) struct Discovery {
    /// Where the discover datagrams go.
    pub(super) alternate: SocketAddr,
    token: [u8; 16],
    transaction: u64,
    sent: u32,
    /// When to send again or give up; `None` once answered or given up.
    next: Option<Instant>,
    /// Where the alternate address sees this peer.
    pub(super) observed: Option<SocketAddr>,
    /// The ADD_ADDRESS sequence number the observation is shared under.
    pub(super) sequence: u64,
}

impl Discovery {
    /// Still waiting for an answer.
    pub(super) fn pending(&self) -> bool {
        self.next.is_some()
    }

    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }
}

impl Traversal {
    /// Bootstrap `session` named an alternate address: ask it at once. The unspecified IP stands
    /// for the bootstrap's own.
    pub(super) fn other_address(&mut self, now: Instant, session: SessionId, address: SocketAddr) {
        let token = self.random.token();
        let transaction = self.random.next_u64();
        let sequence = self.next_sequence;
        let Some(bootstrap) = self.bootstraps.get_mut(&session) else { return };
        let alternate = if address.ip().is_unspecified() {
            SocketAddr::new(bootstrap.address.ip(), address.port())
        } else {
            address
        };
        if alternate == bootstrap.address
            || bootstrap.discoveries.len() >= MAX_ALTERNATES
            || bootstrap.discoveries.iter().any(|d| d.alternate == alternate)
        {
            return;
        }
        self.next_sequence += 1;
        bootstrap.discoveries.push(Discovery {
            alternate,
            token,
            transaction,
            sent: 0,
            next: Some(now),
            observed: None,
            sequence,
        });
        self.drive_discoveries(now);
    }

    /// Sends the discover datagrams that are due; gives up on those asked often enough.
    pub(super) fn drive_discoveries(&mut self, now: Instant) {
        let mut sends = Vec::new();
        let mut gave_up = Vec::new();
        for (session, bootstrap) in &mut self.bootstraps {
            for discovery in &mut bootstrap.discoveries {
                if discovery.next.is_none_or(|at| at > now) {
                    continue;
                }
                if discovery.sent >= DISCOVER_TRIES {
                    discovery.next = None;
                    gave_up.push((*session, discovery.alternate));
                    continue;
                }
                let probe =
                    Probe { kind: ProbeKind::Discover, token: discovery.token, transaction: discovery.transaction };
                sends.push(TraversalAction::SendProbe { to: discovery.alternate, probe });
                discovery.next = Some(now + (FIRST_RETRY * 2u32.pow(discovery.sent)).min(LAST_WAIT));
                discovery.sent += 1;
            }
        }
        self.actions.extend(sends);
        for (session, alternate) in gave_up {
            tracing::debug!(%alternate, "no answer from the bootstrap's alternate address: mapping unknown from it");
            self.events.push_back(TraversalEvent::Discovery { session, alternate, observed: None });
        }
    }

    /// An answer to a discover arrived from `from`. Only the alternate address it was sent to
    /// may answer, with the discover's token and transaction.
    pub(super) fn discovered(&mut self, from: SocketAddr, probe: Probe, observed: SocketAddr) {
        let answered = self.bootstraps.iter_mut().find_map(|(session, bootstrap)| {
            let discovery = bootstrap
                .discoveries
                .iter_mut()
                .find(|d| d.alternate == from && d.token == probe.token && d.transaction == probe.transaction)?;
            discovery.next = None;
            (discovery.observed != Some(observed)).then(|| {
                discovery.observed = Some(observed);
                *session
            })
        });
        let Some(session) = answered else { return };
        self.events.push_back(TraversalEvent::Discovery { session, alternate: from, observed: Some(observed) });
        let sessions: Vec<SessionId> = self.bootstraps.keys().copied().collect();
        for session in sessions {
            self.share_reflexive_with(session);
        }
    }

    /// Whether bootstrap `session` still waits for an answer from one of its alternate addresses.
    pub fn discovering(&self, session: SessionId) -> bool {
        self.bootstraps.get(&session).is_some_and(|b| b.discoveries.iter().any(Discovery::pending))
    }

    /// Where bootstrap `session`'s alternate addresses see this peer.
    pub fn discovered_addresses(&self, session: SessionId) -> Vec<SocketAddr> {
        self.bootstraps
            .get(&session)
            .map(|b| b.discoveries.iter().filter_map(|d| d.observed).collect())
            .unwrap_or_default()
    }

    /// REMOVE_ADDRESS to the other bootstraps for what a lost bootstrap's alternate addresses
    /// observed.
    pub(super) fn withdraw_discoveries(&mut self, discoveries: &[Discovery]) {
        let sessions: Vec<SessionId> = self.bootstraps.keys().copied().collect();
        for discovery in discoveries.iter().filter(|d| d.observed.is_some()) {
            for &session in &sessions {
                self.signal(session, Message::RemoveAddress { sequence: discovery.sequence });
            }
        }
    }
}
