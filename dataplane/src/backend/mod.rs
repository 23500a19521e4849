//! UDP I/O backends: one instance per core, owning that core's socket.
//!
//! A backend moves batches of datagrams between the kernel and the core's QUIC endpoint. Two exist:
//! [`uring`] (io_uring: multishot RECVMSG into a provided-buffer ring, SENDMSG with `UDP_SEGMENT`)
//! and [`portable`] (recvmmsg/sendmsg through quinn-udp). Both do GRO on receive and GSO on send,
//! and both fall back to one datagram per send, losing none, when the kernel refuses GSO.
//! [`xdp`] (AF_XDP, `docs/af-xdp.md`) takes the node's datagrams as frames from an XDP program
//! attached node-wide by [`xdp_attach`], and keeps the UDP socket for the rest.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::BytesMut;
use quinn_proto::EcnCodepoint;

use crate::relay::offload::RelayOffload;
use crate::stats::CoreStats;

pub mod portable;
#[cfg(target_os = "linux")]
pub mod uring;
#[cfg(target_os = "linux")]
pub mod xdp;
#[cfg(target_os = "linux")]
pub mod xdp_attach;

/// Which backend a core runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// io_uring with multishot receive and GSO sends.
    IoUring,
    /// recvmmsg/sendmsg with GSO/GRO, for kernels and sandboxes without io_uring.
    Portable,
    /// AF_XDP sockets fed by an XDP program on the listen interface, with the UDP socket kept
    /// for what the program passes and for peers whose next hop is not known yet.
    AfXdp,
}

impl BackendKind {
    /// The name used on the command line, in the config file and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io-uring",
            Self::Portable => "portable",
            Self::AfXdp => "af-xdp",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "io-uring" | "io_uring" | "uring" => Ok(Self::IoUring),
            "portable" => Ok(Self::Portable),
            "af-xdp" | "af_xdp" | "xdp" => Ok(Self::AfXdp),
            other => Err(format!("unknown backend '{other}': expected io-uring, portable or af-xdp")),
        }
    }
}

/// Whether this kernel and sandbox let the io_uring backend run; why not otherwise.
pub fn io_uring_usable() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    let usable = uring::probe().map_err(|e| e.to_string());
    #[cfg(not(target_os = "linux"))]
    let usable = Err("io_uring needs Linux".into());
    usable
}

/// The backend a node picks when none is asked for: io-uring when [`io_uring_usable`], the
/// portable one otherwise.
pub fn default_kind() -> BackendKind {
    match io_uring_usable() {
        Ok(()) => BackendKind::IoUring,
        Err(_) => BackendKind::Portable,
    }
}

/// One received buffer: a single datagram, or several of `stride` bytes each when the kernel
/// coalesced them (GRO). The last segment may be shorter than `stride`.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Who sent it.
    pub remote: SocketAddr,
    /// Total length of the buffer.
    pub len: usize,
    /// Segment size; equal to `len` for a single datagram.
    pub stride: usize,
    /// ECN codepoint from the IP header, if the kernel reported one.
    pub ecn: Option<EcnCodepoint>,
    /// The local address it was sent to (IP_PKTINFO / IPV6_PKTINFO), if reported.
    pub local_ip: Option<IpAddr>,
}

/// One batch to send: `segment_size`-byte datagrams back to back in `buf` (the last one may be
/// shorter), all to the same destination. With one segment it is a plain datagram.
#[derive(Debug)]
pub struct OutBatch {
    /// Where every datagram goes.
    pub destination: SocketAddr,
    /// ECN codepoint to set on every datagram.
    pub ecn: Option<EcnCodepoint>,
    /// Source IP to send from (for multi-homed hosts bound to a wildcard address).
    pub src_ip: Option<IpAddr>,
    /// Size of each datagram but the last.
    pub segment_size: usize,
    /// The datagrams. The backend owns it until the kernel is done with it.
    pub buf: Vec<u8>,
}

impl OutBatch {
    /// How many datagrams the batch holds.
    pub fn segments(&self) -> usize {
        if self.segment_size == 0 {
            return 0;
        }
        self.buf.len().div_ceil(self.segment_size)
    }
}

/// Why a batch was not accepted.
#[derive(Debug)]
pub enum SendRefused {
    /// The kernel's send buffer or the backend's in-flight slots are full: the batch is handed
    /// back; retry after the next [`Backend::wait`].
    WouldBlock(OutBatch),
}

/// The contract every backend fulfils. A backend is created on, and used by, one core only.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// How many datagrams one [`OutBatch`] may hold (1 when GSO is unavailable or was refused).
    fn max_gso_segments(&self) -> usize;

    /// Push queued sends to the kernel (as [`Backend::flush`] does), then block until a datagram
    /// can be received, a previously refused send may proceed, the core's
    /// waker fd becomes readable, or `timeout` passes (`None`: no timeout). Spurious returns are
    /// allowed. Must not drain the waker fd: the core does that.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Hand every datagram received so far to `sink`, without blocking. GRO buffers are passed
    /// whole with their `stride`; see [`crate::batch::split_gro_owned`]. Each buffer is the
    /// sink's to keep: QUIC decrypts in it and holds on to the data it carries.
    fn recv(&mut self, sink: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()>;

    /// Queue or send a batch. Errors other than back-pressure are counted and the batch dropped
    /// (UDP is lossy; QUIC retransmits). A batch refused with `EIO`/`EINVAL` because of GSO is
    /// resent one datagram at a time, and GSO stays off for this backend afterwards.
    fn send(&mut self, batch: OutBatch) -> Result<(), SendRefused>;

    /// Push queued sends to the kernel (io_uring: submit), for a loop turn that does not wait.
    fn flush(&mut self) -> io::Result<()>;
    /// Batches accepted by [`Backend::send`] that the kernel has not finished with: a core that
    /// exits waits for none to be left, or they would be cancelled with the backend.
    fn sends_in_flight(&self) -> usize;

    /// An empty buffer to build the next batch in, reusing one the kernel is done with.
    fn take_buffer(&mut self) -> Vec<u8>;

    /// Where established relay channels can be forwarded below the core (the af-xdp backend's
    /// XDP program); `None`, the default: every relay frame goes through the core.
    fn relay_offload(&mut self) -> Option<&mut dyn RelayOffload> {
        None
    }
}

/// What a backend needs to be opened.
#[derive(Debug)]
pub struct BackendParams<'a> {
    /// The bound, non-blocking UDP socket this core owns.
    pub socket: std::net::UdpSocket,
    /// eventfd that other threads write to wake this core; `wait` must return when it is readable.
    pub wake_fd: RawFd,
    /// Counters this core publishes.
    pub stats: &'a std::sync::Arc<CoreStats>,
}
