//! A fault-injecting UDP proxy on loopback, in the test process: the network faults of the QUIC
//! interop runner (loss, corruption, a blackhole, NAT rebinding) between a client and a server.
//!
//! The client sends to [`FaultProxy::front`]; the proxy forwards each client (source address) from
//! its own upstream socket to the server and the server's answers back, as a NAT does. What
//! happens to each datagram is decided by a declarative [`FaultPlan`]: per direction a drop rate,
//! a corruption rate, "drop the first N" and "only long-header (handshake) datagrams"; for both
//! directions a blackhole window and rebinding. Loss and corruption come from a seeded generator
//! (splitmix64, one per direction), so a failure replays with the same seed; the interleaving of
//! the two directions and the time-based faults depend on timing and do not.
//!
//! Corruption XORs one byte with a non-zero random value; the byte is chosen uniformly from the
//! second half of the datagram, which always lies in the protected part of a QUIC packet (header
//! protection and AEAD): the receiver must discard the packet, never misread it.
//!
//! Rebinding gives a client a fresh upstream socket: a new source port, and with
//! [`Rebind::address`] a new source address too, 127.0.0.2, then 127.0.0.3 and so on. Linux
//! answers all of 127.0.0.0/8 on the loopback interface, so these are real second addresses
//! without a network namespace. Datagrams the server still sends to an earlier socket are counted
//! and lost, as behind a NAT that forgot the old mapping.
//!
//! [`Counters`] say what happened, so a test can prove its fault was applied.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What happens to the datagrams of one direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectionPlan {
    /// Share of datagrams dropped, per mille.
    pub drop_per_mille: u64,
    /// Share of datagrams corrupted (one byte flipped, see the module doc), per mille.
    pub corrupt_per_mille: u64,
    /// Drop the first N datagrams of this direction, whatever else the plan says.
    pub drop_first: u64,
    /// Apply `drop_per_mille` and `corrupt_per_mille` only to datagrams that start with a
    /// long-header packet (Initial, 0-RTT, Handshake, Retry).
    pub long_header_only: bool,
}

/// When a blackhole starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// Once the proxy has received this many datagrams (both directions together).
    AfterDatagrams(u64),
    /// Once the proxy has received this many datagrams from the server: with 1, right after the
    /// client's first flight, however many datagrams that took.
    AfterServerDatagrams(u64),
    /// This long after the first datagram.
    At(Duration),
}

/// A window in which every datagram of the chosen directions is dropped.
#[derive(Clone, Copy, Debug)]
pub struct Blackhole {
    pub start: Start,
    pub duration: Duration,
    pub to_server: bool,
    pub to_client: bool,
}

/// How often a client's mapping moves.
#[derive(Clone, Copy, Debug)]
pub enum Every {
    /// This long after the client's first datagram or its last rebind.
    Time(Duration),
    /// After this many datagrams from the server to the client since the last rebind.
    Datagrams(u64),
}

/// NAT rebinding: the client's upstream socket is replaced.
#[derive(Clone, Copy, Debug)]
pub struct Rebind {
    pub every: Every,
    /// Also move to a new source address (127.0.0.2, 127.0.0.3, ...), not only a new port.
    pub address: bool,
}

/// The whole plan of a proxy.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultPlan {
    pub seed: u64,
    pub to_server: DirectionPlan,
    pub to_client: DirectionPlan,
    pub blackhole: Option<Blackhole>,
    pub rebind: Option<Rebind>,
}

/// Counters of one direction.
#[derive(Default)]
struct DirectionCounters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// Dropped because of the blackhole (included in `dropped`).
    blackholed: AtomicU64,
    corrupted: AtomicU64,
    bytes: AtomicU64,
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionCount {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionCount {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            dropped: get(&self.dropped),
            blackholed: get(&self.blackholed),
            corrupted: get(&self.corrupted),
            bytes: get(&self.bytes),
        }
    }
}

#[derive(Default)]
struct SharedCounters {
    to_server: DirectionCounters,
    to_client: DirectionCounters,
    clients: AtomicU64,
    rebinds: AtomicU64,
    retries: AtomicU64,
    to_stale_socket: AtomicU64,
    /// Set when the first client datagram holding a Handshake packet is forwarded: from then on
    /// the server has its proof that the client owns its address (RFC 9000 §8.1).
    handshake_forwarded: AtomicBool,
    client_bytes_before_handshake: AtomicU64,
    server_bytes_before_handshake: AtomicU64,
}

/// One direction's counts (a snapshot).
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectionCount {
    pub received: u64,
    /// Forwarded, intact or corrupted.
    pub forwarded: u64,
    pub dropped: u64,
    pub blackholed: u64,
    pub corrupted: u64,
    /// Bytes forwarded.
    pub bytes: u64,
}

/// What the proxy did so far (a snapshot).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub to_server: DirectionCount,
    pub to_client: DirectionCount,
    /// Distinct client source addresses seen.
    pub clients: u64,
    pub rebinds: u64,
    /// Retry packets (QUIC v1 long header, type 3) from the server.
    pub retries: u64,
    /// Datagrams the server sent to an upstream socket that a rebind had replaced.
    pub to_stale_socket: u64,
    /// Bytes forwarded from the client to the server before the datagram that carried the
    /// client's first Handshake packet (all clients together: meaningful with one client).
    pub client_bytes_before_handshake: u64,
    /// Bytes the server sent towards the client before the client's first Handshake packet was
    /// forwarded, i.e. before the server could have validated the client's address.
    pub server_bytes_before_handshake: u64,
}

/// splitmix64: a small seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.next() % 1000 < per_mille
    }
}

/// The types of the QUIC v1 long-header packets coalesced at the start of `datagram` (0 Initial,
/// 1 0-RTT, 2 Handshake, 3 Retry); stops at a short header or at anything it cannot parse.
pub fn long_header_types(mut datagram: &[u8]) -> Vec<u8> {
    fn varint(d: &[u8], at: usize) -> Option<(u64, usize)> {
        let first = *d.get(at)?;
        let len = 1usize << (first >> 6);
        let bytes = d.get(at..at + len)?;
        let value = bytes[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
        Some((value, at + len))
    }
    let mut types = Vec::new();
    while datagram.len() >= 7 && datagram[0] & 0x80 != 0 {
        if datagram[1..5] != [0, 0, 0, 1] {
            break;
        }
        let kind = (datagram[0] >> 4) & 0x3;
        types.push(kind);
        if kind == 3 {
            break;
        }
        let next = (|| {
            let mut at = 6 + usize::from(datagram[5]);
            at += 1 + usize::from(*datagram.get(at)?);
            if kind == 0 {
                let (token, after) = varint(datagram, at)?;
                at = after + usize::try_from(token).ok()?;
            }
            let (length, after) = varint(datagram, at)?;
            Some(after + usize::try_from(length).ok()?)
        })();
        match next {
            Some(end) if end <= datagram.len() => datagram = &datagram[end..],
            _ => break,
        }
    }
    types
}

/// One client's mapping: its upstream socket, replaced on a rebind (its thread keeps the old ones).
struct Mapping {
    client: SocketAddr,
    upstream: Mutex<Arc<UdpSocket>>,
}

struct Shared {
    server: SocketAddr,
    plan: FaultPlan,
    front: UdpSocket,
    counters: SharedCounters,
    stop: AtomicBool,
    first_datagram: OnceLock<Instant>,
    blackhole_from: OnceLock<Instant>,
    to_client_rng: Mutex<Rng>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Poll interval of the proxy threads (read timeout): bounds how late a stop or a rebind is seen.
const POLL: Duration = Duration::from_millis(5);

enum Verdict {
    Forward,
    Drop,
    Corrupt,
}

impl Shared {
    /// Counts one received datagram; whether it falls into the blackhole.
    fn blackholed(&self, towards_server: bool) -> bool {
        let now = Instant::now();
        let first = *self.first_datagram.get_or_init(|| now);
        let c = &self.counters;
        let total = c.to_server.received.load(Ordering::Relaxed) + c.to_client.received.load(Ordering::Relaxed);
        let Some(hole) = self.plan.blackhole else { return false };
        let begins = match hole.start {
            Start::AfterDatagrams(n) => total >= n,
            Start::AfterServerDatagrams(n) => c.to_client.received.load(Ordering::Relaxed) >= n,
            Start::At(after) => now >= first + after,
        };
        if !begins {
            return false;
        }
        let from = *self.blackhole_from.get_or_init(|| now);
        let applies = if towards_server { hole.to_server } else { hole.to_client };
        applies && now < from + hole.duration
    }

    fn judge(&self, plan: &DirectionPlan, rng: &mut Rng, index: u64, datagram: &[u8]) -> Verdict {
        if index < plan.drop_first {
            return Verdict::Drop;
        }
        if plan.long_header_only && datagram.first().is_none_or(|b| b & 0x80 == 0) {
            return Verdict::Forward;
        }
        if rng.chance(plan.drop_per_mille) {
            Verdict::Drop
        } else if rng.chance(plan.corrupt_per_mille) {
            Verdict::Corrupt
        } else {
            Verdict::Forward
        }
    }

    /// Applies the plan to one datagram of a direction; `Some(bytes to send)` unless dropped.
    fn apply<'a>(&self, towards_server: bool, rng: &mut Rng, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        let (plan, counters) = if towards_server {
            (&self.plan.to_server, &self.counters.to_server)
        } else {
            (&self.plan.to_client, &self.counters.to_client)
        };
        let hole = self.blackholed(towards_server);
        let index = counters.received.fetch_add(1, Ordering::Relaxed);
        if hole {
            counters.blackholed.fetch_add(1, Ordering::Relaxed);
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.judge(plan, rng, index, datagram) {
            Verdict::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Verdict::Corrupt if datagram.len() >= 2 => {
                let half = datagram.len() / 2;
                let at = half + (rng.next() % (datagram.len() - half) as u64) as usize;
                datagram[at] ^= (rng.next() % 255 + 1) as u8;
                counters.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Corrupt | Verdict::Forward => {}
        }
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
        Some(datagram)
    }

    /// Client → server, through the client's mapping (created on its first datagram).
    fn outbound(self: &Arc<Self>) {
        let mut rng = Rng(self.plan.seed);
        let mut buf = vec![0u8; 65536];
        let mut mappings: HashMap<SocketAddr, Arc<Mapping>> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = self.front.recv_from(&mut buf) else { continue };
            let mapping = match mappings.get(&from) {
                Some(m) => Arc::clone(m),
                None => match self.map(from) {
                    Ok(m) => Arc::clone(mappings.entry(from).or_insert(m)),
                    Err(e) => {
                        eprintln!("fault proxy: cannot map {from}: {e:#}");
                        continue;
                    }
                },
            };
            let carries_handshake = long_header_types(&buf[..n]).contains(&2);
            let Some(datagram) = self.apply(true, &mut rng, &mut buf[..n]) else { continue };
            let c = &self.counters;
            // Set before the datagram goes on, so no answer to it is counted as sent before it.
            if carries_handshake {
                c.handshake_forwarded.store(true, Ordering::Relaxed);
            } else if !c.handshake_forwarded.load(Ordering::Relaxed) {
                c.client_bytes_before_handshake.fetch_add(n as u64, Ordering::Relaxed);
            }
            let upstream = Arc::clone(&*lock(&mapping.upstream));
            let _ = upstream.send_to(datagram, self.server);
        }
    }

    /// A new mapping for `client`, with its own thread for the server's answers.
    fn map(self: &Arc<Self>, client: SocketAddr) -> Result<Arc<Mapping>> {
        let upstream = bind_upstream(Ipv4Addr::LOCALHOST)?;
        let mapping = Arc::new(Mapping { client, upstream: Mutex::new(Arc::new(upstream)) });
        self.counters.clients.fetch_add(1, Ordering::Relaxed);
        let (shared, m) = (Arc::clone(self), Arc::clone(&mapping));
        let thread = std::thread::spawn(move || shared.inbound(&m));
        lock(&self.threads).push(thread);
        Ok(mapping)
    }

    /// Server → one client, from the mapping's current upstream socket; rebinds it on schedule.
    fn inbound(&self, mapping: &Mapping) {
        let mut buf = vec![0u8; 65536];
        let mut last_rebind = Instant::now();
        let mut since_rebind = 0u64;
        // Replaced sockets stay open (bounded by the test's length): datagrams to them are
        // silently lost, as at a NAT, instead of drawing ICMP errors.
        let mut stale: Vec<Arc<UdpSocket>> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(rebind) = self.plan.rebind {
                let due = match rebind.every {
                    Every::Time(t) => last_rebind.elapsed() >= t,
                    Every::Datagrams(n) => since_rebind >= n,
                };
                if due {
                    match self.rebind(mapping, rebind.address) {
                        Ok(old) => stale.push(old),
                        Err(e) => eprintln!("fault proxy: rebind failed: {e:#}"),
                    }
                    last_rebind = Instant::now();
                    since_rebind = 0;
                }
            }
            for old in &stale {
                while old.recv_from(&mut buf).is_ok() {
                    self.counters.to_stale_socket.fetch_add(1, Ordering::Relaxed);
                }
            }
            let upstream = Arc::clone(&*lock(&mapping.upstream));
            let Ok((n, from)) = upstream.recv_from(&mut buf) else { continue };
            if from != self.server {
                continue;
            }
            since_rebind += 1;
            let c = &self.counters;
            if long_header_types(&buf[..n]).first() == Some(&3) {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
            let Some(datagram) = self.apply(false, &mut lock(&self.to_client_rng), &mut buf[..n]) else { continue };
            if !c.handshake_forwarded.load(Ordering::Relaxed) {
                c.server_bytes_before_handshake.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = self.front.send_to(datagram, mapping.client);
        }
    }

    /// Replace the mapping's upstream socket; returns the old one (non-blocking from now on).
    fn rebind(&self, mapping: &Mapping, new_address: bool) -> Result<Arc<UdpSocket>> {
        let n = self.counters.rebinds.fetch_add(1, Ordering::Relaxed);
        let ip = if new_address {
            // 127.0.0.2, 127.0.0.3, ... 127.0.0.254, then around again
            Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8)
        } else {
            Ipv4Addr::LOCALHOST
        };
        let fresh = Arc::new(bind_upstream(ip)?);
        let old = std::mem::replace(&mut *lock(&mapping.upstream), fresh);
        old.set_nonblocking(true)?;
        Ok(old)
    }
}

fn bind_upstream(ip: Ipv4Addr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).with_context(|| format!("binding {ip}:0"))?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// A poisoned lock only means another proxy thread panicked; its data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running proxy; its threads stop when it is dropped.
pub struct FaultProxy {
    /// Where clients send to.
    pub front: SocketAddr,
    shared: Arc<Shared>,
    outbound: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Forward to `server` under `plan`.
    pub fn start(server: SocketAddr, plan: FaultPlan) -> Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        front.set_read_timeout(Some(POLL))?;
        let front_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            server,
            plan,
            front,
            counters: SharedCounters::default(),
            stop: AtomicBool::new(false),
            first_datagram: OnceLock::new(),
            blackhole_from: OnceLock::new(),
            to_client_rng: Mutex::new(Rng(plan.seed ^ 0xffff_ffff_ffff_ffff)),
            threads: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let outbound = std::thread::spawn(move || s.outbound());
        Ok(Self { front: front_addr, shared, outbound: Some(outbound) })
    }

    pub fn counters(&self) -> Counters {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            to_server: c.to_server.snapshot(),
            to_client: c.to_client.snapshot(),
            clients: get(&c.clients),
            rebinds: get(&c.rebinds),
            retries: get(&c.retries),
            to_stale_socket: get(&c.to_stale_socket),
            client_bytes_before_handshake: get(&c.client_bytes_before_handshake),
            server_bytes_before_handshake: get(&c.server_bytes_before_handshake),
        }
    }

    /// The counters in one line, for logs and failure messages.
    pub fn report(&self) -> String {
        let c = self.counters();
        let dir = |d: &DirectionCount| {
            format!(
                "{} received, {} forwarded ({} B), {} dropped ({} in the blackhole), {} corrupted",
                d.received, d.forwarded, d.bytes, d.dropped, d.blackholed, d.corrupted
            )
        };
        format!(
            "to server: {}; to client: {}; {} clients, {} rebinds, {} to stale sockets, {} Retry; before the \
             client's first Handshake packet: client {} B, server {} B",
            dir(&c.to_server),
            dir(&c.to_client),
            c.clients,
            c.rebinds,
            c.to_stale_socket,
            c.retries,
            c.client_bytes_before_handshake,
            c.server_bytes_before_handshake
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // The outbound thread first: once it is gone no mapping thread is added.
        if let Some(t) = self.outbound.take() {
            let _ = t.join();
        }
        for t in lock(&self.shared.threads).drain(..) {
            let _ = t.join();
        }
    }
}
