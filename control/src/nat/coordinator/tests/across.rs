//! Relays across two bootstraps: B2, where the requester A is registered, sends A to B1, where
//! the target T is (RELAY_AT); A registers at B1 and is relayed there as with one bootstrap.

use super::*;

const T: PeerId = PeerId([0x77; 32]);
const B1: PeerId = PeerId([0xb1; 32]);
const A_AT_B2: SessionId = 1;
const LINK_AT_B2: SessionId = 5;
const T_AT_B1: SessionId = 2;
const A_AT_B1: SessionId = 3;

fn b2() -> (Coordinator, Instant) {
    let now = Instant::now();
    let config = CoordinatorConfig { peer_bootstraps: [B1].into_iter().collect(), ..CoordinatorConfig::default() };
    let mut b2 = Coordinator::new(config, 3);
    b2.session_opened(now, A_AT_B2, Some(A), addr("198.18.0.107:40000"), Duration::from_millis(20));
    drain(&mut b2);
    (b2, now)
}

fn relays_across(actions: &[CoordinatorAction]) -> Vec<(SessionId, u64, PeerId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::RelayAcross { session, request, target } => Some((*session, *request, *target)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_relay_request_for_a_peer_registered_elsewhere_is_sent_to_its_bootstrap() {
    let (mut b2, now) = b2();
    b2.handle(now, A_AT_B2, Message::RelayRequest { request: 8, target: T });
    let actions = drain(&mut b2);
    assert_eq!(relays_across(&actions), [(A_AT_B2, 8, T)], "the driver is asked where T is");
    assert!(sent_to(&actions, A_AT_B2).is_empty(), "A hears nothing until the driver answers");

    // The driver found B1, on the allow-list: A is told to ask there, under its request number.
    let b1_address = addr("198.18.0.11:9000");
    b2.relay_at(A_AT_B2, 8, T, B1, b1_address);
    let to_a = sent_to(&drain(&mut b2), A_AT_B2);
    assert_eq!(to_a, [Message::RelayAt { request: 8, target: T, bootstrap: B1, address: b1_address }]);
    assert_eq!((b2.stats().relays_across, b2.stats().relays_granted), (1, 0), "nothing allocated here");

    // The driver found nothing usable: A hears why.
    b2.handle(now, A_AT_B2, Message::RelayRequest { request: 9, target: T });
    drain(&mut b2);
    b2.relay_across_failed(A_AT_B2, 9, "the target's bootstrap is not on this one's allow-list");
    let to_a = sent_to(&drain(&mut b2), A_AT_B2);
    assert!(
        matches!(&to_a[..], [Message::Error { request: 9, code: ErrorCode::UnknownPeer, reason }] if reason.contains("allow-list")),
        "{to_a:?}"
    );
    assert_eq!(b2.stats().relays_across, 1);

    // A left meanwhile: nothing is sent on its old session.
    b2.handle(now, A_AT_B2, Message::RelayRequest { request: 10, target: T });
    drain(&mut b2);
    b2.session_closed(now, A_AT_B2);
    drain(&mut b2);
    b2.relay_at(A_AT_B2, 10, T, B1, b1_address);
    assert!(drain(&mut b2).is_empty());
    assert_eq!(b2.stats().relays_across, 1);
}

#[test]
fn without_a_federation_a_relay_request_for_an_unknown_peer_is_refused_as_before() {
    let now = Instant::now();
    let mut alone = Coordinator::new(CoordinatorConfig::default(), 3);
    alone.session_opened(now, A_AT_B2, Some(A), addr("198.18.0.107:40000"), Duration::from_millis(20));
    drain(&mut alone);
    alone.handle(now, A_AT_B2, Message::RelayRequest { request: 8, target: T });
    let actions = drain(&mut alone);
    assert!(relays_across(&actions).is_empty());
    assert_eq!(error_codes(&sent_to(&actions, A_AT_B2)), [(8, ErrorCode::UnknownPeer)]);
}

/// B2 passes B1's PUNCH_ME_NOW with `flags` on to A; what it asks the driver then.
fn forwarded_punch(flags: u8) -> Vec<CoordinatorAction> {
    let (mut b2, now) = b2();
    b2.handle(now, A_AT_B2, Message::ConnectRequest { request: 77, target: T });
    let forward = drain(&mut b2)
        .into_iter()
        .find_map(|a| if let CoordinatorAction::Forward { forward, .. } = a { Some(forward) } else { None })
        .unwrap();
    b2.forward_via(now, forward, LINK_AT_B2);
    drain(&mut b2);
    let punch = Message::PunchMeNow {
        round: 1,
        request: forward,
        peer: T,
        role: PunchRole::Initiator,
        flags,
        start_in_ms: 40,
        token: [3; 16],
        candidates: vec![reflexive("198.18.0.108:50000")],
    };
    assert_eq!(b2.forward_answer(now, LINK_AT_B2, punch), None);
    drain(&mut b2)
}

#[test]
fn a_forwarded_punch_whose_direct_path_is_uncertain_sends_the_requester_to_the_relay_at_once() {
    use crate::nat::candidate::{FLAG_OTHER_EDM, FLAG_OTHER_EIM, FLAG_RECEIVER_EDM, FLAG_RECEIVER_EIM};
    // Both behind symmetric NATs: the punch goes to A, then the relay is asked across.
    let actions = forwarded_punch(FLAG_RECEIVER_EDM | FLAG_OTHER_EDM);
    assert!(matches!(&sent_to(&actions, A_AT_B2)[..], [Message::PunchMeNow { request: 77, .. }]));
    let position = |want: fn(&CoordinatorAction) -> bool| actions.iter().position(want);
    let punch = position(|a| matches!(a, CoordinatorAction::Send { message: Message::PunchMeNow { .. }, .. }));
    let across = position(|a| matches!(a, CoordinatorAction::RelayAcross { .. }));
    assert!(punch < across, "the punch first: {actions:?}");
    assert_eq!(relays_across(&actions), [(A_AT_B2, 77, T)]);
    // One known EIM: the punch connects (a many-probe round), no relay at once.
    assert!(relays_across(&forwarded_punch(FLAG_RECEIVER_EDM | FLAG_OTHER_EIM)).is_empty());
    assert!(relays_across(&forwarded_punch(FLAG_RECEIVER_EIM | FLAG_OTHER_EIM)).is_empty());
}

#[test]
fn at_the_targets_bootstrap_the_visitor_is_relayed_between_observed_addresses() {
    let now = Instant::now();
    let mut b1 = Coordinator::new(CoordinatorConfig::default(), 4);
    b1.session_opened(now, T_AT_B1, Some(T), addr("198.18.0.108:50000"), Duration::from_millis(30));
    // A's extra connection: B1 observes it from another port than B2 did (a symmetric NAT).
    b1.session_opened(now, A_AT_B1, Some(A), addr("198.18.0.107:41234"), Duration::from_millis(30));
    drain(&mut b1);
    b1.handle(now, A_AT_B1, Message::RelayRequest { request: 21, target: T });
    let actions = drain(&mut b1);
    let [(channel, a, b, _)] = installs(&actions)[..] else { panic!("one allocation: {actions:?}") };
    assert_eq!((a, b), (addr("198.18.0.107:41234"), addr("198.18.0.108:50000")), "as B1 observed them");
    assert_eq!(grants(&sent_to(&actions, A_AT_B1)), [(21, T, channel, 600)]);
    assert_eq!(grants(&sent_to(&actions, T_AT_B1)), [(0, A, channel, 600)]);
}
