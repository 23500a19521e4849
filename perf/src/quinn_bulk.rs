//! The baseline: quinn 0.11 bulk transfer over loopback, arranged as quinn's own `bench/bulk`:
//! server and client in one process, each on its own thread with its own tokio current-thread
//! runtime, quinn-udp I/O (GSO/GRO where the kernel has them), quinn's default `TransportConfig`
//! (initial MTU 1200, MTU discovery up to 1452, Cubic, default windows, no ACK-frequency).
//! One connection, one bidirectional stream.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use ant_quic_dataplane::sys::thread::{allowed_cpus, pin_current_thread};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::harness::{direction_name, BulkResult};
use crate::tls;

/// Bound on one side's whole run, so that a stuck transfer ends on its own.
const SIDE_TIMEOUT: Duration = Duration::from_secs(110);

/// Runs one transfer of `bytes` bytes; `upload`: the client sends, else the server sends.
/// `pin`: server thread on the first allowed CPU, client thread on the second (quinn's own bench
/// does not pin; ant-quic's in-process transfer does).
pub fn run(bytes: u64, upload: bool, pin: bool) -> Result<BulkResult> {
    let cpus = if pin { allowed_cpus() } else { Vec::new() };
    let server_cpu = cpus.first().copied();
    let client_cpu = cpus.get(1 % cpus.len().max(1)).copied();
    let tls = tls::pair()?;
    let (cipher, kx) = tls::negotiated(&tls)?;
    let server_crypto = Arc::new(QuicServerConfig::try_from(tls.server.clone()).context("quinn server TLS config")?);
    let client_crypto = Arc::new(QuicClientConfig::try_from(tls.client.clone()).context("quinn client TLS config")?);

    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let server = spawn_side("server", server_cpu, move || Ok(server_side(server_crypto, bytes, upload, addr_tx)))?;
    let client = spawn_side("client", client_cpu, move || {
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).context("server did not report its address")?;
        Ok(client_side(client_crypto, addr, bytes, upload))
    })?;

    let client = client.join().map_err(|_| anyhow!("client thread panicked"))??;
    let server_end = server.join().map_err(|_| anyhow!("server thread panicked"))??;

    // The transfer ends when the receiver has read the last byte: the client for a download, the
    // server for an upload (both threads share one clock, `Instant` is monotonic system-wide).
    let end = if upload {
        server_end.ok_or_else(|| anyhow!("server did not record the end of the upload"))?
    } else {
        client.end
    };
    let seconds = end.saturating_duration_since(client.start).as_secs_f64();
    Ok(BulkResult {
        implementation: "quinn".into(),
        bytes,
        seconds,
        gbps: BulkResult::gbps(bytes, seconds),
        cipher,
        direction: direction_name(upload).into(),
        kx: Some(kx),
        mtu: Some(client.mtu),
        backend: Some(if pin { "quinn-udp, pinned" } else { "quinn-udp" }.into()),
        cpu_seconds: None,
    })
}

/// Runs one side on a thread of its own, `quinn-{role}`, pinned to `cpu` if given: `side` (which
/// may wait for what it needs first) makes the future, which runs in a runtime of the thread's own
/// for at most [`SIDE_TIMEOUT`].
fn spawn_side<T, F>(
    role: &'static str,
    cpu: Option<usize>,
    side: impl FnOnce() -> Result<F> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>>,
{
    let thread = thread::Builder::new().name(format!("quinn-{role}")).spawn(move || -> Result<T> {
        if let Some(cpu) = cpu {
            pin_current_thread(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
        }
        let side = side()?;
        let rt = runtime()?;
        rt.block_on(async move {
            tokio::time::timeout(SIDE_TIMEOUT, side)
                .await
                .map_err(|_| anyhow!("{role} timed out after {SIDE_TIMEOUT:?}"))?
        })
    })?;
    Ok(thread)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio current-thread runtime")
}

async fn server_side(
    crypto: Arc<QuicServerConfig>,
    bytes: u64,
    upload: bool,
    addr_tx: mpsc::Sender<SocketAddr>,
) -> Result<Option<Instant>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the server socket")?;
    let config = quinn::ServerConfig::with_crypto(crypto);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, Arc::new(quinn::TokioRuntime))
            .context("server endpoint")?;
    addr_tx.send(endpoint.local_addr()?).map_err(|_| anyhow!("client thread gone"))?;

    let incoming = endpoint.accept().await.ok_or_else(|| anyhow!("server endpoint closed before a connection"))?;
    let conn = incoming.await.context("server handshake")?;
    let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
    let received = drain(&mut recv).await?;
    let end = Instant::now();
    let upload_end = if upload {
        if received != bytes {
            bail!("server received {received} bytes, expected {bytes}");
        }
        Some(end)
    } else {
        send_bytes(&mut send, bytes).await?;
        None
    };
    send.finish().context("finishing the server's stream")?;
    // The client closes the connection once it has everything.
    let _ = conn.closed().await;
    endpoint.wait_idle().await;
    Ok(upload_end)
}

#[derive(Debug)]
struct ClientOutcome {
    start: Instant,
    end: Instant,
    mtu: u16,
}

async fn client_side(
    crypto: Arc<QuicClientConfig>,
    server: SocketAddr,
    bytes: u64,
    upload: bool,
) -> Result<ClientOutcome> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the client socket")?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
            .context("client endpoint")?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto));
    let conn = endpoint.connect(server, tls::SERVER_NAME)?.await.context("client handshake")?;

    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    if upload {
        send_bytes(&mut send, bytes).await?;
    }
    send.finish().context("finishing the client's stream")?;
    let received = drain(&mut recv).await?;
    let end = Instant::now();
    if !upload && received != bytes {
        bail!("client received {received} bytes, expected {bytes}");
    }
    let mtu = conn.stats().path.current_mtu;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(ClientOutcome { start, end, mtu })
}

/// Writes `bytes` bytes as [`crate::harness::filler_calls`] cuts them, without copies.
pub(crate) async fn send_bytes(send: &mut quinn::SendStream, bytes: u64) -> Result<()> {
    for mut chunks in crate::harness::filler_calls(bytes) {
        send.write_all_chunks(&mut chunks).await.context("writing the stream")?;
    }
    Ok(())
}

/// Reads the stream to its end, 32 chunks at a time, in order; returns the byte count.
async fn drain(recv: &mut quinn::RecvStream) -> Result<u64> {
    let mut bufs: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
    let mut total = 0u64;
    while let Some(n) = recv.read_chunks(&mut bufs).await.context("reading the stream")? {
        total += bufs.iter().take(n).map(|b| b.len() as u64).sum::<u64>();
    }
    Ok(total)
}
