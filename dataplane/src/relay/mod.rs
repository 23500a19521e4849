//! Relaying: relay frames, and the two per-core tables that act on them: forwarding between the
//! ends of an allocation (bootstrap role) and path aliases (peer role). Wire format and roles:
//! `docs/nat-traversal.md`, "Datagrams on the node socket" and "Path aliases".
//!
//! The relay never decrypts: the QUIC packet is end-to-end protected between the two peers
//! (RFC 9001), so forwarding is a table lookup, a byte count and a send. Both tables belong to
//! one core and are changed only by commands from the core's queue: no lock on the packet path.
//! Nothing here allocates per packet.
//!
//! - `frame.rs`: the wire format ([`RelayFrameView`], [`RelayFrame`]) and framing GSO batches.
//! - `forwarding.rs`: the allocations a bootstrap forwards ([`ForwardingTable`]).
//! - `paths.rs`: the routes of path aliases ([`PathTable`]).
//! - `io.rs`: what a core does with the relay frames it receives: unwrap or forward them.
//! - [`offload`]: which channels a core hands to the backend to forward below it (XDP).
//!   Framing the core's own transmits to an alias is in `crate::transmit`.

mod forwarding;
mod frame;
pub(crate) mod io;
pub mod offload;
mod paths;

pub use forwarding::{ForwardingTable, RelayAllocation, RelayDrop, MIN_RATE_BURST};
pub use frame::{frame_segments, FrameError, RelayFrame, RelayFrameView, RELAY_HEADER_LEN, RELAY_MARKER};
pub use paths::{is_alias, PathRoute, PathTable};
