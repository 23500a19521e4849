//! The AF_XDP backend (`--backend af-xdp`): one core's AF_XDP socket on the RX queue of the same
//! index, with the core's ordinary UDP socket kept beside it.
//!
//! Receive: frames from the RX ring are classified ([`crate::frame::classify`]); a datagram for
//! the node goes to the core, and the frame's source MAC is learned as the hop back to its
//! sender ([`Neighbours`]); anything else is counted and dropped (the program only redirects the
//! node's datagrams, so this is rare). Then the UDP socket is read, for what the program left to
//! the kernel (fragments, IPv4 options, IPv6 extension headers, VLAN tags, jumbo frames).
//!
//! Send: each datagram of a batch becomes a whole Ethernet/IP/UDP frame in the TX ring when the
//! hop to its destination is known and it fits a UMEM frame; otherwise the batch goes through the
//! UDP socket (the kernel resolves the neighbour). Both are counted.
//!
//! Relay channels: the backend is the core's [`RelayOffload`], putting channels in the program's
//! map (shared by every core) with the ends' hops from [`Neighbours`].
//!
//! See `docs/af-xdp.md`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::portable::PortableBackend;
use super::{Backend, BackendKind, BackendParams, OutBatch, RecvMeta, SendRefused};
use crate::frame::{classify, Classified, MacAddress, UdpFrame, ETHERNET_HEADER_LEN};
use crate::relay::offload::{clock_at, ChannelEntry, RelayOffload};
use crate::stats::{bump, CoreStats};
use crate::sys::bpf::{ktime_now_ns, Map};
use crate::sys::xdp::XskSocket;
use crate::xdp::neighbour::Neighbours;
use crate::xdp::relay::{key, RelayEntry};

/// Frames taken from the RX ring per call.
const RX_BATCH: u32 = 64;
/// RX ring calls per loop turn at most: under a flood the core still gets to send and fire
/// timers (what is left keeps the socket readable, so the next wait returns at once).
const MAX_RX_CALLS_PER_TURN: usize = 16;

/// What a core needs besides [`BackendParams`] to run the AF_XDP backend.
#[derive(Debug)]
pub struct XdpParams {
    /// The core's AF_XDP socket, bound to the RX queue of the core's index and already in the
    /// redirect program's socket map.
    pub socket: XskSocket,
    /// The address the node is bound to: which datagrams are ours, and the source of the frames
    /// sent (bound to a wildcard address, a batch's own source IP, or the address its destination
    /// last sent to).
    pub local: SocketAddr,
    /// The interface's MAC address: the source of the frames sent.
    pub mac: MacAddress,
    /// The interface's MTU: the largest IP packet sent as a frame.
    pub mtu: usize,
    /// The program's relay channel map (one for the node).
    pub relay_channels: Arc<Map>,
    /// Whether this core puts established relay channels in that map (`[node] xdp_relay`).
    pub offload_relays: bool,
}

/// The way back to a remote address, learned from the last frame from it.
#[derive(Debug, Clone, Copy)]
struct Hop {
    /// The frame's source MAC: the next hop towards the remote.
    mac: MacAddress,
    /// The frame's destination address: the node's address the remote reaches, the source of
    /// frames to it when the node is bound to a wildcard address and the batch names none.
    local: IpAddr,
}

/// AF_XDP backend for one core.
#[derive(Debug)]
pub struct XdpBackend {
    xsk: XskSocket,
    /// The ordinary UDP socket, driven as the portable backend drives it.
    fallback: PortableBackend,
    wake_fd: RawFd,
    stats: Arc<CoreStats>,
    neighbours: Neighbours<Hop>,
    local: SocketAddr,
    ours: [SocketAddr; 1],
    mac: MacAddress,
    mtu: usize,
    relay_channels: Arc<Map>,
    offload_relays: bool,
    /// IPv4 identification of the next frame (DF is set: it need only differ between nearby
    /// datagrams, RFC 6864).
    identification: u16,
    /// The TX ring or UMEM was full: `wait` also waits for the AF_XDP socket's writability.
    tx_blocked: bool,
}

impl XdpBackend {
    /// Take over the core's UDP socket and AF_XDP socket.
    pub fn open(params: BackendParams<'_>, xdp: XdpParams) -> io::Result<Self> {
        let wake_fd = params.wake_fd;
        let stats = Arc::clone(params.stats);
        let local = crate::address::unmapped(xdp.local);
        Ok(Self {
            xsk: xdp.socket,
            fallback: PortableBackend::open(params)?,
            wake_fd,
            stats,
            neighbours: Neighbours::default(),
            local,
            ours: [xdp.local],
            mac: xdp.mac,
            mtu: xdp.mtu,
            relay_channels: xdp.relay_channels,
            offload_relays: xdp.offload_relays,
            identification: 0,
            tx_blocked: false,
        })
    }

    /// The headers of the frames carrying `batch`, if it can go through the TX ring: a known hop,
    /// a source address of the destination's family, and datagrams that fit a UMEM frame.
    fn frame_for(&mut self, batch: &OutBatch, now: Instant) -> Option<UdpFrame> {
        let dst = crate::address::unmapped(batch.destination);
        let hop = self.neighbours.lookup(dst.ip(), now)?;
        // A client connection's batches name no source: the specific listen address, or the
        // address the destination reached the node at (as the kernel's route would pick it).
        let src_ip = match batch.src_ip.map(|ip| ip.to_canonical()) {
            Some(ip) => ip,
            None if !self.local.ip().is_unspecified() => self.local.ip(),
            None => hop.local.to_canonical(),
        };
        if src_ip.is_ipv4() != dst.is_ipv4() {
            return None;
        }
        let dst_mac = hop.mac;
        let frame = UdpFrame {
            src_mac: self.mac,
            dst_mac,
            src: SocketAddr::new(src_ip, self.local.port()),
            dst,
            dscp: 0,
            ecn: batch.ecn,
            identification: self.identification,
        };
        let largest = batch.segment_size.min(batch.buf.len());
        frame.frame_len(largest, self.mtu, self.xsk.frame_size()).ok()?;
        Some(frame)
    }

    /// Put the datagrams of `batch` from byte `from` on in the TX ring as frames; how many bytes
    /// of it were enqueued (less than all when the ring or the UMEM is full).
    fn enqueue(&mut self, batch: &OutBatch, mut frame: UdpFrame, from: usize) -> io::Result<usize> {
        let mut at = from;
        let step = batch.segment_size.max(1);
        while let Some(datagram) = batch.buf.get(at..batch.buf.len().min(at + step)).filter(|d| !d.is_empty()) {
            frame.identification = self.identification;
            let mtu = self.mtu;
            // The length was checked in `frame_for`; a failure here would send an empty frame,
            // which the kernel refuses and counts (XDP_STATISTICS).
            let queued = self.xsk.enqueue(|buf| frame.build(buf, datagram, mtu).unwrap_or(0))?;
            if !queued {
                break;
            }
            self.identification = self.identification.wrapping_add(1);
            at += datagram.len();
        }
        Ok(at - from)
    }

    /// Send `batch` through the UDP socket (counted as such).
    fn send_by_socket(&mut self, batch: OutBatch) -> Result<(), SendRefused> {
        let segments = batch.segments() as u64;
        let result = self.fallback.send(batch);
        if result.is_ok() {
            bump(&self.stats.xdp_socket_tx_datagrams, segments);
        }
        result
    }
}

impl Backend for XdpBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::AfXdp
    }

    fn max_gso_segments(&self) -> usize {
        // Frames are written one datagram each; batches that go through the socket keep GSO.
        self.fallback.max_gso_segments()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.flush()?;
        let xsk_events = if self.tx_blocked { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
        let mut fds = [
            libc::pollfd { fd: self.xsk.as_raw_fd(), events: xsk_events, revents: 0 },
            self.fallback.socket_pollfd(),
            crate::sys::poll::readable(self.wake_fd),
        ];
        // A TX ring still holding frames (the kernel was busy) is retried soon, not at the timeout.
        let timeout = if self.xsk.tx_pending() > 0 {
            Some(timeout.map_or(Duration::from_millis(1), |t| t.min(Duration::from_millis(1))))
        } else {
            timeout
        };
        crate::sys::poll::poll(&mut fds, timeout)?;
        if fds[0].revents & libc::POLLOUT != 0 {
            self.tx_blocked = false;
        }
        self.fallback.socket_polled(fds[1].revents);
        Ok(())
    }

    fn recv(&mut self, sink: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()> {
        let now = Instant::now();
        let max_len = self.xsk.frame_size().saturating_sub(ETHERNET_HEADER_LEN);
        for _ in 0..MAX_RX_CALLS_PER_TURN {
            let (ours, stats, neighbours) = (&self.ours, &self.stats, &mut self.neighbours);
            let received = self.xsk.receive(RX_BATCH, |frame| match classify(frame, ours, max_len) {
                Classified::Datagram(datagram) => {
                    let Some(payload) = frame.get(datagram.payload.clone()) else { return };
                    let hop = Hop { mac: datagram.src_mac, local: datagram.dst.ip() };
                    neighbours.learn(datagram.src.ip(), hop, now);
                    bump(&stats.xdp_rx_datagrams, 1);
                    let meta = RecvMeta {
                        remote: datagram.src,
                        len: payload.len(),
                        stride: payload.len(),
                        ecn: datagram.ecn,
                        local_ip: Some(datagram.dst.ip()),
                    };
                    // The frame goes back to the fill ring: QUIC gets a copy.
                    sink(meta, BytesMut::from(payload));
                }
                Classified::ToKernel(_) => bump(&stats.xdp_frames_not_ours, 1),
            });
            if received > 0 {
                self.stats.rx_batch.record(received as usize);
            }
            if received < RX_BATCH {
                break;
            }
        }
        let stats = Arc::clone(&self.stats);
        self.fallback.recv(&mut |meta, data| {
            bump(&stats.xdp_socket_rx_datagrams, meta.len.div_ceil(meta.stride.max(1)) as u64);
            sink(meta, data);
        })
    }

    fn send(&mut self, batch: OutBatch) -> Result<(), SendRefused> {
        let Some(frame) = self.frame_for(&batch, Instant::now()) else { return self.send_by_socket(batch) };
        let enqueued = match self.enqueue(&batch, frame, 0) {
            Ok(n) => n,
            Err(e) => {
                self.stats.send_failed(&e, batch.destination);
                self.fallback.recycle(batch.buf);
                return Ok(());
            }
        };
        let sent = if batch.segment_size == 0 { 0 } else { enqueued.div_ceil(batch.segment_size) };
        bump(&self.stats.xdp_tx_datagrams, sent as u64);
        bump(&self.stats.tx_datagrams, sent as u64);
        bump(&self.stats.tx_bytes, enqueued as u64);
        if sent > 0 {
            self.stats.tx_batch.record(sent);
        }
        if let Err(e) = self.xsk.flush_tx() {
            self.stats.send_failed(&e, batch.destination);
        }
        if enqueued < batch.buf.len() {
            // The ring or the UMEM is full: hand back what is left, to retry after `wait`.
            self.tx_blocked = true;
            let rest = batch.buf.get(enqueued..).unwrap_or_default().to_vec();
            self.fallback.recycle(batch.buf);
            return Err(SendRefused::WouldBlock(OutBatch { buf: rest, ..batch }));
        }
        self.fallback.recycle(batch.buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.xsk.tx_pending() > 0 {
            self.xsk.flush_tx()?;
        }
        self.fallback.flush()
    }

    fn sends_in_flight(&self) -> usize {
        // Frames are copied into the UMEM when a batch is accepted; its buffer is done with.
        0
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.fallback.take_buffer()
    }

    fn relay_offload(&mut self) -> Option<&mut dyn RelayOffload> {
        if self.offload_relays {
            Some(self)
        } else {
            None
        }
    }
}

impl RelayOffload for XdpBackend {
    fn hop(&mut self, end: SocketAddr, now: Instant) -> Option<MacAddress> {
        // The program relays IPv4 only; a learned hop means the end's frames reach this interface.
        let end = crate::address::unmapped(end);
        if !end.is_ipv4() {
            return None;
        }
        self.neighbours.lookup(end.ip(), now).map(|hop| hop.mac)
    }

    fn clock_ns(&self, at: Instant) -> io::Result<u64> {
        Ok(clock_at(at, Instant::now(), ktime_now_ns()?))
    }

    fn insert(&mut self, channel: u32, entry: &ChannelEntry) -> io::Result<bool> {
        self.relay_channels.insert_new(&key(channel), &RelayEntry::from_channel(entry).encode())
    }

    fn replace(&mut self, channel: u32, entry: &ChannelEntry) -> io::Result<bool> {
        self.relay_channels.replace(&key(channel), &RelayEntry::from_channel(entry).encode())
    }

    fn read(&self, channel: u32) -> io::Result<Option<ChannelEntry>> {
        let Some(bytes) = self.relay_channels.lookup(&key(channel))? else { return Ok(None) };
        let entry = RelayEntry::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(entry.to_channel()))
    }

    fn remove(&mut self, channel: u32) -> io::Result<bool> {
        self.relay_channels.remove(&key(channel))
    }
}
