//! The io_uring ring of one core and every piece of memory the kernel reads or writes through it:
//! the provided-buffer ring with its receive buffers, the msghdr of the multishot RECVMSG, and the
//! send slots (msghdr, address, control messages and the datagrams themselves).
//!
//! Pushing a submission is where io_uring is unsafe: the kernel keeps pointers into our memory
//! until the completion. [`Ring`] only pushes entries that point at memory it owns itself, at
//! stable addresses; it hands out a receive buffer only while the kernel is done with it
//! ([`RecvBuffer`]), and gives one away ([`Ring::take`]) only after putting a new one in its place;
//! it changes a send slot only when no send from it is in flight, and on drop cancels and waits for
//! every operation before anything is freed (or leaks the memory).

use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::cmsg::{write_send_control, SendControl};

/// Sends in flight at once (one per send slot).
pub(crate) const SEND_SLOTS: usize = 64;
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
/// Where the payload starts in a receive buffer: after the `io_uring_recvmsg_out` header, the
/// name and the control messages, at the lengths the RECVMSG's msghdr gives them (`Ring::new`).
pub(crate) const RECV_PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + RECV_NAME_LEN + RECV_CONTROL_LEN;
/// Each receive buffer: header room plus a 64 KiB GRO super-datagram, rounded to whole pages
/// (68 KiB).
const RECV_BUF_LEN: usize = (RECVMSG_OUT_LEN + RECV_NAME_LEN + RECV_CONTROL_LEN + 65_536).div_ceil(4096) * 4096;
/// Room for the control messages of one send (UDP_SEGMENT, TOS/TCLASS, PKTINFO).
const SEND_CONTROL_LEN: usize = 128;
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

fn tag_slot(user_data: u64) -> usize {
    (user_data & ((1 << KIND_SHIFT) - 1)) as usize
}

/// Distinguishes rings, so that a [`RecvBuffer`] is only ever read through the ring it came from.
static NEXT_RING_ID: AtomicU64 = AtomicU64::new(0);

/// Why a [`Ring`] could not be set up.
#[derive(Debug)]
pub(crate) enum RingSetupError {
    /// Memory for the receive buffers could not be mapped.
    Memory(io::Error),
    /// The provided-buffer ring could not be registered.
    BufRing(io::Error),
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
        // kernel no longer references the memory (see `Ring::drop`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The provided-buffer ring and the receive buffers it hands to the kernel.
struct ProvidedBuffers {
    /// `RECV_BUFFERS` ring entries; page-aligned, as the kernel requires.
    ring: Mapping,
    /// Buffer `bid`: empty, with `RECV_BUF_LEN` bytes of capacity that the kernel writes into.
    /// Never grown, so its memory stays where the ring entry points; one given away
    /// ([`Self::take`]) is replaced by a new one.
    buffers: Box<[BytesMut]>,
    /// Our copy of the ring tail; published to the kernel by [`Self::publish`].
    tail: u16,
}

impl ProvidedBuffers {
    fn new() -> io::Result<Self> {
        let ring = Mapping::new(usize::from(RECV_BUFFERS) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = (0..RECV_BUFFERS).map(|_| BytesMut::with_capacity(RECV_BUF_LEN)).collect();
        Ok(Self { ring, buffers, tail: 0 })
    }

    /// Keep the ring and the buffers for the life of the process.
    fn leak(&mut self) {
        self.ring.leaked = true;
        for buffer in self.buffers.iter_mut() {
            std::mem::forget(std::mem::take(buffer));
        }
    }

    fn ring_base(&self) -> *mut BufRingEntry {
        self.ring.ptr.as_ptr().cast()
    }

    /// Put buffer `bid` back at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let bid = bid % RECV_BUFFERS;
        let index = usize::from(self.tail % RECV_BUFFERS);
        let Some(buffer) = self.buffers.get_mut(usize::from(bid)) else { return };
        let addr = buffer.spare_capacity_mut().as_mut_ptr() as u64;
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
    /// The kernel must have completed a receive of `len` bytes into `bid` and not been given it
    /// back since.
    unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let Some(buffer) = self.buffers.get(usize::from(bid % RECV_BUFFERS)) else { return &[] };
        // SAFETY: the buffer's allocation holds `capacity` bytes from `as_ptr`, of which the
        // kernel wrote the first `len` (the caller's promise) and writes none while the slice
        // lives: it has no entry pointing at this buffer until `push`, which takes `&mut self`.
        unsafe { std::slice::from_raw_parts(buffer.as_ptr(), len.min(buffer.capacity())) }
    }

    /// Buffer `bid` with the `len` bytes the kernel received into it, to keep; a new buffer takes
    /// its place in the ring (not yet visible to the kernel).
    ///
    /// # Safety
    ///
    /// As for [`Self::filled`].
    unsafe fn take(&mut self, bid: u16, len: usize) -> Option<BytesMut> {
        let slot = self.buffers.get_mut(usize::from(bid % RECV_BUFFERS))?;
        let mut taken = std::mem::replace(slot, BytesMut::with_capacity(RECV_BUF_LEN));
        // SAFETY: the kernel initialised the first `len` bytes (the caller's promise), within the
        // capacity, and no ring entry points at this memory any more: `push` below points the
        // entry at the new buffer.
        unsafe { taken.set_len(len.min(taken.capacity())) };
        self.push(bid);
        Some(taken)
    }
}

/// A receive buffer the kernel filled and handed back to us. It stays ours (the kernel does not
/// write into it) until it is given back with [`Ring::give_back`], which consumes it.
#[derive(Debug)]
pub(crate) struct RecvBuffer {
    ring: u64,
    bid: u16,
}

/// A completion taken off the ring.
#[derive(Debug)]
pub(crate) enum Completion {
    /// One result of the multishot receive: the bytes received into `buffer`, or `-errno`.
    Received {
        /// Bytes received, or `-errno`.
        result: i32,
        /// The buffer the kernel filled (also with some errors); give it back when done.
        buffer: Option<RecvBuffer>,
    },
    /// A send from slot `slot` finished: bytes sent, or `-errno`. The slot may be changed again.
    Sent {
        /// The send slot.
        slot: usize,
        /// Bytes sent, or `-errno`.
        result: i32,
    },
    /// The waker poll fired, or a cancel finished.
    Other,
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
    /// The datagrams of the batch this slot sends.
    data: Vec<u8>,
    /// A SENDMSG of this slot was pushed and has not completed: nothing here may change.
    in_flight: bool,
}

impl SendSlot {
    fn new() -> Self {
        Self {
            hdr: empty_msghdr(),
            // A zero-length iovec; filled in before each send.
            iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
            name: socket2::SockAddr::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            control: ControlBuf([0; SEND_CONTROL_LEN]),
            data: Vec::new(),
            in_flight: false,
        }
    }

    /// Point the msghdr at `range` of the data, `destination` and `control`.
    fn prepare(&mut self, destination: SocketAddr, range: Range<usize>, control: &SendControl) {
        let end = range.end.min(self.data.len());
        let start = range.start.min(end);
        let control_len = write_send_control(&mut self.control.0, control);
        self.name = socket2::SockAddr::from(destination);
        self.iov.iov_base = self.data.as_ptr().wrapping_add(start).cast_mut().cast();
        self.iov.iov_len = end - start;
        self.hdr.msg_name = self.name.as_ptr().cast_mut().cast();
        self.hdr.msg_namelen = self.name.len();
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = if control_len == 0 { std::ptr::null_mut() } else { self.control.0.as_mut_ptr().cast() };
        self.hdr.msg_controllen = control_len as _;
        self.hdr.msg_flags = 0;
    }
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are valid (null pointers, zero
    // lengths).
    unsafe { std::mem::zeroed() }
}

/// One core's io_uring with the memory its operations use. Not `Send`: the ring is set up
/// single-issuer, so only the thread that created it may submit, wait and drop it.
pub(crate) struct Ring {
    // Field order matters: fields drop in declaration order, and the ring must be closed before
    // the memory it may reference (receive buffers, buffer ring, send slots, msghdr) is freed.
    // `Drop` additionally cancels and waits for every operation first.
    ring: IoUring,
    buffers: ProvidedBuffers,
    /// The msghdr template of the multishot RECVMSG (name and control lengths).
    recv_hdr: Box<libc::msghdr>,
    /// Fixed-size, never reallocated: each slot keeps its address while the kernel reads it.
    slots: Box<[SendSlot]>,
    id: u64,
    recv_armed: bool,
    poll_armed: bool,
    _single_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("recv_armed", &self.recv_armed)
            .field("poll_armed", &self.poll_armed)
            .field("sends_in_flight", &self.slots.iter().filter(|s| s.in_flight).count())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Take over `ring` (on which nothing was registered or submitted yet): map the receive
    /// buffers and register them as buffer group 0, and set up [`SEND_SLOTS`] send slots.
    pub(crate) fn new(ring: IoUring) -> Result<Self, RingSetupError> {
        let mut buffers = ProvidedBuffers::new().map_err(RingSetupError::Memory)?;
        // SAFETY: the ring mapping holds RECV_BUFFERS entries, is page-aligned, zeroed (tail 0),
        // and lives in `buffers` until after the ring is closed (field order and `Drop`).
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(buffers.ring_base() as u64, RECV_BUFFERS, BUF_GROUP, 0)
        };
        registered.map_err(RingSetupError::BufRing)?;
        for bid in 0..RECV_BUFFERS {
            buffers.push(bid);
        }
        buffers.publish();
        let mut recv_hdr = Box::new(empty_msghdr());
        recv_hdr.msg_namelen = RECV_NAME_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = RECV_CONTROL_LEN as _;
        Ok(Self {
            ring,
            buffers,
            recv_hdr,
            slots: (0..SEND_SLOTS).map(|_| SendSlot::new()).collect(),
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            recv_armed: false,
            poll_armed: false,
            _single_thread: PhantomData,
        })
    }

    /// Push one SQE; when the submission queue is full, submit it first.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry pushed here points only at memory owned by `self` at a stable
            // address (the boxed msghdr, the boxed slice of send slots and the data they own, the
            // buffer ring) that outlives the operation: a send slot changes only after its
            // completion, a receive buffer is handed out only after the kernel filled it, and
            // `Drop` waits for all completions before freeing anything.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.ring.submit().is_err() {
                break;
            }
        }
        false
    }

    /// Arm the multishot RECVMSG on `socket` into the provided buffers, unless it still runs.
    pub(crate) fn arm_recv(&mut self, socket: RawFd) {
        if !self.recv_armed {
            let entry = opcode::RecvMsgMulti::new(Fd(socket), &*self.recv_hdr, BUF_GROUP).build().user_data(TAG_RECV);
            self.recv_armed = self.push(&entry);
        }
    }

    /// Arm a multishot poll for `fd` becoming readable, unless it still runs.
    pub(crate) fn arm_poll(&mut self, fd: RawFd) {
        if !self.poll_armed {
            let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32).multi(true).build().user_data(TAG_POLL);
            self.poll_armed = self.push(&entry);
        }
    }

    /// Give send slot `slot` the datagrams it sends from now on. Refused (the data handed back)
    /// while a send from the slot is in flight, or for a slot that does not exist.
    pub(crate) fn load_send(&mut self, slot: usize, data: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.slots.get_mut(slot) {
            Some(s) if !s.in_flight => {
                s.data = data;
                Ok(())
            }
            _ => Err(data),
        }
    }

    /// Take the datagrams back out of send slot `slot`; `None` while a send from it is in flight.
    pub(crate) fn unload_send(&mut self, slot: usize) -> Option<Vec<u8>> {
        self.slots.get_mut(slot).filter(|s| !s.in_flight).map(|s| std::mem::take(&mut s.data))
    }

    /// Push a SENDMSG of bytes `range` of slot `slot`'s data to `destination` on `socket`, with
    /// `control`. False when the submission queue is full or the slot's last send is still in
    /// flight: try again later.
    pub(crate) fn push_send(
        &mut self,
        slot: usize,
        socket: RawFd,
        destination: SocketAddr,
        range: Range<usize>,
        control: &SendControl,
    ) -> bool {
        let Some(s) = self.slots.get_mut(slot).filter(|s| !s.in_flight) else {
            return false;
        };
        s.prepare(destination, range, control);
        let entry = opcode::SendMsg::new(Fd(socket), &s.hdr).build().user_data(send_tag(slot));
        let pushed = self.push(&entry);
        if let Some(s) = self.slots.get_mut(slot) {
            s.in_flight = pushed;
        }
        pushed
    }

    /// Whether some send is in flight.
    pub(crate) fn sends_in_flight(&self) -> bool {
        self.slots.iter().any(|s| s.in_flight)
    }

    /// Take every completion off the ring into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        let id = self.id;
        for c in self.ring.completion() {
            let (user_data, result, flags) = (c.user_data(), c.result(), c.flags());
            out.push(match user_data >> KIND_SHIFT {
                KIND_RECV => {
                    if !cqueue::more(flags) {
                        self.recv_armed = false;
                    }
                    let buffer = cqueue::buffer_select(flags).map(|bid| RecvBuffer { ring: id, bid });
                    Completion::Received { result, buffer }
                }
                KIND_SEND => {
                    let slot = tag_slot(user_data);
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.in_flight = false;
                    }
                    Completion::Sent { slot, result }
                }
                KIND_POLL => {
                    if !cqueue::more(flags) {
                        self.poll_armed = false;
                    }
                    Completion::Other
                }
                _ => Completion::Other,
            });
        }
    }

    /// The message the kernel received into `buffer`: `len` bytes (the completion's result).
    /// `None` when it cannot be parsed, or `buffer` came from another ring.
    pub(crate) fn received(&self, buffer: &RecvBuffer, len: usize) -> Option<RecvMsgOut<'_>> {
        if buffer.ring != self.id {
            return None;
        }
        // SAFETY: a RecvBuffer of this ring is made only from a completion reporting that the
        // kernel filled `bid` with `len` bytes, and is consumed when the buffer is given back or
        // taken, so the kernel does not write into it while the slice (borrowing `self` and
        // `buffer`) lives.
        let filled = unsafe { self.buffers.filled(buffer.bid, len) };
        RecvMsgOut::parse(filled, &self.recv_hdr).ok()
    }

    /// Keep a receive buffer with the `len` bytes received into it (the completion's result); a
    /// new buffer takes its place (the kernel may use it once [`Self::publish_buffers`] ran).
    /// `None` when `buffer` came from another ring.
    pub(crate) fn take(&mut self, buffer: RecvBuffer, len: usize) -> Option<BytesMut> {
        if buffer.ring != self.id {
            return None;
        }
        // SAFETY: as in `received`: the kernel filled `bid` with `len` bytes and was not given it
        // back since; `buffer` is consumed here, so no other view of it remains.
        unsafe { self.buffers.take(buffer.bid, len) }
    }

    /// Give a receive buffer back (the kernel may use it once [`Self::publish_buffers`] ran).
    pub(crate) fn give_back(&mut self, buffer: RecvBuffer) {
        if buffer.ring == self.id {
            self.buffers.push(buffer.bid);
        }
    }

    /// Make every buffer given back visible to the kernel.
    pub(crate) fn publish_buffers(&self) {
        self.buffers.publish();
    }

    /// Submit queued entries (with deferred task running, this also lets the kernel post
    /// completions).
    pub(crate) fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Submit queued entries and wait for `want` completions, or until `timeout` passes (`None`:
    /// no timeout; the kernel reports it as `ETIME`).
    pub(crate) fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize> {
        match timeout {
            None => self.ring.submitter().submit_and_wait(want),
            Some(timeout) => {
                let ts = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        }
    }

    /// The kernel flagged deferred task work: a submit lets it run.
    pub(crate) fn taskrun(&mut self) -> bool {
        self.ring.submission().taskrun()
    }

    /// Nothing is queued for submission.
    pub(crate) fn submission_is_empty(&mut self) -> bool {
        self.ring.submission().is_empty()
    }

    /// No completion is waiting.
    pub(crate) fn completion_is_empty(&mut self) -> bool {
        self.ring.completion().is_empty()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into receive buffers or read send slots; closing the ring
        // alone does not wait for that. Cancel everything and wait for the last completions, so
        // that nothing we free is referenced any more.
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(TAG_CANCEL);
        let mut clean = self.push(&cancel);
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        let mut completions = Vec::new();
        while clean {
            if !self.recv_armed && !self.poll_armed && !self.sends_in_flight() {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                clean = false;
                break;
            };
            if let Err(e) = self.submit_and_wait(1, Some(left.min(Duration::from_millis(100)))) {
                if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) {
                    clean = false;
                }
            }
            completions.clear();
            self.reap(&mut completions);
        }
        if !clean {
            // Better to leak a few megabytes than to let the kernel write into freed memory.
            tracing::warn!("io_uring operations did not finish at teardown; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::replace(&mut self.recv_hdr, Box::new(empty_msghdr())));
            self.buffers.leak();
        }
        // Fields now drop in declaration order: the ring first, then the memory it used.
    }
}
