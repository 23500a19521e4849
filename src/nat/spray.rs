//! The I/O half of many-probe rounds (`docs/nat-traversal.md`, "Many-probe rounds" and "The
//! bridge"): the extra sockets a round sprays from, and the bridge that carries a connection from
//! the winning socket to the node socket.
//!
//! One helper thread per round owns the round's [`MultiSocket`]. It hands probe datagrams that
//! arrive to the driver (`SprayEvent`) and carries out the driver's commands (probes from every
//! socket, acks from one, keep one, close), woken by a [`Waker`]. When a socket wins, the thread
//! becomes the bridge: datagrams from the remote peer on the winning socket are sent from a second
//! socket (bound to loopback, or to the node's IP when it listens on a specific one) to the node
//! socket, and what the node sends to that second socket leaves from the winning socket to the
//! peer. The node thus sees the peer at the second socket's address; the NAT sees the winning
//! socket's mapping. Probe datagrams from the peer still go to the driver, so that the round keeps
//! answering them. Every loop is bounded in time: the spraying phase ends after
//! `SPRAY_LIFETIME`, the bridge after `BRIDGE_IDLE` without traffic, both when the driver
//! stops.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_control::nat::probe::MARKER as PROBE_MARKER;
use ant_quic_control::nat::{Probe, ProbeKind};
use ant_quic_dataplane::sys::poll::Waker;
use ant_quic_dataplane::MultiSocket;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// A spraying round's sockets close after this even if the driver never says so (the traversal
/// closes them when the round's probing ends, after a few seconds).
pub(crate) const SPRAY_LIFETIME: Duration = Duration::from_secs(30);
/// A bridge without a datagram in either direction for this long ends (the connections the
/// traversal opens send keep-alives every few seconds).
pub(crate) const BRIDGE_IDLE: Duration = Duration::from_secs(60);
/// Longest sleep of a helper thread between two looks at its stop conditions.
const TICK: Duration = Duration::from_millis(200);
/// Extra sockets open at once over all rounds: well below common descriptor limits (1024).
const MAX_OPEN_SOCKETS: usize = 512;
/// Datagrams handled per wake-up and per socket, so that a flood cannot pin a helper thread.
const BATCH: usize = 256;
/// Commands queued to one helper thread.
const COMMAND_QUEUE: usize = 1024;
/// Largest datagram forwarded (the sockets have no GRO, so one datagram per receive).
const MAX_DATAGRAM: usize = 65_535;

/// What the helper threads tell the driver.
#[derive(Debug)]
pub(crate) enum SprayEvent {
    /// A probe datagram arrived on socket `socket` of round `token`.
    Probe {
        /// The round.
        token: [u8; 16],
        /// Which socket.
        socket: u16,
        /// Its source.
        source: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// The helper thread of round `token` ended (its sockets are closed).
    Ended {
        /// The round.
        token: [u8; 16],
    },
}

enum Command {
    /// From every open socket `i`: a probe with `token` and transaction `first_transaction + i`.
    Probe {
        to: SocketAddr,
        first_transaction: u64,
    },
    /// These bytes from socket `socket`.
    Send {
        socket: u16,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Keep `socket`, close the others, bridge it to the node through `local`.
    Keep {
        socket: u16,
        remote: SocketAddr,
        local: UdpSocket,
    },
    Close,
}

struct Worker {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    sockets: usize,
    /// The bridge's node-side address once a socket was kept.
    bridge: Option<SocketAddr>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn command(&self, command: Command) {
        // A full queue means the thread is behind; the probe or ack is lost like a datagram.
        if self.commands.try_send(command).is_ok() {
            self.waker.wake();
        }
    }

    fn stop(&mut self) {
        let _ = self.commands.try_send(Command::Close);
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The extra sockets and bridges of this node's many-probe rounds, by round token.
pub(crate) struct Sprays {
    /// Where the node socket is reached from this host.
    node: SocketAddr,
    /// Where extra sockets bind: the node's IP (its family's unspecified address for a wildcard).
    bind: IpAddr,
    workers: HashMap<[u8; 16], Worker>,
    events: Sender<SprayEvent>,
}

impl std::fmt::Debug for Sprays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sprays").field("node", &self.node).field("rounds", &self.workers.len()).finish()
    }
}

impl Sprays {
    /// Sprays for a node whose socket is bound to `listen`; helper threads report on `events`.
    pub(crate) fn new(listen: SocketAddr, events: Sender<SprayEvent>) -> Self {
        let node_ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // A wildcard IPv6 node socket also serves IPv4; peers found by bootstraps over IPv4 are
        // sprayed from IPv4 sockets.
        let bind = if listen.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { listen.ip() };
        Self { node: SocketAddr::new(node_ip, listen.port()), bind, workers: HashMap::new(), events }
    }

    /// Opens up to `count` extra sockets for round `token` (fewer near the limit of open ones).
    pub(crate) fn open(&mut self, token: [u8; 16], count: u16) {
        if self.workers.contains_key(&token) {
            return;
        }
        let open: usize = self.workers.values().map(|w| w.sockets).sum();
        let count = usize::from(count).min(MAX_OPEN_SOCKETS.saturating_sub(open));
        if count == 0 {
            tracing::debug!("too many extra sockets open: this round probes from the node socket only");
            return;
        }
        let set = match MultiSocket::open(self.bind, count) {
            Ok(set) => set,
            Err(error) => {
                tracing::warn!(%error, "cannot open extra sockets: this round probes from the node socket only");
                return;
            }
        };
        if set.len() < count {
            tracing::debug!(opened = set.len(), asked = count, "fewer extra sockets than asked for");
        }
        let waker = match Waker::new() {
            Ok(waker) => Arc::new(waker),
            Err(error) => {
                tracing::warn!(%error, "no waker for the extra sockets' thread");
                return;
            }
        };
        let (commands, commands_rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let helper = Helper {
            token,
            set,
            kept: None,
            commands: commands_rx,
            waker: Arc::clone(&waker),
            events: self.events.clone(),
            node: self.node,
        };
        let sockets = helper.set.len();
        let thread = std::thread::Builder::new().name("ant-quic-spray".into()).spawn(move || helper.run());
        match thread {
            Ok(thread) => {
                let worker = Worker { commands, waker, sockets, bridge: None, thread: Some(thread) };
                self.workers.insert(token, worker);
            }
            Err(error) => tracing::warn!(%error, "cannot start the extra sockets' thread"),
        }
    }

    /// A probe from every open socket of round `token` to `to` (transaction `first + index`).
    pub(crate) fn probe(&self, token: [u8; 16], to: SocketAddr, first_transaction: u64) {
        if let Some(worker) = self.workers.get(&token) {
            worker.command(Command::Probe { to, first_transaction });
        }
    }

    /// `bytes` from socket `socket` of round `token` to `to`.
    pub(crate) fn send(&self, token: [u8; 16], socket: u16, to: SocketAddr, bytes: Vec<u8>) {
        if let Some(worker) = self.workers.get(&token) {
            worker.command(Command::Send { socket, to, bytes });
        }
    }

    /// Keeps socket `socket` of round `token` and bridges it to the node; returns the bridge's
    /// node-side address (where the node reaches `remote`).
    pub(crate) fn keep(&mut self, token: [u8; 16], socket: u16, remote: SocketAddr) -> io::Result<SocketAddr> {
        let Some(worker) = self.workers.get_mut(&token) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the round's extra sockets are gone"));
        };
        if let Some(bridge) = worker.bridge {
            return Ok(bridge);
        }
        let local = UdpSocket::bind(SocketAddr::new(self.node.ip(), 0))?;
        let address = local.local_addr()?;
        worker.command(Command::Keep { socket, remote, local });
        worker.bridge = Some(address);
        worker.sockets = 2;
        Ok(address)
    }

    /// Closes the sockets of round `token` (not a bridge: it ends when idle).
    pub(crate) fn close(&mut self, token: [u8; 16]) {
        let bridged = self.workers.get(&token).is_some_and(|w| w.bridge.is_some());
        if bridged {
            return;
        }
        if let Some(mut worker) = self.workers.remove(&token) {
            worker.stop();
        }
    }

    /// The bridge of round `token`: where the node reaches the peer through it.
    pub(crate) fn bridge(&self, token: [u8; 16]) -> Option<SocketAddr> {
        self.workers.get(&token).and_then(|w| w.bridge)
    }

    /// The helper thread of round `token` ended.
    pub(crate) fn ended(&mut self, token: [u8; 16]) {
        if let Some(mut worker) = self.workers.remove(&token) {
            worker.stop();
        }
    }
}

impl Drop for Sprays {
    fn drop(&mut self) {
        for (_, mut worker) in self.workers.drain() {
            worker.stop();
        }
    }
}

/// A round's helper thread.
struct Helper {
    token: [u8; 16],
    set: MultiSocket,
    /// Once a socket won: its index in the round (probe transactions use it), the peer, and the
    /// bridge's indices in `set` (0: the winner, 1: the node side).
    kept: Option<(u16, SocketAddr)>,
    commands: Receiver<Command>,
    waker: Arc<Waker>,
    events: Sender<SprayEvent>,
    node: SocketAddr,
}

/// Indices of a bridge's sockets.
const WINNER: usize = 0;
const NODE_SIDE: usize = 1;

impl Helper {
    fn run(mut self) {
        let started = Instant::now();
        let mut last_traffic = started;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = Instant::now();
            let expired = match self.kept {
                None => now >= started + SPRAY_LIFETIME,
                Some(_) => now >= last_traffic + BRIDGE_IDLE,
            };
            if expired {
                if let Some((_, remote)) = self.kept {
                    tracing::debug!(%remote, "bridge idle: closed");
                }
                break;
            }
            if let Err(error) = self.set.wait(TICK, Some(&self.waker)) {
                tracing::warn!(%error, "extra sockets: poll failed");
                break;
            }
            if self.receive(&mut buf) {
                last_traffic = Instant::now();
            }
            if !self.commands_due() {
                break;
            }
        }
        let _ = self.events.send(SprayEvent::Ended { token: self.token });
    }

    /// Handles what arrived; whether anything was bridged.
    fn receive(&mut self, buf: &mut [u8]) -> bool {
        let mut bridged = false;
        for index in self.set.take_ready() {
            for _ in 0..BATCH {
                let (len, source) = match self.set.recv_from(index, buf) {
                    Ok(received) => received,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error for an earlier send, reported on this socket: skip it.
                    Err(_) => continue,
                };
                let Some(bytes) = buf.get(..len) else { continue };
                bridged |= self.handle(index, source, bytes);
            }
        }
        bridged
    }

    /// One datagram on socket `index` of the set; whether it was bridged.
    fn handle(&self, index: usize, source: SocketAddr, bytes: &[u8]) -> bool {
        let probe = bytes.first() == Some(&PROBE_MARKER);
        match self.kept {
            None => {
                if probe {
                    self.report(u16::try_from(index).unwrap_or(u16::MAX), source, bytes);
                }
                // Anything else is nobody's yet (a QUIC packet cannot arrive before the socket
                // won: the peer learns the mapping from this socket's ack or probe).
                false
            }
            Some((socket, remote)) => match index {
                WINNER if probe => {
                    self.report(socket, source, bytes);
                    false
                }
                WINNER if source == remote => self.set.send_to(NODE_SIDE, bytes, self.node).is_ok(),
                NODE_SIDE if source == self.node => self.set.send_to(WINNER, bytes, remote).is_ok(),
                // From anyone else: not the peer's, not the node's.
                _ => false,
            },
        }
    }

    fn report(&self, socket: u16, source: SocketAddr, bytes: &[u8]) {
        let event = SprayEvent::Probe { token: self.token, socket, source, bytes: bytes.to_vec() };
        // A full queue drops the probe, as a lossy network would.
        let _ = self.events.try_send(event);
    }

    /// Carries out queued commands; false when the thread must end.
    fn commands_due(&mut self) -> bool {
        for _ in 0..COMMAND_QUEUE {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            match command {
                Command::Probe { to, first_transaction } => self.probe(to, first_transaction),
                Command::Send { socket, to, bytes } => {
                    let index = match self.kept {
                        None => Some(usize::from(socket)),
                        Some((kept, _)) => (kept == socket).then_some(WINNER),
                    };
                    if let Some(index) = index {
                        let _ = self.set.send_to(index, &bytes, to);
                    }
                }
                Command::Keep { socket, remote, local } => {
                    if self.kept.is_some() {
                        continue;
                    }
                    let Some(winner) = self.set.take(usize::from(socket)) else {
                        tracing::debug!(socket, "the winning socket is not open");
                        return false;
                    };
                    match MultiSocket::from_sockets(vec![winner, local]) {
                        Ok(bridge) => {
                            // Dropping the spray set closes the other sockets.
                            self.set = bridge;
                            self.kept = Some((socket, remote));
                            tracing::debug!(%remote, node = %self.node, "bridge up");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot bridge the winning socket");
                            return false;
                        }
                    }
                }
                Command::Close => return false,
            }
        }
        true
    }

    fn probe(&self, to: SocketAddr, first_transaction: u64) {
        let mut datagram = Vec::with_capacity(32);
        let mut send = |round_index: u16, set_index: usize| {
            let transaction = first_transaction.wrapping_add(u64::from(round_index));
            datagram.clear();
            Probe { kind: ProbeKind::Probe, token: self.token, transaction }.emit(&mut datagram);
            let _ = self.set.send_to(set_index, &datagram, to);
        };
        match self.kept {
            Some((socket, _)) => send(socket, WINNER),
            None => {
                for index in 0..self.set.len() {
                    if self.set.is_open(index) {
                        send(u16::try_from(index).unwrap_or(u16::MAX), index);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn next_probe(events: &Receiver<SprayEvent>) -> (u16, SocketAddr, Probe) {
        match events.recv_timeout(Duration::from_secs(5)).expect("an event") {
            SprayEvent::Probe { socket, source, bytes, .. } => (socket, source, Probe::parse(&bytes).expect("a probe")),
            SprayEvent::Ended { .. } => panic!("the helper ended"),
        }
    }

    /// A round's sockets probe, report what arrives with its socket, and bridge the winner: the
    /// "node" (a plain socket here) and the "peer" exchange datagrams through it both ways.
    #[test]
    fn sockets_probe_report_and_bridge_the_winner() {
        let node = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        node.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (events_tx, events) = crossbeam_channel::bounded(1024);
        let mut sprays = Sprays::new(node.local_addr().unwrap(), events_tx);
        sprays.bind = LOOPBACK;
        let token = [7; 16];
        sprays.open(token, 8);

        // Eight probes to the peer, from eight ports, transactions 100..108.
        sprays.probe(token, peer.local_addr().unwrap(), 100);
        let mut buf = [0u8; 2048];
        let mut from = HashMap::new();
        for _ in 0..8 {
            let (len, source) = peer.recv_from(&mut buf).unwrap();
            let probe = Probe::parse(&buf[..len]).unwrap();
            assert_eq!((probe.token, probe.kind), (token, ProbeKind::Probe));
            from.insert(probe.transaction, source);
        }
        assert_eq!(from.len(), 8);
        let winner = from[&105];

        // The peer answers socket 5; the driver hears it with the socket's index.
        let ack = Probe { kind: ProbeKind::Ack { observed: winner }, token, transaction: 105 };
        let mut datagram = Vec::new();
        ack.emit(&mut datagram);
        peer.send_to(&datagram, winner).unwrap();
        let (socket, source, probe) = next_probe(&events);
        assert_eq!((socket, source, probe), (5, peer.local_addr().unwrap(), ack));

        // Keep it: the node side is on loopback; QUIC-like bytes cross both ways.
        let bridge = sprays.keep(token, 5, peer.local_addr().unwrap()).unwrap();
        assert_eq!(bridge.ip(), LOOPBACK);
        assert_eq!(sprays.bridge(token), Some(bridge));
        sprays.close(token);
        assert_eq!(sprays.bridge(token), Some(bridge), "closing leaves a bridge alone");
        std::thread::sleep(Duration::from_millis(50));
        peer.send_to(&[0xc0, 1, 2, 3], winner).unwrap();
        let (len, source) = node.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], source), (&[0xc0, 1, 2, 3][..], bridge));
        node.send_to(&[0x40, 9, 9], bridge).unwrap();
        let (len, source) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], source), (&[0x40, 9, 9][..], winner), "it leaves from the winning socket");

        // Probes still reach the driver; acks and probes leave from the winner.
        let probe = Probe { kind: ProbeKind::Probe, token, transaction: 1 };
        datagram.clear();
        probe.emit(&mut datagram);
        peer.send_to(&datagram, winner).unwrap();
        assert_eq!(next_probe(&events), (5, peer.local_addr().unwrap(), probe));
        sprays.send(token, 5, peer.local_addr().unwrap(), vec![0x21, 0]);
        sprays.probe(token, peer.local_addr().unwrap(), 100);
        for _ in 0..2 {
            let (_, source) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(source, winner);
        }
        // Strangers are not bridged. The helper takes the winning socket's datagrams in order, so
        // the peer's datagram sent after the stranger's is the first thing the node gets: however
        // late the helper runs, it has handled the stranger's by then.
        let stranger = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        stranger.send_to(&[0xc0, 6], winner).unwrap();
        peer.send_to(&[0xc0, 7], winner).unwrap();
        let (len, source) = node.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], source), (&[0xc0, 7][..], bridge), "the stranger's datagram was bridged");
        drop(sprays);
    }

    #[test]
    fn closed_rounds_end_their_thread() {
        let node = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let (events_tx, events) = crossbeam_channel::bounded(16);
        let mut sprays = Sprays::new(node.local_addr().unwrap(), events_tx);
        sprays.bind = LOOPBACK;
        sprays.open([1; 16], 4);
        sprays.open([2; 16], 4);
        sprays.close([1; 16]);
        match events.recv_timeout(Duration::from_secs(2)) {
            Ok(SprayEvent::Ended { token }) => assert_eq!(token, [1; 16]),
            other => panic!("expected the end of round 1, got {other:?}"),
        }
        assert!(sprays.bridge([2; 16]).is_none());
        let started = Instant::now();
        drop(sprays);
        assert!(started.elapsed() < Duration::from_secs(2), "dropping stops the helpers promptly");
    }
}
