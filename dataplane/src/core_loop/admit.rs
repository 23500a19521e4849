//! The admission half of a core's loop: new connection attempts accepted, sent a Retry or
//! refused, and half-open connections dropped at their handshake deadline. The decisions are
//! [`crate::admission`]'s; this applies them to the endpoint and the connection table.

use std::sync::atomic::Ordering;
use std::time::Instant;

use quinn_proto::{ConnectionError, ConnectionHandle, EndpointEvent, Incoming};

use super::Core;
use crate::admission::{Admit, Attempt, RefuseReason};
use crate::backend::Backend;
use crate::connection::ConnId;
use crate::stats::{bump, CloseClass};

impl<B: Backend, M> Core<B, M> {
    /// Accept a connection attempt, ask it to Retry, or refuse it ([`crate::admission`]).
    pub(super) fn admit(&mut self, now: Instant, incoming: Incoming, response: &mut Vec<u8>) {
        let attempt = Attempt { validated: incoming.remote_address_validated(), may_retry: incoming.may_retry() };
        let accepting = self.draining_since.is_none() && !self.refusing;
        match self.admission.decide(attempt, accepting) {
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

    /// Drop accepted connections whose handshake did not complete in time, without an answer:
    /// a flood's half-open connections must not live for the whole idle timeout.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some((index, created)) = self.admission.pop_expired(now) {
            let Some(slot) = self.conns.get_mut(index) else { continue };
            let Some(state) = slot.take_if(|state| state.half_open && state.created == created) else { continue };
            // The endpoint forgets the connection's IDs (a drained connection gets no answer);
            // nothing is sent.
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

    pub(super) fn publish_in_flight(&self) {
        self.shared.stats.handshakes_in_flight.store(self.admission.in_flight() as u64, Ordering::Relaxed);
    }
}
