//! In-process bulk transfers between two nodes over loopback, for benchmarks and tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

use ant_quic_dataplane::BackendKind;

use crate::client::{BulkApp, BulkOutcome, BulkPayload};
use crate::node::{connect_request, start_client_app, start_server, NodeOptions};
use crate::tls::{ServerAuth, ALPN_ANT_QUIC};
use crate::Error;

/// One bulk transfer between a server node and a client node on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Payload size.
    pub bytes: u64,
    /// Client sends (true) or receives (false).
    pub upload: bool,
    /// Backend for both nodes; `None`: automatic.
    pub backend: Option<BackendKind>,
    /// Server cores.
    pub cores: usize,
}

/// What a bulk transfer measured.
#[derive(Debug, Clone)]
pub struct BulkReport {
    /// Payload bytes moved.
    pub bytes: u64,
    /// From opening the stream to the end of the transfer.
    pub elapsed: Duration,
    /// TLS 1.3 cipher suite.
    pub cipher: String,
    /// Backend used.
    pub backend: String,
    /// Path MTU at the end of the transfer.
    pub mtu: u16,
}

/// Run one transfer: server and client pinned to different CPUs when there are two.
pub fn bulk_transfer(options: &BulkOptions) -> Result<BulkReport, Error> {
    let run = bulk_transfer_checked(options, false)?;
    Ok(BulkReport {
        bytes: run.outcome.bytes,
        elapsed: run.outcome.elapsed,
        cipher: run.outcome.cipher,
        backend: run.backend,
        mtu: run.outcome.mtu,
    })
}

/// A bulk transfer with everything tests check.
#[derive(Debug, Clone)]
pub struct BulkRun {
    /// What the client saw.
    pub outcome: BulkOutcome,
    /// The backend both nodes ran.
    pub backend: String,
    /// UDP sends that failed on either node (other than back-pressure).
    pub send_errors: u64,
}

/// Like [`bulk_transfer`], returning the full outcome; `hash` makes both ends hash the payload.
pub fn bulk_transfer_checked(options: &BulkOptions, hash: bool) -> Result<BulkRun, Error> {
    let cpus = crate::dataplane::sys::thread::allowed_cpus();
    let server_cpus: Vec<usize> = cpus.iter().copied().take(options.cores.max(1)).collect();
    let client_cpu = cpus.get(options.cores.max(1) % cpus.len().max(1)).copied().unwrap_or(0);
    let server = start_server(&NodeOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        cores: Some(options.cores.max(1)),
        backend: options.backend,
        cpus: Some(server_cpus),
        ..NodeOptions::default()
    })?;
    let (tx, rx) = mpsc::channel();
    let payload = if options.upload {
        let data = crate::protocol::filler();
        let repeat = options.bytes.div_ceil(data.len() as u64);
        BulkPayload::Upload { data, repeat, hash }
    } else {
        BulkPayload::Download(options.bytes)
    };
    let client = start_client_app(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        options.backend,
        Some(vec![client_cpu]),
        BulkApp::new(payload, hash, tx),
    )?;
    let backend = client.backend().to_string();
    let request =
        connect_request(server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()), &[ALPN_ANT_QUIC], 0)?;
    client.connect(request, Some(0))?;
    // Generous: even 50 Mbit/s finishes in time; a stuck transfer still ends.
    let limit = Duration::from_secs(30) + Duration::from_secs(options.bytes / 6_000_000);
    let outcome = rx.recv_timeout(limit);
    let send_errors = server
        .node
        .stats()
        .iter()
        .chain(client.stats().iter())
        .map(|s| ant_quic_dataplane::stats::read(&s.tx_errors))
        .sum();
    client.shutdown();
    server.node.shutdown();
    let _ = client.join();
    let _ = server.node.join();
    let outcome = outcome.map_err(|_| Error::Transfer(format!("no result within {limit:?}")))?;
    if let Some(error) = &outcome.error {
        return Err(Error::Transfer(error.clone()));
    }
    Ok(BulkRun { outcome, backend, send_errors })
}
