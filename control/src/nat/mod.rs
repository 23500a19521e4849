//! NAT traversal: the signalling messages, candidates, and the sans-IO state machines of both
//! roles (the coordinator a bootstrap runs, the traversal a peer runs). See `docs/nat-traversal.md`.
//!
//! Nothing here owns a socket or reads a clock: time comes in as `now`, and what must be sent or
//! installed comes out as actions for the driver (`ant_quic::nat`).

pub mod agent;
pub mod candidate;
pub mod coordinator;
pub mod message;
pub mod metrics;
pub mod probe;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod traversal;
pub mod wire;

pub use message::{Candidate, CandidateKind, ErrorCode, Message, Outcome, PunchRole};
pub use metrics::{CoordinatorCounts, NatMetrics, NatSnapshot};
pub use probe::{Probe, ProbeKind};
