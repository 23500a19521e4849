//! The io_uring backend: one ring per core, a multishot RECVMSG into a provided-buffer ring,
//! SENDMSG with `UDP_SEGMENT` from a fixed set of send slots, and a multishot poll on the core's
//! waker eventfd so that one `io_uring_enter` waits for all three.
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER` and `IORING_SETUP_DEFER_TASKRUN` when the
//! kernel accepts them: only the thread that opened the backend may submit to it or wait on it.
//! [`UringBackend`] is therefore neither `Send` nor `Sync`; open it on the core's own thread.
//!
//! The ring and the memory the kernel uses through it are owned by `crate::sys::uring::Ring`;
//! this module decides what to receive and send, and counts it.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use io_uring::{opcode, IoUring, Probe};
use quinn_udp::{UdpSockRef, UdpSocketState};

use super::{Backend, BackendKind, BackendParams, OutBatch, RecvMeta, SendRefused};
use crate::stats::{bump, CoreStats};
use crate::sys::cmsg::{parse_control, parse_sockaddr, SendControl};
use crate::sys::uring::{Completion, RecvBuffer, Ring, RingSetupError, RECV_PAYLOAD_OFFSET, SEND_SLOTS};

/// Submission queue size. Sends, re-arms and the cancel at teardown fit easily.
const SQ_ENTRIES: u32 = 256;
/// Completion queue size: room for a completion per provided buffer, per send slot, and more.
const CQ_ENTRIES: u32 = 1024;
/// Buffers kept for reuse by senders.
const SPARE_BUFFERS: usize = 16;
/// A payload of at least this many bytes (a GRO batch of several datagrams, in bulk transfers)
/// goes to QUIC in its receive buffer, which the ring replaces: no copy. A smaller one is copied
/// out and the buffer reused, so that a small datagram whose data QUIC keeps does not hold a
/// whole 68 KiB buffer (a peer sending many would make the node hold far more than it sent).
const KEEP_BUFFER_MIN: usize = 8 * 1024;

/// Why io_uring cannot be used; the node logs it on one line and falls back to the portable
/// backend. When it comes from [`UringBackend::open`], the socket is handed back with it.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct UringUnavailable {
    reason: UnavailableReason,
    socket: Option<UdpSocket>,
}

impl UringUnavailable {
    fn new(reason: UnavailableReason) -> Self {
        Self { reason, socket: None }
    }

    fn with_socket(reason: UnavailableReason, socket: UdpSocket) -> Self {
        Self { reason, socket: Some(socket) }
    }

    /// Why io_uring is unavailable.
    pub fn reason(&self) -> &UnavailableReason {
        &self.reason
    }

    /// The socket that was passed to [`UringBackend::open`], to open the portable backend on.
    pub fn take_socket(&mut self) -> Option<UdpSocket> {
        self.socket.take()
    }
}

/// The reasons behind [`UringUnavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// `io_uring_setup` failed.
    #[error("io_uring_setup failed: {error} ({})", setup_hint(.error))]
    Setup {
        /// The error from the kernel.
        error: io::Error,
    },
    /// Registering the opcode probe failed.
    #[error("io_uring opcode probe failed: {0} (needs Linux 5.6+)")]
    Probe(io::Error),
    /// An opcode the backend needs is missing.
    #[error("kernel lacks io_uring {0}")]
    MissingOpcode(&'static str),
    /// Multishot RECVMSG is missing.
    #[error("kernel lacks multishot RECVMSG (needs Linux 6.0+)")]
    NoMultishotRecv,
    /// The provided-buffer ring could not be registered.
    #[error("provided buffer rings need Linux 5.19+ (registering one failed: {0})")]
    NoBufRing(io::Error),
    /// Memory for the receive buffers could not be mapped.
    #[error("cannot map io_uring receive buffers: {0}")]
    Memory(io::Error),
    /// The socket could not be configured (GRO, ECN, PKTINFO) or inspected.
    #[error("cannot configure the UDP socket for io_uring: {0}")]
    Socket(io::Error),
    /// The first submission failed.
    #[error("io_uring submission failed: {0}")]
    Submit(io::Error),
}

fn setup_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM) => "kernel.io_uring_disabled=2 or seccomp",
        Some(libc::ENOSYS) => "kernel built without io_uring, or a seccomp filter",
        Some(libc::ENOMEM) => "RLIMIT_MEMLOCK too low for the ring",
        _ => "kernel or sandbox refuses io_uring",
    }
}

/// Check, without touching any socket, that an io_uring can be set up and that the kernel has
/// the operations this backend needs.
pub fn probe() -> Result<(), UringUnavailable> {
    let ring: IoUring = IoUring::new(8).map_err(|error| UringUnavailable::new(UnavailableReason::Setup { error }))?;
    check_opcodes(&ring).map_err(UringUnavailable::new)
}

fn check_opcodes(ring: &IoUring) -> Result<(), UnavailableReason> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(UnavailableReason::Probe)?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(UnavailableReason::MissingOpcode(name));
        }
    }
    // Multishot RECVMSG has no probe bit of its own; it came in Linux 6.0 together with SEND_ZC,
    // which does.
    if !probe.is_supported(opcode::SendZc::CODE) {
        return Err(UnavailableReason::NoMultishotRecv);
    }
    Ok(())
}

/// Build the ring with the cheapest task-running mode the kernel accepts.
fn build_ring() -> io::Result<(IoUring, &'static str)> {
    type Configure = fn(&mut io_uring::Builder);
    let attempts: [(&'static str, Configure); 3] = [
        ("single-issuer,defer-taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
        }),
        ("single-issuer,coop-taskrun", |b| {
            b.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("plain", |_| {}),
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for (name, configure) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES);
        configure(&mut builder);
        match builder.build(SQ_ENTRIES) {
            Ok(ring) => return Ok((ring, name)),
            // An older kernel refuses flags it does not know with EINVAL: try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Where received datagrams go.
type RecvSink<'a> = &'a mut dyn FnMut(RecvMeta, BytesMut);

/// A receive completion taken off the ring while no sink was at hand.
#[derive(Debug)]
struct PendingRecv {
    result: i32,
    buffer: Option<RecvBuffer>,
}

/// The batch a send slot is sending, without its datagrams (those are in the ring's slot), and
/// how far it got.
#[derive(Debug)]
struct SendProgress {
    destination: SocketAddr,
    ecn: Option<quinn_proto::EcnCodepoint>,
    src_ip: Option<std::net::IpAddr>,
    segment_size: usize,
    /// Bytes in the batch.
    total: usize,
    /// Whether the SQE in flight carries `UDP_SEGMENT`.
    gso: bool,
    /// Start and length of the datagram in flight when sending one datagram at a time.
    offset: usize,
    chunk: usize,
}

impl SendProgress {
    /// How many datagrams the batch holds.
    fn segments(&self) -> usize {
        if self.segment_size == 0 {
            return 0;
        }
        self.total.div_ceil(self.segment_size)
    }
}

/// io_uring backend. Not `Send`, not `Sync`: it must be used, and dropped, by the thread that
/// opened it (the ring is single-issuer).
pub struct UringBackend {
    /// The ring and the memory the kernel uses through it; dropping it cancels and waits for
    /// every operation.
    ring: Ring,
    /// What each send slot is sending (`None`: the slot is free).
    slots: Box<[Option<SendProgress>]>,
    socket: UdpSocket,
    state: UdpSocketState,
    socket_is_v6: bool,
    wake_fd: RawFd,
    stats: Arc<CoreStats>,
    /// Free send slots.
    free: Vec<usize>,
    /// Slots whose SQE did not fit in the submission queue yet.
    unpushed: VecDeque<usize>,
    /// Receive completions taken off the ring while no sink was at hand.
    backlog: VecDeque<PendingRecv>,
    scratch: Vec<Completion>,
    spare: Vec<Vec<u8>>,
    /// GSO was refused by the kernel once: send one datagram per system call from then on.
    gso_refused: bool,
    features: String,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("socket", &self.socket)
            .field("features", &self.features)
            .field("gso_refused", &self.gso_refused)
            .field("sends_in_flight", &self.sends_in_flight())
            .finish_non_exhaustive()
    }
}

impl UringBackend {
    /// Take over the core's socket. On failure the socket comes back in the error
    /// ([`UringUnavailable::take_socket`]) so the portable backend can be opened on it.
    pub fn open(params: BackendParams<'_>) -> Result<Self, UringUnavailable> {
        let BackendParams { socket, wake_fd, stats } = params;
        let stats = Arc::clone(stats);
        let state = match UdpSocketState::new(UdpSockRef::from(&socket)) {
            Ok(state) => state,
            Err(e) => return Err(UringUnavailable::with_socket(UnavailableReason::Socket(e), socket)),
        };
        let socket_is_v6 = match socket.local_addr() {
            Ok(addr) => addr.is_ipv6(),
            Err(e) => return Err(UringUnavailable::with_socket(UnavailableReason::Socket(e), socket)),
        };
        let (ring, mode) = match build_ring() {
            Ok(ring) => ring,
            Err(error) => return Err(UringUnavailable::with_socket(UnavailableReason::Setup { error }, socket)),
        };
        if let Err(reason) = check_opcodes(&ring) {
            return Err(UringUnavailable::with_socket(reason, socket));
        }
        let ring = match Ring::new(ring) {
            Ok(ring) => ring,
            Err(RingSetupError::Memory(e)) => {
                return Err(UringUnavailable::with_socket(UnavailableReason::Memory(e), socket))
            }
            Err(RingSetupError::BufRing(e)) => {
                return Err(UringUnavailable::with_socket(UnavailableReason::NoBufRing(e), socket))
            }
        };

        let gso = state.max_gso_segments().clamp(1, crate::MAX_GSO_SEGMENTS);
        let features = format!("{mode}; gso={gso} gro={}", state.gro_segments());
        let mut backend = Self {
            ring,
            slots: (0..SEND_SLOTS).map(|_| None).collect(),
            socket,
            state,
            socket_is_v6,
            wake_fd,
            stats,
            free: (0..SEND_SLOTS).rev().collect(),
            unpushed: VecDeque::new(),
            backlog: VecDeque::new(),
            scratch: Vec::with_capacity(CQ_ENTRIES as usize),
            spare: Vec::new(),
            gso_refused: false,
            features,
        };
        backend.arm();
        if let Err(e) = backend.ring.submit() {
            let socket = backend.socket.try_clone();
            drop(backend);
            return Err(match socket {
                Ok(socket) => UringUnavailable::with_socket(UnavailableReason::Submit(e), socket),
                Err(_) => UringUnavailable::new(UnavailableReason::Submit(e)),
            });
        }
        tracing::debug!(features = %backend.features, "io_uring backend open");
        Ok(backend)
    }

    /// The ring setup flags in use and the socket's offloads, for logs.
    pub fn features(&self) -> &str {
        &self.features
    }

    /// Re-arm the multishot receive and the waker poll if they ended.
    fn arm(&mut self) {
        self.ring.arm_recv(self.socket.as_raw_fd());
        self.ring.arm_poll(self.wake_fd);
    }

    /// Push the next system call of slot `index`'s batch; queue the slot when it does not fit.
    fn submit_slot(&mut self, index: usize) {
        let socket_is_v6 = self.socket_is_v6;
        let Some(Some(send)) = self.slots.get_mut(index) else {
            return;
        };
        let total = send.total;
        let (start, len, segment) = if send.gso {
            (0, total, Some(send.segment_size))
        } else {
            let step = if send.segment_size == 0 { total } else { send.segment_size };
            let start = send.offset.min(total);
            (start, step.min(total - start), None)
        };
        send.chunk = len;
        let destination = match (send.destination, socket_is_v6) {
            (SocketAddr::V4(v4), true) => SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)),
            (SocketAddr::V6(v6), false) => match v6.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
                None => send.destination,
            },
            (other, _) => other,
        };
        let control = SendControl {
            ipv4: match destination {
                SocketAddr::V4(_) => true,
                SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
            },
            ecn: send.ecn,
            segment_size: segment.filter(|&s| s > 0 && s < total).map(|s| s.min(usize::from(u16::MAX)) as u16),
            src_ip: send.src_ip,
        };
        let socket = self.socket.as_raw_fd();
        if !self.ring.push_send(index, socket, destination, start..start + len, &control) {
            self.unpushed.push_back(index);
        }
    }

    fn push_unpushed(&mut self) {
        for _ in 0..self.unpushed.len() {
            let Some(index) = self.unpushed.pop_front() else {
                break;
            };
            self.submit_slot(index);
            if self.unpushed.back() == Some(&index) {
                break;
            }
        }
    }

    /// Submit queued SQEs (and, with deferred task running, let the kernel post completions).
    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Take every completion off the ring. Receive completions go to `sink`, or to the backlog
    /// when there is none.
    fn reap(&mut self, mut sink: Option<RecvSink<'_>>) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.scratch);
        completions.clear();
        self.ring.reap(&mut completions);
        let mut error = None;
        for c in completions.drain(..) {
            match c {
                Completion::Received { result, buffer } => {
                    let received = PendingRecv { result, buffer };
                    match sink.as_deref_mut() {
                        Some(sink) => {
                            if let Err(e) = self.complete_recv(received, sink) {
                                error.get_or_insert(e);
                            }
                        }
                        None => self.backlog.push_back(received),
                    }
                }
                Completion::Sent { slot, result } => self.complete_send(slot, result),
                Completion::Other => {}
            }
        }
        self.scratch = completions;
        self.ring.publish_buffers();
        error.map_or(Ok(()), Err)
    }

    fn complete_recv(&mut self, received: PendingRecv, sink: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()> {
        let PendingRecv { result, buffer } = received;
        if result < 0 {
            if let Some(buffer) = buffer {
                self.ring.give_back(buffer);
            }
            let e = io::Error::from_raw_os_error(-result);
            return match -result {
                libc::ENOBUFS => {
                    bump(&self.stats.rx_no_buffers, 1);
                    Ok(())
                }
                libc::EINTR | libc::EAGAIN | libc::ECANCELED => Ok(()),
                _ if super::portable::is_transient_recv_error(&e) => Ok(()),
                _ => Err(e),
            };
        }
        let Some(buffer) = buffer else { return Ok(()) };
        let len = usize::try_from(result).unwrap_or(0);
        let mut received = None;
        if let Some(out) = self.ring.received(&buffer, len) {
            if out.is_payload_truncated() {
                bump(&self.stats.rx_truncated, 1);
            } else if let Some(remote) = (!out.is_name_data_truncated())
                .then(|| parse_sockaddr(out.name_data()))
                .flatten()
                .map(crate::address::unmapped)
            {
                let control = parse_control(out.control_data());
                let payload = out.payload_data();
                let stride = control.stride.unwrap_or(payload.len());
                self.stats.rx_batch.record(if stride == 0 { 1 } else { payload.len().div_ceil(stride) });
                let meta =
                    RecvMeta { remote, len: payload.len(), stride, ecn: control.ecn, local_ip: control.local_ip };
                let copy = (payload.len() < KEEP_BUFFER_MIN).then(|| BytesMut::from(payload));
                received = Some((meta, copy));
            }
        }
        match received {
            Some((meta, Some(copy))) => {
                self.ring.give_back(buffer);
                sink(meta, copy);
            }
            Some((meta, None)) => {
                if let Some(mut data) = self.ring.take(buffer, len) {
                    data.advance(RECV_PAYLOAD_OFFSET.min(data.len()));
                    data.truncate(meta.len);
                    sink(meta, data);
                }
            }
            None => self.ring.give_back(buffer),
        }
        Ok(())
    }

    fn complete_send(&mut self, index: usize, result: i32) {
        let gso_refused = self.gso_refused;
        let Some(Some(send)) = self.slots.get_mut(index) else {
            return;
        };
        let total = send.total;
        let mut resend = false;
        if result >= 0 {
            if send.gso {
                let segments = send.segments().max(1);
                self.stats.tx_batch.record(segments);
                bump(&self.stats.tx_datagrams, segments as u64);
                bump(&self.stats.tx_bytes, total as u64);
            } else {
                self.stats.tx_batch.record(1);
                bump(&self.stats.tx_datagrams, 1);
                bump(&self.stats.tx_bytes, send.chunk as u64);
                send.offset += send.chunk;
                resend = send.offset < total;
            }
        } else {
            match -result {
                libc::EAGAIN | libc::EINTR => resend = true,
                libc::EIO | libc::EINVAL if send.gso => {
                    // The device or kernel refuses segmentation offload: resend every datagram
                    // of this batch on its own, and never use GSO on this socket again.
                    if !gso_refused {
                        tracing::info!(
                            error = %io::Error::from_raw_os_error(-result),
                            "kernel refused UDP GSO; sending one datagram per call from now on"
                        );
                    }
                    self.gso_refused = true;
                    bump(&self.stats.gso_fallbacks, 1);
                    send.gso = false;
                    send.offset = 0;
                    resend = true;
                }
                errno => {
                    self.stats.send_failed(&io::Error::from_raw_os_error(errno), send.destination);
                    if !send.gso {
                        // Drop only this datagram; the rest of the batch still goes out.
                        send.offset += send.chunk.max(1);
                        resend = send.offset < total;
                    }
                }
            }
        }
        if resend {
            self.submit_slot(index);
        } else if let Some(slot) = self.slots.get_mut(index) {
            *slot = None;
            self.free.push(index);
            if let Some(buf) = self.ring.unload_send(index) {
                self.recycle(buf);
            }
        }
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Completions are waiting to be processed: `wait` must not block.
    fn has_pending(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.completion_is_empty()
    }

    /// Let deferred task work run if the kernel flagged some, so completions become visible.
    fn run_task_work(&mut self) -> io::Result<()> {
        if self.ring.taskrun() {
            self.submit()?;
        }
        Ok(())
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn max_gso_segments(&self) -> usize {
        if self.gso_refused {
            1
        } else {
            self.state.max_gso_segments().clamp(1, crate::MAX_GSO_SEGMENTS)
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.push_unpushed();
        self.arm();
        if self.has_pending() {
            return self.submit();
        }
        match self.ring.submit_and_wait(1, timeout) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn recv(&mut self, sink: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()> {
        self.run_task_work()?;
        let mut error = None;
        while let Some(c) = self.backlog.pop_front() {
            if let Err(e) = self.complete_recv(c, sink) {
                error.get_or_insert(e);
            }
        }
        if let Err(e) = self.reap(Some(sink)) {
            error.get_or_insert(e);
        }
        // Every buffer is back in the ring now: a receive that stopped (ENOBUFS, error) can resume.
        self.arm();
        error.map_or(Ok(()), Err)
    }

    fn send(&mut self, batch: OutBatch) -> Result<(), SendRefused> {
        if self.free.is_empty() {
            // Every slot is queued or in flight. Submit what is queued (UDP sends complete while
            // the kernel takes them), then collect finished sends; receive completions wait in the
            // backlog for `recv`. An extra kernel entry, but only when a turn sends more than the
            // slots hold (a relay forwarding a burst): refusing would drop the datagrams.
            self.push_unpushed();
            if self.submit().is_err() || self.run_task_work().is_err() || self.reap(None).is_err() {
                return Err(SendRefused::WouldBlock(batch));
            }
        }
        let Some(index) = self.free.pop() else {
            return Err(SendRefused::WouldBlock(batch));
        };
        // UDP_SEGMENT carries a u16; larger segments cannot be offloaded.
        let gso = !self.gso_refused
            && batch.segments() > 1
            && batch.segment_size <= usize::from(u16::MAX)
            && batch.segment_size < batch.buf.len();
        let OutBatch { destination, ecn, src_ip, segment_size, buf } = batch;
        let total = buf.len();
        if let Err(buf) = self.ring.load_send(index, buf) {
            self.free.push(index);
            return Err(SendRefused::WouldBlock(OutBatch { destination, ecn, src_ip, segment_size, buf }));
        }
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(());
        };
        *slot = Some(SendProgress { destination, ecn, src_ip, segment_size, total, gso, offset: 0, chunk: 0 });
        self.submit_slot(index);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_unpushed();
        let queued = !self.ring.submission_is_empty();
        if queued || self.ring.taskrun() {
            self.submit()?;
        }
        Ok(())
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn sends_in_flight(&self) -> usize {
        // A slot is free again once its completion has been reaped.
        SEND_SLOTS - self.free.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_reasons_are_one_line() {
        let reasons = [
            UnavailableReason::Setup { error: io::Error::from_raw_os_error(libc::EPERM) },
            UnavailableReason::NoMultishotRecv,
            UnavailableReason::NoBufRing(io::Error::from_raw_os_error(libc::EINVAL)),
            UnavailableReason::MissingOpcode("SENDMSG"),
        ];
        for reason in reasons {
            let line = UringUnavailable::new(reason).to_string();
            assert!(!line.contains('\n'), "{line}");
        }
        let line = UringUnavailable::new(UnavailableReason::Setup { error: io::Error::from_raw_os_error(libc::EPERM) })
            .to_string();
        assert!(line.starts_with("io_uring_setup failed: Operation not permitted"), "{line}");
        assert!(line.contains("kernel.io_uring_disabled=2 or seccomp"), "{line}");
    }
}
