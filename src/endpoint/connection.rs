//! [`Connection`]: a QUIC connection as application tasks hold it.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ant_quic_dataplane::quinn_proto::{ConnectionStats, VarInt};
use ant_quic_dataplane::Messenger;
use bytes::Bytes;

use super::bridge::{Command, StreamReply};
use super::handle::{ask, ConnHandle, SendFailed};
use super::path::{Path, PathEvents};
use super::shared::{ConnShared, StreamShared};
use super::stream::{RecvStream, SendStream};
use super::Error;
use crate::identity::PeerId;

/// A QUIC connection. Cheap to clone; when the last clone and the last of its streams are
/// dropped, the connection is closed cleanly (application code 0).
#[derive(Debug, Clone)]
pub struct Connection {
    handle: Arc<ConnHandle>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<ConnShared>, messenger: Messenger<Command>) -> Self {
        Self { handle: Arc::new(ConnHandle { shared, messenger }) }
    }

    fn shared(&self) -> &ConnShared {
        &self.handle.shared
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.shared().remote
    }

    /// The peer's ID, from the certificate it presented (servers always present one; clients
    /// only when asked).
    pub fn remote_peer_id(&self) -> Option<PeerId> {
        self.shared().peer_id
    }

    /// The application protocol negotiated in the handshake.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.shared().alpn.as_deref()
    }

    /// The round-trip time as last seen by the core.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.shared().rtt_micros.load(Ordering::Relaxed))
    }

    /// The path the connection takes now: direct for every connection made by address; a
    /// connection to a peer reached by peer ID may run through a relay, and move to a direct
    /// path later ([`Connection::path_events`]).
    pub fn path(&self) -> Path {
        self.shared().path.path(self.shared().remote)
    }

    /// The changes of [`Connection::path`] from now on, notably a relayed connection's upgrade
    /// to a direct path.
    pub fn path_events(&self) -> PathEvents {
        PathEvents::new(Arc::clone(&self.handle.shared))
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared().error()
    }

    /// QUIC's counters for this connection (packets, bytes, frames, path).
    pub async fn stats(&self) -> Result<ConnectionStats, Error> {
        let conn = Arc::clone(&self.handle.shared);
        let core = conn.id.core;
        let command = |reply| Command::Stats { conn: Arc::clone(&conn), reply };
        ask(&self.handle.messenger, core, command, |_| {}).await?
    }

    /// Open a bidirectional stream, waiting for the peer's stream credit if need be.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), Error> {
        let stream = self.open(true).await?;
        Ok((
            SendStream::new(Arc::clone(&self.handle), Arc::clone(&stream)),
            RecvStream::new(Arc::clone(&self.handle), stream),
        ))
    }

    /// Open a unidirectional stream, waiting for the peer's stream credit if need be.
    pub async fn open_uni(&self) -> Result<SendStream, Error> {
        let stream = self.open(false).await?;
        Ok(SendStream::new(Arc::clone(&self.handle), stream))
    }

    async fn open(&self, bi: bool) -> Result<Arc<StreamShared>, Error> {
        if let Some(error) = self.shared().error() {
            return Err(error);
        }
        if let Some(stream) = self.shared().ready(bi).pop() {
            self.shared().ready_taken.store(true, Ordering::Release);
            return Ok(stream);
        }
        let conn = Arc::clone(&self.handle.shared);
        let command = |reply: Arc<StreamReply>| Command::Open { conn: Arc::clone(&conn), bi, reply };
        let handle = Arc::clone(&self.handle);
        // A stream opened for a future that is gone is ended at once: finish and stop.
        let undo = move |opened: Result<Arc<StreamShared>, Error>| {
            if let Ok(stream) = opened {
                drop(SendStream::new(Arc::clone(&handle), Arc::clone(&stream)));
                if bi {
                    drop(RecvStream::new(Arc::clone(&handle), stream));
                }
            }
        };
        ask(&self.handle.messenger, conn.id.core, command, undo).await?
    }

    /// The next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), Error> {
        let stream = poll_fn(|cx| self.poll_accept(cx, true)).await?;
        Ok((
            SendStream::new(Arc::clone(&self.handle), Arc::clone(&stream)),
            RecvStream::new(Arc::clone(&self.handle), stream),
        ))
    }

    /// The next unidirectional stream the peer opens.
    pub async fn accept_uni(&self) -> Result<RecvStream, Error> {
        let stream = poll_fn(|cx| self.poll_accept(cx, false)).await?;
        Ok(RecvStream::new(Arc::clone(&self.handle), stream))
    }

    fn poll_accept(&self, cx: &Context<'_>, bi: bool) -> Poll<Result<Arc<StreamShared>, Error>> {
        let shared = self.shared();
        let queue = if bi { &shared.accept_bi } else { &shared.accept_uni };
        for attempt in 0..2 {
            if let Some(stream) = queue.pop() {
                if shared.accept_paused.swap(false, Ordering::SeqCst) {
                    let command = Command::AcceptMore { conn: Arc::clone(&self.handle.shared) };
                    if self.handle.try_send(command).is_err() {
                        // The core looks at the flag again with the next stream it cannot queue.
                        shared.accept_paused.store(true, Ordering::SeqCst);
                    }
                }
                return Poll::Ready(Ok(stream));
            }
            if let Some(error) = shared.error() {
                return Poll::Ready(Err(error));
            }
            if attempt == 0 {
                shared.waiters.register(cx);
            }
        }
        Poll::Pending
    }

    /// The largest datagram the peer takes now; `None` when it takes none.
    pub fn max_datagram_size(&self) -> Option<usize> {
        Some(self.shared().max_datagram.load(Ordering::Relaxed)).filter(|&max| max > 0)
    }

    /// Send an unreliable datagram (RFC 9221). Like any datagram it may be lost, also here when
    /// the core's queue is full.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), Error> {
        if let Some(error) = self.shared().error() {
            return Err(error);
        }
        let max = self.shared().max_datagram.load(Ordering::Relaxed);
        if data.len() > max {
            return Err(Error::DatagramTooLarge { size: data.len(), max });
        }
        let command = Command::Datagram { conn: Arc::clone(&self.handle.shared), data };
        match self.handle.try_send(command) {
            Err(SendFailed { busy: false }) => Err(Error::EndpointClosed),
            _ => Ok(()),
        }
    }

    /// The next unreliable datagram from the peer (the oldest are dropped when this falls behind).
    pub async fn read_datagram(&self) -> Result<Bytes, Error> {
        let shared = self.shared();
        poll_fn(|cx| {
            for attempt in 0..2 {
                if let Some(datagram) = shared.datagrams.pop() {
                    return Poll::Ready(Ok(datagram));
                }
                if let Some(error) = shared.error() {
                    return Poll::Ready(Err(error));
                }
                if attempt == 0 {
                    shared.waiters.register(cx);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Close the connection with an application error `code` and `reason`; every stream ends.
    /// Data not yet acknowledged may be lost: finish the streams and wait for the peer's answer
    /// first when it matters.
    pub fn close(&self, code: u32, reason: &[u8]) {
        let command = Command::Close {
            conn: Arc::clone(&self.handle.shared),
            code: VarInt::from_u32(code),
            reason: Bytes::copy_from_slice(reason),
        };
        if self.handle.try_send(command).is_err() {
            // The core closes it when it next touches the connection.
            self.shared().dropped.store(true, Ordering::Release);
        }
    }

    /// Wait for the connection to end; returns why.
    pub async fn closed(&self) -> Error {
        let shared = self.shared();
        poll_fn(|cx| {
            if let Some(error) = shared.error() {
                return Poll::Ready(error);
            }
            shared.waiters.register(cx);
            shared.error().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}
