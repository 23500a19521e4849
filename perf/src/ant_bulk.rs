//! The same bulk transfer through ant-quic's library (`ant_quic::bulk::bulk_transfer`): a server
//! node and a client node in this process on 127.0.0.1, one connection, one stream.

use ant_quic_dataplane::backend::BackendKind;
use anyhow::{anyhow, Context, Result};

use crate::harness::{direction_name, BulkResult};

/// Runs one transfer through ant-quic.
pub fn run(bytes: u64, upload: bool, backend: Option<&str>, cores: usize) -> Result<BulkResult> {
    let backend = backend.map(|b| b.parse::<BackendKind>().map_err(|e| anyhow!(e))).transpose()?;
    let report = ant_quic::bulk::bulk_transfer(&ant_quic::bulk::BulkOptions { bytes, upload, backend, cores })
        .context("ant-quic bulk transfer")?;
    let seconds = report.elapsed.as_secs_f64();
    Ok(BulkResult {
        implementation: "ant-quic".into(),
        bytes: report.bytes,
        seconds,
        gbps: BulkResult::gbps(report.bytes, seconds),
        cipher: report.cipher,
        direction: direction_name(upload).into(),
        kx: None,
        mtu: Some(report.mtu),
        backend: Some(report.backend),
        cpu_seconds: None,
    })
}
