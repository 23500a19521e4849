//! Relays across bootstraps, as the agent runs them: a bootstrap names the target's bootstrap
//! only when it is on its allow-list (RELAY_AT); a peer told so registers there, pinned, asks
//! the relay there, connects through it, and lets the extra registration go when done.

use super::*;
use crate::nat::candidate::{FLAG_OTHER_EDM, FLAG_RECEIVER_EDM};
use crate::nat::ErrorCode;

const B1: PeerId = PeerId([0xb1; 32]);
const R: PeerId = PeerId([0x44; 32]);

fn b1_address() -> SocketAddr {
    addr("198.18.0.11:9000")
}

/// A peer that knows only B2 (registered on `conn(1)`, observed).
fn peer_of_b2(start: Instant) -> NatAgent {
    let b2 = addr("198.18.0.12:9000");
    let mut agent = agent(start, &[b2]);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), b2);
    observe(&mut agent, start, conn(1), 1, addr("198.18.0.107:40000"));
    actions(&mut agent);
    agent
}

fn signal(agent: &mut NatAgent, now: Instant, c: ConnId, message: Message) -> Vec<AgentAction> {
    agent.handle(now, AgentEvent::Signal { conn: c, message });
    actions(agent)
}

/// The RELAY_REQUESTs the actions send: (connection, request, target).
fn relay_requests(actions: &[AgentAction]) -> Vec<(ConnId, u64, PeerId)> {
    signals(actions)
        .into_iter()
        .filter_map(|(c, m)| match m {
            Message::RelayRequest { request, target } => Some((c, request, target)),
            _ => None,
        })
        .collect()
}

fn connect_request_number(actions: &[AgentAction]) -> u64 {
    signals(actions)
        .into_iter()
        .find_map(|(_, m)| if let Message::ConnectRequest { request, .. } = m { Some(request) } else { None })
        .unwrap()
}

fn punch(request: u64, flags: u8) -> Message {
    Message::PunchMeNow {
        round: 1,
        request,
        peer: OTHER,
        role: PunchRole::Initiator,
        flags,
        start_in_ms: 0,
        token: [9; 16],
        candidates: vec![Candidate {
            kind: CandidateKind::ServerReflexive,
            priority: priority(CandidateKind::ServerReflexive, 65534),
            address: addr("198.18.0.108:50000"),
        }],
    }
}

/// Time passes in 50 ms steps until `until`; the actions on the way.
fn run_until(agent: &mut NatAgent, from: Instant, until: Instant) -> Vec<AgentAction> {
    let mut all = Vec::new();
    let mut now = from;
    while now < until {
        now = (now + ms(50)).min(until);
        agent.handle_timeout(now);
        all.extend(actions(agent));
    }
    all
}

#[test]
fn a_peer_sent_to_its_targets_bootstrap_registers_there_and_is_relayed_through_it() {
    let start = Instant::now();
    let mut agent = peer_of_b2(start);

    // A RELAY_AT that answers nothing of ours is counted and makes us connect nowhere.
    let stray = Message::RelayAt { request: 5, target: OTHER, bootstrap: B1, address: b1_address() };
    assert!(opened(&signal(&mut agent, start, conn(1), stray)).is_empty());
    assert_eq!(agent.traversal.stats().relay_at_ignored, 1);

    // The punch (mappings unknown) finds nothing; the relay is asked at B2.
    agent.handle(start, AgentEvent::Connect { request: 1, target: OTHER });
    let request = connect_request_number(&actions(&mut agent));
    signal(&mut agent, start, conn(1), punch(request, 0));
    let after_punch = start + Duration::from_secs(4);
    let asked = relay_requests(&run_until(&mut agent, start, after_punch));
    let [(c, relay_request, OTHER)] = asked[..] else { panic!("one RELAY_REQUEST: {asked:?}") };
    assert_eq!(c, conn(1));

    // B2: OTHER is registered at B1. Another target under that number is still a stray.
    let wrong = Message::RelayAt { request: relay_request, target: R, bootstrap: B1, address: b1_address() };
    assert!(opened(&signal(&mut agent, after_punch, conn(1), wrong)).is_empty());
    assert_eq!(agent.traversal.stats().relay_at_ignored, 2);
    let relay_at = Message::RelayAt { request: relay_request, target: OTHER, bootstrap: B1, address: b1_address() };
    let told = signal(&mut agent, after_punch, conn(1), relay_at);
    let open = AgentAction::OpenBootstrap { index: 1, remote: b1_address(), peer: Some(B1) };
    assert!(told.contains(&open), "B1 is connected to with its peer ID pinned: {told:?}");
    assert_eq!(agent.status().bootstraps.len(), 1, "an extra bootstrap is not one of the node's own");
    assert_eq!(agent.extra_bootstraps(), 1);

    // Connected: the request waits for the registration (B1's OBSERVED_ADDRESS).
    register(&mut agent, after_punch, 1, conn(2), b1_address());
    assert!(relay_requests(&actions(&mut agent)).is_empty(), "asked before registered");
    observe(&mut agent, after_punch, conn(2), 1, addr("198.18.0.107:41234"));
    let asked = relay_requests(&actions(&mut agent));
    let [(c, at_b1, OTHER)] = asked[..] else { panic!("one RELAY_REQUEST at B1: {asked:?}") };
    assert_eq!(c, conn(2));

    // B1 grants: the connection goes through B1's relay.
    let grant = |request| Message::RelayGrant {
        request,
        peer: OTHER,
        channel: 0x1234,
        lifetime_s: 600,
        byte_limit: 1 << 30,
        rate_limit: 1_000_000,
    };
    let granted = signal(&mut agent, after_punch, conn(2), grant(at_b1));
    let alias = granted
        .iter()
        .find_map(|a| match a {
            AgentAction::SetRelayPath { alias, relay, channel: 0x1234 } if *relay == b1_address() => Some(*alias),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a path through B1: {granted:?}"));
    let attempt = granted
        .iter()
        .find_map(|a| match a {
            AgentAction::OpenPeer { attempt, peer: OTHER, remote } if *remote == alias => Some(*attempt),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a connection to the alias: {granted:?}"));
    let purpose = ConnPurpose::Attempt(attempt);
    agent.handle(after_punch, AgentEvent::Connected { purpose, conn: conn(3), remote: alias, rtt: RTT });
    let replied = actions(&mut agent);
    let ok = replied.iter().any(|a| {
        matches!(a, AgentAction::Reply { request: 1, result: Ok(PeerConnection { path: PathKind::Relayed, remote, .. }) }
            if *remote == b1_address())
    });
    assert!(ok, "the caller gets a relayed connection through B1: {replied:?}");

    // The extra registration stays while the connection lives; renewals go through it.
    let renewal = after_punch + Duration::from_secs(480);
    let later = run_until(&mut agent, after_punch, renewal);
    assert_eq!(relay_requests(&later).iter().map(|(c, _, t)| (*c, *t)).collect::<Vec<_>>(), [(conn(2), OTHER)]);
    assert!(!later.iter().any(|a| matches!(a, AgentAction::Close { .. })), "closed while in use: {later:?}");

    // The connection ends: the extra registration is closed at the next sample, for good.
    let reason = "closed by the application".to_owned();
    agent.handle(renewal, AgentEvent::Closed { purpose, conn: Some(conn(3)), reason });
    let ended = run_until(&mut agent, renewal, renewal + Duration::from_secs(1));
    assert!(
        ended.contains(&AgentAction::Close { conn: conn(2), reason: "relay across bootstraps ended" }),
        "{ended:?}"
    );
    assert_eq!(agent.extra_bootstraps(), 0);
    let reason = "closed".to_owned();
    let closed = AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(1), conn: Some(conn(2)), reason };
    agent.handle(renewal, closed);
    let quiet = run_until(&mut agent, renewal, renewal + Duration::from_secs(70));
    assert!(opened(&quiet).is_empty(), "an extra bootstrap is not reconnected: {quiet:?}");
}

#[test]
fn a_targets_bootstrap_that_does_not_prove_its_peer_id_gets_nothing() {
    let start = Instant::now();
    let mut agent = peer_of_b2(start);
    agent.handle(start, AgentEvent::Connect { request: 1, target: OTHER });
    let request = connect_request_number(&actions(&mut agent));
    // Both behind symmetric NATs: B2 passes B1's punch on, then sends us to B1 at once.
    signal(&mut agent, start, conn(1), punch(request, FLAG_RECEIVER_EDM | FLAG_OTHER_EDM));
    let relay_at = Message::RelayAt { request, target: OTHER, bootstrap: B1, address: b1_address() };
    assert_eq!(opened(&signal(&mut agent, start, conn(1), relay_at)), [1]);

    // Whoever answers at that address is not B1: nothing is asked there, the punch goes on.
    let reason = "invalid peer certificate".to_owned();
    agent.handle(start, AgentEvent::BootstrapWrongPeer { index: 1, conn: None, reason: reason.clone() });
    let after = actions(&mut agent);
    assert!(relay_requests(&after).is_empty() && replies(&after).is_empty(), "{after:?}");
    assert_eq!(agent.extra_bootstraps(), 0);

    // The punch fails; B2 names B1 again; it fails again: the caller hears why.
    let punch_over = start + Duration::from_secs(6);
    let asked = relay_requests(&run_until(&mut agent, start, punch_over));
    let [(_, relay_request, OTHER)] = asked[..] else { panic!("one RELAY_REQUEST at B2: {asked:?}") };
    let relay_at = Message::RelayAt { request: relay_request, target: OTHER, bootstrap: B1, address: b1_address() };
    assert_eq!(opened(&signal(&mut agent, punch_over, conn(1), relay_at)), [1], "the slot is reused");
    agent.handle(punch_over, AgentEvent::BootstrapWrongPeer { index: 1, conn: None, reason });
    let failed = actions(&mut agent);
    let why = failed.iter().find_map(|a| match a {
        AgentAction::Reply { request: 1, result: Err(why) } => Some(why.clone()),
        _ => None,
    });
    let why = why.unwrap_or_else(|| panic!("the caller hears the failure: {failed:?}"));
    assert!(why.contains("198.18.0.11:9000 is not peer"), "{why}");
    assert!(relay_requests(&failed).is_empty());
    let quiet = run_until(&mut agent, punch_over, punch_over + Duration::from_secs(40));
    assert!(opened(&quiet).is_empty(), "not tried again: {quiet:?}");
}

#[test]
fn a_peer_registers_at_a_few_extra_bootstraps_at_most() {
    let start = Instant::now();
    let mut agent = peer_of_b2(start);
    let mut opens = Vec::new();
    for i in 1..=4u8 {
        let target = PeerId([0x50 + i; 32]);
        agent.handle(start, AgentEvent::Connect { request: u64::from(i), target });
        let request = connect_request_number(&actions(&mut agent));
        let bootstrap = PeerId([0xc0 + i; 32]);
        let address = SocketAddr::from(([198, 18, 0, 30 + i], 9000));
        let relay_at = Message::RelayAt { request, target, bootstrap, address };
        opens.extend(opened(&signal(&mut agent, start, conn(1), relay_at)));
    }
    assert_eq!(opens, [1, 2, 3], "a fourth extra bootstrap is not connected to");
    assert_eq!(agent.extra_bootstraps(), MAX_EXTRA_BOOTSTRAPS);
}

#[test]
fn a_bootstrap_names_the_targets_bootstrap_only_from_its_allow_list() {
    let start = Instant::now();
    let rogue = PeerId([0x66; 32]);
    let elsewhere = PeerId([0x45; 32]);
    let config = CoordinatorConfig { peer_bootstraps: [B1].into_iter().collect(), ..CoordinatorConfig::default() };
    let coordinator = Coordinator::new(config, 1);
    let specs = [BootstrapSpec { address: b1_address(), peer: Some(B1) }];
    let mut agent = NatAgent::new(start, ME, &specs, coordinator, Traversal::new(TraversalConfig::default(), 2));
    agent.set_directory(Box::new(move |peer| {
        if peer == OTHER {
            Some(B1)
        } else if peer == elsewhere {
            Some(rogue)
        } else {
            None
        }
    }));
    let remote = addr("198.18.0.107:40000");
    agent.handle(
        start,
        AgentEvent::SignalOpened { conn: conn(5), role: SignalRole::Coordinator, peer: Some(R), remote, rtt: RTT },
    );
    actions(&mut agent);

    let mut ask = |request, target| {
        let answer = signal(&mut agent, start, conn(5), Message::RelayRequest { request, target });
        signals(&answer).into_iter().map(|(_, m)| m).collect::<Vec<_>>()
    };
    assert_eq!(ask(3, OTHER), [Message::RelayAt { request: 3, target: OTHER, bootstrap: B1, address: b1_address() }]);
    let refused = ask(4, elsewhere);
    assert!(
        matches!(&refused[..], [Message::Error { request: 4, code: ErrorCode::UnknownPeer, reason }] if reason.contains("allow-list")),
        "{refused:?}"
    );
    let unknown = ask(6, PeerId([0x01; 32]));
    assert!(
        matches!(&unknown[..], [Message::Error { request: 6, code: ErrorCode::UnknownPeer, reason }] if reason.contains("any bootstrap")),
        "{unknown:?}"
    );
    agent.handle_timeout(start + SAMPLE_INTERVAL);
    let sampled = actions(&mut agent);
    let across = sampled.iter().find_map(|a| match a {
        AgentAction::Sample { coordinator, .. } => Some(coordinator.relays_across),
        _ => None,
    });
    assert_eq!(across, Some(1), "one relay handed across");
}

#[test]
fn a_visitor_stays_its_home_bootstraps_in_the_shared_registry() {
    use std::sync::{Arc, Mutex};
    let start = Instant::now();
    let b2 = PeerId([0xb2; 32]);
    let b2_address = addr("198.18.0.12:9000");
    let config = CoordinatorConfig {
        peer_bootstraps: [b2].into_iter().collect(),
        announce_registrations: true,
        ..CoordinatorConfig::default()
    };
    let specs = [BootstrapSpec { address: b2_address, peer: Some(b2) }];
    let coordinator = Coordinator::new(config, 1);
    let mut agent = NatAgent::new(start, B1, &specs, coordinator, Traversal::new(TraversalConfig::default(), 2));
    let home = Arc::new(Mutex::new(Some(b2)));
    let lookup = Arc::clone(&home);
    agent.set_directory(Box::new(move |peer| if peer == R { *lookup.lock().unwrap() } else { None }));
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), b2_address);
    actions(&mut agent);
    let announced = |actions: &[AgentAction]| {
        actions
            .iter()
            .filter(|a| matches!(a, AgentAction::Registered { .. } | AgentAction::Unregistered { .. }))
            .cloned()
            .collect::<Vec<_>>()
    };

    // R, registered at B2 (linked), comes here for a relay: its entry stays B2's.
    let remote = addr("198.18.0.107:41234");
    let opened =
        AgentEvent::SignalOpened { conn: conn(7), role: SignalRole::Coordinator, peer: Some(R), remote, rtt: RTT };
    agent.handle(start, opened);
    assert_eq!(announced(&actions(&mut agent)), [], "B2's entry for R is not overwritten");
    // It leaves: B2's entry is not deleted either.
    agent.handle(start, AgentEvent::SignalClosed { conn: conn(7) });
    assert_eq!(announced(&actions(&mut agent)), []);

    // Back here while B2 holds it; then B2 no longer does: announced from here within a second.
    agent.handle(
        start,
        AgentEvent::SignalOpened { conn: conn(8), role: SignalRole::Coordinator, peer: Some(R), remote, rtt: RTT },
    );
    assert_eq!(announced(&actions(&mut agent)), []);
    *home.lock().unwrap() = None;
    agent.handle_timeout(start + SAMPLE_INTERVAL);
    let now_here = announced(&actions(&mut agent));
    assert_eq!(now_here, [AgentAction::Registered { peer: R, observed: remote, candidates: vec![] }]);
    // From then on it is this bootstrap's, and its departure deletes it.
    agent.handle(start + SAMPLE_INTERVAL, AgentEvent::SignalClosed { conn: conn(8) });
    assert_eq!(announced(&actions(&mut agent)), [AgentAction::Unregistered { peer: R }]);
}
