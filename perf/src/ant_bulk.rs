//! The same bulk transfer through ant-quic's library (`ant_quic::perf::bulk_transfer`).
//!
//! PENDING: that API is being written in the root crate. Until it lands this subcommand fails
//! with a clear message, and `compare` reports the ant-quic row as pending.

use anyhow::{bail, Result};

use crate::BulkResult;

/// Runs one transfer through ant-quic.
pub fn run(bytes: u64, upload: bool, backend: Option<&str>, cores: usize) -> Result<BulkResult> {
    let _ = (bytes, upload, backend, cores);
    bail!("ant-quic bulk API (ant_quic::perf::bulk_transfer) has not landed yet: pending")
}
