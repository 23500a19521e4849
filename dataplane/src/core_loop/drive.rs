//! The driving half of a core's loop: each connection marked dirty by a datagram, a timer or a
//! command is brought up to date once per turn (endpoint bookkeeping, the application's events,
//! GSO batches out, its next timer).

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quinn_proto::{ConnectionError, ConnectionHandle, Event, StreamEvent, StreamId};

use super::{Core, RTT_SAMPLE_INTERVAL, TRANSMIT_BUDGET};
use crate::backend::Backend;
use crate::connection::{ConnId, ConnRef};
use crate::relay::{is_alias, RELAY_HEADER_LEN};
use crate::stats::{bump, CloseClass};
use crate::transmit::{to_batch, MAX_GSO_BYTES};

/// Streams one drive remembers having called `on_readable` for. Connections rarely have more
/// streams readable in one turn; a longer list would cost a longer search per event.
pub(super) const READABLE_SEEN_MAX: usize = 16;

impl<B: Backend, M> Core<B, M> {
    /// Send the batches that waited for room, then drive every connection marked this turn.
    pub(super) fn drive_dirty(&mut self, now: Instant) {
        if !self.tx.retry_blocked() {
            return;
        }
        while !self.tx.is_blocked() {
            let Some(batch) = self.deferred.pop_front() else { break };
            self.tx.transmit(batch);
        }
        if self.tx.is_blocked() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            self.drive(now, index);
        }
        let mut dirty = dirty;
        dirty.clear();
        // Connections marked again while driving stay in `self.dirty` for the next turn.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Bring one connection up to date: endpoint bookkeeping, application events, transmits, timer.
    fn drive(&mut self, now: Instant, index: usize) {
        let handle = ConnectionHandle(index);
        let core = self.index;
        let id = ConnId { core, index };
        let Some(Some(state)) = self.conns.get_mut(index) else { return };
        state.dirty = false;
        let mut drained = false;

        while let Some(event) = state.conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                state.conn.handle_event(reply);
            }
        }

        self.readable_seen.clear();
        while let Some(event) = state.conn.poll() {
            let mut conn = ConnRef { id, tag: state.tag, now, inner: &mut state.conn };
            match event {
                Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
                Event::DatagramReceived => self.app.on_datagram(&mut conn),
                Event::Connected => {
                    bump(&self.shared.stats.handshakes_completed, 1);
                    state.connected = true;
                    if std::mem::take(&mut state.half_open) {
                        self.admission.finished();
                        self.shared
                            .stats
                            .handshakes_in_flight
                            .store(self.admission.in_flight() as u64, Ordering::Relaxed);
                    }
                    self.recorder.handshake(now.saturating_duration_since(state.created));
                    self.app.on_connected(&mut conn);
                }
                Event::ConnectionLost { reason } => {
                    state.closed_reported = true;
                    self.shared.stats.count_close(CloseClass::of(&reason));
                    if state.connected {
                        self.recorder.rtt(conn.inner.rtt());
                    } else {
                        bump(&self.shared.stats.handshake_failures, 1);
                    }
                    self.app.on_closed(id, state.tag, &reason);
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(stream) = conn.inner.streams().accept(dir) {
                        self.app.on_stream_opened(&mut conn, stream);
                        // Data may already be waiting on a fresh stream.
                        first_readable(&mut self.readable_seen, stream);
                        self.app.on_readable(&mut conn, stream);
                    }
                }
                // quinn-proto reports each STREAM frame, and every datagram of this turn was taken
                // in before this drive: one call per stream sees them all (not ~100 per batch).
                Event::Stream(StreamEvent::Readable { id: stream }) => {
                    if first_readable(&mut self.readable_seen, stream) {
                        self.app.on_readable(&mut conn, stream);
                    }
                }
                Event::Stream(StreamEvent::Writable { id: stream }) => self.app.on_writable(&mut conn, stream),
                Event::Stream(StreamEvent::Finished { id: stream }) => self.app.on_finished(&mut conn, stream),
                Event::Stream(StreamEvent::Stopped { id: stream, error_code }) => {
                    self.app.on_stopped(&mut conn, stream, error_code);
                }
                Event::Stream(StreamEvent::Available { .. }) => self.app.on_streams_available(&mut conn),
            }
        }

        if state.conn.remote_address() != state.remote {
            state.remote = state.conn.remote_address();
            bump(&self.shared.stats.peer_address_changes, 1);
        }
        if state.conn.local_ip() != state.local_ip {
            state.local_ip = state.conn.local_ip();
            bump(&self.shared.stats.preferred_address_migrations, 1);
        }
        if state.connected && now >= state.next_rtt_sample {
            self.recorder.rtt(state.conn.rtt());
            state.next_rtt_sample = now + RTT_SAMPLE_INTERVAL;
        }

        // The kernel takes at most 64 KiB in one GSO send (the IP length field), whatever the
        // segment count: more segments of the path MTU would fail with EMSGSIZE.
        // A relayed datagram grows by the relay header: leave room for it in every segment.
        let overhead = if is_alias(&state.conn.remote_address()) { RELAY_HEADER_LEN } else { 0 };
        let mtu = usize::from(state.conn.current_mtu()).max(1);
        let max_segments = self.tx.backend.max_gso_segments().min(MAX_GSO_BYTES / (mtu + overhead)).max(1);
        let mut budget = TRANSMIT_BUDGET;
        loop {
            if self.tx.is_blocked() || budget == 0 {
                // More may be waiting: come back next turn.
                state.dirty = true;
                self.dirty.push(index);
                break;
            }
            let mut buf = self.tx.backend.take_buffer();
            if overhead > 0 {
                // Room for the relay headers too, so framing in place never reallocates (a no-op
                // once recycled buffers have grown).
                buf.reserve(max_segments * (mtu + overhead));
            }
            let Some(transmit) = state.conn.poll_transmit(now, max_segments, &mut buf) else { break };
            buf.truncate(transmit.size);
            let batch = to_batch(&transmit, buf);
            self.tx.transmit(batch);
            budget -= 1;
        }

        if let Some(deadline) = state.conn.poll_timeout() {
            if state.queued_deadline.is_none_or(|queued| deadline < queued) {
                state.queued_deadline = Some(deadline);
                self.timers.push(Reverse((deadline, index)));
            }
        }

        if drained || state.conn.is_drained() {
            if !state.closed_reported {
                self.shared.stats.count_close(CloseClass::Local);
                self.app.on_closed(id, state.tag, &ConnectionError::LocallyClosed);
            }
            if let Some(slot) = self.conns.get_mut(index) {
                if let Some(state) = slot.take() {
                    self.active = self.active.saturating_sub(1);
                    if state.half_open {
                        self.admission.finished();
                        self.publish_in_flight();
                    }
                }
            }
            self.publish_active();
        }
    }
}

/// Records `stream` in `seen`; false when it was there already. A short list, not a set: streams
/// past the [`READABLE_SEEN_MAX`]th of one drive are not recorded, so they get every call.
fn first_readable(seen: &mut Vec<StreamId>, stream: StreamId) -> bool {
    if seen.contains(&stream) {
        return false;
    }
    if seen.len() < READABLE_SEEN_MAX {
        seen.push(stream);
    }
    true
}
