//! Candidate priorities and the check list: which of the other peer's addresses to probe, in which
//! order (RFC 8445 §5.1.2, §6.1.2).
//!
//! A peer sends every probe from its one node socket, so all its local candidates (host addresses,
//! the server-reflexive addresses its bootstraps observed) share one *base* (RFC 8445 §5.1.1.3).
//! Pairs that differ only in the local candidate are therefore redundant (§6.1.2.4): the check list
//! keeps, per remote address, the pair with the highest priority, and the local candidate only
//! decides that priority.

use std::cmp::Reverse;
use std::net::SocketAddr;

use super::message::{Candidate, CandidateKind};

/// RFC 8445 §5.1.2.2 recommended type preference of a host candidate.
pub const TYPE_PREFERENCE_HOST: u32 = 126;
/// RFC 8445 §5.1.2.2 recommended type preference of a peer-reflexive candidate.
pub const TYPE_PREFERENCE_PEER_REFLEXIVE: u32 = 110;
/// RFC 8445 §5.1.2.2 recommended type preference of a server-reflexive candidate.
pub const TYPE_PREFERENCE_SERVER_REFLEXIVE: u32 = 100;
/// RFC 8445 §5.1.2.2 recommended type preference of a relayed candidate.
pub const TYPE_PREFERENCE_RELAYED: u32 = 0;

/// The only component: QUIC multiplexes everything on one address (RFC 8445 §5.1.2.1).
const COMPONENT_ID: u32 = 1;

/// The RFC 8445 §5.1.2.2 type preference of `kind`.
pub fn type_preference(kind: CandidateKind) -> u32 {
    match kind {
        CandidateKind::Host => TYPE_PREFERENCE_HOST,
        CandidateKind::PeerReflexive => TYPE_PREFERENCE_PEER_REFLEXIVE,
        CandidateKind::ServerReflexive => TYPE_PREFERENCE_SERVER_REFLEXIVE,
        CandidateKind::Relayed => TYPE_PREFERENCE_RELAYED,
    }
}

/// A candidate's priority (RFC 8445 §5.1.2.1):
/// `2^24 × type preference + 2^8 × local preference + (256 − component ID)`, component 1.
pub fn priority(kind: CandidateKind, local_preference: u16) -> u32 {
    (type_preference(kind) << 24) + (u32::from(local_preference) << 8) + (256 - COMPONENT_ID)
}

/// A candidate pair's priority (RFC 8445 §6.1.2.3), from the priorities of the controlling and the
/// controlled agent's candidates: `2^32 × min(G, D) + 2 × max(G, D) + (G > D ? 1 : 0)`.
///
/// Both peers compute the same value for the same pair, so they probe in the same order.
/// Priorities built by [`priority`] stay below 2^31, where the formula cannot overflow; larger
/// values (a peer may send any u32) saturate instead.
pub fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (u64::from(controlling), u64::from(controlled));
    (g.min(d) << 32).saturating_add(2 * g.max(d)).saturating_add(u64::from(g > d))
}

/// One entry of a check list: a remote candidate to probe, and the local candidate that gives the
/// pair its priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The local candidate (its base, the node socket, is where the probe leaves from).
    pub local: Candidate,
    /// The other peer's candidate: where the probe goes.
    pub remote: Candidate,
    /// RFC 8445 §6.1.2.3 pair priority.
    pub priority: u64,
}

/// The check list (RFC 8445 §6.1.2): the remote candidates to probe, highest pair priority first,
/// one per remote address.
///
/// Every local candidate of the remote's address family is paired with it and the best pair is
/// kept: probes all leave from the same socket, so the pairs of one remote address are redundant
/// (§6.1.2.4). Pairs of different address families cannot work (§6.1.2.2) and relayed candidates
/// are never probed (a relay path comes from a RELAY_GRANT, not from a check), so both are
/// skipped. `controlling` is whether this peer is the initiator of the punch (it opens the QUIC
/// connection, the role RFC 8445 §6.1.1 calls controlling); it decides which side of the pair
/// priority formula the local candidate takes.
pub fn check_list(local: &[Candidate], remote: &[Candidate], controlling: bool) -> Vec<Pair> {
    let mut pairs: Vec<Pair> = Vec::new();
    for remote in remote.iter().filter(|c| c.kind != CandidateKind::Relayed) {
        let best = local
            .iter()
            .filter(|l| l.kind != CandidateKind::Relayed && l.address.is_ipv4() == remote.address.is_ipv4())
            .map(|local| {
                let priority = if controlling {
                    pair_priority(local.priority, remote.priority)
                } else {
                    pair_priority(remote.priority, local.priority)
                };
                Pair { local: *local, remote: *remote, priority }
            })
            .max_by_key(|pair| pair.priority);
        let Some(best) = best else { continue };
        match pairs.iter_mut().find(|p| p.remote.address == best.remote.address) {
            Some(existing) if existing.priority < best.priority => *existing = best,
            Some(_) => {}
            None => pairs.push(best),
        }
    }
    // Stable: equal priorities keep the order the candidates were given in.
    pairs.sort_by_key(|pair| Reverse(pair.priority));
    pairs
}

/// How a peer's NAT maps its socket to public addresses (RFC 4787 §4.1), as far as the bootstraps
/// can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// Fewer than two bootstraps observed the peer (or they saw different public IPs).
    Unknown,
    /// Endpoint-independent mapping (EIM): every bootstrap saw the same public address.
    EndpointIndependent,
    /// Endpoint-dependent mapping (EDM, a "symmetric" NAT): same public IP, different ports.
    EndpointDependent,
}

/// The mapping behind `observed` (where one bootstrap sees the peer), given `others`: where other
/// bootstraps saw the same socket. Addresses with another IP say nothing (the peer may have
/// several interfaces or NATs), so they are skipped.
pub fn mapping(observed: SocketAddr, others: impl IntoIterator<Item = SocketAddr>) -> Mapping {
    let mut result = Mapping::Unknown;
    for other in others.into_iter().filter(|o| o.ip() == observed.ip()) {
        if other.port() != observed.port() {
            return Mapping::EndpointDependent;
        }
        result = Mapping::EndpointIndependent;
    }
    result
}

/// Whether a punch between peers behind `a` and `b` is unlikely to find a direct path soon, so
/// that they should connect through the relay at once: endpoint-dependent mapping on one side and
/// not known endpoint-independent on the other (a many-probe round needs one EIM side). Where
/// neither mapping is known the punch goes first, as most NATs map endpoint-independently.
pub fn direct_uncertain(a: Mapping, b: Mapping) -> bool {
    use Mapping::{EndpointDependent as Edm, Unknown};
    matches!((a, b), (Edm, Edm) | (Edm, Unknown) | (Unknown, Edm))
}

/// PUNCH_ME_NOW `flags` bit: the receiver is behind endpoint-dependent mapping.
pub const FLAG_RECEIVER_EDM: u8 = 0x01;
/// PUNCH_ME_NOW `flags` bit: the other peer is behind endpoint-dependent mapping.
pub const FLAG_OTHER_EDM: u8 = 0x02;
/// PUNCH_ME_NOW `flags` bit: the receiver is known to be behind endpoint-independent mapping.
pub const FLAG_RECEIVER_EIM: u8 = 0x04;
/// PUNCH_ME_NOW `flags` bit: the other peer is known to be behind endpoint-independent mapping.
pub const FLAG_OTHER_EIM: u8 = 0x08;

/// The PUNCH_ME_NOW `flags` for a receiver behind `receiver` and another peer behind `other`
/// (`docs/nat-traversal.md`, "Many-probe rounds"). Unknown mappings set no bit.
pub fn punch_flags(receiver: Mapping, other: Mapping) -> u8 {
    let bits = |mapping, edm, eim| match mapping {
        Mapping::EndpointDependent => edm,
        Mapping::EndpointIndependent => eim,
        Mapping::Unknown => 0,
    };
    bits(receiver, FLAG_RECEIVER_EDM, FLAG_RECEIVER_EIM) | bits(other, FLAG_OTHER_EDM, FLAG_OTHER_EIM)
}

/// The mappings (receiver, other peer) a PUNCH_ME_NOW's `flags` announce. Bits this version does
/// not know are ignored; a contradictory pair (EDM and EIM both set) reads as unknown.
pub fn flag_mappings(flags: u8) -> (Mapping, Mapping) {
    let read = |edm: u8, eim: u8| match (flags & edm != 0, flags & eim != 0) {
        (true, false) => Mapping::EndpointDependent,
        (false, true) => Mapping::EndpointIndependent,
        _ => Mapping::Unknown,
    };
    (read(FLAG_RECEIVER_EDM, FLAG_RECEIVER_EIM), read(FLAG_OTHER_EDM, FLAG_OTHER_EIM))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(kind: CandidateKind, local_preference: u16, address: &str) -> Candidate {
        Candidate { kind, priority: priority(kind, local_preference), address: address.parse().unwrap() }
    }

    #[test]
    fn candidate_priorities_follow_rfc_8445_formula() {
        // 2^24 * 126 + 2^8 * 65535 + 255 = 2113929216 + 16776960 + 255
        assert_eq!(priority(CandidateKind::Host, 65535), 2_130_706_431);
        assert_eq!(priority(CandidateKind::Host, 65535), 0x7EFF_FFFF);
        // 2^24 * 100 + 2^8 * 65535 + 255
        assert_eq!(priority(CandidateKind::ServerReflexive, 65535), 1_694_498_815);
        // 2^24 * 110 + 2^8 * 10 + 255
        assert_eq!(priority(CandidateKind::PeerReflexive, 10), 1_845_496_575);
        // Relayed: type preference 0, only the local preference and component remain.
        assert_eq!(priority(CandidateKind::Relayed, 0), 255);
        // The type preference dominates any local preference.
        assert!(priority(CandidateKind::ServerReflexive, 0) > priority(CandidateKind::Relayed, 65535));
        assert!(priority(CandidateKind::PeerReflexive, 0) > priority(CandidateKind::ServerReflexive, 65535));
    }

    #[test]
    fn pair_priority_follows_rfc_8445_formula() {
        let g = 2_130_706_431u64;
        let d = 1_694_498_815u64;
        assert_eq!(pair_priority(g as u32, d as u32), (1u64 << 32) * d + 2 * g + 1);
        assert_eq!(pair_priority(d as u32, g as u32), (1u64 << 32) * d + 2 * g);
        assert_eq!(pair_priority(g as u32, d as u32), 7_277_816_997_797_167_103);
        assert_eq!(pair_priority(7, 7), (7u64 << 32) + 14);
        // The largest priority `priority` can build does not overflow; a hostile u32 saturates.
        let top = u64::from(priority(CandidateKind::Host, u16::MAX));
        assert_eq!(pair_priority(top as u32, top as u32), (top << 32) + 2 * top);
        assert_eq!(pair_priority(u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn both_roles_order_the_pairs_alike() {
        let a = [candidate(CandidateKind::Host, 65535, "10.0.0.2:5000")];
        let b = [
            candidate(CandidateKind::ServerReflexive, 65535, "198.18.0.20:6000"),
            candidate(CandidateKind::Host, 65535, "10.1.0.2:5000"),
        ];
        let from_a = check_list(&a, &b, true);
        let from_b = check_list(&b, &a, false);
        assert_eq!(from_a[0].priority, pair_priority(a[0].priority, b[1].priority));
        assert_eq!(from_b[0].priority, pair_priority(a[0].priority, b[1].priority));
    }

    #[test]
    fn check_list_orders_dedups_and_skips_unusable_pairs() {
        let local = [
            candidate(CandidateKind::Host, 65535, "10.0.0.2:5000"),
            candidate(CandidateKind::ServerReflexive, 65535, "198.18.0.10:40000"),
        ];
        let remote = [
            candidate(CandidateKind::ServerReflexive, 65535, "198.18.0.20:6000"),
            candidate(CandidateKind::Host, 65534, "10.1.0.2:5000"),
            // Same address again, as a lower-priority kind: probed once, at the better priority.
            candidate(CandidateKind::PeerReflexive, 1, "10.1.0.2:5000"),
            candidate(CandidateKind::Host, 65535, "[2001:db8::2]:5000"),
            candidate(CandidateKind::Relayed, 65535, "198.18.0.1:443"),
        ];
        let list = check_list(&local, &remote, true);
        let addresses: Vec<SocketAddr> = list.iter().map(|p| p.remote.address).collect();
        assert_eq!(addresses, ["10.1.0.2:5000".parse().unwrap(), "198.18.0.20:6000".parse().unwrap()]);
        assert_eq!(list[0].remote.kind, CandidateKind::Host);
        // The best local candidate decides the priority: the host one.
        assert_eq!(list[0].local, local[0]);
        assert_eq!(list[0].priority, pair_priority(local[0].priority, remote[1].priority));
        assert!(list[0].priority > list[1].priority);
    }

    #[test]
    fn mapping_compares_the_ports_bootstraps_saw_on_one_ip() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let observed = at("198.18.0.107:40000");
        assert_eq!(mapping(observed, []), Mapping::Unknown, "one bootstrap cannot tell");
        assert_eq!(mapping(observed, [at("198.18.0.107:40000")]), Mapping::EndpointIndependent);
        assert_eq!(mapping(observed, [at("198.18.0.107:40000"), at("198.18.0.107:51234")]), Mapping::EndpointDependent);
        assert_eq!(mapping(observed, [at("198.18.0.107:51234")]), Mapping::EndpointDependent);
        assert_eq!(mapping(observed, [at("203.0.113.9:51234")]), Mapping::Unknown, "another IP says nothing");
    }

    #[test]
    fn punch_flags_round_trip_and_ignore_what_they_cannot_mean() {
        use Mapping::*;
        for receiver in [Unknown, EndpointIndependent, EndpointDependent] {
            for other in [Unknown, EndpointIndependent, EndpointDependent] {
                assert_eq!(flag_mappings(punch_flags(receiver, other)), (receiver, other));
            }
        }
        assert_eq!(punch_flags(EndpointDependent, EndpointIndependent), 0b1001);
        assert_eq!(punch_flags(EndpointIndependent, EndpointDependent), 0b0110);
        assert_eq!(punch_flags(Unknown, Unknown), 0, "version 1 peers sent 0: nothing known");
        assert_eq!(flag_mappings(0b0101), (Unknown, Unknown), "EDM and EIM at once: contradictory");
        assert_eq!(flag_mappings(0xF0 | 0b1001), (EndpointDependent, EndpointIndependent), "unknown bits ignored");
    }

    #[test]
    fn no_local_candidate_of_the_family_means_no_pair() {
        let local = [candidate(CandidateKind::Host, 65535, "[2001:db8::1]:5000")];
        let remote = [candidate(CandidateKind::Host, 65535, "10.1.0.2:5000")];
        assert!(check_list(&local, &remote, false).is_empty());
    }
}
