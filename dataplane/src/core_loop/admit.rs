//! The admission half of a core's loop: new connection attempts accepted, sent a Retry or
//! refused, and half-open connections closed at their handshake deadline. The decisions are
//! [`crate::admission`]'s; this applies them to the endpoint and the connection table.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{Connection, ConnectionError, ConnectionHandle, EndpointEvent, Incoming, VarInt};

use super::Core;
use crate::admission::{Admit, Attempt, Intake, RefuseReason};
use crate::backend::Backend;
use crate::connection::ConnId;
use crate::stats::{bump, CloseClass};
use crate::transmit::to_batch;

/// The CONNECTION_CLOSE a timed-out handshake gets. In Initial and Handshake packets quinn-proto
/// sends it as the transport error APPLICATION_ERROR without a reason (RFC 9000 §10.2.3); code
/// and reason travel only in a 1-RTT packet, for a client that has the keys to read it.
const HANDSHAKE_TIMEOUT_CODE: VarInt = VarInt::from_u32(0);
const HANDSHAKE_TIMEOUT_REASON: &[u8] = b"handshake timeout";

impl<B: Backend, M> Core<B, M> {
    /// Accept a connection attempt, ask it to Retry, or refuse it ([`crate::admission`]).
    pub(super) fn admit(&mut self, now: Instant, incoming: Incoming, response: &mut Vec<u8>) {
        let names_this_process =
            self.cid_key.owner(incoming.orig_dst_cid()).is_some_and(|owner| owner.generation == self.generation);
        let attempt = Attempt {
            validated: incoming.remote_address_validated(),
            may_retry: incoming.may_retry(),
            names_this_process,
        };
        let intake = match (self.draining_since, self.handed_over) {
            (Some(_), _) => Intake::Closed,
            (None, true) => Intake::HandedOver,
            (None, false) => Intake::Open,
        };
        match self.admission.decide(attempt, intake) {
            Admit::Retry => match self.endpoint.retry(incoming, response) {
                Ok(transmit) => {
                    bump(&self.shared.stats.retry_sent, 1);
                    self.send_response(&transmit, response);
                }
                // `decide` only asks for a Retry where one may be sent; should that ever be
                // wrong, the attempt is dropped without state and the client retransmits.
                Err(error) => self.endpoint.ignore(error.into_incoming()),
            },
            Admit::Refuse(reason) => {
                self.shared.stats.refuse_handshake(reason);
                let transmit = self.endpoint.refuse(incoming, response);
                self.send_response(&transmit, response);
            }
            Admit::Ignore(reason) => {
                self.shared.stats.refuse_handshake(reason);
                self.endpoint.ignore(incoming);
            }
            Admit::Accept => match self.endpoint.accept(incoming, now, response, None) {
                Ok((handle, conn)) => {
                    bump(&self.shared.stats.connections_accepted, 1);
                    self.insert(now, handle, conn, 0, true);
                    self.publish_in_flight();
                }
                Err(error) => {
                    self.shared.stats.refuse_handshake(RefuseReason::Rejected);
                    tracing::debug!(cause = %error.cause, "incoming connection refused");
                    if let Some(transmit) = error.response {
                        self.send_response(&transmit, response);
                    }
                }
            },
        }
    }

    /// Close accepted connections whose handshake did not complete in time: a flood's half-open
    /// connections must not live for the whole idle timeout, and a slow client is told rather than
    /// left to wait out its own idle timeout. The state goes at once, without a closing period.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some((index, created)) = self.admission.pop_expired(now) {
            let Some(slot) = self.conns.get_mut(index) else { continue };
            let Some(mut state) = slot.take_if(|state| state.half_open && state.created == created) else { continue };
            state.conn.close(now, HANDSHAKE_TIMEOUT_CODE, Bytes::from_static(HANDSHAKE_TIMEOUT_REASON));
            self.send_close(now, &mut state.conn);
            // The endpoint forgets the connection's IDs: no closing period is kept.
            let _ = self.endpoint.handle_event(ConnectionHandle(index), EndpointEvent::drained());
            self.active = self.active.saturating_sub(1);
            self.admission.finished();
            let stats = &self.shared.stats;
            bump(&stats.handshakes_timed_out, 1);
            bump(&stats.handshake_failures, 1);
            stats.count_close(CloseClass::of(&ConnectionError::TimedOut));
            self.app.on_closed(ConnId { core: self.index, index }, state.tag, &ConnectionError::TimedOut);
            self.publish_active();
            self.publish_in_flight();
        }
    }

    /// Send the CONNECTION_CLOSE a connection just closed has queued: one datagram, its close
    /// packets coalesced, and nothing where the anti-amplification budget of an unvalidated
    /// address is spent (a spoofed source gets no more than any other answer). Under
    /// back-pressure it is dropped, like the endpoint's responses.
    fn send_close(&mut self, now: Instant, conn: &mut Connection) {
        let mut buf = self.tx.backend.take_buffer();
        if let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) {
            buf.truncate(transmit.size);
            self.tx.transmit(to_batch(&transmit, buf));
        }
    }

    pub(super) fn publish_in_flight(&self) {
        self.shared.stats.handshakes_in_flight.store(self.admission.in_flight() as u64, Ordering::Relaxed);
    }
}
