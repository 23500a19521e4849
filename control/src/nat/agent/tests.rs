//! The agent driven by hand in simulated time: no sockets, no threads, no clock.

use super::*;
use crate::nat::candidate::{priority, FLAG_OTHER_EDM, FLAG_RECEIVER_EIM};
use crate::nat::coordinator::CoordinatorConfig;
use crate::nat::traversal::TraversalConfig;
use crate::nat::wire::FrameReader;
use crate::nat::{Candidate, CandidateKind, PunchRole};

const ME: PeerId = PeerId([0x11; 32]);
const OTHER: PeerId = PeerId([0x22; 32]);
const RTT: Duration = Duration::from_millis(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn conn(index: usize) -> ConnId {
    ConnId { core: 0, index }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn agent_with(now: Instant, bootstraps: &[SocketAddr], traversal: TraversalConfig) -> NatAgent {
    let coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    let specs: Vec<BootstrapSpec> = bootstraps.iter().map(|&address| BootstrapSpec::unpinned(address)).collect();
    NatAgent::new(now, ME, &specs, coordinator, Traversal::new(traversal, 2))
}

fn agent(now: Instant, bootstraps: &[SocketAddr]) -> NatAgent {
    agent_with(now, bootstraps, TraversalConfig::default())
}

fn actions(agent: &mut NatAgent) -> Vec<AgentAction> {
    std::iter::from_fn(|| agent.poll_action()).collect()
}

/// The bootstraps the actions open connections to.
fn opened(actions: &[AgentAction]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| if let AgentAction::OpenBootstrap { index, .. } = a { Some(*index) } else { None })
        .collect()
}

/// The signalling messages the actions write, with their connection.
fn signals(actions: &[AgentAction]) -> Vec<(ConnId, Message)> {
    let mut out = Vec::new();
    for action in actions {
        if let AgentAction::Signal { conn, frame } = action {
            let mut reader = FrameReader::default();
            reader.push(frame);
            while let Some(message) = reader.next_message() {
                out.push((*conn, message.unwrap()));
            }
        }
    }
    out
}

fn connect_requests(actions: &[AgentAction]) -> Vec<ConnId> {
    signals(actions).into_iter().filter(|(_, m)| matches!(m, Message::ConnectRequest { .. })).map(|(c, _)| c).collect()
}

fn probes(actions: &[AgentAction]) -> Vec<(SocketAddr, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            AgentAction::SendProbe { to, datagram } => Some((*to, datagram.clone())),
            _ => None,
        })
        .collect()
}

/// Bootstrap `index` at `remote` is reached on `conn` and its signalling stream opens.
fn register(agent: &mut NatAgent, now: Instant, index: usize, c: ConnId, remote: SocketAddr) {
    agent.handle(now, AgentEvent::Connected { purpose: ConnPurpose::Bootstrap(index), conn: c, remote, rtt: RTT });
    agent.handle(now, AgentEvent::SignalOpened { conn: c, role: SignalRole::Peer, peer: None, remote, rtt: RTT });
}

fn observe(agent: &mut NatAgent, now: Instant, c: ConnId, sequence: u64, address: SocketAddr) {
    agent.handle(now, AgentEvent::Signal { conn: c, message: Message::ObservedAddress { sequence, address } });
}

#[test]
fn tags_carry_their_purpose() {
    assert_eq!(ConnPurpose::of_tag(0), None);
    assert_eq!(ConnPurpose::of_tag(7), None);
    assert_eq!(ConnPurpose::of_tag(ConnPurpose::Bootstrap(3).tag()), Some(ConnPurpose::Bootstrap(3)));
    assert_eq!(ConnPurpose::of_tag(ConnPurpose::Attempt(42).tag()), Some(ConnPurpose::Attempt(42)));
}

#[test]
fn reconnect_backoff_doubles_up_to_the_cap_and_resets_on_success() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let mut agent = agent(start, &[bootstrap]);
    agent.handle_timeout(start);
    let first = actions(&mut agent);
    assert_eq!(opened(&first), [0], "the bootstrap is connected at once");
    assert!(first.contains(&AgentAction::DiscoverHostCandidates { bootstraps: vec![bootstrap] }));

    let mut now = start;
    for delay in [1, 2, 4, 8, 16, 30, 30, 30] {
        let reason = "refused".to_owned();
        agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: None, reason });
        assert_eq!(agent.status().bootstraps[0].last_error.as_deref(), Some("refused"));
        let due = now + Duration::from_secs(delay);
        agent.handle_timeout(due - ms(1));
        assert!(opened(&actions(&mut agent)).is_empty(), "reconnected before {delay} s");
        agent.handle_timeout(due);
        assert_eq!(opened(&actions(&mut agent)), [0], "not reconnected after {delay} s");
        now = due;
    }

    // A connection that succeeds resets the delay.
    register(&mut agent, now, 0, conn(1), bootstrap);
    assert!(agent.status().bootstraps[0].registered);
    let reason = "idle timeout".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: Some(conn(1)), reason });
    assert!(!agent.status().bootstraps[0].registered);
    agent.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(opened(&actions(&mut agent)), [0]);
}

/// Registered with bootstrap 0 at `remote` on `conn(1)`, observed; then the bootstrap asks to
/// re-register within 500 ms. Returns the time the new connection is opened.
fn reregistering(agent: &mut NatAgent, start: Instant, remote: SocketAddr) -> Instant {
    agent.handle_timeout(start);
    register(agent, start, 0, conn(1), remote);
    observe(agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    actions(agent);
    agent.handle(start, AgentEvent::Signal { conn: conn(1), message: Message::Reregister { delay_ms: 500 } });
    agent.handle_timeout(start + ms(499));
    assert!(opened(&actions(agent)).is_empty(), "re-registered before the delay");
    agent.handle_timeout(start + ms(500));
    assert_eq!(opened(&actions(agent)), [0], "the new connection opens after the delay");
    start + ms(500)
}

#[test]
fn a_handover_keeps_the_old_connection_until_the_new_one_is_observed() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let mut agent = agent(start, &[bootstrap]);
    let now = reregistering(&mut agent, start, bootstrap);

    register(&mut agent, now, 0, conn(2), bootstrap);
    let before = actions(&mut agent);
    assert!(!before.iter().any(|a| matches!(a, AgentAction::Close { .. })), "closed before confirmation: {before:?}");

    observe(&mut agent, now, conn(2), 1, addr("203.0.113.1:5000"));
    let after = actions(&mut agent);
    assert!(after.contains(&AgentAction::Close { conn: conn(1), reason: "re-registered" }), "{after:?}");

    // The old connection's end is no failure; requests go through the new one.
    let reason = "closed".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: Some(conn(1)), reason });
    agent.handle(now, AgentEvent::SignalClosed { conn: conn(1) });
    assert!(agent.status().bootstraps[0].registered);
    assert_eq!(agent.status().bootstraps[0].last_error, None);
    agent.handle(now, AgentEvent::Connect { request: 1, target: OTHER });
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(2)]);
    agent.handle_timeout(now + Duration::from_secs(60));
    assert!(opened(&actions(&mut agent)).is_empty(), "no reconnect after a handover");
}

#[test]
fn a_failed_new_connection_retries_after_the_reregister_retry() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let mut agent = agent(start, &[bootstrap]);
    let now = reregistering(&mut agent, start, bootstrap);

    // Never started.
    let reason = "refused".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: None, reason });
    agent.handle_timeout(now + REREGISTER_RETRY - ms(1));
    assert!(opened(&actions(&mut agent)).is_empty());
    let now = now + REREGISTER_RETRY;
    agent.handle_timeout(now);
    assert_eq!(opened(&actions(&mut agent)), [0]);

    // Up, then lost before its OBSERVED_ADDRESS.
    register(&mut agent, now, 0, conn(2), bootstrap);
    let reason = "lost".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: Some(conn(2)), reason });
    agent.handle_timeout(now + REREGISTER_RETRY - ms(1));
    assert!(opened(&actions(&mut agent)).is_empty());
    agent.handle_timeout(now + REREGISTER_RETRY);
    assert_eq!(opened(&actions(&mut agent)), [0]);

    // Meanwhile the old connection serves on.
    assert!(agent.status().bootstraps[0].registered);
    assert_eq!(agent.status().bootstraps[0].last_error, None);
}

#[test]
fn connect_requests_wait_for_every_bootstrap_to_observe_us() {
    let start = Instant::now();
    let (first, second) = (addr("192.0.2.1:9000"), addr("192.0.2.2:9000"));
    let mut agent = agent(start, &[first, second]);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), first);
    register(&mut agent, start, 1, conn(2), second);
    observe(&mut agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    actions(&mut agent);

    agent.handle(start + ms(10), AgentEvent::Connect { request: 7, target: OTHER });
    assert!(connect_requests(&actions(&mut agent)).is_empty(), "sent before the second observation");
    observe(&mut agent, start + ms(20), conn(2), 1, addr("203.0.113.1:5000"));
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(1)], "the first bootstrap coordinates");
}

#[test]
fn connect_requests_wait_no_longer_than_the_registration_grace() {
    let start = Instant::now();
    let (first, second) = (addr("192.0.2.1:9000"), addr("192.0.2.2:9000"));
    let mut agent = agent(start, &[first, second]);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), first);
    observe(&mut agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    actions(&mut agent);

    agent.handle(start, AgentEvent::Connect { request: 7, target: OTHER });
    assert!(agent.poll_timeout() <= start + REGISTRATION_GRACE);
    agent.handle_timeout(start + REGISTRATION_GRACE - ms(1));
    assert!(connect_requests(&actions(&mut agent)).is_empty(), "sent before the grace time");
    agent.handle_timeout(start + REGISTRATION_GRACE);
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(1)]);
}

#[test]
fn a_connect_to_our_own_peer_id_is_refused() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let mut agent = agent(start, &[bootstrap]);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), bootstrap);
    observe(&mut agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    actions(&mut agent);

    agent.handle(start, AgentEvent::Connect { request: 3, target: ME });
    let answer = actions(&mut agent);
    let result = Err("that peer ID is this node's own".to_owned());
    assert_eq!(answer, [AgentAction::Reply { request: 3, result }]);
    assert!(connect_requests(&answer).is_empty());
}

#[test]
fn probes_go_out_in_paced_bursts_acks_first_and_the_outbox_is_bounded() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    // One guess batch of 5000 at half an interval: more than the outbox holds.
    let traversal = TraversalConfig {
        probe_interval: Duration::from_secs(60),
        punch_timeout: Duration::from_secs(600),
        spray_guesses: 5000,
        ..TraversalConfig::default()
    };
    let mut agent = agent_with(start, &[bootstrap], traversal);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), bootstrap);
    observe(&mut agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    let token = [7; 16];
    let other = addr("198.51.100.7:40000");
    let candidates = vec![Candidate {
        kind: CandidateKind::ServerReflexive,
        priority: priority(CandidateKind::ServerReflexive, 1),
        address: other,
    }];
    let punch = Message::PunchMeNow {
        round: 1,
        request: 1,
        peer: OTHER,
        role: PunchRole::Responder,
        flags: FLAG_RECEIVER_EIM | FLAG_OTHER_EDM,
        start_in_ms: 0,
        token,
        candidates,
    };
    agent.handle(start, AgentEvent::Signal { conn: conn(1), message: punch });
    agent.handle_timeout(start);
    actions(&mut agent);

    let guess_time = start + Duration::from_secs(30);
    let guesses = |sent: &[(SocketAddr, Vec<u8>)]| sent.iter().filter(|(to, _)| to.ip() == other.ip()).count();
    agent.handle_timeout(guess_time);
    let first = probes(&actions(&mut agent));
    assert_eq!(first.len(), PROBE_BURST, "one burst at once");
    assert_eq!(agent.poll_timeout(), guess_time + PROBE_BURST_GAP);
    agent.handle_timeout(guess_time + PROBE_BURST_GAP / 2);
    assert!(probes(&actions(&mut agent)).is_empty(), "a burst before the gap");
    agent.handle_timeout(guess_time + PROBE_BURST_GAP);
    let second = probes(&actions(&mut agent));
    assert_eq!(second.len(), PROBE_BURST);

    // A probe of the round arrives: its ack leads the next burst.
    let prober = addr("203.0.113.9:1234");
    let probe = Probe { kind: ProbeKind::Probe, token, transaction: 99 };
    let bytes = probe_datagram(&probe);
    agent.handle(guess_time + PROBE_BURST_GAP, AgentEvent::ProbeDatagram { from: prober, bytes: &bytes });
    assert!(probes(&actions(&mut agent)).is_empty(), "the ack waits for its burst");
    let mut now = guess_time + PROBE_BURST_GAP * 2;
    agent.handle_timeout(now);
    let third = probes(&actions(&mut agent));
    let ack = probe_datagram(&Probe { kind: ProbeKind::Ack { observed: prober }, token, transaction: 99 });
    assert_eq!(third.first(), Some(&(prober, ack)), "the ack goes first");
    assert_eq!(third.len(), PROBE_BURST);

    let mut sent = guesses(&first) + guesses(&second) + guesses(&third);
    for _ in 0..1000 {
        now += PROBE_BURST_GAP;
        agent.handle_timeout(now);
        let burst = probes(&actions(&mut agent));
        assert!(burst.len() <= PROBE_BURST);
        sent += guesses(&burst);
    }
    assert_eq!(sent, PROBE_OUTBOX, "5000 guesses, the outbox holds {PROBE_OUTBOX}");
}

#[test]
fn a_second_request_for_the_same_peer_takes_the_attempt_over() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let mut agent = agent(start, &[bootstrap]);
    agent.handle_timeout(start);
    register(&mut agent, start, 0, conn(1), bootstrap);
    observe(&mut agent, start, conn(1), 1, addr("203.0.113.1:5000"));
    actions(&mut agent);

    agent.handle(start, AgentEvent::Connect { request: 1, target: OTHER });
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(1)]);
    agent.handle(start, AgentEvent::Connect { request: 2, target: OTHER });
    let second = actions(&mut agent);
    assert!(second.contains(&AgentAction::Abandon { request: 1 }), "{second:?}");
    assert!(connect_requests(&second).is_empty(), "one attempt per peer");
}

/// Two bootstraps, both registered and observing us; returns the agent after the connect request
/// went to the first one (conn 1), at `start`.
fn requested_through_the_first(start: Instant) -> (NatAgent, [SocketAddr; 2]) {
    let bootstraps = [addr("192.0.2.1:9000"), addr("192.0.2.2:9000")];
    let mut agent = agent(start, &bootstraps);
    agent.handle_timeout(start);
    for (index, &bootstrap) in bootstraps.iter().enumerate() {
        register(&mut agent, start, index, conn(index + 1), bootstrap);
        observe(&mut agent, start, conn(index + 1), 1, addr("203.0.113.1:5000"));
    }
    actions(&mut agent);
    agent.handle(start, AgentEvent::Connect { request: 5, target: OTHER });
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(1)], "the first bootstrap coordinates");
    (agent, bootstraps)
}

fn replies(actions: &[AgentAction]) -> Vec<&AgentAction> {
    actions.iter().filter(|a| matches!(a, AgentAction::Reply { .. })).collect()
}

#[test]
fn a_request_the_first_bootstrap_does_not_answer_goes_to_the_next_one() {
    let start = Instant::now();
    let (mut agent, _) = requested_through_the_first(start);
    let answer_timeout = TraversalConfig::default().answer_timeout;

    agent.handle_timeout(start + answer_timeout - ms(1));
    assert!(connect_requests(&actions(&mut agent)).is_empty(), "moved on before the answer timeout");
    agent.handle_timeout(start + answer_timeout);
    let moved = actions(&mut agent);
    assert_eq!(connect_requests(&moved), [conn(2)], "{moved:?}");
    assert!(replies(&moved).is_empty(), "the caller got an answer before the second bootstrap was asked");

    // The second one coordinates: its PUNCH_ME_NOW starts the punch (a late one from the first
    // is not for this request any more).
    let request = signals(&moved)
        .into_iter()
        .find_map(|(_, m)| if let Message::ConnectRequest { request, .. } = m { Some(request) } else { None })
        .unwrap();
    let now = start + answer_timeout + ms(5);
    let candidates = vec![Candidate {
        kind: CandidateKind::ServerReflexive,
        priority: priority(CandidateKind::ServerReflexive, 1),
        address: addr("198.51.100.7:40000"),
    }];
    let punch = Message::PunchMeNow {
        round: 1,
        request,
        peer: OTHER,
        role: PunchRole::Initiator,
        flags: 0,
        start_in_ms: 0,
        token: [3; 16],
        candidates,
    };
    agent.handle(now, AgentEvent::Signal { conn: conn(2), message: punch });
    agent.handle_timeout(now);
    let punching = actions(&mut agent);
    assert!(probes(&punching).iter().any(|(to, _)| *to == addr("198.51.100.7:40000")), "{punching:?}");
}

#[test]
fn a_request_whose_bootstrap_is_lost_goes_to_the_next_one_at_once() {
    let start = Instant::now();
    let (mut agent, _) = requested_through_the_first(start);
    let now = start + ms(100);
    let reason = "idle timeout".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: Some(conn(1)), reason });
    agent.handle(now, AgentEvent::SignalClosed { conn: conn(1) });
    let moved = actions(&mut agent);
    assert_eq!(connect_requests(&moved), [conn(2)], "{moved:?}");
    assert!(replies(&moved).is_empty(), "{moved:?}");
}

#[test]
fn each_bootstrap_is_asked_once_then_the_caller_gets_the_error() {
    let start = Instant::now();
    let (mut agent, bootstraps) = requested_through_the_first(start);
    let answer_timeout = TraversalConfig::default().answer_timeout;
    agent.handle_timeout(start + answer_timeout);
    assert_eq!(connect_requests(&actions(&mut agent)), [conn(2)]);

    // The first bootstrap comes back on a new connection meanwhile: it was asked already.
    let now = start + answer_timeout + ms(10);
    let reason = "lost".to_owned();
    agent.handle(now, AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(0), conn: Some(conn(1)), reason });
    agent.handle(now, AgentEvent::SignalClosed { conn: conn(1) });
    register(&mut agent, now, 0, conn(3), bootstraps[0]);
    actions(&mut agent);

    agent.handle_timeout(start + answer_timeout * 2);
    let end = actions(&mut agent);
    assert!(connect_requests(&end).is_empty(), "asked a bootstrap twice: {end:?}");
    let result = Err("the bootstrap did not answer in time".to_owned());
    assert_eq!(replies(&end), [&AgentAction::Reply { request: 5, result }]);
}

#[test]
fn a_pinned_bootstrap_is_opened_with_its_peer_id_and_a_wrong_one_is_named() {
    let start = Instant::now();
    let bootstrap = addr("192.0.2.1:9000");
    let pin = PeerId([0x33; 32]);
    let coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    let traversal = Traversal::new(TraversalConfig::default(), 2);
    let specs = [BootstrapSpec { address: bootstrap, peer: Some(pin) }];
    let mut agent = NatAgent::new(start, ME, &specs, coordinator, traversal);
    agent.handle_timeout(start);
    let first = actions(&mut agent);
    assert!(first.contains(&AgentAction::OpenBootstrap { index: 0, remote: bootstrap, peer: Some(pin) }), "{first:?}");
    assert_eq!(agent.status().bootstraps[0].peer, Some(pin));

    let reason = "the cryptographic handshake failed: error 49: invalid peer certificate".to_owned();
    agent.handle(start, AgentEvent::BootstrapWrongPeer { index: 0, conn: Some(conn(1)), reason });
    let status = &agent.status().bootstraps[0];
    assert!(status.wrong_peer && !status.registered);
    let expected = format!("the bootstrap at 192.0.2.1:9000 is not peer {pin}");
    assert_eq!(status.last_error.as_deref(), Some(expected.as_str()));

    // Tried again as after any failure; a connection that proves the pin clears it.
    agent.handle_timeout(start + FIRST_RECONNECT_DELAY);
    assert_eq!(opened(&actions(&mut agent)), [0]);
    register(&mut agent, start + FIRST_RECONNECT_DELAY, 0, conn(2), bootstrap);
    let status = &agent.status().bootstraps[0];
    assert!(!status.wrong_peer && status.last_error.is_none());
}

mod across;
