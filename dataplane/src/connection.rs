//! A core's connections as application code and the core loop see them: [`ConnId`] names one,
//! [`ConnRef`] lends one to a callback, [`Connections`] lends all of a core's to
//! [`crate::Application::on_message`], and [`ConnectRequest`] asks a core to open one.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{
    ClientConfig, ClosedStream, Connection, Dir, FinishError, ReadError, ReadableError, StreamId, VarInt, WriteError,
};

/// Identifies a connection on its core. Unique among the live connections of one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The core owning the connection.
    pub core: usize,
    /// Its index on that core.
    pub index: usize,
}

/// A request to open a connection, carried out on the chosen core.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Where to connect.
    pub remote: SocketAddr,
    /// The TLS server name (SNI) to send and, with a WebPKI verifier, to check.
    pub server_name: String,
    /// TLS and transport settings for this connection.
    pub config: ClientConfig,
    /// A value of the caller's choice, given back in callbacks for this connection.
    pub tag: u64,
}

/// A connection and the core's bookkeeping for it.
pub(crate) struct ConnState {
    pub(crate) conn: Connection,
    pub(crate) tag: u64,
    /// Earliest deadline already queued in the timer heap for this connection.
    pub(crate) queued_deadline: Option<Instant>,
    pub(crate) dirty: bool,
    pub(crate) closed_reported: bool,
    /// When the connection was created, for the handshake duration.
    pub(crate) created: Instant,
    /// The handshake completed.
    pub(crate) connected: bool,
    /// Accepted and still handshaking: counted by the core's admission ([`crate::admission`]).
    pub(crate) half_open: bool,
    /// Next time the RTT may be sampled.
    pub(crate) next_rtt_sample: Instant,
    /// The peer's address when last driven, to count its changes.
    pub(crate) remote: std::net::SocketAddr,
    /// The local address replies go from when last driven, to count moves to the preferred address.
    pub(crate) local_ip: Option<std::net::IpAddr>,
}

/// The connections of one core, lent to application code in [`crate::Application::on_message`].
pub struct Connections<'a> {
    pub(crate) core: usize,
    pub(crate) now: Instant,
    pub(crate) conns: &'a mut Vec<Option<ConnState>>,
    pub(crate) dirty: &'a mut Vec<usize>,
}

impl std::fmt::Debug for Connections<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("core", &self.core).finish_non_exhaustive()
    }
}

impl Connections<'_> {
    /// The connection `id`, if it is alive on this core.
    pub fn get(&mut self, id: ConnId) -> Option<ConnRef<'_>> {
        if id.core != self.core {
            return None;
        }
        let state = self.conns.get_mut(id.index)?.as_mut()?;
        if !state.dirty {
            state.dirty = true;
            self.dirty.push(id.index);
        }
        Some(ConnRef { id, tag: state.tag, now: self.now, inner: &mut state.conn })
    }

    /// The live connections on this core.
    pub fn ids(&self) -> Vec<ConnId> {
        let core = self.core;
        self.conns.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(index, _)| ConnId { core, index }).collect()
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

    /// The tag given to `NodeHandle::connect` (0 for accepted connections).
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
