//! An in-memory NAT world for tests and benches: one bootstrap's coordinator (or two), peers
//! running a [`Traversal`] behind simulated NATs (RFC 4787 mapping and filtering), signalling
//! with per-peer latency, probes with latency, loss and lateness, all in simulated time.
//!
//! Compiled for this crate's tests and with the `sim` feature (benches); not part of a node.

// A fixture: a simulation that goes wrong stops the test or bench that runs it.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig, SessionId, SplitMix64};
use super::message::Message;
use super::probe::{Probe, ProbeKind};
use super::traversal::{AttemptId, Traversal, TraversalAction, TraversalConfig, TraversalEvent};
use super::Outcome;
use crate::PeerId;

/// The bootstrap every peer registers with and connects through.
pub const BOOTSTRAP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 443));
/// The second bootstrap of worlds that have one.
/// The first bootstrap's alternate port (see [`World::with_alternate_port`]).
pub const BOOTSTRAP_ALTERNATE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 444));
pub const SECOND_BOOTSTRAP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 443));

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// RFC 4787 behaviours, as `/work/shared/natlab.md` builds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping, address-and-port-dependent filtering.
    Symmetric,
}

/// An inside socket of a peer: 0 is the node socket, others are extra (spray) sockets.
pub type Socket = u32;

/// A NAT in front of one peer: one public IP, mappings from inside sockets to public ports, and
/// the filter state that outgoing datagrams open.
#[derive(Debug)]
pub struct Nat {
    /// How it maps and filters (a test may change it mid-run).
    pub kind: NatKind,
    /// Its public IP.
    pub public: Ipv4Addr,
    /// The public port of the node socket's first mapping (cones: of socket 0; socket `i` maps to
    /// `base_port + i`).
    pub base_port: u16,
    /// Symmetric: (inside socket, destination) → public port, taken at random.
    pub mappings: HashMap<(Socket, SocketAddr), u16>,
    /// Public port → the inside socket it maps to.
    owners: HashMap<u16, Socket>,
    random: SplitMix64,
    /// (public port, destination) pairs the inside host has sent to.
    sent: HashSet<(u16, SocketAddr)>,
    /// Public ports that sent anything (full cone filtering).
    used: HashSet<u16>,
}

impl Nat {
    fn new(kind: NatKind, public: Ipv4Addr, seed: u64) -> Self {
        Self {
            kind,
            public,
            base_port: 40000,
            mappings: HashMap::new(),
            owners: HashMap::new(),
            random: SplitMix64::new(seed),
            sent: HashSet::new(),
            used: HashSet::new(),
        }
    }

    fn port_for(&mut self, socket: Socket, to: SocketAddr) -> u16 {
        let port = match self.kind {
            // One mapping per inside socket, whatever the destination.
            NatKind::FullCone | NatKind::PortRestricted => self.base_port.wrapping_add(socket as u16),
            NatKind::Symmetric => {
                if let Some(port) = self.mappings.get(&(socket, to)) {
                    return *port;
                }
                // The node socket's first destination (the bootstrap) gets the base port, so that
                // turning the NAT into a cone keeps the observed address; every other mapping
                // takes a free random port (`masquerade random`).
                let port = if self.mappings.is_empty() && socket == 0 {
                    self.base_port
                } else {
                    loop {
                        let port = 1024 + (self.random.next_u64() % 64512) as u16;
                        if port != self.base_port && !self.owners.contains_key(&port) {
                            break port;
                        }
                    }
                };
                self.mappings.insert((socket, to), port);
                port
            }
        };
        self.owners.insert(port, socket);
        port
    }

    /// An outgoing datagram from inside `socket` to `to`: its public source, and the filter
    /// state it opens.
    fn outbound(&mut self, socket: Socket, to: SocketAddr) -> SocketAddr {
        let port = self.port_for(socket, to);
        self.sent.insert((port, to));
        self.used.insert(port);
        SocketAddr::new(self.public.into(), port)
    }

    /// The inside socket a datagram from `from` to public `port` reaches, if it gets in.
    fn inbound(&self, from: SocketAddr, port: u16) -> Option<Socket> {
        let allowed = match self.kind {
            NatKind::FullCone => self.used.contains(&port),
            NatKind::PortRestricted | NatKind::Symmetric => self.sent.contains(&(port, from)),
        };
        allowed.then(|| self.owners.get(&port).copied()).flatten()
    }
}

/// The extra sockets of one many-probe round on a node.
#[derive(Debug)]
pub struct SpraySet {
    /// The inside socket of index 0.
    pub first: Socket,
    /// How many were opened.
    pub count: u16,
    /// The index of the socket kept (SprayKeep).
    pub kept: Option<u16>,
    /// Closed (SprayClose).
    pub closed: bool,
}

impl SpraySet {
    /// Whether the set's socket `index` is open.
    fn open(&self, index: u16) -> bool {
        index < self.count && !self.closed && self.kept.is_none_or(|k| k == index)
    }
}

/// A peer: its traversal, its NAT, and a record of what the traversal did.
#[derive(Debug)]
pub struct Node {
    /// Its identity.
    pub id: PeerId,
    /// The state machine under test.
    pub traversal: Traversal,
    /// The NAT in front of it.
    pub nat: Nat,
    /// The node socket's private address (its host candidate).
    pub inner: SocketAddr,
    /// The current session with the first bootstrap.
    pub session: SessionId,
    /// One-way signalling latency to the bootstrap.
    pub one_way: Duration,
    /// Extra delay of every PUNCH_ME_NOW to this node.
    pub punch_delay: Duration,
    /// Every event the traversal reported.
    pub events: Vec<TraversalEvent>,
    /// Every signalling message it received.
    pub signals_received: Vec<Message>,
    /// Where its node socket sent probes and acks.
    pub probes_to: Vec<SocketAddr>,
    /// When it sent its first probe (acks not counted).
    pub first_probe: Option<Instant>,
    /// ConnectDirect addresses.
    pub connects_direct: Vec<SocketAddr>,
    /// InstallRelayPath actions: (peer, alias, relay, channel).
    pub relay_paths: Vec<(PeerId, SocketAddr, SocketAddr, u32)>,
    /// SetPathDirect and SetPathBridged actions: (alias, address).
    pub direct_paths: Vec<(SocketAddr, SocketAddr)>,
    /// RemovePath aliases.
    pub removed_paths: Vec<SocketAddr>,
    /// The session with the second bootstrap, if the world has one.
    pub second_session: Option<SessionId>,
    /// The extra sockets of each many-probe round, by token.
    pub sprays: HashMap<[u8; 16], SpraySet>,
    next_socket: Socket,
    /// SprayKeep actions: (token, socket, remote).
    pub kept: Vec<([u8; 16], u16, SocketAddr)>,
    /// ConnectBridged remotes.
    pub connects_bridged: Vec<SocketAddr>,
    /// SetPathBridged actions: (alias, address).
    pub bridged_paths: Vec<(SocketAddr, SocketAddr)>,
}

/// A [`TraversalEvent::AttemptFinished`], unpacked.
#[derive(Debug)]
pub struct Finished {
    /// The attempt.
    pub attempt: AttemptId,
    /// How it ended.
    pub outcome: Outcome,
    /// Where it connected.
    pub remote: Option<SocketAddr>,
    /// How long it took.
    pub connect: Duration,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Something in flight, due at its key in [`World`]'s queue.
#[derive(Debug)]
enum Delivery {
    ToCoordinator { session: SessionId, message: Message },
    ToNode { node: usize, session: SessionId, message: Message },
    Datagram { from: SocketAddr, to: SocketAddr, probe: Probe },
    DirectResult { node: usize, attempt: AttemptId, address: SocketAddr, socket: Socket },
    RelayedResult { node: usize, attempt: AttemptId, peer: PeerId },
}

/// The network: bootstraps, nodes, and what is in flight between them.
#[derive(Debug)]
pub struct World {
    /// Simulated time.
    pub now: Instant,
    /// The bootstrap at [`BOOTSTRAP`].
    pub coordinator: Coordinator,
    /// The bootstrap at [`SECOND_BOOTSTRAP`], if any: peers register with both and connect through the first.
    pub second: Option<Coordinator>,
    /// The peers, in the order they were added.
    pub nodes: Vec<Node>,
    /// Session → (node, whether it is with the second bootstrap).
    sessions: HashMap<SessionId, (usize, bool)>,
    next_session: SessionId,
    queue: BTreeMap<(Instant, u64), Delivery>,
    sequence: u64,
    random: SplitMix64,
    traversal: TraversalConfig,
    /// Share of probe datagrams lost.
    pub loss: f64,
    /// Share of probe datagrams delayed by `late_by` more.
    pub late: f64,
    /// How much later a late probe arrives. Default 80 ms.
    pub late_by: Duration,
    /// One-way delay of a datagram between peers. Default 15 ms.
    pub p2p_latency: Duration,
    /// Probe datagrams lost so far.
    pub dropped: u64,
    /// The relays the first bootstrap installed: channel → the two ends.
    pub relays: BTreeMap<u32, (SocketAddr, SocketAddr)>,
}

impl World {
    /// A world with one bootstrap of default configuration and no peers; peers traverse with the
    /// default configuration.
    pub fn new(seed: u64) -> Self {
        Self::with(seed, CoordinatorConfig::default(), TraversalConfig::default())
    }

    /// [`World::new`] with the given configurations.
    pub fn with(seed: u64, coordinator: CoordinatorConfig, traversal: TraversalConfig) -> Self {
        Self {
            now: Instant::now(),
            coordinator: Coordinator::new(coordinator, seed),
            second: None,
            nodes: Vec::new(),
            sessions: HashMap::new(),
            next_session: 1,
            queue: BTreeMap::new(),
            sequence: 0,
            random: SplitMix64::new(seed ^ 0x5eed),
            traversal,
            loss: 0.0,
            late: 0.0,
            late_by: ms(80),
            p2p_latency: ms(15),
            dropped: 0,
            relays: BTreeMap::new(),
        }
    }

    /// A world whose peers also register with a second bootstrap, so that the bootstraps can
    /// tell endpoint-dependent mapping from endpoint-independent.
    pub fn with_second_bootstrap(mut self) -> Self {
        let seed = self.random.next_u64();
        self.second = Some(Coordinator::new(CoordinatorConfig::default(), seed));
        self
    }

    /// A world whose (first) bootstrap answers mapping discovery on [`BOOTSTRAP_ALTERNATE`]
    /// and names it to every peer that registers (as the unspecified IP: the one they reached).
    pub fn with_alternate_port(mut self) -> Self {
        let seed = self.random.next_u64();
        let other = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), BOOTSTRAP_ALTERNATE.port());
        let config = CoordinatorConfig { other_addresses: vec![other], ..CoordinatorConfig::default() };
        self.coordinator = Coordinator::new(config, seed);
        self
    }

    /// A peer behind a NAT of `kind`, registered with the bootstrap (both, if there are two).
    pub fn add_node(&mut self, kind: NatKind, one_way: Duration) -> usize {
        let index = self.nodes.len();
        let octet = u8::try_from(index).unwrap();
        let seed = self.random.next_u64();
        let mut node = Node {
            id: PeerId([octet + 1; 32]),
            traversal: Traversal::new(self.traversal.clone(), seed),
            nat: Nat::new(kind, Ipv4Addr::new(198, 18, 0, 10 + octet), seed ^ 0x4a7),
            inner: SocketAddr::new(Ipv4Addr::new(10, octet, 0, 2).into(), 5000),
            session: 0,
            one_way,
            punch_delay: Duration::ZERO,
            events: Vec::new(),
            signals_received: Vec::new(),
            probes_to: Vec::new(),
            first_probe: None,
            connects_direct: Vec::new(),
            relay_paths: Vec::new(),
            direct_paths: Vec::new(),
            removed_paths: Vec::new(),
            second_session: None,
            sprays: HashMap::new(),
            next_socket: 1,
            kept: Vec::new(),
            connects_bridged: Vec::new(),
            bridged_paths: Vec::new(),
        };
        node.traversal.set_host_candidates(self.now, vec![node.inner]);
        self.nodes.push(node);
        self.open_session(index);
        if self.second.is_some() {
            let session = self.next_session;
            self.next_session += 1;
            self.sessions.insert(session, (index, true));
            let n = &mut self.nodes[index];
            n.second_session = Some(session);
            let observed = n.nat.outbound(0, SECOND_BOOTSTRAP);
            if let Some(second) = self.second.as_mut() {
                second.session_opened(self.now, session, Some(n.id), observed, 2 * n.one_way);
            }
            n.traversal.bootstrap_connected(self.now, session, SECOND_BOOTSTRAP);
        }
        index
    }

    /// Opens a (new) signalling session for `node`, as a new connection to the bootstrap does.
    pub fn open_session(&mut self, node: usize) -> SessionId {
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.insert(session, (node, false));
        let n = &mut self.nodes[node];
        n.session = session;
        let observed = n.nat.outbound(0, BOOTSTRAP);
        self.coordinator.session_opened(self.now, session, Some(n.id), observed, 2 * n.one_way);
        n.traversal.bootstrap_connected(self.now, session, BOOTSTRAP);
        session
    }

    /// Where the first bootstrap sees `node`: its NAT's mapping of the node socket.
    pub fn observed(&self, node: usize) -> SocketAddr {
        let nat = &self.nodes[node].nat;
        let port = match nat.kind {
            NatKind::Symmetric => nat.mappings.get(&(0, BOOTSTRAP)).copied().unwrap_or(nat.base_port),
            _ => nat.base_port,
        };
        SocketAddr::new(nat.public.into(), port)
    }

    fn schedule(&mut self, at: Instant, delivery: Delivery) {
        self.sequence += 1;
        self.queue.insert((at, self.sequence), delivery);
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.random.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    /// Carries out every pending action and collects every event.
    pub fn pump(&mut self) {
        let now = self.now;
        // The second bootstrap only signals: connections go through the first.
        while let Some(action) = self.second.as_mut().and_then(Coordinator::poll_action) {
            if let CoordinatorAction::Send { session, message } = action {
                let Some(&(node, _)) = self.sessions.get(&session) else { continue };
                let at = now + self.nodes[node].one_way;
                self.schedule(at, Delivery::ToNode { node, session, message });
            }
        }
        while let Some(action) = self.coordinator.poll_action() {
            match action {
                CoordinatorAction::Send { session, message } => {
                    let Some(&(node, _)) = self.sessions.get(&session) else { continue };
                    let mut delay = self.nodes[node].one_way;
                    if matches!(message, Message::PunchMeNow { .. }) {
                        delay += self.nodes[node].punch_delay;
                    }
                    self.schedule(now + delay, Delivery::ToNode { node, session, message });
                }
                CoordinatorAction::InstallRelay { channel, a, b, .. } => {
                    self.relays.insert(channel, (a, b));
                }
                CoordinatorAction::RemoveRelay { channel } => {
                    self.relays.remove(&channel);
                }
                // One bootstrap: nothing is shared or forwarded.
                CoordinatorAction::Registered { .. }
                | CoordinatorAction::Unregistered { .. }
                | CoordinatorAction::Forward { .. }
                | CoordinatorAction::RelayAcross { .. }
                | CoordinatorAction::Forwarded { .. } => {}
            }
        }
        for index in 0..self.nodes.len() {
            while let Some(action) = self.nodes[index].traversal.poll_action() {
                self.carry_out(index, action);
            }
            while let Some(event) = self.nodes[index].traversal.poll_event() {
                self.nodes[index].events.push(event);
            }
        }
    }

    fn carry_out(&mut self, index: usize, action: TraversalAction) {
        let now = self.now;
        let node = &mut self.nodes[index];
        match action {
            TraversalAction::Signal { session, message } => {
                let at = now + node.one_way;
                self.schedule(at, Delivery::ToCoordinator { session, message });
            }
            TraversalAction::SendProbe { to, probe } => {
                if probe.kind == ProbeKind::Probe {
                    node.first_probe.get_or_insert(now);
                }
                node.probes_to.push(to);
                let from = node.nat.outbound(0, to);
                self.send_datagram(from, to, probe);
            }
            TraversalAction::ConnectDirect { attempt, address, .. } => {
                node.connects_direct.push(address);
                let result = Delivery::DirectResult { node: index, attempt, address, socket: 0 };
                self.schedule(now + 2 * self.p2p_latency, result);
            }
            TraversalAction::InstallRelayPath { peer, alias, relay, channel } => {
                node.relay_paths.push((peer, alias, relay, channel));
            }
            TraversalAction::ConnectRelayed { attempt, peer, .. } => {
                let at = now + 4 * node.one_way + ms(200);
                self.schedule(at, Delivery::RelayedResult { node: index, attempt, peer });
            }
            TraversalAction::SetPathDirect { alias, address } => node.direct_paths.push((alias, address)),
            TraversalAction::RemovePath { alias } => node.removed_paths.push(alias),
            // One bootstrap: no RELAY_AT names another.
            TraversalAction::VisitBootstrap { .. } => {}
            TraversalAction::SprayOpen { token, sockets } => {
                let first = node.next_socket;
                node.next_socket += Socket::from(sockets);
                assert!(
                    node.sprays.insert(token, SpraySet { first, count: sockets, kept: None, closed: false }).is_none(),
                    "a round opens its sockets once"
                );
            }
            TraversalAction::SprayProbe { token, to, first_transaction } => {
                let set = node.sprays.get(&token).expect("probes from sockets that were opened");
                let open: Vec<u16> = (0..set.count).filter(|&i| set.open(i)).collect();
                let first = set.first;
                let mut datagrams = Vec::with_capacity(open.len());
                for index in open {
                    let from = node.nat.outbound(first + Socket::from(index), to);
                    let transaction = first_transaction.wrapping_add(u64::from(index));
                    datagrams.push((from, Probe { kind: ProbeKind::Probe, token, transaction }));
                }
                for (from, probe) in datagrams {
                    self.send_datagram(from, to, probe);
                }
            }
            TraversalAction::SprayAck { token, socket, to, probe } => {
                let set = node.sprays.get(&token).expect("acks from sockets that were opened");
                assert!(set.open(socket), "an ack from a closed socket");
                let from = node.nat.outbound(set.first + Socket::from(socket), to);
                self.send_datagram(from, to, probe);
            }
            TraversalAction::SprayKeep { token, socket, remote } => {
                let set = node.sprays.get_mut(&token).expect("keeps a socket that was opened");
                assert!(set.open(socket) && set.kept.is_none(), "keeps one open socket, once");
                set.kept = Some(socket);
                node.kept.push((token, socket, remote));
            }
            TraversalAction::SprayClose { token } => {
                let set = node.sprays.get_mut(&token).expect("closes sockets that were opened");
                assert!(!set.closed && set.kept.is_none(), "closes once, and never a kept socket");
                set.closed = true;
            }
            TraversalAction::ConnectBridged { attempt, token, remote, .. } => {
                let set = node.sprays.get(&token).expect("a bridge over an opened socket");
                let socket = set.first + Socket::from(set.kept.expect("the bridge's socket was kept"));
                node.connects_bridged.push(remote);
                let result = Delivery::DirectResult { node: index, attempt, address: remote, socket };
                self.schedule(now + 2 * self.p2p_latency, result);
            }
            TraversalAction::SetPathBridged { alias, token, address } => {
                assert!(node.sprays.get(&token).is_some_and(|s| s.kept.is_some()), "a bridge needs a kept socket");
                node.bridged_paths.push((alias, address));
                node.direct_paths.push((alias, address));
            }
        }
    }

    /// A probe datagram on the network: lost, late or on time.
    fn send_datagram(&mut self, from: SocketAddr, to: SocketAddr, probe: Probe) {
        if self.chance(self.loss) {
            self.dropped += 1;
            return;
        }
        let late = if self.chance(self.late) { self.late_by } else { Duration::ZERO };
        self.schedule(self.now + self.p2p_latency + late, Delivery::Datagram { from, to, probe });
    }

    fn node_at(&self, ip: IpAddr) -> Option<usize> {
        self.nodes.iter().position(|n| IpAddr::from(n.nat.public) == ip)
    }

    /// Whether inside `socket` of `node` is open: the node socket, or an open extra socket.
    fn socket_open(&self, node: usize, socket: Socket) -> Option<([u8; 16], u16)> {
        if socket == 0 {
            return Some(([0; 16], 0));
        }
        self.nodes[node].sprays.iter().find_map(|(token, set)| {
            let index = u16::try_from(socket.checked_sub(set.first)?).ok()?;
            set.open(index).then_some((*token, index))
        })
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.now;
        match delivery {
            Delivery::ToCoordinator { session, message } => match self.sessions.get(&session) {
                Some((_, true)) => {
                    if let Some(second) = self.second.as_mut() {
                        second.handle(now, session, message);
                    }
                }
                _ => self.coordinator.handle(now, session, message),
            },
            Delivery::ToNode { node, session, message } => {
                self.nodes[node].signals_received.push(message.clone());
                self.nodes[node].traversal.handle_signal(now, session, message);
            }
            Delivery::Datagram { from, to, probe } => {
                if to == BOOTSTRAP_ALTERNATE {
                    if probe.kind == ProbeKind::Discover {
                        let answer = Probe { kind: ProbeKind::Discovered { observed: from }, ..probe };
                        self.send_datagram(to, from, answer);
                    }
                    return;
                }
                let Some(node) = self.node_at(to.ip()) else { return };
                let Some(socket) = self.nodes[node].nat.inbound(from, to.port()) else { return };
                match self.socket_open(node, socket) {
                    Some((_, _)) if socket == 0 => self.nodes[node].traversal.handle_probe(now, from, probe),
                    Some((token, index)) => {
                        self.nodes[node].traversal.handle_spray_probe(now, token, index, from, probe);
                    }
                    None => {}
                }
            }
            Delivery::DirectResult { node, attempt, address, socket } => {
                // A QUIC handshake needs both directions: our packets in through their NAT to a
                // socket that is open, their answers back from the address we sent to, in
                // through ours.
                let source = self.nodes[node].nat.outbound(socket, address);
                let connected = self.node_at(address.ip()).is_some_and(|other| {
                    let Some(theirs) = self.nodes[other].nat.inbound(source, address.port()) else { return false };
                    if self.socket_open(other, theirs).is_none() {
                        return false;
                    }
                    let reply = self.nodes[other].nat.outbound(theirs, source);
                    reply == address && self.nodes[node].nat.inbound(reply, source.port()) == Some(socket)
                });
                self.nodes[node].traversal.connection_result(now, attempt, connected);
            }
            Delivery::RelayedResult { node, attempt, peer } => {
                let connected = self.relay_works(node, peer);
                self.nodes[node].traversal.connection_result(now, attempt, connected);
            }
        }
    }

    /// Both ends installed a path on one channel, and the bootstrap relays that channel between
    /// their observed addresses.
    pub fn relay_works(&self, node: usize, peer: PeerId) -> bool {
        let Some(other) = self.nodes.iter().position(|n| n.id == peer) else { return false };
        let me = self.nodes[node].id;
        let mine = self.nodes[node].relay_paths.iter().rev().find(|p| p.0 == peer).map(|p| p.3);
        let theirs = self.nodes[other].relay_paths.iter().rev().find(|p| p.0 == me).map(|p| p.3);
        let ends = [self.observed(node), self.observed(other)];
        match (mine, theirs) {
            (Some(c), Some(d)) if c == d => {
                self.relays.get(&c).is_some_and(|(a, b)| [*a, *b] == ends || [*b, *a] == ends)
            }
            _ => false,
        }
    }

    fn next_instant(&self) -> Option<Instant> {
        let queued = self.queue.keys().next().map(|(at, _)| *at);
        let nodes = self.nodes.iter().filter_map(|n| n.traversal.poll_timeout());
        let second = self.second.as_ref().and_then(Coordinator::poll_timeout);
        queued.into_iter().chain(self.coordinator.poll_timeout()).chain(second).chain(nodes).min()
    }

    /// Runs until `done` holds (true) or `limit` of simulated time passed (false).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
        let deadline = self.now + limit;
        for _ in 0..1_000_000 {
            self.pump();
            if done(self) {
                return true;
            }
            match self.next_instant() {
                Some(next) if next <= deadline => self.now = self.now.max(next),
                _ => {
                    self.now = deadline;
                    return false;
                }
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery);
                self.pump();
            }
            let now = self.now;
            if let Some(second) = self.second.as_mut().filter(|c| c.poll_timeout().is_some_and(|t| t <= now)) {
                second.handle_timeout(now);
            }
            if self.coordinator.poll_timeout().is_some_and(|t| t <= now) {
                self.coordinator.handle_timeout(now);
            }
            for node in &mut self.nodes {
                if node.traversal.poll_timeout().is_some_and(|t| t <= now) {
                    node.traversal.handle_timeout(now);
                }
            }
        }
        panic!("the simulation does not settle");
    }

    /// Runs `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// The attempts of `node` that ended, in order.
    pub fn finished(&self, node: usize) -> Vec<Finished> {
        self.nodes[node]
            .events
            .iter()
            .filter_map(|e| match e {
                TraversalEvent::AttemptFinished { attempt, outcome, remote, connect, reason, .. } => Some(Finished {
                    attempt: *attempt,
                    outcome: *outcome,
                    remote: *remote,
                    connect: *connect,
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// `from` connects to `to`; waits for the attempt to end and returns how.
    pub fn connect(&mut self, from: usize, to: PeerId) -> (Outcome, Option<SocketAddr>, Duration, Option<String>) {
        let attempt = self.nodes[from].traversal.connect(self.now, to).unwrap();
        let ended = |w: &World| w.finished(from).iter().any(|f| f.attempt == attempt);
        assert!(self.run_until(Duration::from_secs(30), ended), "attempt {attempt} never ended");
        let Finished { outcome, remote, connect, reason, .. } =
            self.finished(from).into_iter().find(|f| f.attempt == attempt).unwrap();
        (outcome, remote, connect, reason)
    }
}
