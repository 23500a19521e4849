//! The one error type of the async API.

use ant_quic_dataplane::quinn_proto::{ConnectError, ConnectionError, VarInt};

/// Everything an [`super::Endpoint`], a [`super::Connection`] or a stream can fail with; each
/// message says what happened in one line.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint could not be set up (identity, TLS, sockets, cores).
    #[error("cannot start the endpoint: {0}")]
    Setup(String),
    /// A setting given to the builder or a call is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The connection could not even be started (bad address, endpoint stopping).
    #[error("cannot connect: {0}")]
    ConnectFailed(ConnectError),
    /// The connection ended (or its handshake failed): closed by either side, timed out, refused.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The peer asked us to stop sending on the stream, with this application code.
    #[error("the peer stopped the stream (code {0})")]
    Stopped(VarInt),
    /// The peer abandoned the stream it was sending, with this application code.
    #[error("the peer reset the stream (code {0})")]
    Reset(VarInt),
    /// The stream was already finished or reset (sending) or stopped (receiving) by this side.
    #[error("the stream was already finished, reset or stopped by this side")]
    ClosedStream,
    /// The endpoint was closed: nothing new is accepted or opened.
    #[error("the endpoint is closed")]
    EndpointClosed,
    /// [`super::Endpoint::connect_peer`] needs a bootstrap, and the endpoint was built without.
    #[error("no bootstrap configured: give one with .bootstrap(\"[PEER_ID@]HOST:PORT\") or [node] bootstrap")]
    NoBootstrap,
    /// The peer could not be reached through the bootstraps: not registered there, no path
    /// found, or not within the time allowed.
    #[error("cannot reach peer {peer}: {reason}")]
    PeerUnreachable {
        /// The peer ID asked for.
        peer: crate::identity::PeerId,
        /// Why, as the traversal tells it.
        reason: String,
    },
    /// The peer does not take datagrams, or this one is larger than it takes.
    #[error("datagram of {size} bytes not sendable: the peer takes at most {max} (0: no datagrams)")]
    DatagramTooLarge {
        /// The datagram's size.
        size: usize,
        /// The largest the peer takes now.
        max: usize,
    },
}

impl Error {
    /// Whether the connection closed cleanly: closed by either application with code 0.
    pub fn is_clean_close(&self) -> bool {
        match self {
            Error::ConnectionLost(ConnectionError::ApplicationClosed(close)) => close.error_code == VarInt::from_u32(0),
            Error::ConnectionLost(ConnectionError::LocallyClosed) => true,
            _ => false,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &error {
            Error::Stopped(_) => ErrorKind::BrokenPipe,
            Error::Reset(_) | Error::ConnectionLost(_) => ErrorKind::ConnectionReset,
            Error::ClosedStream | Error::EndpointClosed => ErrorKind::NotConnected,
            Error::Invalid(_) | Error::DatagramTooLarge { .. } => ErrorKind::InvalidInput,
            Error::Setup(_) | Error::ConnectFailed(_) | Error::NoBootstrap => ErrorKind::Other,
            Error::PeerUnreachable { .. } => ErrorKind::HostUnreachable,
        };
        std::io::Error::new(kind, error)
    }
}
