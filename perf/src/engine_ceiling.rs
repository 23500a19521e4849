//! The engine ceiling: what the QUIC engine both stacks share (quinn-proto with rustls on
//! aws-lc-rs) costs when there is no I/O at all. A client and a server endpoint, with the node's
//! TLS and endpoint settings, hand each other datagrams in memory on one thread, with synthetic
//! time; each side's work is timed apart. Whatever drives quinn-proto (ant-quic's cores, quinn's
//! tokio tasks) adds its I/O on top of this, so these figures bound both stacks:
//!
//! - a full handshake (1-RTT, no resumption, then close) costs at least `client_us` on the client
//!   and `server_us` on the server, so N CPUs shared by client and server cannot pass
//!   `N / (client_us + server_us)` handshakes a second;
//! - a core cannot send faster than `send_gbps` nor receive faster than `recv_gbps`, and client
//!   and server sharing N CPUs cannot pass `N / (1/send_gbps + 1/recv_gbps)` in all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::batch::split_gro_owned;
use ant_quic::dataplane::cid::{configure_core_endpoint, CidKey};
use ant_quic::identity::Identity;
use ant_quic::quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent,
    VarInt,
};
use ant_quic::tls::{self, ALPN_ANT_QUIC};
use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};

/// The core's largest GSO send (dataplane/src/transmit.rs): 64 segments within 65 507 bytes.
const GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_507;
/// Synthetic time per hop: a loopback-like round trip.
const HOP: Duration = Duration::from_micros(25);
/// Exchanges allowed per handshake, and per MiB of transfer, before the run is declared stuck.
const STUCK_AFTER: usize = 10_000;

/// What `engine-ceiling` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineResult {
    /// Full handshakes done (each then closed and drained).
    pub handshakes: u64,
    /// Client CPU per handshake, µs.
    pub client_us: f64,
    /// Server CPU per handshake, µs.
    pub server_us: f64,
    /// Payload bytes moved on one stream, server to client.
    pub bytes: u64,
    /// Payload through the sender's work alone (write, packetise, seal, take ACKs), Gbit/s.
    pub send_gbps: f64,
    /// Payload through the receiver's work alone (split, open, deliver, read, ACK), Gbit/s.
    pub recv_gbps: f64,
    /// The cipher suite (the provider's first, which both ends of this build agree on).
    pub cipher: String,
}

impl EngineResult {
    /// The better of each figure of two runs.
    pub fn best_of(&self, other: &EngineResult) -> EngineResult {
        EngineResult {
            handshakes: self.handshakes.max(other.handshakes),
            client_us: self.client_us.min(other.client_us),
            server_us: self.server_us.min(other.server_us),
            bytes: self.bytes.max(other.bytes),
            send_gbps: self.send_gbps.max(other.send_gbps),
            recv_gbps: self.recv_gbps.max(other.recv_gbps),
            cipher: self.cipher.clone(),
        }
    }

    /// The most full handshakes a second with `cores` client cores and `cores` server cores on
    /// `cpus` CPUs: each side is bound by its own cores, both together by the CPUs.
    pub fn handshake_bound(&self, cores: usize, cpus: usize) -> f64 {
        let (cores, cpus) = (cores as f64, cpus as f64);
        (cores * 1e6 / self.client_us)
            .min(cores * 1e6 / self.server_us)
            .min(cpus * 1e6 / (self.client_us + self.server_us))
    }

    /// The most Gbit/s server to client with `cores` cores a side on `cpus` CPUs.
    pub fn throughput_bound(&self, cores: usize, cpus: usize) -> f64 {
        let (cores, cpus) = (cores as f64, cpus as f64);
        (cores * self.send_gbps).min(cores * self.recv_gbps).min(cpus / (1.0 / self.send_gbps + 1.0 / self.recv_gbps))
    }
}

/// One side of the pair and the CPU time spent on it.
struct Side {
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, Connection)>,
    addr: SocketAddr,
    busy: Duration,
    connected: bool,
}

impl Side {
    fn new(server: Option<Arc<ant_quic::quinn_proto::ServerConfig>>, port: u16) -> Self {
        let mut config = EndpointConfig::default();
        configure_core_endpoint(&mut config, 0, 1, &CidKey::random());
        Side {
            endpoint: Endpoint::new(Arc::new(config), server, true, None),
            conn: None,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            busy: Duration::ZERO,
            connected: false,
        }
    }

    /// Endpoint events, connection events (reading streams into `read`), then every datagram
    /// the connection has to send now, as GSO batches (buffer, stride).
    fn drive(&mut self, now: Instant, read: &mut u64) -> Vec<(Vec<u8>, usize)> {
        let started = Instant::now();
        let mut out = Vec::new();
        if let Some((handle, conn)) = self.conn.as_mut() {
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(reply) = self.endpoint.handle_event(*handle, event) {
                    conn.handle_event(reply);
                }
            }
            while let Some(event) = conn.poll() {
                match event {
                    Event::Connected => self.connected = true,
                    Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                        while let Some(id) = conn.streams().accept(Dir::Uni) {
                            *read += read_all(conn, id);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => *read += read_all(conn, id),
                    _ => {}
                }
            }
            let mtu = usize::from(conn.current_mtu()).max(1);
            let segments = GSO_SEGMENTS.min(MAX_GSO_BYTES / mtu).max(1);
            loop {
                let mut buf = Vec::new();
                let Some(transmit) = conn.poll_transmit(now, segments, &mut buf) else { break };
                buf.truncate(transmit.size);
                out.push((buf, transmit.segment_size.unwrap_or(transmit.size)));
            }
            if conn.is_drained() {
                self.conn = None;
            }
        }
        self.busy += started.elapsed();
        out
    }

    /// Take `batches` from `from` as the core takes a batch it copied (the portable backend's, or
    /// io_uring's below 8 KiB): one copy, split into datagrams that share it, each to the endpoint
    /// and then to its connection.
    fn receive(&mut self, now: Instant, from: SocketAddr, batches: &[(Vec<u8>, usize)]) {
        let started = Instant::now();
        let mut response = Vec::new();
        for (data, stride) in batches {
            for datagram in split_gro_owned(BytesMut::from(&data[..]), *stride) {
                match self.endpoint.handle(now, from, None, None, datagram, &mut response) {
                    Some(DatagramEvent::ConnectionEvent(_, event)) => {
                        if let Some((_, conn)) = self.conn.as_mut() {
                            conn.handle_event(event);
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        if let Ok(conn) = self.endpoint.accept(incoming, now, &mut response, None) {
                            self.conn = Some(conn);
                            self.connected = false;
                        }
                    }
                    Some(DatagramEvent::Response(_)) | None => {}
                }
                response.clear();
            }
        }
        self.busy += started.elapsed();
    }

    fn timeout(&mut self) -> Option<Instant> {
        self.conn.as_mut().and_then(|(_, c)| c.poll_timeout())
    }

    fn fire(&mut self, now: Instant) {
        let started = Instant::now();
        if let Some((_, conn)) = self.conn.as_mut() {
            conn.handle_timeout(now);
        }
        self.busy += started.elapsed();
    }
}

/// Read what has arrived on `id`; bytes read.
fn read_all(conn: &mut Connection, id: ant_quic::quinn_proto::StreamId) -> u64 {
    let mut bytes = 0;
    let mut stream = conn.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else { return 0 };
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        bytes += chunk.bytes.len() as u64;
    }
    let _ = chunks.finalize();
    bytes
}

/// A client and a server, in memory, with synthetic time.
struct Pair {
    client: Side,
    server: Side,
    now: Instant,
    read: u64,
}

impl Pair {
    /// One round: the client's datagrams reach the server, then the server's reach the client.
    /// False when neither had anything to send.
    fn exchange(&mut self) -> bool {
        let mut ignored = 0;
        self.now += HOP;
        let to_server = self.client.drive(self.now, &mut self.read);
        self.server.receive(self.now, self.client.addr, &to_server);
        self.now += HOP;
        let to_client = self.server.drive(self.now, &mut ignored);
        self.client.receive(self.now, self.server.addr, &to_client);
        !to_server.is_empty() || !to_client.is_empty()
    }

    /// Exchange until `done`, firing timers whenever both sides are quiet.
    fn run_until(&mut self, limit: usize, done: impl FnMut(&mut Pair) -> bool) -> Result<()> {
        self.run_until_within(limit, None, done)
    }

    /// As [`Pair::run_until`], never moving the clock past `horizon` to fire a timer.
    fn run_until_within(
        &mut self,
        limit: usize,
        horizon: Option<Instant>,
        mut done: impl FnMut(&mut Pair) -> bool,
    ) -> Result<()> {
        for _ in 0..limit {
            if done(self) {
                return Ok(());
            }
            if self.exchange() {
                continue;
            }
            let next = [self.client.timeout(), self.server.timeout()].into_iter().flatten().min();
            let Some(next) = next.map(|next| horizon.map_or(next, |h| next.min(h))) else {
                if done(self) {
                    return Ok(());
                }
                bail!("the exchange stalled: nothing to send and no timer set");
            };
            self.now = self.now.max(next);
            self.client.fire(self.now);
            self.server.fire(self.now);
        }
        bail!("no progress after {limit} exchanges")
    }

    /// A full handshake from a fresh client connection; returns once both sides are connected.
    fn handshake(&mut self, config: &ClientConfig) -> Result<()> {
        let started = Instant::now();
        let conn = self
            .client
            .endpoint
            .connect(self.now, config.clone(), self.server.addr, tls::default_server_name())
            .map_err(|e| anyhow!("connect: {e}"))?;
        self.client.busy += started.elapsed();
        self.client.conn = Some(conn);
        self.client.connected = false;
        self.run_until(STUCK_AFTER, |p| p.client.connected && p.server.connected).context("handshake")
    }

    /// The client closes; both sides run until their connections are drained and gone.
    fn close(&mut self) -> Result<()> {
        let started = Instant::now();
        if let Some((_, conn)) = self.client.conn.as_mut() {
            conn.close(self.now, VarInt::from_u32(0), bytes::Bytes::from_static(b"done"));
        }
        self.client.busy += started.elapsed();
        self.run_until(STUCK_AFTER, |p| p.client.conn.is_none() && p.server.conn.is_none()).context("close")
    }
}

/// `handshakes` full handshakes (each closed), then one connection moving `bytes` server → client.
pub fn run(handshakes: u64, bytes: u64) -> Result<EngineResult> {
    let identity = Identity::ephemeral().context("ephemeral identity")?;
    let server_config = Arc::new(tls::server_config(&identity, &[ALPN_ANT_QUIC])?);
    // The perf client's own settings: resumption and early data off, so each is a full handshake.
    let client_config = crate::ant_load::client_config(identity.peer_id(), false)?;
    let mut pair = Pair {
        client: Side::new(None, 40_000),
        server: Side::new(Some(server_config), 9_000),
        now: Instant::now(),
        read: 0,
    };

    // One handshake to warm caches and allocators, not counted.
    pair.handshake(&client_config)?;
    pair.close()?;
    pair.client.busy = Duration::ZERO;
    pair.server.busy = Duration::ZERO;
    for _ in 0..handshakes {
        pair.handshake(&client_config)?;
        pair.close()?;
    }
    let client_us = pair.client.busy.as_secs_f64() * 1e6 / handshakes.max(1) as f64;
    let server_us = pair.server.busy.as_secs_f64() * 1e6 / handshakes.max(1) as f64;

    pair.handshake(&client_config)?;
    // Settle MTU discovery and the like before the clock starts.
    let settle_until = pair.now + Duration::from_millis(50);
    pair.run_until_within(STUCK_AFTER, Some(settle_until), |p| p.now >= settle_until)?;
    pair.client.busy = Duration::ZERO;
    pair.server.busy = Duration::ZERO;

    let chunk = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let started = Instant::now();
    let stream = match pair.server.conn.as_mut() {
        Some((_, conn)) => conn.streams().open(Dir::Uni).ok_or_else(|| anyhow!("no stream credit"))?,
        None => bail!("the server has no connection"),
    };
    pair.server.busy += started.elapsed();
    let mut written = 0u64;
    let limit = STUCK_AFTER * (bytes as usize / (1 << 20) + 1);
    pair.run_until(limit, |p| {
        if written < bytes {
            let started = Instant::now();
            if let Some((_, conn)) = p.server.conn.as_mut() {
                let mut send = conn.send_stream(stream);
                let want = usize::try_from(bytes - written).unwrap_or(usize::MAX).min(chunk.len());
                if let Ok(n) = send.write(&chunk[..want]) {
                    written += n as u64;
                    if written >= bytes {
                        let _ = send.finish();
                    }
                }
            }
            p.server.busy += started.elapsed();
        }
        p.read >= bytes
    })?;
    let bits = (bytes * 8) as f64;
    Ok(EngineResult {
        handshakes,
        client_us,
        server_us,
        bytes,
        send_gbps: bits / pair.server.busy.as_secs_f64().max(1e-9) / 1e9,
        recv_gbps: bits / pair.client.busy.as_secs_f64().max(1e-9) / 1e9,
        cipher: tls::preferred_cipher_suite(),
    })
}

#[cfg(test)]
mod tests {
    use super::EngineResult;

    fn result(client_us: f64, server_us: f64, send_gbps: f64, recv_gbps: f64) -> EngineResult {
        EngineResult { handshakes: 1, client_us, server_us, bytes: 1, send_gbps, recv_gbps, cipher: String::new() }
    }

    #[test]
    fn bounds_take_the_tighter_of_cores_and_cpus() {
        let r = result(300.0, 200.0, 10.0, 15.0);
        // One core a side: the client's core is the limit.
        assert!((r.handshake_bound(1, 2) - 1e6 / 300.0).abs() < 1e-6);
        // Two cores a side on two CPUs: the CPUs are.
        assert!((r.handshake_bound(2, 2) - 2e6 / 500.0).abs() < 1e-6);
        assert!((r.throughput_bound(1, 2) - 10.0).abs() < 1e-9);
        assert!((r.throughput_bound(2, 2) - 2.0 / (0.1 + 1.0 / 15.0)).abs() < 1e-9);
        let best = r.best_of(&result(250.0, 260.0, 12.0, 9.0));
        assert_eq!((best.client_us, best.server_us, best.send_gbps, best.recv_gbps), (250.0, 200.0, 12.0, 15.0));
    }

    #[test]
    fn handshakes_and_moves_data() {
        let r = super::run(3, 4 << 20).unwrap();
        assert_eq!(r.handshakes, 3);
        assert!(r.client_us > 0.0 && r.server_us > 0.0, "{r:?}");
        assert!(r.send_gbps > 0.0 && r.recv_gbps > 0.0, "{r:?}");
    }
}
