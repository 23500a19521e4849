//! Fuzz target: whole datagrams into a node's packet path, as a core receives them, without
//! sockets: `datagram::classify`, then relay frames unwrapped (peer role) or forwarded
//! (bootstrap role), `cid::route` to the owning core, and the quinn-proto `Endpoint` of that core,
//! configured as a node configures it (`configure_core_endpoint`, the node's TLS server config).
//! New connections are accepted, sent a Retry, refused or ignored (chosen by the input), driven
//! (transmits, endpoint events, timers) and checked.
//!
//! Input: one flags byte (bits 0-1: what to do with new connections), then datagrams, each
//! `meta (1) | length (2, big-endian) | bytes` (the last one takes what is left): meta bits 0-1
//! choose the sender, bit 2 the receiving core.
//!
//! Oracle:
//! - nothing panics;
//! - a datagram the node does not take for QUIC (its own relay, control and probe datagrams, and
//!   garbage) never reaches an endpoint the node's way; handed to quinn-proto anyway, it is
//!   dropped without an answer, so sorting them out by their first byte loses no QUIC packet;
//! - every datagram the node sends classifies as QUIC (a peer never takes it for a relay frame
//!   or a control datagram);
//! - every long-header packet the node sends (except version negotiation) has a source
//!   connection ID that names the node's generation and the core that sent it, so the client's
//!   next packets find that core;
//! - a probe is answered only when genuine, and the answer names the core that read it;
//! - a forwarded relay frame goes to the other end of its allocation, and an allocation never
//!   carries more than its byte limit;
//! - no fuzzed input can validate an address (it would need the handshake keys or a token the
//!   node sealed), so a connection never sends more than three times what it received (RFC 9000
//!   §8.1; quinn-proto lets the datagram that crosses the limit go out whole, one datagram of
//!   `INITIAL_MTU` at most), and the node answers a datagram outside connections (version
//!   negotiation, Retry, refusal, stateless reset) with at most three times its size.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ant_quic::identity::Identity;
use ant_quic::tls::{self, ALPN_ANT_QUIC, ALPN_HQ_INTEROP};
use ant_quic_dataplane::cid::{configure_core_endpoint, route, CidKey, CidOwner, Generation, Route, CID_LEN};
use ant_quic_dataplane::datagram::{classify, DatagramKind};
use ant_quic_dataplane::probe::{self, SocketOwner, PROBE_MARKER};
use ant_quic_dataplane::quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Incoming, ServerConfig, Transmit,
};
use ant_quic_dataplane::relay::{ForwardingTable, PathTable};
use ant_quic_dataplane::{PathRoute, RelayAllocation, RelayFrameView, MAX_GSO_SEGMENTS, RELAY_HEADER_LEN};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const CORES: usize = 2;
const GENERATION: Generation = 3;
/// A relay channel allocated by this generation (the high half names it).
const CHANNEL: u32 = (GENERATION as u32) << 16 | 1;
const BYTE_LIMIT: u64 = 64 * 1024;
/// Most transmits one connection may produce per turn; far above what a handshake sends.
const MAX_TRANSMITS: usize = 256;
/// Timer expiries fired after the last datagram (retransmissions, handshake and idle timeouts).
const TIMER_ROUNDS: usize = 16;
/// quinn-proto's datagram size before path MTU discovery (which waits for a validated path).
const INITIAL_MTU: u64 = 1200;

/// The key the seeds' connection IDs and probes were made with (`fuzz/examples/make_seeds.rs`).
static KEY: LazyLock<CidKey> = LazyLock::new(|| CidKey::from_bytes(*b"ant-quic-fuzzkey"));
static SERVER: LazyLock<Arc<ServerConfig>> = LazyLock::new(|| {
    let identity = Identity::ephemeral().expect("an ephemeral identity");
    Arc::new(tls::server_config(&identity, &[ALPN_ANT_QUIC, ALPN_HQ_INTEROP]).expect("the node's server config"))
});

/// The senders: a client, the two ends of a relay allocation, and the relay of a path alias.
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)), 5000);
const END_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1000);
const END_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 2000);
const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 443);
const SENDERS: [SocketAddr; 4] = [CLIENT, END_A, END_B, RELAY];
/// A peer known by alias, reached through RELAY on CHANNEL.
const RELAYED_ALIAS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1)), 1);
/// A peer known by alias, reached directly at END_A.
const DIRECT_ALIAS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(240, 0, 0, 2)), 1);

#[derive(Clone, Copy)]
enum Admit {
    Accept,
    Retry,
    Refuse,
    Ignore,
}

struct Core {
    endpoint: Endpoint,
    conns: Vec<Option<Conn>>,
}

struct Conn {
    conn: Connection,
    /// Bytes of the datagrams handed to it, and of those it sent.
    received: u64,
    sent: u64,
}

struct Node {
    cores: Vec<Core>,
    admit: Admit,
    paths: PathTable,
    table: ForwardingTable,
    forwarded: u64,
    buf: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let start = Instant::now();
    let mut node = Node::new(flags, start);
    let mut now = start;
    while let Some((&meta, tail)) = rest.split_first() {
        let (len, tail) = match tail {
            [hi, lo, tail @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), tail),
            _ => (tail.len(), &[][..]),
        };
        let (datagram, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        now += Duration::from_millis(1);
        let sender = SENDERS[usize::from(meta & 3)];
        node.receive(now, usize::from(meta >> 2 & 1), sender, datagram);
    }
    for _ in 0..TIMER_ROUNDS {
        let Some(next) = node.next_timeout() else { break };
        now = now.max(next);
        node.fire_timers(now);
    }
});

impl Node {
    fn new(flags: u8, now: Instant) -> Self {
        let cores = (0..CORES)
            .map(|index| {
                let mut config = EndpointConfig::default();
                configure_core_endpoint(&mut config, index as u8, GENERATION, &KEY);
                let endpoint = Endpoint::new(Arc::new(config), Some(Arc::clone(&SERVER)), true, None);
                Core { endpoint, conns: Vec::new() }
            })
            .collect();
        let admit = [Admit::Accept, Admit::Retry, Admit::Refuse, Admit::Ignore][usize::from(flags & 3)];
        let mut paths = PathTable::new();
        paths.set(RELAYED_ALIAS, Some(PathRoute::Relay { relay: RELAY, channel: CHANNEL }));
        paths.set(DIRECT_ALIAS, Some(PathRoute::Direct(END_A)));
        let mut table = ForwardingTable::new();
        table.install(
            RelayAllocation {
                channel: CHANNEL + 1,
                a: END_A,
                b: END_B,
                expires: now + Duration::from_secs(60),
                byte_limit: BYTE_LIMIT,
                rate_limit: 1_000_000,
            },
            now,
        );
        Self { cores, admit, paths, table, forwarded: 0, buf: Vec::new() }
    }

    /// As the core's `handle_datagram`: sort by the first byte.
    fn receive(&mut self, now: Instant, core: usize, mut remote: SocketAddr, data: &[u8]) {
        let kind = classify(data);
        if kind != DatagramKind::Quic {
            self.check_dropped(now, core, remote, data, kind);
        }
        match kind {
            DatagramKind::Quic => {
                if let Some(alias) = self.paths.alias_for_direct(remote) {
                    remote = alias;
                }
                self.handle_quic(now, core, remote, data);
            }
            DatagramKind::Relay => self.receive_relay(now, core, remote, data),
            DatagramKind::Probe => self.answer_probe(core, data),
            // To the control thread (the signalling codecs have their own targets); or dropped.
            DatagramKind::Control | DatagramKind::NotQuic => {}
        }
    }

    /// Not QUIC to the node: quinn-proto must agree (no event, no answer).
    fn check_dropped(&mut self, now: Instant, core: usize, remote: SocketAddr, data: &[u8], kind: DatagramKind) {
        let mut response = Vec::new();
        let event = self.cores[core].endpoint.handle(now, remote, None, None, BytesMut::from(data), &mut response);
        assert!(event.is_none(), "quinn-proto took a {kind:?} datagram (first byte {:?}) for QUIC", data.first());
    }

    /// As `RelayIo::receive`: a frame from an alias's relay is unwrapped, others are forwarded.
    fn receive_relay(&mut self, now: Instant, core: usize, remote: SocketAddr, data: &[u8]) {
        let Ok(frame) = RelayFrameView::new_checked(data) else {
            assert!(data.len() < RELAY_HEADER_LEN);
            return;
        };
        if let Some(alias) = self.paths.alias_for_relay(remote, frame.channel()) {
            assert_eq!((remote, frame.channel(), alias), (RELAY, CHANNEL, RELAYED_ALIAS));
            // As `handle_from_alias`. One level only: a relay frame inside a relay frame is not
            // unwrapped again.
            match classify(frame.payload()) {
                DatagramKind::Quic => self.handle_quic(now, core, alias, frame.payload()),
                kind => self.check_dropped(now, core, alias, frame.payload(), kind),
            }
            return;
        }
        if let Ok(destination) = self.table.forward(now, remote, frame.channel(), data.len()) {
            let expected = if remote == END_A { END_B } else { END_A };
            assert!(remote == END_A || remote == END_B, "forwarded a frame from {remote}, not an end");
            assert_eq!(destination, expected, "forwarded to the wrong end");
            self.forwarded += data.len() as u64;
            assert!(self.forwarded <= BYTE_LIMIT, "an allocation carried more than its byte limit");
        }
    }

    fn answer_probe(&mut self, core: usize, data: &[u8]) {
        let owner = SocketOwner { generation: GENERATION, core: core as u8 };
        let Some(answer) = probe::answer(&KEY, data, owner) else { return };
        assert_eq!(data.len(), probe::PROBE_LEN);
        assert_eq!(answer[0], PROBE_MARKER);
        assert_eq!(classify(&answer), DatagramKind::Probe);
        assert_eq!(answer[..11], data[..11], "the answer echoes index and nonce");
        assert_eq!(answer[11..14], [GENERATION.to_be_bytes()[0], GENERATION.to_be_bytes()[1], core as u8]);
    }

    /// As the core's `handle_quic`: to the owning core, then that core's endpoint.
    fn handle_quic(&mut self, now: Instant, receiving: usize, remote: SocketAddr, data: &[u8]) {
        let core = match route(&KEY, GENERATION, data) {
            Route::OtherGeneration(generation) => {
                assert_ne!(generation, GENERATION);
                return;
            }
            // Another core's: handed over (the node's handoff queue); beyond our cores: a forged ID
            // the receiving core's endpoint rejects.
            Route::Core(owner) if owner < CORES => owner,
            Route::Core(_) | Route::Local => receiving,
        };
        let mut response = std::mem::take(&mut self.buf);
        response.clear();
        let event = self.cores[core].endpoint.handle(now, remote, None, None, BytesMut::from(data), &mut response);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(Some(state)) = self.cores[core].conns.get_mut(handle.0) {
                    state.received += data.len() as u64;
                    state.conn.handle_event(event);
                    self.drive(now, core, handle);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.admit(now, core, incoming, data.len(), &mut response),
            Some(DatagramEvent::Response(transmit)) => self.respond(core, &transmit, &response, data.len()),
            None => {}
        }
        self.buf = response;
    }

    fn admit(&mut self, now: Instant, core: usize, incoming: Incoming, len: usize, response: &mut Vec<u8>) {
        assert!(!incoming.remote_address_validated(), "a fuzzed token validated an address");
        let endpoint = &mut self.cores[core].endpoint;
        match self.admit {
            Admit::Retry if incoming.may_retry() => match endpoint.retry(incoming, response) {
                Ok(transmit) => self.respond(core, &transmit, response, len),
                Err(error) => endpoint.ignore(error.into_incoming()),
            },
            Admit::Refuse => {
                let transmit = endpoint.refuse(incoming, response);
                self.respond(core, &transmit, response, len);
            }
            Admit::Ignore => endpoint.ignore(incoming),
            Admit::Accept | Admit::Retry => match endpoint.accept(incoming, now, response, None) {
                Ok((handle, conn)) => {
                    let conns = &mut self.cores[core].conns;
                    if conns.len() <= handle.0 {
                        conns.resize_with(handle.0 + 1, || None);
                    }
                    conns[handle.0] = Some(Conn { conn, received: len as u64, sent: 0 });
                    self.drive(now, core, handle);
                }
                Err(error) => {
                    if let Some(transmit) = error.response {
                        self.respond(core, &transmit, response, len);
                    }
                }
            },
        }
    }

    /// As the core's `drive`: send what the connection has, pass events between it and the
    /// endpoint, forget it once drained.
    fn drive(&mut self, now: Instant, core: usize, handle: ConnectionHandle) {
        let mut buf = std::mem::take(&mut self.buf);
        let Core { endpoint, conns, .. } = &mut self.cores[core];
        let Some(Some(Conn { conn, received, sent })) = conns.get_mut(handle.0) else { return };
        let mut transmits = Vec::new();
        for _ in 0..MAX_TRANSMITS {
            buf.clear();
            let Some(transmit) = conn.poll_transmit(now, MAX_GSO_SEGMENTS, &mut buf) else { break };
            let bytes = buf[..transmit.size].to_vec();
            *sent += bytes.len() as u64;
            transmits.push((transmit, bytes));
        }
        assert!(
            *sent <= 3 * *received + INITIAL_MTU,
            "a connection sent {sent} bytes to an unvalidated address that sent {received}"
        );
        while let Some(event) = conn.poll_endpoint_events() {
            if let Some(event) = endpoint.handle_event(handle, event) {
                conn.handle_event(event);
            }
        }
        while conn.poll().is_some() {}
        if conn.is_drained() {
            conns[handle.0] = None;
        }
        for (transmit, bytes) in transmits {
            self.sent_by(core, &transmit, &bytes);
        }
        self.buf = buf;
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        let conns = self.cores.iter_mut().flat_map(|core| core.conns.iter_mut().flatten());
        conns.filter_map(|state| state.conn.poll_timeout()).min()
    }

    fn fire_timers(&mut self, now: Instant) {
        for core in 0..CORES {
            for index in 0..self.cores[core].conns.len() {
                let Some(Some(Conn { conn, .. })) = self.cores[core].conns.get_mut(index) else { continue };
                if conn.poll_timeout().is_some_and(|at| at <= now) {
                    conn.handle_timeout(now);
                    self.drive(now, core, ConnectionHandle(index));
                }
            }
        }
    }

    /// The endpoint's answer to a datagram of `len` bytes outside any connection.
    fn respond(&mut self, core: usize, transmit: &Transmit, bytes: &[u8], len: usize) {
        assert!(transmit.size <= 3 * len, "answered {len} bytes with {}", transmit.size);
        self.sent_by(core, transmit, bytes);
    }

    /// Check what core `core` sends: QUIC to any peer, our connection IDs.
    fn sent_by(&mut self, core: usize, transmit: &Transmit, bytes: &[u8]) {
        let bytes = &bytes[..transmit.size];
        for datagram in bytes.chunks(transmit.segment_size.unwrap_or(bytes.len()).max(1)) {
            assert_eq!(classify(datagram), DatagramKind::Quic, "the node sent a datagram a peer takes for its own");
            let first = datagram[0];
            let version = datagram.get(1..5).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            if first & 0x80 == 0 || version == Some(0) {
                continue; // short header (the peer's ID) or version negotiation (echoes the client's)
            }
            // RFC 9000 §17.2: version (4), DCID length and DCID, SCID length and SCID.
            let dcid_len = usize::from(datagram[5]);
            let scid = datagram.get(7 + dcid_len..7 + dcid_len + CID_LEN);
            assert_eq!(datagram.get(6 + dcid_len), Some(&(CID_LEN as u8)), "a long header without one of our IDs");
            assert_eq!(
                scid.and_then(|scid| KEY.owner(scid)),
                Some(CidOwner { generation: GENERATION, core }),
                "an ID that does not lead back to the core that issued it"
            );
        }
    }
}
