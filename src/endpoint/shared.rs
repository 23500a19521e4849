//! The state application tasks and a core share for one endpoint, connection or stream: atomics,
//! bounded lock-free queues and wakers. The core writes, then wakes; a task registers its waker,
//! then looks again (the order that makes a wake-up impossible to miss).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Waker};

use ant_quic_dataplane::quinn_proto::{StreamId, VarInt};
use ant_quic_dataplane::ConnId;
use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use super::Error;
use crate::identity::PeerId;

/// Bytes of one stream that may sit between a task and its core in each direction: written by
/// the task and not yet taken by QUIC, or read by the core and not yet by the task.
pub const STREAM_BUDGET: usize = 1024 * 1024;
/// Batches of received data queued per stream, at most [`STREAM_BUDGET`] bytes in all. A batch
/// is what the core read of the stream at one time (its chunks are usually one packet's STREAM
/// frame each, about 1.2 KB): one queue slot and one count of `buffered` per batch, not per
/// packet, so task and core touch shared cache lines once per batch.
const STREAM_BATCHES: usize = 64;
/// The reader asks a paused core for more once this much of the budget is free again (half):
/// one request per half budget, not one per chunk read.
pub(crate) const READ_RESUME_BELOW: usize = STREAM_BUDGET / 2;
/// Streams the peer opened that wait for `accept_bi`/`accept_uni`, per direction; past it the
/// core leaves new streams unread in QUIC, where they hold the peer's stream credit.
pub(crate) const ACCEPT_BACKLOG: usize = 64;
/// Streams of each direction the core keeps opened ahead for `open_bi`/`open_uni`, once a task
/// of the connection has opened one of that direction.
pub(crate) const READY_STREAMS: usize = 2;
/// Unreliable datagrams received and not yet taken; the oldest goes first when full.
const DATAGRAM_BACKLOG: usize = 64;
/// No code: the stream was not reset or stopped.
const NO_CODE: u64 = u64::MAX;

/// Tasks waiting on one event that any number of them may await at once (a new connection, a
/// new stream, a datagram, the close). Touched once per such event, never per packet of a
/// stream, so a short lock is fine here.
#[derive(Debug, Default)]
pub(crate) struct WakerList {
    waiters: Mutex<Vec<Waker>>,
    any: AtomicBool,
}

impl WakerList {
    /// Wake `cx`'s task at the next [`WakerList::wake_all`]; look at the condition again after.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        if let Ok(mut waiters) = self.waiters.lock() {
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
        }
        self.any.store(true, Ordering::SeqCst);
    }

    pub(crate) fn wake_all(&self) {
        if !self.any.swap(false, Ordering::SeqCst) {
            return;
        }
        let waiters = match self.waiters.lock() {
            Ok(mut waiters) => std::mem::take(&mut *waiters),
            Err(_) => return,
        };
        waiters.into_iter().for_each(Waker::wake);
    }
}

/// A core's answer to one request of a task (a connection, a stream, statistics). Whoever of
/// the two gives up last cleans up: the core puts the value, then looks whether the task left;
/// the task marks that it left, then looks for a value. One of them takes it.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    value: ArrayQueue<T>,
    waker: AtomicWaker,
    abandoned: AtomicBool,
}

impl<T> Reply<T> {
    pub(crate) fn new() -> Self {
        Self { value: ArrayQueue::new(1), waker: AtomicWaker::new(), abandoned: AtomicBool::new(false) }
    }

    /// Core side: hand `value` over; returns it back when the task has gone, for the core to undo.
    pub(crate) fn put(&self, value: T) -> Option<T> {
        if self.value.push(value).is_err() {
            return None;
        }
        self.waker.wake();
        if self.abandoned.load(Ordering::SeqCst) {
            return self.value.pop();
        }
        None
    }

    /// Task side: the value, if it has come.
    pub(crate) fn poll_take(&self, cx: &Context<'_>) -> Option<T> {
        if let Some(value) = self.value.pop() {
            return Some(value);
        }
        self.waker.register(cx.waker());
        self.value.pop()
    }

    /// Task side: the waiting future was dropped; returns a value that came meanwhile, to undo.
    pub(crate) fn abandon(&self) -> Option<T> {
        self.abandoned.store(true, Ordering::SeqCst);
        self.value.pop()
    }
}

/// What the endpoint's tasks and all its cores share.
#[derive(Debug)]
pub(crate) struct EndpointShared {
    /// Connections accepted by the cores, waiting for `accept`.
    pub(crate) incoming: ArrayQueue<std::sync::Arc<ConnShared>>,
    pub(crate) incoming_waiters: WakerList,
    /// Connections not yet closed, on every core.
    pub(crate) live: AtomicUsize,
    pub(crate) idle_waiters: WakerList,
    /// `close` was called: nothing new is accepted.
    pub(crate) closing: AtomicBool,
    pub(crate) next_tag: AtomicU64,
}

impl EndpointShared {
    pub(crate) fn new(backlog: usize) -> Self {
        Self {
            incoming: ArrayQueue::new(backlog.max(1)),
            incoming_waiters: WakerList::default(),
            live: AtomicUsize::new(0),
            idle_waiters: WakerList::default(),
            closing: AtomicBool::new(false),
            next_tag: AtomicU64::new(1),
        }
    }
}

/// What a connection's tasks and its core share.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) remote: SocketAddr,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) peer_id: Option<PeerId>,
    /// Why it ended; set once, by the core.
    pub(crate) closed: OnceLock<Error>,
    pub(crate) rtt_micros: AtomicU64,
    pub(crate) max_datagram: AtomicUsize,
    pub(crate) accept_bi: ArrayQueue<std::sync::Arc<StreamShared>>,
    pub(crate) accept_uni: ArrayQueue<std::sync::Arc<StreamShared>>,
    pub(crate) datagrams: ArrayQueue<Bytes>,
    /// Streams the core opened ahead, within the peer's stream credit, for `open_bi` and
    /// `open_uni` to take without a round trip to the core. As with any opened stream, the
    /// peer learns of one only when something is sent on it.
    pub(crate) ready_bi: ArrayQueue<std::sync::Arc<StreamShared>>,
    pub(crate) ready_uni: ArrayQueue<std::sync::Arc<StreamShared>>,
    /// A task took a ready stream: the core opens another when it next touches the connection.
    pub(crate) ready_taken: AtomicBool,
    /// A new stream, a datagram or the close.
    pub(crate) waiters: WakerList,
    /// The core left peer-opened streams unread because the accept queue was full.
    pub(crate) accept_paused: AtomicBool,
    /// Every task handle is gone: the core closes the connection when it sees this.
    pub(crate) dropped: AtomicBool,
    /// A stream handle was dropped without its last command reaching the core.
    pub(crate) streams_dropped: AtomicBool,
    /// Direct or through a relay, and its changes.
    pub(crate) path: super::path::PathState,
}

impl ConnShared {
    pub(crate) fn new(id: ConnId, remote: SocketAddr, alpn: Option<Vec<u8>>, peer_id: Option<PeerId>) -> Self {
        Self {
            id,
            remote,
            alpn,
            peer_id,
            closed: OnceLock::new(),
            rtt_micros: AtomicU64::new(0),
            max_datagram: AtomicUsize::new(0),
            accept_bi: ArrayQueue::new(ACCEPT_BACKLOG),
            accept_uni: ArrayQueue::new(ACCEPT_BACKLOG),
            datagrams: ArrayQueue::new(DATAGRAM_BACKLOG),
            ready_bi: ArrayQueue::new(READY_STREAMS),
            ready_uni: ArrayQueue::new(READY_STREAMS),
            ready_taken: AtomicBool::new(false),
            waiters: WakerList::default(),
            accept_paused: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            streams_dropped: AtomicBool::new(false),
            path: super::path::PathState::default(),
        }
    }

    /// The streams opened ahead of one direction (bidirectional when `bi`).
    pub(crate) fn ready(&self, bi: bool) -> &ArrayQueue<std::sync::Arc<StreamShared>> {
        if bi {
            &self.ready_bi
        } else {
            &self.ready_uni
        }
    }

    /// The error every operation on the connection returns once it has ended.
    pub(crate) fn error(&self) -> Option<Error> {
        self.closed.get().cloned()
    }
}

/// What a stream's task handles and its core share: one direction each way.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) id: StreamId,
    // Receiving: the core pushes batches of chunks while `buffered` stays within the budget.
    pub(crate) batches: ArrayQueue<Vec<Bytes>>,
    /// Bytes read from QUIC by the core and not yet consumed by the task.
    pub(crate) buffered: AtomicUsize,
    /// The core stopped reading at the budget: the task asks for more when it has made room.
    pub(crate) read_paused: AtomicBool,
    /// The core queued the last batch: the peer finished the stream.
    pub(crate) fin: AtomicBool,
    pub(crate) reset_code: AtomicU64,
    pub(crate) read_waker: AtomicWaker,
    // Sending: the task hands bytes to the core while `in_flight` stays within the budget.
    /// Bytes written by the task and not yet taken by QUIC.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) stop_code: AtomicU64,
    pub(crate) write_waker: AtomicWaker,
    /// A task handle was dropped without its last command reaching the core (its queue was
    /// full): the core finishes or stops the stream when it next touches it.
    pub(crate) send_dropped: AtomicBool,
    pub(crate) recv_dropped: AtomicBool,
}

impl StreamShared {
    pub(crate) fn new(id: StreamId) -> Self {
        Self {
            id,
            batches: ArrayQueue::new(STREAM_BATCHES),
            buffered: AtomicUsize::new(0),
            read_paused: AtomicBool::new(false),
            fin: AtomicBool::new(false),
            reset_code: AtomicU64::new(NO_CODE),
            read_waker: AtomicWaker::new(),
            in_flight: AtomicUsize::new(0),
            stop_code: AtomicU64::new(NO_CODE),
            write_waker: AtomicWaker::new(),
            send_dropped: AtomicBool::new(false),
            recv_dropped: AtomicBool::new(false),
        }
    }

    pub(crate) fn reset_code(&self) -> Option<VarInt> {
        code(&self.reset_code)
    }

    pub(crate) fn stop_code(&self) -> Option<VarInt> {
        code(&self.stop_code)
    }

    pub(crate) fn set_reset(&self, code: VarInt) {
        self.reset_code.store(code.into_inner(), Ordering::Release);
        self.read_waker.wake();
    }

    pub(crate) fn set_stopped(&self, code: VarInt) {
        self.stop_code.store(code.into_inner(), Ordering::Release);
        self.write_waker.wake();
    }

    /// Wake both directions' tasks (the connection ended).
    pub(crate) fn wake_both(&self) {
        self.read_waker.wake();
        self.write_waker.wake();
    }
}

fn code(cell: &AtomicU64) -> Option<VarInt> {
    match cell.load(Ordering::Acquire) {
        NO_CODE => None,
        value => VarInt::from_u64(value).ok(),
    }
}
