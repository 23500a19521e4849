//! What a core shares with the node handle and the other cores, and how they wake it: an eventfd
//! write only when the core sleeps, not one system call per message.

use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::{CommandQueue, Handoff, QUEUE_CAPACITY};
use crate::latency::{LatencySet, LATENCY_QUEUE_CAPACITY};
use crate::stats::CoreStats;
use crate::sys::poll::Waker;

/// What a core shares with the node handle and the other cores.
pub(crate) struct CoreShared {
    pub(crate) waker: CoreWaker,
    /// The core's input queue; the core itself reads it typed.
    pub(crate) commands: Arc<dyn CommandQueue>,
    pub(crate) handoffs: ArrayQueue<Handoff>,
    pub(crate) stats: Arc<CoreStats>,
    /// Latency histograms handed to the control thread.
    pub(crate) latency: ArrayQueue<Box<LatencySet>>,
    /// Emptied sets the control thread gives back, so the core need not allocate.
    pub(crate) latency_spare: ArrayQueue<Box<LatencySet>>,
    /// The control thread wants the current histograms now rather than at the next interval.
    pub(crate) latency_wanted: AtomicBool,
}

impl std::fmt::Debug for CoreShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreShared").field("waker", &self.waker).finish_non_exhaustive()
    }
}

impl CoreShared {
    pub(crate) fn new(commands: Arc<dyn CommandQueue>) -> std::io::Result<Self> {
        Ok(Self {
            waker: CoreWaker::new()?,
            commands,
            handoffs: ArrayQueue::new(QUEUE_CAPACITY),
            stats: Arc::new(CoreStats::default()),
            latency: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_spare: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_wanted: AtomicBool::new(false),
        })
    }
}

/// The core's eventfd and whether the core sleeps on it.
///
/// No wake-up is lost: the core stores `parked`, then a SeqCst fence, then looks at its queues;
/// a sender pushes to a queue, then a SeqCst fence, then reads `parked`. The two fences are
/// ordered one way or the other: either the core's look sees the push (and it does not sleep),
/// or the sender's read sees `parked` (and it writes the eventfd, which ends or prevents the
/// sleep). The swap lets one sender of many write it.
#[derive(Debug)]
pub(crate) struct CoreWaker {
    eventfd: Waker,
    parked: AtomicBool,
}

impl CoreWaker {
    fn new() -> std::io::Result<Self> {
        Ok(Self { eventfd: Waker::new()?, parked: AtomicBool::new(false) })
    }

    /// The fd the core's backend waits on.
    pub(crate) fn fd(&self) -> RawFd {
        self.eventfd.fd()
    }

    /// After pushing to the core's input or hand-off queue: wake the core if it sleeps.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::Relaxed) {
            self.eventfd.wake();
        }
    }

    /// Wake the core whether it sleeps or not, for a wake-up that queues nothing (a heartbeat, a
    /// flag to look at): it turns its loop once more.
    pub(crate) fn wake(&self) {
        self.eventfd.wake();
    }

    /// Core side, before it blocks: announce the sleep, then look at the queues once more.
    /// False when `has_work` found something: the core does not sleep.
    pub(crate) fn park(&self, has_work: impl FnOnce() -> bool) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if has_work() {
            self.parked.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Core side, after the sleep: senders need not wake it, and a pending wake-up is consumed
    /// (one read per sleep; a poll(2) backend would otherwise return at once forever).
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
        self.eventfd.drain();
    }
}
