//! The io_uring backend: one ring per core, a multishot RECVMSG into a provided-buffer ring,
//! SENDMSG with `UDP_SEGMENT` from a fixed set of send slots, and a multishot poll on the core's
//! waker eventfd so that one `io_uring_enter` waits for all three.
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER` and `IORING_SETUP_DEFER_TASKRUN` when the
//! kernel accepts them: only the thread that opened the backend may submit to it or wait on it.
//! [`UringBackend`] is therefore neither `Send` nor `Sync`; open it on the core's own thread.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use quinn_proto::EcnCodepoint;
use quinn_udp::{UdpSockRef, UdpSocketState};

use super::{Backend, BackendKind, BackendParams, OutBatch, RecvMeta, SendRefused};
use crate::stats::{bump, CoreStats};

/// Submission queue size. Sends, re-arms and the cancel at teardown fit easily.
const SQ_ENTRIES: u32 = 256;
/// Completion queue size: room for a completion per provided buffer, per send slot, and more.
const CQ_ENTRIES: u32 = 1024;
/// Provided receive buffers per core (a power of two, as the buffer ring requires).
const RECV_BUFFERS: u16 = 128;
/// Buffer group id of the receive buffers; one group per ring.
const BUF_GROUP: u16 = 0;
/// Room for the source address in each receive buffer.
const RECV_NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_storage>();
/// Room for control messages (GRO segment size, TOS/TCLASS, PKTINFO) in each receive buffer.
const RECV_CONTROL_LEN: usize = 128;
/// `struct io_uring_recvmsg_out`: four `u32`s at the start of every multishot RECVMSG buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// Each receive buffer: header room plus a 64 KiB GRO super-datagram, rounded to whole pages.
const RECV_BUF_LEN: usize = (RECVMSG_OUT_LEN + RECV_NAME_LEN + RECV_CONTROL_LEN + 65_536).div_ceil(4096) * 4096;
/// Sends in flight at once; further batches are refused with [`SendRefused::WouldBlock`].
const SEND_SLOTS: usize = 64;
/// Room for the control messages of one send (UDP_SEGMENT, TOS/TCLASS, PKTINFO).
const SEND_CONTROL_LEN: usize = 128;
/// Buffers kept for reuse by senders.
const SPARE_BUFFERS: usize = 16;
/// How long teardown waits for the kernel to release buffers before leaking them instead.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// `user_data` of a completion: the operation kind in the top byte, a slot index below.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_POLL: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_CANCEL: u64 = 4;
const TAG_RECV: u64 = KIND_RECV << KIND_SHIFT;
const TAG_POLL: u64 = KIND_POLL << KIND_SHIFT;
const TAG_CANCEL: u64 = KIND_CANCEL << KIND_SHIFT;

fn send_tag(slot: usize) -> u64 {
    (KIND_SEND << KIND_SHIFT) | slot as u64
}

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

/// An anonymous private mapping, unmapped on drop unless leaked.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Never unmap: the kernel may still reference the memory.
    leaked: bool,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses aliases no memory
        // of ours; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self { ptr, len, leaked: false })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and the owner guarantees that the
        // kernel no longer references the memory (see `UringBackend::drop`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The provided-buffer ring and the receive buffers it hands to the kernel.
struct ProvidedBuffers {
    /// `RECV_BUFFERS` ring entries; page-aligned, as the kernel requires.
    ring: Mapping,
    /// `RECV_BUFFERS` buffers of `RECV_BUF_LEN` bytes.
    buffers: Mapping,
    /// Our copy of the ring tail; published to the kernel by [`Self::publish`].
    tail: u16,
}

impl ProvidedBuffers {
    fn new() -> io::Result<Self> {
        let ring = Mapping::new(usize::from(RECV_BUFFERS) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(RECV_BUFFERS) * RECV_BUF_LEN)?;
        Ok(Self { ring, buffers, tail: 0 })
    }

    /// Keep the memory mapped for the life of the process.
    fn leak(&mut self) {
        self.ring.leaked = true;
        self.buffers.leaked = true;
    }

    fn ring_base(&self) -> *mut BufRingEntry {
        self.ring.ptr.as_ptr().cast()
    }

    /// Put buffer `bid` back at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let bid = bid % RECV_BUFFERS;
        let index = usize::from(self.tail % RECV_BUFFERS);
        let addr = self.buffers.ptr.as_ptr() as u64 + (usize::from(bid) * RECV_BUF_LEN) as u64;
        // SAFETY: `index < RECV_BUFFERS`, so the entry lies inside the ring mapping. The kernel
        // only reads entries between its head and the published tail; this one is beyond the
        // published tail, so nothing else accesses it now. The setters leave the `resv` field
        // (the ring tail, in entry 0) alone.
        let entry = unsafe { &mut *self.ring_base().add(index) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: `ring_base` points at the first, initialised entry of a live, page-aligned ring
        // mapping, so `tail` yields the address of the shared tail field, which is a suitably
        // aligned u16 that the kernel only reads (with acquire ordering).
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.ring_base()).cast_mut()) };
        // Release: the entries written in `push` must be visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// The kernel must have completed a receive into `bid` and not been given it back since.
    unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(RECV_BUF_LEN);
        let offset = usize::from(bid % RECV_BUFFERS) * RECV_BUF_LEN;
        // SAFETY: `offset + len` lies inside the buffers mapping; the caller guarantees the kernel
        // is not writing to this buffer while the slice lives.
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(offset), len) }
    }
}

/// A cmsg buffer with the alignment `cmsghdr` needs.
#[repr(C, align(8))]
struct ControlBuf([u8; SEND_CONTROL_LEN]);

/// Everything the kernel reads for one SENDMSG, at a stable (boxed) address until its completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: socket2::SockAddr,
    control: ControlBuf,
    /// The batch being sent; `None` when the slot is free.
    batch: Option<OutBatch>,
    /// Whether the SQE in flight carries `UDP_SEGMENT`.
    gso: bool,
    /// Start and length of the datagram in flight when sending one datagram at a time.
    offset: usize,
    chunk: usize,
    /// The SQE has been pushed to the submission queue (and so the kernel may use this slot).
    pushed: bool,
}

impl SendSlot {
    fn new() -> Self {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero bytes are valid (null
        // pointers, zero lengths).
        let (hdr, iov) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            hdr,
            iov,
            name: socket2::SockAddr::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            control: ControlBuf([0; SEND_CONTROL_LEN]),
            batch: None,
            gso: false,
            offset: 0,
            chunk: 0,
            pushed: false,
        }
    }

    /// Fill the msghdr for the next system call of the current batch. Returns false if there is
    /// no batch.
    fn prepare(&mut self, socket_is_v6: bool) -> bool {
        let Some(batch) = self.batch.as_ref() else {
            return false;
        };
        let total = batch.buf.len();
        let (start, len, segment) = if self.gso {
            (0, total, Some(batch.segment_size))
        } else {
            let step = if batch.segment_size == 0 { total } else { batch.segment_size };
            let start = self.offset.min(total);
            (start, step.min(total - start), None)
        };
        self.chunk = len;
        let destination = match (batch.destination, socket_is_v6) {
            (SocketAddr::V4(v4), true) => SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)),
            (SocketAddr::V6(v6), false) => match v6.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
                None => batch.destination,
            },
            (other, _) => other,
        };
        let is_ipv4 = match destination {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
        };
        let mut control = CmsgWriter { buf: &mut self.control.0, len: 0 };
        // RFC 9000 §13.4: ECN codepoints on every datagram when the path supports them.
        if let Some(ecn) = batch.ecn {
            let value = (ecn as u8 as libc::c_int).to_ne_bytes();
            if is_ipv4 {
                control.push(libc::IPPROTO_IP, libc::IP_TOS, &value);
            } else {
                control.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &value);
            }
        }
        if let Some(segment) = segment.filter(|&s| s > 0 && s < total) {
            control.push(libc::SOL_UDP, libc::UDP_SEGMENT, &(segment.min(usize::from(u16::MAX)) as u16).to_ne_bytes());
        }
        match batch.src_ip {
            Some(IpAddr::V4(ip)) => {
                // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
                let mut info = [0u8; 12];
                info[4..8].copy_from_slice(&ip.octets());
                control.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
            }
            Some(IpAddr::V6(ip)) => {
                // struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
                let mut info = [0u8; 20];
                info[..16].copy_from_slice(&ip.octets());
                control.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
            }
            None => {}
        }
        let control_len = control.len;
        self.name = socket2::SockAddr::from(destination);
        self.iov.iov_base = batch.buf.as_ptr().wrapping_add(start).cast_mut().cast();
        self.iov.iov_len = len;
        self.hdr.msg_name = self.name.as_ptr().cast_mut().cast();
        self.hdr.msg_namelen = self.name.len();
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = if control_len == 0 { std::ptr::null_mut() } else { self.control.0.as_mut_ptr().cast() };
        self.hdr.msg_controllen = control_len as _;
        self.hdr.msg_flags = 0;
        true
    }
}

/// Writes control messages into a byte buffer with the kernel's `CMSG_*` layout.
struct CmsgWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

const fn cmsg_align(len: usize) -> usize {
    let align = std::mem::size_of::<usize>();
    (len + align - 1) & !(align - 1)
}

const CMSG_HDR_LEN: usize = cmsg_align(std::mem::size_of::<libc::cmsghdr>());

impl CmsgWriter<'_> {
    fn push(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) {
        let space = CMSG_HDR_LEN + cmsg_align(data.len());
        let Some(out) = self.buf.get_mut(self.len..self.len + space) else {
            return;
        };
        out.fill(0);
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }: on the layouts Linux
        // libcs use, a native-endian usize at offset 0 encodes cmsg_len (musl's padding is zero).
        let word = std::mem::size_of::<usize>();
        out[..word].copy_from_slice(&(CMSG_HDR_LEN + data.len()).to_ne_bytes());
        out[word..word + 4].copy_from_slice(&level.to_ne_bytes());
        out[word + 4..word + 8].copy_from_slice(&ty.to_ne_bytes());
        out[CMSG_HDR_LEN..CMSG_HDR_LEN + data.len()].copy_from_slice(data);
        self.len += space;
    }
}

/// Iterate over `(level, type, data)` of the control messages in `buf`.
fn cmsgs(buf: &[u8]) -> impl Iterator<Item = (libc::c_int, libc::c_int, &[u8])> {
    let word = std::mem::size_of::<usize>();
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from_ne_bytes(rest.get(..word)?.try_into().ok()?);
        let level = libc::c_int::from_ne_bytes(rest.get(word..word + 4)?.try_into().ok()?);
        let ty = libc::c_int::from_ne_bytes(rest.get(word + 4..word + 8)?.try_into().ok()?);
        let data = rest.get(CMSG_HDR_LEN..len)?;
        rest = rest.get(cmsg_align(len)..).unwrap_or_default();
        Some((level, ty, data))
    })
}

fn read_int(data: &[u8]) -> Option<libc::c_int> {
    match data.len() {
        1 => data.first().map(|&b| libc::c_int::from(b)),
        _ => Some(libc::c_int::from_ne_bytes(data.get(..4)?.try_into().ok()?)),
    }
}

/// Decode a `sockaddr_in` or `sockaddr_in6` as the kernel wrote it.
fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = libc::sa_family_t::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope_id = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id)))
        }
        _ => None,
    }
}

/// What the control messages of one received datagram say.
#[derive(Default)]
struct RecvControl {
    stride: Option<usize>,
    ecn: Option<EcnCodepoint>,
    local_ip: Option<IpAddr>,
}

fn parse_control(control: &[u8]) -> RecvControl {
    let mut out = RecvControl::default();
    for (level, ty, data) in cmsgs(control) {
        match (level, ty) {
            (libc::SOL_UDP, libc::UDP_GRO) => {
                out.stride = read_int(data).and_then(|s| usize::try_from(s).ok()).filter(|&s| s > 0);
            }
            (libc::IPPROTO_IP, libc::IP_TOS) | (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                out.ecn = read_int(data).and_then(|tos| EcnCodepoint::from_bits((tos & 0b11) as u8));
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo: the destination address of the datagram is `ipi_addr`.
                if let Some(ip) = data.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    out.local_ip = Some(IpAddr::V4(Ipv4Addr::from(ip)));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(ip) = data.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                    out.local_ip = Some(IpAddr::V6(Ipv6Addr::from(ip)));
                }
            }
            _ => {}
        }
    }
    out
}

/// Where received datagrams go.
type RecvSink<'a> = &'a mut dyn FnMut(RecvMeta, &[u8]);

/// A completion copied out of the ring.
#[derive(Debug, Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// io_uring backend. Not `Send`, not `Sync`: it must be used, and dropped, by the thread that
/// opened it (the ring is single-issuer).
pub struct UringBackend {
    // Field order matters: fields drop in declaration order, and the ring must be closed before
    // the memory it may reference (receive buffers, buffer ring, send slots, msghdrs) is freed.
    // `Drop` additionally cancels and waits for every operation first.
    ring: IoUring,
    buffers: ProvidedBuffers,
    /// The msghdr template of the multishot RECVMSG (name and control lengths).
    recv_hdr: Box<libc::msghdr>,
    /// Fixed-size, never reallocated: each slot keeps its address while the kernel reads it.
    slots: Box<[SendSlot]>,
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
    backlog: VecDeque<Completion>,
    scratch: Vec<Completion>,
    spare: Vec<Vec<u8>>,
    recv_armed: bool,
    poll_armed: bool,
    /// GSO was refused by the kernel once: send one datagram per system call from then on.
    gso_refused: bool,
    features: String,
    _single_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("socket", &self.socket)
            .field("features", &self.features)
            .field("gso_refused", &self.gso_refused)
            .field("sends_in_flight", &(SEND_SLOTS - self.free.len()))
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
        let mut buffers = match ProvidedBuffers::new() {
            Ok(b) => b,
            Err(e) => return Err(UringUnavailable::with_socket(UnavailableReason::Memory(e), socket)),
        };
        // SAFETY: the ring mapping holds RECV_BUFFERS entries, is page-aligned, zeroed (tail 0),
        // and lives in `buffers` until after the ring is closed (field order and `Drop`).
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(buffers.ring_base() as u64, RECV_BUFFERS, BUF_GROUP, 0)
        };
        if let Err(e) = registered {
            return Err(UringUnavailable::with_socket(UnavailableReason::NoBufRing(e), socket));
        }
        for bid in 0..RECV_BUFFERS {
            buffers.push(bid);
        }
        buffers.publish();

        // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = RECV_NAME_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = RECV_CONTROL_LEN as _;

        let gso = state.max_gso_segments().clamp(1, crate::MAX_GSO_SEGMENTS);
        let features = format!("{mode}; gso={gso} gro={}", state.gro_segments());
        let mut backend = Self {
            ring,
            buffers,
            recv_hdr,
            slots: (0..SEND_SLOTS).map(|_| SendSlot::new()).collect(),
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
            recv_armed: false,
            poll_armed: false,
            gso_refused: false,
            features,
            _single_thread: PhantomData,
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

    /// Push one SQE; when the submission queue is full, submit it first.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry pushed here points only at memory owned by `self` at a stable
            // address (the boxed msghdr, the boxed slice of send slots, the buffer ring) that outlives the operation:
            // slots are reused only after their completion, and `Drop` waits for all
            // completions before freeing anything.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.ring.submit().is_err() {
                break;
            }
        }
        false
    }

    /// Re-arm the multishot receive and the waker poll if they ended.
    fn arm(&mut self) {
        if !self.recv_armed {
            let entry = opcode::RecvMsgMulti::new(Fd(self.socket.as_raw_fd()), &*self.recv_hdr, BUF_GROUP)
                .build()
                .user_data(TAG_RECV);
            self.recv_armed = self.push(&entry);
        }
        if !self.poll_armed {
            let entry =
                opcode::PollAdd::new(Fd(self.wake_fd), libc::POLLIN as u32).multi(true).build().user_data(TAG_POLL);
            self.poll_armed = self.push(&entry);
        }
    }

    /// Prepare slot `index` for its next system call and push its SQE.
    fn submit_slot(&mut self, index: usize) {
        let socket_is_v6 = self.socket_is_v6;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if !slot.prepare(socket_is_v6) {
            return;
        }
        let entry = opcode::SendMsg::new(Fd(self.socket.as_raw_fd()), &slot.hdr).build().user_data(send_tag(index));
        let pushed = self.push(&entry);
        if let Some(slot) = self.slots.get_mut(index) {
            slot.pushed = pushed;
        }
        if !pushed {
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
        completions.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
        let mut error = None;
        for c in completions.drain(..) {
            match c.user_data >> KIND_SHIFT {
                KIND_RECV => match sink.as_deref_mut() {
                    Some(sink) => {
                        if let Err(e) = self.complete_recv(c, sink) {
                            error.get_or_insert(e);
                        }
                    }
                    None => self.backlog.push_back(c),
                },
                KIND_SEND => self.complete_send(c),
                KIND_POLL if !cqueue::more(c.flags) => self.poll_armed = false,
                _ => {}
            }
        }
        self.scratch = completions;
        self.buffers.publish();
        error.map_or(Ok(()), Err)
    }

    fn complete_recv(&mut self, c: Completion, sink: &mut dyn FnMut(RecvMeta, &[u8])) -> io::Result<()> {
        if !cqueue::more(c.flags) {
            self.recv_armed = false;
        }
        let bid = cqueue::buffer_select(c.flags);
        if c.result < 0 {
            if let Some(bid) = bid {
                self.buffers.push(bid);
            }
            let e = io::Error::from_raw_os_error(-c.result);
            return match -c.result {
                libc::ENOBUFS => {
                    bump(&self.stats.rx_no_buffers, 1);
                    Ok(())
                }
                libc::EINTR | libc::EAGAIN | libc::ECANCELED => Ok(()),
                _ if super::portable::is_transient_recv_error(&e) => Ok(()),
                _ => Err(e),
            };
        }
        let Some(bid) = bid else { return Ok(()) };
        let len = usize::try_from(c.result).unwrap_or(0);
        // SAFETY: this completion reports that the kernel filled buffer `bid`; it is given back
        // only below, after `sink` is done with the slice.
        let filled = unsafe { self.buffers.filled(bid, len) };
        if let Ok(out) = RecvMsgOut::parse(filled, &self.recv_hdr) {
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
                sink(
                    RecvMeta { remote, len: payload.len(), stride, ecn: control.ecn, local_ip: control.local_ip },
                    payload,
                );
            }
        }
        self.buffers.push(bid);
        Ok(())
    }

    fn complete_send(&mut self, c: Completion) {
        let index = (c.user_data & ((1 << KIND_SHIFT) - 1)) as usize;
        let gso_refused = self.gso_refused;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.pushed = false;
        let Some(batch) = slot.batch.as_ref() else {
            return;
        };
        let total = batch.buf.len();
        let mut resend = false;
        if c.result >= 0 {
            if slot.gso {
                let segments = batch.segments().max(1);
                self.stats.tx_batch.record(segments);
                bump(&self.stats.tx_datagrams, segments as u64);
                bump(&self.stats.tx_bytes, total as u64);
            } else {
                self.stats.tx_batch.record(1);
                bump(&self.stats.tx_datagrams, 1);
                bump(&self.stats.tx_bytes, slot.chunk as u64);
                slot.offset += slot.chunk;
                resend = slot.offset < total;
            }
        } else {
            match -c.result {
                libc::EAGAIN | libc::EINTR => resend = true,
                libc::EIO | libc::EINVAL if slot.gso => {
                    // The device or kernel refuses segmentation offload: resend every datagram
                    // of this batch on its own, and never use GSO on this socket again.
                    if !gso_refused {
                        tracing::info!(
                            error = %io::Error::from_raw_os_error(-c.result),
                            "kernel refused UDP GSO; sending one datagram per call from now on"
                        );
                    }
                    self.gso_refused = true;
                    bump(&self.stats.gso_fallbacks, 1);
                    slot.gso = false;
                    slot.offset = 0;
                    resend = true;
                }
                errno => {
                    self.stats.send_failed(&io::Error::from_raw_os_error(errno), batch.destination);
                    if !slot.gso {
                        // Drop only this datagram; the rest of the batch still goes out.
                        slot.offset += slot.chunk.max(1);
                        resend = slot.offset < total;
                    }
                }
            }
        }
        if resend {
            self.submit_slot(index);
        } else if let Some(batch) = slot.batch.take() {
            self.free.push(index);
            self.recycle(batch.buf);
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
        !self.backlog.is_empty() || !self.ring.completion().is_empty()
    }

    /// Let deferred task work run if the kernel flagged some, so completions become visible.
    fn run_task_work(&mut self) -> io::Result<()> {
        if self.ring.submission().taskrun() {
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
        let result = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(timeout) => {
                let ts = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn recv(&mut self, sink: &mut dyn FnMut(RecvMeta, &[u8])) -> io::Result<()> {
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
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(SendRefused::WouldBlock(batch));
        };
        slot.batch = Some(batch);
        slot.gso = gso;
        slot.offset = 0;
        slot.chunk = 0;
        self.submit_slot(index);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_unpushed();
        let queued = !self.ring.submission().is_empty();
        if queued || self.ring.submission().taskrun() {
            self.submit()?;
        }
        Ok(())
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // The kernel may still write into receive buffers or read send slots; closing the ring
        // alone does not wait for that. Cancel everything and wait for the last completions, so
        // that nothing we free is referenced any more.
        for index in std::mem::take(&mut self.unpushed) {
            if let Some(slot) = self.slots.get_mut(index) {
                slot.batch = None;
            }
        }
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(TAG_CANCEL);
        let mut clean = self.push(&cancel);
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while clean {
            let sends_in_flight = self.slots.iter().any(|s| s.pushed);
            if !self.recv_armed && !self.poll_armed && !sends_in_flight {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                clean = false;
                break;
            };
            let ts = Timespec::from(left.min(Duration::from_millis(100)));
            let args = SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) {
                    clean = false;
                }
            }
            for c in self.ring.completion() {
                match c.user_data() >> KIND_SHIFT {
                    KIND_RECV if !cqueue::more(c.flags()) => self.recv_armed = false,
                    KIND_POLL if !cqueue::more(c.flags()) => self.poll_armed = false,
                    KIND_SEND => {
                        let index = (c.user_data() & ((1 << KIND_SHIFT) - 1)) as usize;
                        if let Some(slot) = self.slots.get_mut(index) {
                            slot.pushed = false;
                        }
                    }
                    _ => {}
                }
            }
        }
        if !clean {
            // Better to leak a few megabytes than to let the kernel write into freed memory.
            tracing::warn!("io_uring operations did not finish at teardown; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::replace(
                &mut self.recv_hdr,
                Box::new(
                    // SAFETY: all-zero bytes are a valid msghdr.
                    unsafe { std::mem::zeroed() },
                ),
            ));
            self.buffers.leak();
        }
        // Fields now drop in declaration order: the ring first, then the memory it used.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_written_are_read_back() {
        let mut buf = [0u8; SEND_CONTROL_LEN];
        let mut w = CmsgWriter { buf: &mut buf, len: 0 };
        w.push(libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes());
        w.push(libc::IPPROTO_IP, libc::IP_TOS, &[0b10]);
        let mut info = [0u8; 12];
        info[8..12].copy_from_slice(&[10, 1, 2, 3]);
        w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        let len = w.len;
        let parsed = parse_control(&buf[..len]);
        assert_eq!(parsed.stride, Some(1200));
        assert_eq!(parsed.ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(parsed.local_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        // A cut-off buffer yields what is complete and never reads past the end.
        let cut = parse_control(&buf[..len - 8]);
        assert_eq!(cut.stride, Some(1200));
        assert_eq!(cut.local_ip, None);
    }

    #[test]
    fn socket_addresses_decode_for_both_families() {
        for addr in ["192.0.2.7:4433", "[2001:db8::1]:9000", "[::ffff:192.0.2.7]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let raw = socket2::SockAddr::from(addr);
            // SAFETY: `as_ptr` points at `len` initialised bytes of the SockAddr, alive here.
            let bytes = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.len() as usize) };
            assert_eq!(parse_sockaddr(bytes), Some(addr));
        }
        assert_eq!(parse_sockaddr(&[0u8; 4]), None);
    }

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
