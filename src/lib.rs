//! ant-quic: a QUIC transport for peer-to-peer networks whose nodes sit behind NATs.
//!
//! A node runs a thread-per-core data plane ([`dataplane`]): each core owns a UDP socket bound
//! with `SO_REUSEPORT`, an io_uring ring (or the portable backend), a QUIC endpoint, and every
//! connection on it. Application code runs on the core that owns the connection, as an
//! [`Application`](dataplane::Application) created per core.
//!
//! Applications that run as async tasks (tokio, smol, any executor) use [`endpoint`] instead:
//! `Endpoint::builder()...bind()`, `connect(addr, auth).await`, `open_bi().await`, streams with
//! the `futures-io` (and, with feature `tokio`, tokio's) AsyncRead/AsyncWrite; it is built on the
//! callback API below (`examples/async_echo.rs`).
//!
//! Opening a connection and exchanging data with callbacks (see `examples/echo_client.rs` for a
//! full program):
//!
//! ```no_run
//! use ant_quic::dataplane::{Application, ConnRef, ReadOutcome};
//! use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
//!
//! struct Hello;
//! impl Application for Hello {
//!     fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
//!         if let Some(stream) = conn.open_bi() {
//!             let _ = conn.write(stream, b"Ehello");   // 'E': the echo operation of ant-quic/1
//!             let _ = conn.finish(stream);
//!         }
//!     }
//!     fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: quinn_proto::StreamId) {
//!         let _ = conn.read(stream, &mut |bytes| println!("{bytes:?}"));
//!     }
//! }
//!
//! # fn main() -> Result<(), ant_quic::Error> {
//! let node = ant_quic::node::start_client(None, Hello)?;
//! let request = ant_quic::node::connect_request("127.0.0.1:9000".parse().unwrap(), ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0)?;
//! node.connect(request, None)?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

pub mod build_info;
pub mod bulk;
pub mod client;
pub mod config;
pub mod endpoint;
pub mod identity;
pub mod logging;
pub mod nat;
pub mod node;
pub mod protocol;
pub mod registry;
pub mod service;
pub mod takeover;
pub mod tls;

pub use ant_quic_dataplane as dataplane;
pub use ant_quic_dataplane::quinn_proto;

/// Everything that can go wrong in this crate's API, each with a message for the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node's key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The data plane could not start.
    #[error(transparent)]
    Start(#[from] dataplane::StartError),
    /// A running node refused a request.
    #[error(transparent)]
    Node(#[from] dataplane::NodeError),
    /// A file or directory could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A transfer did not complete.
    #[error("transfer failed: {0}")]
    Transfer(String),
    /// An argument was not valid.
    #[error("{0}")]
    Invalid(String),
    /// A takeover of the port could not go ahead (the running node serves on).
    #[error(transparent)]
    Takeover(#[from] takeover::TakeoverError),
}
