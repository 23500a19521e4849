//! The application interface: code that runs on a core, beside the connections it serves.
//!
//! Every connection lives on one core, and so does the application code that reads and writes its
//! streams: an [`Application`] is created per core by an [`AppFactory`] and called back on that
//! core's thread, without locks, as the connection makes progress (as msquic calls back on its
//! worker threads).
//!
//! Other threads reach it with [`crate::Messenger::send_message`]. The message type `M` is the
//! application's own (an enum of its requests, `()` when it takes none): it travels by value
//! in the core's command queue, in order with the node's own commands, so delivering one costs
//! no allocation and no downcast, and a message of the wrong type does not compile. Only the
//! [`crate::Node`] and its [`crate::Messenger`] carry `M`; the [`crate::NodeHandle`] that
//! monitoring and control code holds does not, so it works for any application.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{
    ClosedStream, Connection, ConnectionError, Dir, FinishError, ReadError, ReadableError, StreamId, VarInt, WriteError,
};

/// Identifies a connection on its core. Unique among the live connections of one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The core owning the connection.
    pub core: usize,
    /// Its index on that core.
    pub index: usize,
}

/// Per-core application code, taking messages of type `M` from other threads. Every method has a
/// default that does nothing.
pub trait Application<M = ()> {
    /// The handshake completed (both for connections we opened and ones we accepted).
    fn on_connected(&mut self, _conn: &mut ConnRef<'_>) {}
    /// The peer opened a stream.
    fn on_stream_opened(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// Data (or the end of the stream) can be read from `stream`.
    fn on_readable(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// `stream` can take more data after a write was blocked by flow control.
    fn on_writable(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// Everything written to `stream`, and its end, was acknowledged by the peer.
    fn on_finished(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// The peer asked us to stop sending on `stream`.
    fn on_stopped(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId, _code: VarInt) {}
    /// The connection ended (closed by either side, timed out, or failed its handshake).
    fn on_closed(&mut self, _id: ConnId, _tag: u64, _reason: &ConnectionError) {}
    /// A connection requested with `Node::connect` could not even be started.
    fn on_connect_failed(&mut self, _tag: u64, _error: &quinn_proto::ConnectError) {}
    /// The peer allows more streams to be opened (after `open_bi`/`open_uni` returned `None`).
    fn on_streams_available(&mut self, _conn: &mut ConnRef<'_>) {}
    /// A message sent with `Messenger::send_message`, with this core's connections at hand.
    fn on_message(&mut self, _conns: &mut crate::core::Connections<'_>, _message: M) {}
}

/// Creates one [`Application`] per core, on that core's thread.
pub trait AppFactory<M = ()>: Send + Sync + 'static {
    /// The application for `core`.
    fn create(&self, core: usize) -> Box<dyn Application<M>>;
}

impl<M, F> AppFactory<M> for F
where
    F: Fn(usize) -> Box<dyn Application<M>> + Send + Sync + 'static,
{
    fn create(&self, core: usize) -> Box<dyn Application<M>> {
        self(core)
    }
}

/// A connection, lent to application code for the duration of a callback.
#[derive(Debug)]
pub struct ConnRef<'a> {
    pub(crate) id: ConnId,
    pub(crate) tag: u64,
    pub(crate) now: Instant,
    pub(crate) inner: &'a mut Connection,
}

impl ConnRef<'_> {
    /// This connection's identifier.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The tag given to `Node::connect` (0 for accepted connections).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Whether we accepted this connection (we are the server).
    pub fn is_server(&self) -> bool {
        self.inner.side().is_server()
    }

    /// The ALPN protocol negotiated in the handshake.
    #[cfg(any(feature = "aws-lc-rs", feature = "rustls-ring"))]
    pub fn alpn(&self) -> Option<Vec<u8>> {
        let data = self.inner.crypto_session().handshake_data()?;
        data.downcast::<quinn_proto::crypto::rustls::HandshakeData>().ok()?.protocol
    }

    /// The peer's certificate chain (DER), when it presented one.
    #[cfg(any(feature = "aws-lc-rs", feature = "rustls-ring"))]
    pub fn peer_certificates(&self) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
        let identity = self.inner.crypto_session().peer_identity()?;
        identity.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok().map(|certs| *certs)
    }

    /// Open a bidirectional stream, or `None` at the peer's stream limit (`on_streams_available`
    /// follows when it rises).
    pub fn open_bi(&mut self) -> Option<StreamId> {
        self.inner.streams().open(Dir::Bi)
    }

    /// Open a unidirectional stream; `None` at the peer's stream limit.
    pub fn open_uni(&mut self) -> Option<StreamId> {
        self.inner.streams().open(Dir::Uni)
    }

    /// Write as much of `data` as flow control allows; returns how much was taken. When it is
    /// less than `data.len()`, `on_writable` follows once more can be written.
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        match self.inner.send_stream(stream).write(data) {
            Err(WriteError::Blocked) => Ok(0),
            other => other,
        }
    }

    /// Mark the end of what we send on `stream`.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), FinishError> {
        self.inner.send_stream(stream).finish()
    }

    /// Abandon sending on `stream` with an application error code.
    pub fn reset(&mut self, stream: StreamId, code: VarInt) -> Result<(), ClosedStream> {
        self.inner.send_stream(stream).reset(code)
    }

    /// Ask the peer to stop sending on `stream`.
    pub fn stop(&mut self, stream: StreamId, code: VarInt) -> Result<(), ClosedStream> {
        self.inner.recv_stream(stream).stop(code)
    }

    /// Read what has arrived on `stream`, in order, calling `sink` for each chunk.
    pub fn read(&mut self, stream: StreamId, sink: &mut dyn FnMut(Bytes)) -> Result<ReadOutcome, StreamReadError> {
        let mut recv = self.inner.recv_stream(stream);
        let mut chunks = recv.read(true).map_err(|_: ReadableError| StreamReadError::Closed)?;
        let mut outcome = ReadOutcome::Pending;
        let result = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => sink(chunk.bytes),
                Ok(None) => {
                    outcome = ReadOutcome::Finished;
                    break Ok(());
                }
                Err(ReadError::Blocked) => break Ok(()),
                Err(ReadError::Reset(code)) => break Err(StreamReadError::Reset(code)),
            }
        };
        // Finalizing tells quinn-proto whether to send flow-control credit; always done.
        let _ = chunks.finalize();
        result.map(|()| outcome)
    }

    /// Close the connection with an application error code and reason.
    pub fn close(&mut self, code: VarInt, reason: &[u8]) {
        self.inner.close(self.now, code, Bytes::copy_from_slice(reason));
    }

    /// The underlying quinn-proto connection, for everything this wrapper does not cover.
    pub fn quic(&mut self) -> &mut Connection {
        self.inner
    }
}

/// What a [`ConnRef::read`] found at the end of the available data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// More may arrive later (`on_readable` will follow).
    Pending,
    /// The peer finished the stream; everything has been read.
    Finished,
}

/// Why a stream could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamReadError {
    /// The stream does not exist, or was already read to its end.
    #[error("stream closed")]
    Closed,
    /// The peer abandoned the stream with this error code.
    #[error("stream reset by peer with code {0}")]
    Reset(VarInt),
}
