//! Connection requests across two bootstraps: B2, where the requester A is registered, forwards
//! to B1, where the target T is.

use super::*;

const T: PeerId = PeerId([0x77; 32]);
const B1: PeerId = PeerId([0xb1; 32]);
const B2: PeerId = PeerId([0xb2; 32]);
const X: PeerId = PeerId([0x99; 32]);

/// B2's session of A, and its link to B1 (B2 registered at B1 as a peer).
const A_AT_B2: SessionId = 1;
const LINK_AT_B2: SessionId = 5;
/// B1's sessions of T and of B2's link.
const T_AT_B1: SessionId = 2;
const LINK_AT_B1: SessionId = 9;

fn federated(others: &[PeerId]) -> Coordinator {
    let config = CoordinatorConfig {
        peer_bootstraps: others.iter().copied().collect(),
        announce_registrations: true,
        ..CoordinatorConfig::default()
    };
    Coordinator::new(config, 11)
}

/// B2 with A (RTT 20 ms); B1 with T (RTT 100 ms) and B2's link (RTT 40 ms).
fn two_bootstraps() -> (Coordinator, Coordinator, Instant) {
    let now = Instant::now();
    let mut b2 = federated(&[B1]);
    b2.session_opened(now, A_AT_B2, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    let mut b1 = federated(&[B2]);
    b1.session_opened(now, T_AT_B1, Some(T), addr("198.18.0.20:50000"), Duration::from_millis(100));
    b1.session_opened(now, LINK_AT_B1, Some(B2), addr("203.0.113.2:9000"), Duration::from_millis(40));
    let registered: Vec<PeerId> = drain(&mut b1)
        .into_iter()
        .filter_map(|a| match a {
            CoordinatorAction::Registered { peer, .. } => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(registered, [T], "a bootstrap's link is not announced as a registered peer");
    drain(&mut b2);
    (b1, b2, now)
}

/// A asks B2 for T: the forward number B2 hands to the driver.
fn ask(b2: &mut Coordinator, now: Instant) -> u64 {
    b2.handle(now, A_AT_B2, Message::ConnectRequest { request: 77, target: T });
    let actions = drain(b2);
    let forwards: Vec<(u64, PeerId)> = actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Forward { forward, target } => Some((*forward, *target)),
            _ => None,
        })
        .collect();
    let [(forward, T)] = forwards[..] else { panic!("expected one forward for T, got {actions:?}") };
    assert!(sent_to(&actions, A_AT_B2).is_empty(), "A hears nothing until B1 answers");
    forward
}

fn elapsed_of(actions: &[CoordinatorAction]) -> Vec<(Duration, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Forwarded { elapsed, punched } => Some((*elapsed, *punched)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_registered_at_another_bootstrap_is_punched_through_it() {
    let (mut b1, mut b2, now) = two_bootstraps();
    let forward = ask(&mut b2, now);
    b2.forward_via(now, forward, LINK_AT_B2);
    let on_link = sent_to(&drain(&mut b2), LINK_AT_B2);
    let [forward_connect @ Message::ForwardConnect { requester, target, delay_ms, candidates, .. }] = &on_link[..]
    else {
        panic!("expected FORWARD_CONNECT on the link, got {on_link:?}")
    };
    assert_eq!((*requester, *target, *delay_ms), (A, T, 10));
    assert_eq!(candidates.iter().map(|c| c.address).collect::<Vec<_>>(), [addr("198.18.0.10:40000")]);

    b1.handle(now, LINK_AT_B1, forward_connect.clone());
    let actions = drain(&mut b1);
    let (to_link, to_t) = (sent_to(&actions, LINK_AT_B1), sent_to(&actions, T_AT_B1));
    let [answer @ Message::PunchMeNow { request, peer, role, start_in_ms, token, candidates, .. }] = &to_link[..]
    else {
        panic!("expected B2's PUNCH_ME_NOW, got {to_link:?}")
    };
    let [Message::PunchMeNow {
        request: request_t,
        peer: peer_t,
        role: role_t,
        start_in_ms: start_t,
        token: token_t,
        candidates: candidates_t,
        ..
    }] = &to_t[..]
    else {
        panic!("expected T's PUNCH_ME_NOW, got {to_t:?}")
    };
    assert_eq!((*request, *peer, *role), (forward, T, PunchRole::Initiator));
    assert_eq!((*request_t, *peer_t, *role_t), (0, A, PunchRole::Responder));
    assert_eq!(token, token_t, "one round for both");
    // A's travels the link (20 ms one way) then B2 → A (10 ms); T's takes 50 ms. D = 50 + 30:
    // both start 80 ms after B1 sent.
    assert_eq!((*start_in_ms, *start_t), (50, 30));
    assert_eq!(candidates.iter().map(|c| c.address).collect::<Vec<_>>(), [addr("198.18.0.20:50000")]);
    assert_eq!(candidates_t.iter().map(|c| c.address).collect::<Vec<_>>(), [addr("198.18.0.10:40000")]);
    assert_eq!((b1.stats().forwards_received, b1.stats().punches_coordinated), (1, 1));

    let later = now + Duration::from_millis(30);
    assert_eq!(b2.forward_answer(later, LINK_AT_B2, answer.clone()), None, "B2 takes its answer");
    let actions = drain(&mut b2);
    let to_a = sent_to(&actions, A_AT_B2);
    let [Message::PunchMeNow { request, peer, token: token_a, start_in_ms, .. }] = &to_a[..] else {
        panic!("expected A's PUNCH_ME_NOW, got {to_a:?}")
    };
    assert_eq!((*request, *peer, token_a, *start_in_ms), (77, T, token_t, 50));
    assert_eq!(elapsed_of(&actions), [(Duration::from_millis(30), true)]);
    let stats = b2.stats();
    assert_eq!((stats.forwards_sent, stats.forwards_punched, stats.forwards_failed), (1, 1, 0));
}

#[test]
fn only_bootstraps_on_the_allow_list_may_forward() {
    let now = Instant::now();
    let mut b1 = federated(&[B2]);
    b1.session_opened(now, T_AT_B1, Some(T), addr("198.18.0.20:50000"), Duration::from_millis(100));
    // X proves its peer ID but is not on the list: a peer, or a bootstrap of another federation.
    b1.session_opened(now, 3, Some(X), addr("198.18.0.30:4000"), Duration::from_millis(10));
    drain(&mut b1);
    let forged = Message::ForwardConnect {
        request: 5,
        requester: A,
        target: T,
        flags: 0,
        delay_ms: 0,
        candidates: vec![host("192.0.2.66:9", 1)],
    };
    b1.handle(now, 3, forged);
    let actions = drain(&mut b1);
    assert_eq!(error_codes(&sent_to(&actions, 3)), [(5, ErrorCode::NotAuthenticated)]);
    assert!(sent_to(&actions, T_AT_B1).is_empty(), "T is told nothing");
    assert_eq!((b1.stats().forwards_refused, b1.stats().punches_coordinated), (1, 0));

    // Nor does a bootstrap forward to one off its list (the driver's check), or without a list.
    let mut alone = federated(&[]);
    alone.session_opened(now, A_AT_B2, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
    drain(&mut alone);
    alone.handle(now, A_AT_B2, Message::ConnectRequest { request: 4, target: T });
    assert_eq!(error_codes(&sent_to(&drain(&mut alone), A_AT_B2)), [(4, ErrorCode::UnknownPeer)]);
}

#[test]
fn a_forward_fails_cleanly_without_link_on_error_and_past_its_time() {
    let (_, mut b2, now) = two_bootstraps();
    // No link: the driver says so.
    let forward = ask(&mut b2, now);
    b2.forward_failed(forward, "the target's bootstrap is not connected to this one");
    let to_a = sent_to(&drain(&mut b2), A_AT_B2);
    assert_eq!(error_codes(&to_a), [(77, ErrorCode::UnknownPeer)]);

    // B1 answers ERROR: A hears B1's reason under its own request number.
    let forward = ask(&mut b2, now);
    b2.forward_via(now, forward, LINK_AT_B2);
    drain(&mut b2);
    let gone = Message::Error { request: forward, code: ErrorCode::UnknownPeer, reason: "gone".into() };
    // The same number on another session is not the answer: it goes to the node's traversal.
    assert_eq!(b2.forward_answer(now, 6, gone.clone()), Some(gone.clone()));
    assert_eq!(b2.forward_answer(now, LINK_AT_B2, gone), None);
    let actions = drain(&mut b2);
    let to_a = sent_to(&actions, A_AT_B2);
    assert!(matches!(&to_a[..], [Message::Error { request: 77, reason, .. }] if reason == "gone"), "{to_a:?}");
    assert_eq!(elapsed_of(&actions), [(Duration::ZERO, false)]);

    // No answer within forward_timeout (3 s): A hears it failed; a late answer is not taken.
    let forward = ask(&mut b2, now);
    b2.forward_via(now, forward, LINK_AT_B2);
    drain(&mut b2);
    let late = now + Duration::from_secs(3);
    b2.handle_timeout(late);
    let actions = drain(&mut b2);
    assert_eq!(error_codes(&sent_to(&actions, A_AT_B2)), [(77, ErrorCode::UnknownPeer)]);
    assert_eq!(elapsed_of(&actions), [(Duration::from_secs(3), false)]);
    let answer = Message::Error { request: forward, code: ErrorCode::UnknownPeer, reason: "late".into() };
    assert!(b2.forward_answer(late, LINK_AT_B2, answer).is_some());
    let stats = b2.stats();
    assert_eq!((stats.forwards_sent, stats.forwards_punched, stats.forwards_failed), (2, 0, 3));
}
