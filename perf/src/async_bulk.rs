//! The bulk transfer through ant-quic's async API (`ant_quic::endpoint`): a server endpoint and a
//! client endpoint in this process on 127.0.0.1, both driven by tasks on one tokio multi-thread
//! runtime (`workers` worker threads); each endpoint has its own data-plane core (one thread,
//! not pinned, as the async API starts it). One connection, one bidirectional stream.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ant_quic::endpoint::{Connection, Endpoint, RecvStream, SendStream};
use ant_quic::tls::ServerAuth;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::harness::{direction_name, BulkResult};

/// Bound on the whole run, so that a stuck transfer ends on its own.
const RUN_TIMEOUT: Duration = Duration::from_secs(110);

/// Bound on the clean close after the transfer (not timed).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The application protocol both endpoints offer.
pub const ALPN: &[u8] = b"ant-quic-perf";

/// A tokio multi-thread runtime with `workers` worker threads (at least 1).
pub fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .context("building a tokio multi-thread runtime")
}

/// A server endpoint and a client-only endpoint on 127.0.0.1, one data-plane core each.
pub fn endpoints() -> Result<(Endpoint, Endpoint)> {
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = Endpoint::builder().listen(localhost).alpn(ALPN).bind().context("server endpoint")?;
    let client = Endpoint::builder().listen(localhost).alpn(ALPN).accept(false).bind().context("client endpoint")?;
    Ok((server, client))
}

/// Connect `client` to `server`: both sides' connections.
pub async fn connect(server: &Endpoint, client: &Endpoint) -> Result<(Connection, Connection)> {
    let auth = ServerAuth::PeerId(server.local_peer_id());
    let accepting = server.clone();
    let accepted = tokio::spawn(async move { accepting.accept().await });
    let dialed = client.connect(server.local_addr(), auth).await.context("client handshake")?;
    let accepted = accepted
        .await
        .map_err(|e| anyhow!("accept task: {e}"))?
        .ok_or_else(|| anyhow!("server endpoint closed before a connection"))?;
    Ok((dialed, accepted))
}

/// Close the client's connection and wait (bounded) for both endpoints to be idle.
pub async fn close(conn: &Connection, server: &Endpoint, client: &Endpoint) {
    conn.close(0, b"done");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        client.wait_idle().await;
        server.wait_idle().await;
    })
    .await;
}

/// Runs one transfer of `bytes` bytes; `upload`: the client sends, else the server sends.
pub fn run(bytes: u64, upload: bool, workers: usize) -> Result<BulkResult> {
    let rt = runtime(workers)?;
    let (server, client) = endpoints()?;
    let outcome = rt.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, transfer(&server, &client, bytes, upload))
            .await
            .map_err(|_| anyhow!("the transfer timed out after {RUN_TIMEOUT:?}"))?
    })?;
    let seconds = outcome.seconds;
    Ok(BulkResult {
        implementation: "ant-quic async".into(),
        bytes,
        seconds,
        gbps: BulkResult::gbps(bytes, seconds),
        // The endpoint does not expose the suite; it builds its TLS configs with the same
        // `ant_quic::tls` functions and defaults as the callback API's nodes.
        cipher: "ant_quic::tls default".into(),
        direction: direction_name(upload).into(),
        kx: None,
        mtu: Some(outcome.mtu),
        backend: Some(format!("endpoint, tokio {workers} worker")),
        cpu_seconds: None,
    })
}

struct Outcome {
    seconds: f64,
    mtu: u16,
}

async fn transfer(server: &Endpoint, client: &Endpoint, bytes: u64, upload: bool) -> Result<Outcome> {
    let (conn, accepted) = connect(server, client).await?;
    let (end_tx, end_rx) = tokio::sync::oneshot::channel();
    let server_side = tokio::spawn(server_side(accepted, bytes, upload, end_tx));

    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    if upload {
        send_bytes(&mut send, bytes).await?;
    }
    send.finish().await.context("finishing the client's stream")?;
    let received = drain(&mut recv).await.context("client")?;
    let client_end = Instant::now();
    if !upload && received != bytes {
        bail!("client received {received} bytes, expected {bytes}");
    }
    // The server finished its stream after reading ours to the end: its time is there already.
    let server_end = end_rx.await.map_err(|_| anyhow!("the server did not record its end"))?;
    // The transfer ends when the receiver has read the last byte.
    let end = if upload { server_end } else { client_end };
    let mtu = conn.stats().await.context("connection stats")?.path.current_mtu;
    close(&conn, server, client).await;
    server_side.await.map_err(|e| anyhow!("server task: {e}"))??;
    Ok(Outcome { seconds: end.saturating_duration_since(start).as_secs_f64(), mtu })
}

/// The server: read the client's stream to its end (reporting when through `end`), send `bytes`
/// for a download, then hold the connection until the client closes it (dropping the last
/// handle would close it before the peer has everything).
async fn server_side(
    conn: Connection,
    bytes: u64,
    upload: bool,
    end: tokio::sync::oneshot::Sender<Instant>,
) -> Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
    let received = drain(&mut recv).await.context("server")?;
    let _ = end.send(Instant::now());
    if upload && received != bytes {
        bail!("server received {received} bytes, expected {bytes}");
    }
    if !upload {
        send_bytes(&mut send, bytes).await?;
    }
    send.finish().await.context("finishing the server's stream")?;
    conn.closed().await;
    Ok(())
}

/// Writes `bytes` bytes as [`crate::harness::filler_calls`] cuts them, without copies.
async fn send_bytes(send: &mut SendStream, bytes: u64) -> Result<()> {
    for mut chunks in crate::harness::filler_calls(bytes) {
        send.write_all_chunks(&mut chunks).await.context("writing the stream")?;
    }
    Ok(())
}

/// Reads the stream to its end with `read_chunks`, 32 chunks at most per await (no copy, as
/// quinn's `read_chunks` in `quinn-bulk`); returns the byte count.
async fn drain(recv: &mut RecvStream) -> Result<u64> {
    let mut chunks: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
    let mut total = 0u64;
    while let Some(n) = recv.read_chunks(&mut chunks).await.context("reading the stream")? {
        total += chunks.iter().take(n).map(|chunk| chunk.len() as u64).sum::<u64>();
    }
    Ok(total)
}
