//! The coordinator's tests.

use super::*;
use crate::nat::message::PunchRole;

const A: PeerId = PeerId([0xaa; 32]);
const B: PeerId = PeerId([0xbb; 32]);
const C: PeerId = PeerId([0xcc; 32]);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn drain(coordinator: &mut Coordinator) -> Vec<CoordinatorAction> {
    std::iter::from_fn(|| coordinator.poll_action()).collect()
}

fn sent_to(actions: &[CoordinatorAction], to: SessionId) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Send { session, message } if *session == to => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn error_codes(messages: &[Message]) -> Vec<(u64, ErrorCode)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Error { request, code, .. } => Some((*request, *code)),
            _ => None,
        })
        .collect()
}

fn host(address: &str, local_preference: u16) -> Candidate {
    Candidate {
        kind: CandidateKind::Host,
        priority: candidate::priority(CandidateKind::Host, local_preference),
        address: addr(address),
    }
}

/// A coordinator with A on session 1 (RTT 20 ms) and B on session 2 (RTT 100 ms).
fn two_peers() -> (Coordinator, Instant) {
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig::default(), 7);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    c.session_opened(now, 2, Some(B), addr("198.18.0.20:50000"), Duration::from_millis(100));
    drain(&mut c);
    (c, now)
}

#[test]
fn registration_sends_the_observed_address_and_its_changes() {
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig::default(), 1);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    assert_eq!(c.registered(), 1);
    let sent = sent_to(&drain(&mut c), 1);
    assert_eq!(sent, [Message::ObservedAddress { sequence: 1, address: addr("198.18.0.10:40000") }]);

    c.observed_changed(now, 1, addr("198.18.0.10:40000"));
    assert!(drain(&mut c).is_empty(), "same address: nothing to say");
    c.observed_changed(now, 1, addr("198.18.0.11:40001"));
    let sent = sent_to(&drain(&mut c), 1);
    assert_eq!(sent, [Message::ObservedAddress { sequence: 2, address: addr("198.18.0.11:40001") }]);
}

#[test]
fn registration_names_the_alternate_addresses_before_the_observed_address() {
    let now = Instant::now();
    let others = vec![addr("0.0.0.0:9001"), addr("198.18.0.2:9001")];
    let mut c = Coordinator::new(CoordinatorConfig { other_addresses: others, ..CoordinatorConfig::default() }, 1);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    assert_eq!(
        sent_to(&drain(&mut c), 1),
        [
            Message::OtherAddress { address: addr("0.0.0.0:9001") },
            Message::OtherAddress { address: addr("198.18.0.2:9001") },
            Message::ObservedAddress { sequence: 1, address: addr("198.18.0.10:40000") },
        ]
    );
    // What the alternate port observed comes back as a server-reflexive candidate: the same port
    // is endpoint-independent mapping, another one endpoint-dependent.
    let reflexive = |port| Candidate {
        kind: CandidateKind::ServerReflexive,
        priority: 1,
        address: SocketAddr::new(addr("198.18.0.10:1").ip(), port),
    };
    c.handle(now, 1, Message::AddAddress { sequence: 7, candidate: reflexive(40000) });
    assert_eq!(c.mapping_of(A, now), Mapping::EndpointIndependent);
    c.handle(now, 1, Message::AddAddress { sequence: 7, candidate: reflexive(40007) });
    assert_eq!(c.mapping_of(A, now), Mapping::EndpointDependent);
    // A peer does not name alternate addresses.
    c.handle(now, 1, Message::OtherAddress { address: addr("0.0.0.0:9001") });
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(0, ErrorCode::Malformed)]);
}

#[test]
fn a_connection_without_client_certificate_cannot_register_or_signal() {
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig::default(), 1);
    c.session_opened(now, 9, None, addr("198.18.0.10:40000"), Duration::from_millis(20));
    assert_eq!(c.registered(), 0);
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 9)), [(0, ErrorCode::NotAuthenticated)]);
    c.handle(now, 9, Message::ConnectRequest { request: 5, target: A });
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 9)), [(5, ErrorCode::NotRegistered)]);
}

#[test]
fn an_inflated_rtt_estimate_does_not_push_the_other_start_past_the_punch_window() {
    // A young connection over a lossy path can report an RTT of seconds (late acks).
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig::default(), 7);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_secs(8));
    c.session_opened(now, 2, Some(B), addr("198.18.0.20:50000"), Duration::from_millis(200));
    drain(&mut c);
    c.handle(now, 1, Message::ConnectRequest { request: 1, target: B });
    let actions = drain(&mut c);
    let start = |to: &[Message]| match to {
        [Message::PunchMeNow { start_in_ms, .. }] => *start_in_ms,
        other => panic!("expected one PUNCH_ME_NOW, got {other:?}"),
    };
    let (a, b) = (start(&sent_to(&actions, 1)), start(&sent_to(&actions, 2)));
    // Capped at 1 s: D = 0.5 s + 30 ms; B waits 430 ms instead of 3.93 s.
    assert_eq!((a, b), (30, 430));
}

#[test]
fn connect_request_sends_punch_me_now_to_both_with_rtt_compensated_starts() {
    let (mut c, now) = two_peers();
    c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host("10.1.0.2:5000", 65535) });
    c.handle(now, 1, Message::ConnectRequest { request: 77, target: B });
    let actions = drain(&mut c);
    let (to_a, to_b) = (sent_to(&actions, 1), sent_to(&actions, 2));
    let [Message::PunchMeNow { round, request, peer, role, start_in_ms, token, candidates, .. }] = &to_a[..] else {
        panic!("expected one PUNCH_ME_NOW to A, got {to_a:?}")
    };
    let [Message::PunchMeNow {
        round: round_b,
        request: request_b,
        peer: peer_b,
        role: role_b,
        start_in_ms: start_b,
        token: token_b,
        candidates: candidates_b,
        ..
    }] = &to_b[..]
    else {
        panic!("expected one PUNCH_ME_NOW to B, got {to_b:?}")
    };
    assert_eq!((round, token), (round_b, token_b), "one round, one shared token");
    assert_eq!((*request, *request_b), (77, 0));
    assert_eq!((*peer, *peer_b), (B, A));
    assert_eq!((*role, *role_b), (PunchRole::Initiator, PunchRole::Responder));
    // D = max(20, 100)/2 + 30 = 80 ms; A waits 80 − 10, B waits 80 − 50.
    assert_eq!((*start_in_ms, *start_b), (70, 30));
    // A learns B's host candidate first (higher type preference), then B's observed address.
    let addresses: Vec<SocketAddr> = candidates.iter().map(|c| c.address).collect();
    assert_eq!(addresses, [addr("10.1.0.2:5000"), addr("198.18.0.20:50000")]);
    assert_eq!(candidates[1].kind, CandidateKind::ServerReflexive);
    assert_eq!(candidates_b.iter().map(|c| c.address).collect::<Vec<_>>(), [addr("198.18.0.10:40000")]);
    assert_eq!(c.stats().punches_coordinated, 1);

    // The next round gets a new number and a new token.
    c.handle(now, 2, Message::ConnectRequest { request: 3, target: A });
    let again = sent_to(&drain(&mut c), 2);
    let [Message::PunchMeNow { round: next, token: next_token, role, .. }] = &again[..] else {
        panic!("expected a PUNCH_ME_NOW, got {again:?}")
    };
    assert_ne!((next, next_token), (round, token));
    assert_eq!(*role, PunchRole::Initiator);
}

fn reflexive(address: &str) -> Candidate {
    Candidate {
        kind: CandidateKind::ServerReflexive,
        priority: candidate::priority(CandidateKind::ServerReflexive, u16::MAX - 1),
        address: addr(address),
    }
}

/// The flags of the PUNCH_ME_NOWs a CONNECT_REQUEST from session 1 to `target` produces:
/// (to the requester, to the target).
fn flags_of_punch(c: &mut Coordinator, now: Instant, target: PeerId, target_session: SessionId) -> (u8, u8) {
    c.handle(now, 1, Message::ConnectRequest { request: 9, target });
    let actions = drain(c);
    let flags = |session| match sent_to(&actions, session).first() {
        Some(Message::PunchMeNow { flags, .. }) => *flags,
        other => panic!("no PUNCH_ME_NOW: {other:?}"),
    };
    (flags(1), flags(target_session))
}

#[test]
fn punch_flags_say_who_is_behind_endpoint_dependent_mapping() {
    use candidate::{FLAG_OTHER_EDM, FLAG_OTHER_EIM, FLAG_RECEIVER_EDM, FLAG_RECEIVER_EIM};
    let (mut c, now) = two_peers();
    c.session_opened(now, 3, Some(C), addr("198.18.0.30:40000"), Duration::ZERO);
    drain(&mut c);
    // Nobody told of a second observation yet: nothing is known, as in version 1.
    assert_eq!(flags_of_punch(&mut c, now, B, 2), (0, 0));
    assert_eq!(c.mapping_of(A, now), Mapping::Unknown);

    // A: another bootstrap saw the same address (EIM). B: same IP, another port (EDM).
    c.handle(now, 1, Message::AddAddress { sequence: 5, candidate: reflexive("198.18.0.10:40000") });
    c.handle(now, 2, Message::AddAddress { sequence: 5, candidate: reflexive("198.18.0.20:61234") });
    // C: another IP says nothing (a second interface, another NAT).
    c.handle(now, 3, Message::AddAddress { sequence: 5, candidate: reflexive("203.0.113.7:40000") });
    drain(&mut c);
    assert_eq!(c.mapping_of(A, now), Mapping::EndpointIndependent);
    assert_eq!(c.mapping_of(B, now), Mapping::EndpointDependent);
    assert_eq!(c.mapping_of(C, now), Mapping::Unknown);
    assert_eq!(
        flags_of_punch(&mut c, now, B, 2),
        (FLAG_RECEIVER_EIM | FLAG_OTHER_EDM, FLAG_RECEIVER_EDM | FLAG_OTHER_EIM)
    );
    assert_eq!(flags_of_punch(&mut c, now, C, 3), (FLAG_RECEIVER_EIM, FLAG_OTHER_EIM));

    // A host candidate on the observed IP is no observation; an expired one is forgotten.
    c.handle(now, 3, Message::AddAddress { sequence: 6, candidate: host("198.18.0.30:41000", 9) });
    assert_eq!(c.mapping_of(C, now), Mapping::Unknown);
    let later = now + Duration::from_secs(601);
    c.handle_timeout(later);
    assert_eq!(c.mapping_of(B, later), Mapping::Unknown);
}

#[test]
fn unknown_or_self_target_is_answered_unknown_peer() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::ConnectRequest { request: 11, target: C });
    c.handle(now, 1, Message::ConnectRequest { request: 12, target: A });
    c.handle(now, 1, Message::RelayRequest { request: 13, target: C });
    let actions = drain(&mut c);
    assert_eq!(
        error_codes(&sent_to(&actions, 1)),
        [(11, ErrorCode::UnknownPeer), (12, ErrorCode::UnknownPeer), (13, ErrorCode::UnknownPeer)]
    );
    assert!(sent_to(&actions, 2).is_empty(), "B hears nothing");
    assert_eq!(c.stats().punches_coordinated, 0);
}

#[test]
fn bad_candidates_are_refused_and_the_list_is_bounded() {
    let (mut c, now) = two_peers();
    for bad in ["0.0.0.0:5000", "10.1.0.2:0", "224.0.0.1:5000", "255.255.255.255:5000", "[::]:5000"] {
        c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host(bad, 1) });
    }
    let relayed = Candidate { kind: CandidateKind::Relayed, ..host("198.18.0.1:443", 1) };
    c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: relayed });
    let refusals = error_codes(&sent_to(&drain(&mut c), 2));
    assert_eq!(refusals, vec![(0, ErrorCode::Malformed); 6]);

    // Eight slots, one taken by the observed address: the ninth host candidate evicts the
    // lowest priority one (local preference 1).
    for i in 0..8u16 {
        let candidate = host(&format!("10.1.0.{}:5000", i + 1), 1 + i);
        c.handle(now, 2, Message::AddAddress { sequence: u64::from(i), candidate });
    }
    c.handle(now, 1, Message::ConnectRequest { request: 1, target: B });
    let to_a = sent_to(&drain(&mut c), 1);
    let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
    assert_eq!(candidates.len(), MAX_CANDIDATES);
    assert!(!candidates.iter().any(|c| c.address == addr("10.1.0.1:5000")), "lowest priority evicted");
    assert!(candidates.iter().any(|c| c.address == addr("198.18.0.20:50000")), "observed address kept");

    // REMOVE_ADDRESS withdraws one.
    c.handle(now, 2, Message::RemoveAddress { sequence: 7 });
    c.handle(now, 1, Message::ConnectRequest { request: 2, target: B });
    let to_a = sent_to(&drain(&mut c), 1);
    let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
    assert!(!candidates.iter().any(|c| c.address == addr("10.1.0.8:5000")));
}

#[test]
fn candidates_expire_unless_re_added() {
    let (mut c, start) = two_peers();
    c.handle(start, 2, Message::AddAddress { sequence: 1, candidate: host("10.1.0.2:5000", 9) });
    c.handle(start, 2, Message::AddAddress { sequence: 2, candidate: host("10.1.0.3:5000", 9) });
    let half = start + Duration::from_secs(300);
    c.handle(half, 2, Message::AddAddress { sequence: 2, candidate: host("10.1.0.3:5000", 9) });
    let later = start + Duration::from_secs(601);
    assert!(c.poll_timeout().is_some_and(|t| t <= later));
    c.handle_timeout(later);
    c.handle(later, 1, Message::ConnectRequest { request: 1, target: B });
    let to_a = sent_to(&drain(&mut c), 1);
    let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
    let addresses: Vec<SocketAddr> = candidates.iter().map(|c| c.address).collect();
    assert_eq!(addresses, [addr("10.1.0.3:5000"), addr("198.18.0.20:50000")]);
}

#[test]
fn relay_grant_installs_the_observed_addresses_only() {
    let (mut c, now) = two_peers();
    // B claims a host address; the relay must never send there.
    c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host("192.0.2.99:5000", 65535) });
    c.handle(now, 1, Message::RelayRequest { request: 21, target: B });
    let actions = drain(&mut c);
    let installs: Vec<_> = actions.iter().filter(|a| matches!(a, CoordinatorAction::InstallRelay { .. })).collect();
    let [CoordinatorAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit }] = installs[..] else {
        panic!("expected one InstallRelay, got {actions:?}")
    };
    assert_eq!((*a, *b), (addr("198.18.0.10:40000"), addr("198.18.0.20:50000")));
    assert_eq!(*expires, now + Duration::from_secs(600));
    assert_eq!((*byte_limit, *rate_limit), (2 << 30, 50_000_000));
    let grants = |to| {
        sent_to(&actions, to)
            .into_iter()
            .filter_map(|m| match m {
                Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                    Some((request, peer, channel, lifetime_s))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(grants(1), [(21, B, *channel, 600)]);
    assert_eq!(grants(2), [(0, A, *channel, 600)]);
    assert_eq!(c.stats().active_relays, 1);
    assert_eq!(c.stats().relays_granted, 1);
}

fn installs(actions: &[CoordinatorAction]) -> Vec<(u32, SocketAddr, SocketAddr, Instant)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::InstallRelay { channel, a, b, expires, .. } => Some((*channel, *a, *b, *expires)),
            _ => None,
        })
        .collect()
}

fn grants(messages: &[Message]) -> Vec<(u64, PeerId, u32, u32)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                Some((*request, *peer, *channel, *lifetime_s))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn relay_allocations_per_peer_are_bounded() {
    let (mut c, now) = two_peers();
    // A relays to eight other peers; a ninth is refused.
    let others: Vec<PeerId> = (0..9u8).map(|i| PeerId([0x10 + i; 32])).collect();
    for (i, peer) in others.iter().enumerate() {
        let session = 10 + i as SessionId;
        c.session_opened(now, session, Some(*peer), addr(&format!("198.18.1.{}:4000", i + 1)), Duration::ZERO);
    }
    drain(&mut c);
    for (request, peer) in (1..).zip(&others) {
        c.handle(now, 1, Message::RelayRequest { request, target: *peer });
    }
    let actions = drain(&mut c);
    assert_eq!(installs(&actions).len(), 8);
    assert_eq!(error_codes(&sent_to(&actions, 1)), [(9, ErrorCode::RelayRefused)]);
    // Asking again for a pair that holds an allocation renews it: it is not a ninth one.
    c.handle(now, 1, Message::RelayRequest { request: 10, target: others[0] });
    let actions = drain(&mut c);
    assert_eq!(installs(&actions).len(), 1);
    assert!(error_codes(&sent_to(&actions, 1)).is_empty(), "{actions:?}");
    assert_eq!(c.stats().active_relays, 8);
}

#[test]
fn a_relay_request_for_a_held_pair_renews_the_same_channel() {
    let (mut c, start) = two_peers();
    c.handle(start, 1, Message::RelayRequest { request: 1, target: B });
    let first = installs(&drain(&mut c));
    let [(channel, a, b, expires)] = first[..] else { panic!("{first:?}") };
    assert_eq!(expires, start + Duration::from_secs(600));

    // At 80 % of the lifetime A renews; later B (the other end) asks too: same allocation.
    let renewal = start + Duration::from_secs(480);
    c.handle_timeout(renewal);
    c.handle(renewal, 1, Message::RelayRequest { request: 2, target: B });
    let actions = drain(&mut c);
    assert_eq!(installs(&actions), [(channel, a, b, renewal + Duration::from_secs(600))], "same ends, same order");
    assert_eq!(grants(&sent_to(&actions, 1)), [(2, B, channel, 600)]);
    assert_eq!(grants(&sent_to(&actions, 2)), [(0, A, channel, 600)], "the other end learns its path lives on");
    let later = start + Duration::from_secs(700);
    c.handle(later, 2, Message::RelayRequest { request: 3, target: A });
    let actions = drain(&mut c);
    assert_eq!(installs(&actions), [(channel, a, b, later + Duration::from_secs(600))]);
    assert_eq!(grants(&sent_to(&actions, 2)), [(3, A, channel, 600)]);
    assert_eq!(grants(&sent_to(&actions, 1)), [(0, B, channel, 600)]);
    let stats = c.stats();
    assert_eq!((stats.active_relays, stats.relays_granted, stats.relays_renewed), (1, 1, 2));

    // The first deadline passes: nothing lapses. Without a renewal, the last one does.
    c.handle_timeout(start + Duration::from_secs(1000));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(later + Duration::from_secs(600));
    assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
    assert_eq!(c.stats().active_relays, 0);
}

#[test]
fn relay_expiry_removes_the_allocation() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
    let channel = drain(&mut c)
        .into_iter()
        .find_map(|a| match a {
            CoordinatorAction::InstallRelay { channel, .. } => Some(channel),
            _ => None,
        })
        .unwrap();
    c.handle_timeout(now + Duration::from_secs(599));
    assert!(drain(&mut c).is_empty());
    let due = c.poll_timeout().unwrap();
    assert_eq!(due, now + Duration::from_secs(600));
    c.handle_timeout(due);
    assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
    assert_eq!(c.stats().active_relays, 0);
}

#[test]
fn closing_a_session_unregisters_and_removes_its_relays() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
    drain(&mut c);
    c.session_closed(now, 2);
    let actions = drain(&mut c);
    assert!(matches!(actions[..], [CoordinatorAction::RemoveRelay { .. }]), "{actions:?}");
    assert_eq!(c.registered(), 1);
    c.handle(now, 1, Message::ConnectRequest { request: 2, target: B });
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(2, ErrorCode::UnknownPeer)]);
}

#[test]
fn the_newest_session_of_a_peer_wins() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
    drain(&mut c);
    // B reconnects from a new address; its old session lingers and then closes.
    c.session_opened(now, 3, Some(B), addr("198.18.0.21:50001"), Duration::from_millis(100));
    let actions = drain(&mut c);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, CoordinatorAction::InstallRelay { b, .. } if *b == addr("198.18.0.21:50001"))),
        "the relay follows the new observed address: {actions:?}"
    );
    c.handle(now, 2, Message::ConnectRequest { request: 4, target: A });
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 2)), [(4, ErrorCode::NotRegistered)]);
    c.session_closed(now, 2);
    assert!(drain(&mut c).is_empty(), "closing the replaced session removes nothing");
    assert_eq!(c.registered(), 2);
    c.handle(now, 1, Message::ConnectRequest { request: 5, target: B });
    let actions = drain(&mut c);
    assert!(matches!(sent_to(&actions, 3)[..], [Message::PunchMeNow { .. }]), "punch goes to the new session");
    let to_a = sent_to(&actions, 1);
    let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
    assert_eq!(candidates[0].address, addr("198.18.0.21:50001"));
}

#[test]
fn rate_limit_drops_the_excess_with_one_error_per_burst() {
    let (mut c, now) = two_peers();
    let report = |request| Message::Report { request, outcome: Outcome::Direct, connect_ms: 5 };
    for request in 1..=100 {
        c.handle(now, 1, report(request));
    }
    let stats = c.stats();
    assert_eq!((stats.reports_direct, stats.rate_limited), (40, 60));
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(41, ErrorCode::RateLimited)]);
    // The other session is not affected.
    c.handle(now, 2, report(1));
    assert_eq!(c.stats().reports_direct, 41);
    // One second refills 20.
    let later = now + Duration::from_secs(1);
    for request in 101..=130 {
        c.handle(later, 1, report(request));
    }
    assert_eq!(c.stats().reports_direct, 61);
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(121, ErrorCode::RateLimited)]);
}

#[test]
fn messages_only_a_bootstrap_sends_are_malformed() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::ObservedAddress { sequence: 1, address: addr("192.0.2.1:1") });
    c.handle(now, 1, Message::Error { request: 3, code: ErrorCode::Malformed, reason: String::new() });
    c.handle_malformed(now, 1);
    assert_eq!(
        error_codes(&sent_to(&drain(&mut c), 1)),
        [(0, ErrorCode::Malformed), (3, ErrorCode::Malformed), (0, ErrorCode::Malformed)]
    );
    assert_eq!(c.stats().malformed, 3);
    assert_eq!(c.registered(), 2);
}

#[test]
fn reports_make_the_success_rate() {
    let (mut c, now) = two_peers();
    assert_eq!(c.success_rate(), None);
    for outcome in [Outcome::Direct, Outcome::Direct, Outcome::Relayed, Outcome::Failed] {
        c.handle(now, 1, Message::Report { request: 1, outcome, connect_ms: 100 });
    }
    let stats = c.stats();
    assert_eq!((stats.reports_direct, stats.reports_relayed, stats.reports_failed), (2, 1, 1));
    assert_eq!(c.success_rate(), Some(0.75));
}

/// The REREGISTER delays sent, by session.
fn reregisters(actions: &[CoordinatorAction]) -> Vec<(SessionId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Send { session, message: Message::Reregister { delay_ms } } => {
                Some((*session, *delay_ms))
            }
            _ => None,
        })
        .collect()
}

/// A coordinator with `n` peers registered on sessions 1..=n.
fn many_peers(n: u8, seed: u64) -> (Coordinator, Instant) {
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig::default(), seed);
    for i in 1..=n {
        let address = addr(&format!("198.18.2.{i}:4000"));
        c.session_opened(now, SessionId::from(i), Some(PeerId([i; 32])), address, Duration::ZERO);
    }
    drain(&mut c);
    (c, now)
}

#[test]
fn handover_tells_every_registered_peer_once_spread_over_the_window() {
    let (mut c, now) = many_peers(40, 3);
    // A connection without a certificate is not registered: it is not told.
    c.session_opened(now, 99, None, addr("198.18.3.1:4000"), Duration::ZERO);
    drain(&mut c);
    let window = Duration::from_secs(30);
    assert_eq!(c.begin_handover(now, window), 40);
    assert!(c.is_handing_over());
    let sent = reregisters(&drain(&mut c));
    let mut sessions: Vec<SessionId> = sent.iter().map(|(s, _)| *s).collect();
    sessions.sort_unstable();
    assert_eq!(sessions, (1..=40).collect::<Vec<SessionId>>(), "every peer exactly once");
    // Peer i of 40 waits window·(i + ½)/40: 375 ms, then every 750 ms, the last 29 625 ms.
    let mut delays: Vec<u32> = sent.iter().map(|(_, d)| *d).collect();
    delays.sort_unstable();
    let expected: Vec<u32> = (0..40).map(|i| 375 + 750 * i).collect();
    assert_eq!(delays, expected);
    assert!(delays.iter().all(|d| u128::from(*d) < window.as_millis()), "none beyond the window");
    // The order is drawn, not the sessions' order.
    let in_session_order: Vec<u32> = (1..=40).map(|s| sent.iter().find(|(t, _)| *t == s).unwrap().1).collect();
    assert_ne!(in_session_order, expected);
    assert_eq!(c.stats().reregisters_sent, 40);

    // Again: nobody is told twice.
    assert_eq!(c.begin_handover(now, window), 0);
    assert!(reregisters(&drain(&mut c)).is_empty());
}

#[test]
fn handover_order_comes_from_the_seed() {
    let order = |seed| {
        let (mut c, now) = many_peers(10, seed);
        c.begin_handover(now, Duration::from_secs(10));
        let mut sent = reregisters(&drain(&mut c));
        sent.sort_by_key(|(_, delay)| *delay);
        sent.into_iter().map(|(session, _)| session).collect::<Vec<_>>()
    };
    assert_eq!(order(5), order(5), "deterministic for one seed");
    assert_ne!(order(5), order(6));
}

#[test]
fn handover_delays_stay_within_a_short_window() {
    // 3 peers over 10 ms: 1.67, 5, 8.33 ms, rounded down.
    let (mut c, now) = many_peers(3, 1);
    c.begin_handover(now, Duration::from_millis(10));
    let mut delays: Vec<u32> = reregisters(&drain(&mut c)).into_iter().map(|(_, d)| d).collect();
    delays.sort_unstable();
    assert_eq!(delays, [1, 5, 8]);
    // No peers: nothing to send, and a later registration is still told.
    let mut empty = Coordinator::new(CoordinatorConfig::default(), 1);
    assert_eq!(empty.begin_handover(now, Duration::ZERO), 0);
    assert!(drain(&mut empty).is_empty());
}

#[test]
fn a_peer_registering_during_a_handover_is_told_soon_unless_it_came_back() {
    let (mut c, now) = two_peers();
    c.begin_handover(now, Duration::from_secs(30));
    drain(&mut c);
    // A new peer whose handshake was under way at the switch registers here.
    c.session_opened(now, 3, Some(C), addr("198.18.0.30:40000"), Duration::ZERO);
    let sent = sent_to(&drain(&mut c), 3);
    assert_eq!(
        sent,
        [
            Message::ObservedAddress { sequence: 1, address: addr("198.18.0.30:40000") },
            Message::Reregister { delay_ms: LATE_REREGISTER_DELAY.as_millis() as u32 },
        ]
    );
    // A told peer whose new connection reached this process again is not told again: that
    // would only loop.
    c.session_opened(now, 4, Some(A), addr("198.18.0.10:40001"), Duration::ZERO);
    let sent = sent_to(&drain(&mut c), 4);
    assert!(matches!(sent[..], [Message::ObservedAddress { .. }]), "{sent:?}");
    assert_eq!(c.registered(), 3);
}

#[test]
fn relays_outlive_the_sessions_of_peers_that_moved_on() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
    let [(channel, ..)] = installs(&drain(&mut c))[..] else { panic!("no relay") };
    c.begin_handover(now, Duration::from_secs(30));
    drain(&mut c);
    // Both peers re-registered elsewhere and closed their sessions here.
    c.session_closed(now, 1);
    c.session_closed(now, 2);
    assert!(drain(&mut c).is_empty(), "the relayed connection still runs through this process");
    assert_eq!(c.registered(), 0);
    assert_eq!(c.stats().active_relays, 1);
    // It lapses as any allocation does.
    c.handle_timeout(now + Duration::from_secs(600));
    assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
}

#[test]
fn a_peer_cannot_send_reregister() {
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::Reregister { delay_ms: 0 });
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(0, ErrorCode::Malformed)]);
    assert!(!c.is_handing_over());
}

#[test]
fn relay_channels_carry_the_generation_in_their_high_half() {
    let now = Instant::now();
    let config = CoordinatorConfig { channel_prefix: 0x0203, max_relays_per_peer: 64, ..CoordinatorConfig::default() };
    let mut c = Coordinator::new(config, 11);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::ZERO);
    let others: Vec<PeerId> = (0..64u8).map(|i| PeerId([0x40 + i; 32])).collect();
    for (i, peer) in others.iter().enumerate() {
        c.session_opened(now, 10 + i as SessionId, Some(*peer), addr(&format!("198.18.4.{i}:4000")), Duration::ZERO);
    }
    drain(&mut c);
    for (request, peer) in (1..).zip(&others) {
        c.handle(now + Duration::from_secs(request), 1, Message::RelayRequest { request, target: *peer });
    }
    let channels: HashSet<u32> = installs(&drain(&mut c)).into_iter().map(|(channel, ..)| channel).collect();
    assert_eq!(channels.len(), 64, "distinct channels");
    for channel in &channels {
        assert_eq!(channel >> 16, 0x0203, "{channel:#010x}");
        assert_ne!(channel & 0xffff, 0, "{channel:#010x}");
    }
    // The default prefix is 0: the channel is the random low half alone.
    let (mut c, now) = two_peers();
    c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
    let [(channel, ..)] = installs(&drain(&mut c))[..] else { panic!("no relay") };
    assert!(channel != 0 && channel <= 0xffff, "{channel:#x}");
}

#[test]
fn the_last_free_channels_are_found() {
    let now = Instant::now();
    let mut c = Coordinator::new(CoordinatorConfig { channel_prefix: 7, ..CoordinatorConfig::default() }, 2);
    // Every low half but two taken: random draws nearly always miss, the scan finds them.
    for low in 1..=u16::MAX {
        if low != 0x1234 && low != 0xfffe {
            c.relays.insert(
                7 << 16 | u32::from(low),
                Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
            );
        }
    }
    let first = c.fresh_channel().unwrap();
    assert!(first == 0x0007_1234 || first == 0x0007_fffe, "{first:#x}");
    c.relays.insert(
        first,
        Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
    );
    let second = c.fresh_channel().unwrap();
    assert!(second != first && (second == 0x0007_1234 || second == 0x0007_fffe), "{second:#x}");
    c.relays.insert(
        second,
        Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
    );
    assert_eq!(c.fresh_channel(), None, "all 65 535 taken");
}

#[test]
fn a_full_registry_refuses_new_peers() {
    let now = Instant::now();
    let config = CoordinatorConfig { max_peers: 1, ..CoordinatorConfig::default() };
    let mut c = Coordinator::new(config, 1);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::ZERO);
    c.session_opened(now, 2, Some(B), addr("198.18.0.20:40000"), Duration::ZERO);
    assert_eq!(c.registered(), 1);
    assert_eq!(error_codes(&sent_to(&drain(&mut c), 2)), [(0, ErrorCode::NotRegistered)]);
    // The registered peer may still reconnect.
    c.session_opened(now, 3, Some(A), addr("198.18.0.10:40001"), Duration::ZERO);
    assert!(matches!(sent_to(&drain(&mut c), 3)[..], [Message::ObservedAddress { .. }]));
}

#[test]
fn registrations_are_announced_on_register_move_candidates_and_leave_only() {
    let announced = |actions: &[CoordinatorAction]| -> Vec<CoordinatorAction> {
        actions
            .iter()
            .filter(|a| matches!(a, CoordinatorAction::Registered { .. } | CoordinatorAction::Unregistered { .. }))
            .cloned()
            .collect()
    };
    let now = Instant::now();
    let config = CoordinatorConfig { announce_registrations: true, ..CoordinatorConfig::default() };
    let mut c = Coordinator::new(config, 1);
    c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    let registered = |observed: &str, candidates: Vec<SocketAddr>| CoordinatorAction::Registered {
        peer: A,
        observed: addr(observed),
        candidates,
    };
    assert_eq!(announced(&drain(&mut c)), vec![registered("198.18.0.10:40000", vec![])]);
    c.handle(now, 1, Message::AddAddress { sequence: 1, candidate: host("10.0.0.10:40000", 1) });
    assert_eq!(announced(&drain(&mut c)), vec![registered("198.18.0.10:40000", vec![addr("10.0.0.10:40000")])]);
    c.observed_changed(now, 1, addr("198.18.0.10:40001"));
    assert_eq!(announced(&drain(&mut c)), vec![registered("198.18.0.10:40001", vec![addr("10.0.0.10:40000")])]);
    c.handle_timeout(now + CoordinatorConfig::default().candidate_lifetime + Duration::from_secs(1));
    assert_eq!(announced(&drain(&mut c)), vec![registered("198.18.0.10:40001", vec![])], "an expired candidate goes");
    c.session_closed(now, 1);
    assert_eq!(announced(&drain(&mut c)), vec![CoordinatorAction::Unregistered { peer: A }]);

    // Off by default: the actions the driver knows are unchanged.
    let (mut quiet, _) = two_peers();
    quiet.session_closed(now, 1);
    assert!(announced(&drain(&mut quiet)).is_empty());
}

mod across;
mod forward;
