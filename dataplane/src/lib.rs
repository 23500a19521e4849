//! The ant-quic data plane: one thread per core, each owning its UDP socket, its I/O backend
//! (io_uring or portable), its QUIC endpoint and every connection on it.
//!
//! A packet's path on one core: [`backend`] receives a batch → [`batch::split_gro_owned`] splits it →
//! [`datagram::classify`] sorts QUIC packets from the node's own datagrams (relay frames are
//! forwarded or unwrapped by [`relay`], control datagrams go to the control thread) →
//! [`cid::route`] tells which core owns it (others are handed over through a queue) → the core's
//! `quinn_proto::Endpoint` decrypts it → the connection's [`Application`] runs on the same core →
//! `poll_transmit` seals the answer into GSO batches, which leave through the core's transmitter
//! (`transmit.rs`: path aliases routed direct or framed for the relay) → [`backend`] sends them.
//! Sources are unmapped to plain IPv4 as datagrams enter ([`address`]). A backend that sees
//! Ethernet frames (AF_XDP) finds the datagrams in them and writes their headers with [`frame`].
//!
//! Raw system calls live in [`sys`] only, behind safe functions; the crate's lints keep them out
//! of every other module.

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

pub mod address;
pub mod admission;
pub mod app;
pub mod backend;
pub mod batch;
pub mod cid;
pub mod connection;
mod core_loop;
pub mod datagram;
pub mod frame;
pub mod latency;
pub mod multisocket;
pub mod node;
pub mod probe;
pub mod relay;
pub mod socket;
pub mod stats;
pub mod steering;
pub mod sys;
mod transmit;
#[cfg(target_os = "linux")]
pub mod xdp;

pub use admission::{AdmissionConfig, RetryPolicy};
pub use app::{AppFactory, Application};
pub use backend::BackendKind;
pub use connection::{ConnId, ConnRef, ConnectRequest, Connections, ReadOutcome};
pub use datagram::ControlDatagram;
pub use multisocket::MultiSocket;
pub use node::{Messenger, Node, NodeConfig, NodeError, NodeHandle, StartError};
pub use quinn_proto;
pub use relay::{
    is_alias, PathRoute, RelayAllocation, RelayDrop, RelayFrame, RelayFrameView, RELAY_HEADER_LEN, RELAY_MARKER,
};

/// Most datagrams put in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
