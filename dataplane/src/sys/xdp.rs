//! AF_XDP sockets (Documentation/networking/af_xdp.rst): one per RX queue, each with its own
//! UMEM (the frames the kernel receives into and transmits from) and its four rings.
//!
//! The kernel shares the rings with us through memory mappings: we produce into the fill ring
//! (frames it may receive into) and the TX ring (frames to send), and consume from the RX ring
//! (frames received) and the completion ring (frames sent). Each ring is a power-of-two array
//! of descriptors with a producer and a consumer index. The producer writes descriptors, then
//! publishes its index with release ordering; the consumer reads the index with acquire ordering,
//! reads the descriptors, then publishes its own index with release ordering, handing the slots
//! back.
//!
//! A UMEM frame belongs to the kernel from the moment it is published on the fill or TX ring
//! until it comes back on the RX or completion ring. [`XskSocket`] keeps that invariant itself:
//! callers only see a frame inside [`XskSocket::receive`]'s closure (between the RX ring and the
//! fill ring) or [`XskSocket::transmit`]'s (a free TX frame, before it is published).

use std::ffi::CString;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// The sizes of a socket's UMEM and rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// Frames in the UMEM; half receive, half transmit.
    pub frames: u32,
    /// Descriptors per ring (a power of two).
    pub ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self { frame_size: 4096, frames: 4096, ring_size: 2048 }
    }
}

/// How the socket moves frames between the driver and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// The driver DMAs into the UMEM itself.
    ZeroCopy,
    /// The kernel copies each frame (any driver).
    Copy,
}

/// An anonymous or ring mapping, unmapped on drop.
#[derive(Debug)]
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// `len` bytes of `fd` at `offset` (a ring), or anonymous memory when `fd` is `None`.
    fn new(len: usize, fd: Option<RawFd>, offset: i64) -> io::Result<Self> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1),
        };
        // SAFETY: a new mapping at an address the kernel chooses aliases no memory of ours; the
        // result is checked before use.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self { ptr, len })
    }
}

// SAFETY: a mapping is memory owned by this value alone (no other value points into it), so it
// may move to another thread with its owner: a core takes its socket with it.
unsafe impl Send for Mmap {}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned. For the UMEM, the kernel keeps its
        // own pin on the pages for as long as the socket lives, so unmapping our view of them
        // frees nothing it still writes to.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One of the four rings: `T` is `u64` (fill, completion: frame addresses) or `xdp_desc` (RX,
/// TX: address and length).
#[derive(Debug)]
struct Ring<T> {
    /// Holds the mapping the pointers below point into, until the ring drops.
    _map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    /// Our copy of the producer index (ahead of the shared one until published, on rings we
    /// produce).
    cached_producer: u32,
    /// Our copy of the consumer index.
    cached_consumer: u32,
    _descs: PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// Map the ring of `size` descriptors that `offsets` describe, at page offset `pgoff`.
    fn map(fd: RawFd, size: u32, offsets: &libc::xdp_ring_offset, pgoff: i64) -> io::Result<Self> {
        let desc_at = usize::try_from(offsets.desc).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let len = desc_at + size as usize * std::mem::size_of::<T>();
        let fits = |at: u64, width: usize| at as usize + width <= len && (at as usize).is_multiple_of(width);
        if !size.is_power_of_two()
            || !fits(offsets.producer, 4)
            || !fits(offsets.consumer, 4)
            || !fits(offsets.flags, 4)
            || !desc_at.is_multiple_of(std::mem::align_of::<T>())
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "AF_XDP ring offsets out of the mapping"));
        }
        let map = Mmap::new(len, Some(fd), pgoff)?;
        let at = |offset: u64| -> NonNull<u8> {
            // SAFETY: every offset was checked above to lie inside the `len` bytes mapped.
            unsafe { map.ptr.add(offset as usize) }
        };
        let (producer, consumer, flags) =
            (at(offsets.producer).cast(), at(offsets.consumer).cast(), at(offsets.flags).cast());
        let descs = at(offsets.desc).cast();
        let mut ring = Self {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            size,
            cached_producer: 0,
            cached_consumer: 0,
            _descs: PhantomData,
        };
        ring.cached_producer = ring.producer().load(Ordering::Acquire);
        ring.cached_consumer = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside the live ring mapping, which the kernel and we only ever
        // access atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    /// Whether the kernel asks to be woken (sendto or poll) to process this ring.
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & (size - 1) < size`, and the mapping holds `size` descriptors from
        // `descs` on.
        unsafe { self.descs.as_ptr().add((index & (self.size - 1)) as usize) }
    }

    // --- Rings we produce into (fill, TX). ---

    /// Free slots: the kernel has consumed everything before its consumer index.
    fn free(&mut self) -> u32 {
        // Acquire: the kernel's reads of the slots it consumed happen before we overwrite them.
        self.cached_consumer = self.consumer().load(Ordering::Acquire);
        self.size - self.cached_producer.wrapping_sub(self.cached_consumer)
    }

    /// Write `value` into the next free slot; publish with [`Ring::publish`]. The caller checked
    /// [`Ring::free`].
    fn push(&mut self, value: T) {
        // SAFETY: the slot lies in the ring (see `slot`); it is between the kernel's consumer
        // index and our unpublished producer index, so the kernel does not read it now.
        unsafe { self.slot(self.cached_producer).write(value) };
        self.cached_producer = self.cached_producer.wrapping_add(1);
    }

    fn publish(&self) {
        // Release: the descriptors written by `push` are visible before the new index.
        self.producer().store(self.cached_producer, Ordering::Release);
    }

    // --- Rings we consume from (RX, completion). ---

    /// Descriptors ready to read.
    fn ready(&mut self) -> u32 {
        // Acquire: the kernel's descriptor writes happen before we read them.
        self.cached_producer = self.producer().load(Ordering::Acquire);
        self.cached_producer.wrapping_sub(self.cached_consumer)
    }

    /// The `i`-th ready descriptor (`i < ready()`).
    fn peek(&self, i: u32) -> T {
        // SAFETY: the slot lies in the ring and between our consumer index and the kernel's
        // producer index, so the kernel wrote it and does not write it again until we release it.
        unsafe { self.slot(self.cached_consumer.wrapping_add(i)).read() }
    }

    /// Hand `n` read descriptors back to the kernel.
    fn release(&mut self, n: u32) {
        self.cached_consumer = self.cached_consumer.wrapping_add(n);
        // Release: our reads of the slots happen before the kernel may overwrite them.
        self.consumer().store(self.cached_consumer, Ordering::Release);
    }
}

// SAFETY: a ring is an exclusive handle on its mapping; it can move to another thread (each
// core owns its sockets), the kernel side being synchronised through the atomics.
unsafe impl<T: Send> Send for Ring<T> {}

/// Why an AF_XDP socket could not be set up, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("AF_XDP socket on interface index {ifindex} queue {queue}: {step}: {error}")]
pub struct XskError {
    /// The interface.
    pub ifindex: u32,
    /// The RX queue.
    pub queue: u32,
    /// What failed (`socket(AF_XDP)`, `XDP_UMEM_REG`, `bind`, ...).
    pub step: &'static str,
    /// The error.
    pub error: io::Error,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped for reasons other than a full RX ring or an empty fill ring.
    pub rx_dropped: u64,
    /// Invalid descriptors we put on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors we put on the TX ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket bound to one RX queue of one interface, with its UMEM and rings.
#[derive(Debug)]
pub struct XskSocket {
    // Drop order: the rings are unmapped, then the socket closed, then the UMEM unmapped.
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    completion: Ring<u64>,
    fd: OwnedFd,
    umem: Mmap,
    frame_size: u32,
    /// Frames not in the kernel's hands, free to transmit from.
    free_tx: Vec<u64>,
    mode: CopyMode,
}

fn setsockopt<T>(fd: &OwnedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of exactly the size passed, which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl XskSocket {
    /// A socket on RX queue `queue` of interface `ifindex`: zero-copy if the driver allows it,
    /// copy mode otherwise. Half the UMEM's frames are given to the fill ring at once.
    pub fn open(ifindex: u32, queue: u32, config: XskConfig) -> Result<Self, XskError> {
        let fail = |step: &'static str| move |error: io::Error| XskError { ifindex, queue, step, error };
        let XskConfig { frame_size, frames, ring_size } = config;
        if !matches!(frame_size, 2048 | 4096) || !ring_size.is_power_of_two() || frames < 2 {
            return Err(fail("configuration")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame size 2048 or 4096, ring size a power of two, at least 2 frames",
            )));
        }
        let umem_len = frames as usize * frame_size as usize;
        let umem = Mmap::new(umem_len, None, 0).map_err(fail("UMEM memory"))?;
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("socket(AF_XDP)")(io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        // The kernel pins the UMEM's pages for the socket's life; `umem` outlives `fd` (field
        // order) and is never handed out except frame by frame.
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg).map_err(fail("XDP_UMEM_REG"))?;
        for option in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            setsockopt(&fd, option, &ring_size).map_err(fail("ring sizes"))?;
        }
        // SAFETY: an all-zero xdp_mmap_offsets is a valid value (plain integers).
        let mut offsets: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `offsets` is a live structure of `len` bytes the kernel writes at most `len`
        // bytes into.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&raw mut offsets).cast(),
                &raw mut len,
            )
        };
        if rc != 0 || len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(fail("XDP_MMAP_OFFSETS")(io::Error::last_os_error()));
        }
        let raw = fd.as_raw_fd();
        let rx = Ring::map(raw, ring_size, &offsets.rx, libc::XDP_PGOFF_RX_RING).map_err(fail("mmap RX ring"))?;
        let tx = Ring::map(raw, ring_size, &offsets.tx, libc::XDP_PGOFF_TX_RING).map_err(fail("mmap TX ring"))?;
        let fill = Ring::map(raw, ring_size, &offsets.fr, libc::XDP_UMEM_PGOFF_FILL_RING as i64)
            .map_err(fail("mmap fill ring"))?;
        let completion = Ring::map(raw, ring_size, &offsets.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64)
            .map_err(fail("mmap completion ring"))?;
        let rx_frames = (frames / 2).min(ring_size);
        let mut socket = Self {
            rx,
            tx,
            fill,
            completion,
            fd,
            umem,
            frame_size,
            free_tx: (rx_frames..frames).map(|f| u64::from(f) * u64::from(frame_size)).rev().collect(),
            mode: CopyMode::ZeroCopy,
        };
        for frame in 0..rx_frames {
            socket.fill.push(u64::from(frame) * u64::from(frame_size));
        }
        socket.fill.publish();
        socket.mode = socket.bind(ifindex, queue).map_err(fail("bind"))?;
        Ok(socket)
    }

    /// Bind zero-copy, or in copy mode when the driver refuses zero-copy.
    fn bind(&self, ifindex: u32, queue: u32) -> io::Result<CopyMode> {
        let attempt = |flags: u16| {
            let address = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flags | libc::XDP_USE_NEED_WAKEUP,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: 0,
            };
            // SAFETY: `address` is a live sockaddr_xdp of exactly the size passed.
            let rc = unsafe {
                libc::bind(
                    self.fd.as_raw_fd(),
                    (&raw const address).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        match attempt(libc::XDP_ZEROCOPY) {
            Ok(()) => Ok(CopyMode::ZeroCopy),
            Err(_) => attempt(libc::XDP_COPY).map(|()| CopyMode::Copy),
        }
    }

    /// Zero-copy or copy mode.
    pub fn mode(&self) -> CopyMode {
        self.mode
    }

    /// The kernel's counters of this socket (drops, invalid descriptors).
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        // SAFETY: an all-zero xdp_statistics is a valid value (plain integers).
        let mut raw: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `raw` is a live structure of `len` bytes; the kernel writes at most `len` bytes
        // into it and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut raw).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(XskStatistics {
            rx_dropped: raw.rx_dropped,
            rx_invalid_descs: raw.rx_invalid_descs,
            tx_invalid_descs: raw.tx_invalid_descs,
            rx_ring_full: raw.rx_ring_full,
            rx_fill_ring_empty_descs: raw.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: raw.tx_ring_empty_descs,
        })
    }

    /// The frame at UMEM offset `addr`, `len` bytes, if it lies inside the UMEM.
    fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.umem.len {
            return None;
        }
        // SAFETY: inside the UMEM mapping (checked above). The caller holds the frame (taken off
        // the RX ring and not yet given back), so the kernel does not write it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), len) })
    }

    /// The start of the frame that UMEM offset `addr` lies in.
    fn frame_start(&self, addr: u64) -> u64 {
        addr - addr % u64::from(self.frame_size)
    }

    /// Call `each` on every received frame (at most `max`), then give their UMEM frames back to
    /// the fill ring. Returns how many were received.
    pub fn receive(&mut self, max: u32, mut each: impl FnMut(&[u8])) -> u32 {
        let n = self.rx.ready().min(max);
        let mut recycled = Vec::with_capacity(n as usize);
        for i in 0..n {
            let desc = self.rx.peek(i);
            if let Some(frame) = self.frame(desc.addr, desc.len as usize) {
                each(frame);
            }
            recycled.push(self.frame_start(desc.addr));
        }
        self.rx.release(n);
        // The fill ring has room for every RX frame (it is at least as large as their number),
        // and these just left the kernel's hands.
        let room = self.fill.free() as usize;
        for addr in recycled.into_iter().take(room) {
            self.fill.push(addr);
        }
        self.fill.publish();
        // As libbpf's users do: whenever the kernel flags the fill ring, received or not (a
        // zero-copy driver that ran out of frames waits for this).
        if self.fill.needs_wakeup() {
            self.wake_rx();
        }
        n
    }

    /// Ask the kernel to look at the fill ring (a zero-copy driver waits for this when it flags
    /// the ring).
    fn wake_rx(&self) {
        // SAFETY: recvfrom with no buffer and no address on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Take the frames the kernel finished sending back into the free list; how many.
    pub fn reap_completions(&mut self) -> u32 {
        let n = self.completion.ready();
        for i in 0..n {
            let addr = self.frame_start(self.completion.peek(i));
            if (addr as usize) < self.umem.len {
                self.free_tx.push(addr);
            }
        }
        self.completion.release(n);
        n
    }

    /// Send one frame: `write` fills a free UMEM frame and returns the frame's length. Returns
    /// `Ok(false)` (without calling `write`) when no frame or TX slot is free; reap completions
    /// first or try later.
    pub fn transmit(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> io::Result<bool> {
        if !self.enqueue(write)? {
            return Ok(false);
        }
        self.tx.publish();
        if self.mode == CopyMode::Copy || self.tx.needs_wakeup() {
            self.kick_tx()?;
        }
        Ok(true)
    }

    /// Put one frame on the TX ring without publishing it: `write` fills a free UMEM frame and
    /// returns the frame's length. `Ok(false)` (without calling `write`) when no frame or TX slot
    /// is free. [`XskSocket::flush_tx`] hands what was enqueued to the kernel.
    pub fn enqueue(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> io::Result<bool> {
        if self.free_tx.is_empty() || self.tx.free() == 0 {
            self.reap_completions();
        }
        if self.tx.free() == 0 {
            return Ok(false);
        }
        let Some(addr) = self.free_tx.pop() else { return Ok(false) };
        let start = addr as usize;
        let len = self.frame_size as usize;
        if start + len > self.umem.len {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        // SAFETY: a whole frame inside the UMEM mapping. It was on the free list, so the kernel
        // does not read it (it is neither on the TX ring nor awaiting completion) and nothing
        // else borrows it.
        let frame = unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(start), len) };
        let written = write(frame).min(len);
        self.tx.push(libc::xdp_desc { addr, len: written as u32, options: 0 });
        Ok(true)
    }

    /// Publish the frames [`XskSocket::enqueue`] put on the TX ring and have the kernel send
    /// them. In copy mode each kick sends at most 32 frames (the kernel's `TX_BATCH_SIZE`), so it
    /// kicks until the ring is empty or the kernel is busy (a bounded number of times); the rest
    /// goes with the next flush.
    pub fn flush_tx(&mut self) -> io::Result<()> {
        self.tx.publish();
        if self.mode != CopyMode::Copy {
            if self.tx.needs_wakeup() {
                self.kick_tx()?;
            }
            return Ok(());
        }
        for _ in 0..self.tx.size / 32 + 2 {
            if self.tx_pending() == 0 {
                break;
            }
            self.kick_tx()?;
        }
        Ok(())
    }

    /// Frames on the TX ring the kernel has not taken yet (published or not).
    pub fn tx_pending(&mut self) -> u32 {
        self.tx.size - self.tx.free()
    }

    /// The size of one UMEM frame: the longest frame that can be sent or received.
    pub fn frame_size(&self) -> usize {
        self.frame_size as usize
    }

    /// Tell the kernel to send what is on the TX ring (copy mode sends inside this call).
    fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: sendto with no data and no address on our own socket.
        let rc =
            unsafe { libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if rc >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        // Busy or out of buffers: the descriptors stay on the ring for the next kick.
        match error.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => Ok(()),
            _ => Err(error),
        }
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The index of the interface named `name` in the calling thread's network namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c_name` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface named '{name}'")))
    } else {
        Ok(index)
    }
}

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `ETHTOOL_GCHANNELS` (include/uapi/linux/ethtool.h).
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// How many RX queues interface `name` has (ethtool's channel count, in the calling thread's
/// network namespace); 1 for a device that reports no channels.
pub fn rx_queues(name: &str) -> io::Result<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name '{name}'")));
    }
    let mut channels = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    // SAFETY: an all-zero ifreq is valid (integers, a union of plain data, a null pointer).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut channels).cast();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `request` is a live ifreq naming the interface (NUL-terminated: the name is shorter
    // than IFNAMSIZ), whose data pointer points at `channels`, a live ethtool_channels the kernel
    // writes within its size.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            _ => Err(error),
        };
    }
    Ok((channels.rx_count + channels.combined_count).max(1))
}

/// The MTU of interface `name` (`SIOCGIFMTU`, in the calling thread's network namespace): the
/// largest IP packet it sends.
pub fn interface_mtu(name: &str) -> io::Result<usize> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name '{name}'")));
    }
    // SAFETY: an all-zero ifreq is valid (integers, a union of plain data, a null pointer).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `request` is a live ifreq naming the interface (NUL-terminated: the name is shorter
    // than IFNAMSIZ); the kernel writes the MTU into its union.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &raw mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the union's `ifru_mtu` member.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_can_move_to_its_cores_thread() {
        fn send<T: Send>() {}
        send::<XskSocket>();
    }

    #[test]
    fn bad_interface_names_are_refused_before_the_kernel() {
        assert!(rx_queues("").is_err());
        assert!(rx_queues("a-name-longer-than-ifnamsiz").is_err());
        assert_eq!(interface_index("nosuch0").map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
        assert!(interface_mtu("").is_err());
        assert!(interface_mtu("nosuch0").is_err());
    }

    #[test]
    fn the_loopback_has_an_mtu() {
        assert!(interface_mtu("lo").is_ok_and(|mtu| mtu >= 1280), "{:?}", interface_mtu("lo"));
    }
}
