//! RELAY_AT, as the traversal alone sees it: the relay is asked at the target's bootstrap once the
//! driver registered there, its grant connects through that bootstrap, and a RELAY_AT that
//! answers nothing of ours asks the driver for nothing.

use super::*;

const TARGET: PeerId = PeerId([0x77; 32]);
const B1: PeerId = PeerId([0xb1; 32]);
/// Sessions: the bootstrap this peer knows (B2), and the extra one at the target's (B1).
const AT_B2: SessionId = 1;
const AT_B1: SessionId = 2;

fn b1() -> SocketAddr {
    "198.18.0.11:9000".parse().unwrap()
}

fn signals_to(actions: &[TraversalAction], to: SessionId) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            TraversalAction::Signal { session, message } if *session == to => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn visits(actions: &[TraversalAction]) -> Vec<(AttemptId, PeerId, SocketAddr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            TraversalAction::VisitBootstrap { attempt, bootstrap, address } => Some((*attempt, *bootstrap, *address)),
            _ => None,
        })
        .collect()
}

/// Registered at B2; a connection to TARGET whose relay B2 was asked for (the punch failed).
fn waiting_for_a_relay(now: Instant) -> (Traversal, AttemptId, u64) {
    let config = TraversalConfig { relay_fallback: true, ..TraversalConfig::default() };
    let mut t = Traversal::new(config, 5);
    t.bootstrap_connected(now, AT_B2, "198.18.0.12:9000".parse().unwrap());
    t.handle_signal(
        now,
        AT_B2,
        Message::ObservedAddress { sequence: 1, address: "198.18.0.107:4000".parse().unwrap() },
    );
    let attempt = t.connect(now, TARGET).unwrap();
    take_actions(&mut t);
    t.punch_failed(now, attempt, "no direct path found");
    let asked = signals_to(&take_actions(&mut t), AT_B2);
    let [Message::RelayRequest { request, target: TARGET }] = asked[..] else { panic!("{asked:?}") };
    (t, attempt, request)
}

#[test]
fn relay_at_registers_at_the_targets_bootstrap_asks_there_and_connects_through_it() {
    let now = Instant::now();
    let (mut t, attempt, request) = waiting_for_a_relay(now);

    let relay_at = |request, target| Message::RelayAt { request, target, bootstrap: B1, address: b1() };
    // Strays: another request number, another target, from another session.
    t.handle_signal(now, AT_B2, relay_at(request ^ 1, TARGET));
    t.handle_signal(now, AT_B2, relay_at(request, PeerId([0x78; 32])));
    assert!(visits(&take_actions(&mut t)).is_empty());
    assert_eq!(t.stats().relay_at_ignored, 2);

    t.handle_signal(now, AT_B2, relay_at(request, TARGET));
    assert_eq!(visits(&take_actions(&mut t)), [(attempt, B1, b1())]);
    // The same answer twice asks once.
    t.handle_signal(now, AT_B2, relay_at(request, TARGET));
    assert!(visits(&take_actions(&mut t)).is_empty());
    assert_eq!((t.stats().relay_at_followed, t.stats().relay_at_ignored), (1, 2));

    // The driver registered at B1: the RELAY_REQUEST goes there.
    t.bootstrap_connected(now, AT_B1, b1());
    t.handle_signal(
        now,
        AT_B1,
        Message::ObservedAddress { sequence: 1, address: "198.18.0.107:4001".parse().unwrap() },
    );
    take_actions(&mut t);
    assert!(t.observed_at(AT_B1).is_some());
    t.visit_ready(now, attempt, AT_B1);
    let asked = signals_to(&take_actions(&mut t), AT_B1);
    let [Message::RelayRequest { request: at_b1, target: TARGET }] = asked[..] else { panic!("{asked:?}") };
    assert!(t.uses_session(AT_B1));

    // B1's grant: the connection goes through B1.
    let grant = Message::RelayGrant {
        request: at_b1,
        peer: TARGET,
        channel: 0x42,
        lifetime_s: 600,
        byte_limit: 1 << 30,
        rate_limit: 1_000_000,
    };
    t.handle_signal(now, AT_B1, grant);
    let actions = take_actions(&mut t);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, TraversalAction::InstallRelayPath { relay, channel: 0x42, .. } if *relay == b1())),
        "{actions:?}"
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, TraversalAction::ConnectRelayed { attempt: id, peer: TARGET, .. } if *id == attempt)));
    t.connection_result(now, attempt, true);
    let finished = std::iter::from_fn(|| t.poll_event())
        .find_map(|e| match e {
            TraversalEvent::AttemptFinished { outcome, remote, .. } => Some((outcome, remote)),
            _ => None,
        })
        .unwrap();
    assert_eq!(finished, (Outcome::Relayed, Some(b1())));
    // Its REPORT goes to B2, which took the request; renewals go to B1, which granted.
    assert!(matches!(
        &signals_to(&take_actions(&mut t), AT_B2)[..],
        [Message::Report { outcome: Outcome::Relayed, .. }]
    ));
    t.handle_timeout(now + Duration::from_secs(480));
    // (Background punches to move the connection off the relay are asked at B1 too: it has both.)
    let at_b1 = signals_to(&take_actions(&mut t), AT_B1);
    let renewals: Vec<&Message> = at_b1.iter().filter(|m| matches!(m, Message::RelayRequest { .. })).collect();
    assert!(matches!(&renewals[..], [Message::RelayRequest { target: TARGET, .. }]), "{at_b1:?}");
    t.connection_closed(now + Duration::from_secs(480), attempt);
    assert!(!t.uses_session(AT_B1), "nothing left at B1: the driver may close it");
}

#[test]
fn a_refused_or_unreachable_relay_at_the_targets_bootstrap_fails_the_attempt() {
    let now = Instant::now();
    let (mut t, attempt, request) = waiting_for_a_relay(now);
    t.handle_signal(now, AT_B2, Message::RelayAt { request, target: TARGET, bootstrap: B1, address: b1() });
    take_actions(&mut t);
    t.bootstrap_connected(now, AT_B1, b1());
    t.visit_ready(now, attempt, AT_B1);
    let asked = signals_to(&take_actions(&mut t), AT_B1);
    let Some(&Message::RelayRequest { request: at_b1, .. }) = asked.last() else { panic!("{asked:?}") };
    let refused = Message::Error { request: at_b1, code: ErrorCode::RelayRefused, reason: "exhausted".into() };
    t.handle_signal(now, AT_B1, refused);
    let reason = std::iter::from_fn(|| t.poll_event()).find_map(|e| match e {
        TraversalEvent::AttemptFinished { outcome: Outcome::Failed, reason, .. } => reason,
        _ => None,
    });
    assert!(reason.is_some_and(|r| r.contains("relay_refused: exhausted")));
    assert!(!t.uses_session(AT_B1));
}
