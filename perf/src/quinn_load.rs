//! The load workloads with quinn 0.11 (see `load.rs`).
//!
//! quinn is set up as its own `perf` server and client set it up: `TransportConfig::default()`
//! (initial MTU 1200, MTU discovery, Cubic, 100 concurrent streams per direction, default
//! windows, no ACK frequency), `EndpointConfig::default()` (1472-byte UDP payloads), UDP sockets
//! with 2 MiB send and receive buffers, one endpoint (one socket) per process, quinn-udp I/O
//! (GSO/GRO where the kernel has them), rustls on aws-lc-rs with its default suites. The
//! runtime is tokio: current-thread with `--cores 1` (as quinn's `bench`), else multi-thread
//! with `--cores` workers. The only addition is a keep-alive for the idle workload, so that the
//! held connections outlive the 30 s idle timeout.
//!
//! The server is a task per connection and a task per stream. Its certificate is a fresh
//! self-signed Ed25519 one, the signature algorithm of ant-quic's identities, so its line carries
//! both the certificate and the peer ID of its key: either client can pin it. The client pins the
//! server's certificate (quinn server) or peer ID (ant-quic server) and verifies the handshake
//! signature, without resumption or 0-RTT: every connection is a full handshake.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::task::{JoinError, JoinSet};

use crate::load::{self, ClientArgs, LoadResult, Progress, ServerArgs, ServerInfo, Workload};
use crate::{quinn_bulk, tls};

/// UDP socket buffers, as quinn's `perf` asks for.
const SOCKET_BUFFER: usize = 2 * 1024 * 1024;

/// Handshakes in flight while bulk and rr set up their connections.
const SETUP_IN_FLIGHT: usize = 64;

/// Idle workload: keep-alive interval, well inside the 30 s idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// rr: requests still unanswered this long after the last one was due are errors.
const RR_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for closes to reach the peer at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Stream error for an unknown operation (`src/protocol.rs`).
const ERR_UNKNOWN_OP: u32 = 3;

/// `ant-quic-perf server --impl quinn`.
pub fn serve(args: &ServerArgs) -> Result<()> {
    let (cert, key) = tls::self_signed_ed25519()?;
    let cert_der_hex = hex::encode(cert.as_ref());
    // An Ed25519 key is an ant-quic peer ID too, so that ant-quic clients can pin this server.
    let peer_id = ant_quic::identity::peer_id_of_certificate(&cert).map(|id| id.to_string());
    let crypto = QuicServerConfig::try_from(tls::load_server(cert, key)?).context("quinn server TLS config")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(quinn::TransportConfig::default()));
    // quinn refuses nothing below 65 536 connection attempts waiting to be accepted, and has no
    // limit on established connections, so 10 000 need no change here.
    let socket = bind(args.listen)?;
    let stop = stop_signal()?;
    runtime(args.cores)?.block_on(async move {
        let endpoint = endpoint(socket, Some(config))?;
        let info = ServerInfo {
            implementation: load::Implementation::Quinn.name().into(),
            addr: endpoint.local_addr()?,
            pid: std::process::id(),
            peer_id,
            cert_der_hex: Some(cert_der_hex),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&info)?)?;
        out.flush()?;
        drop(out);

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        tokio::spawn(serve_connection(incoming));
                    }
                    None => break,
                },
                _ = &mut stop => break,
                _ = term.recv() => break,
                _ = &mut ctrl_c => break,
            }
        }
        endpoint.close(0u32.into(), b"server exit");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        Ok(())
    })
}

/// Resolves when standard input reaches its end (or fails), read by a thread of its own.
fn stop_signal() -> Result<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        })
        .context("starting the stdin thread")?;
    Ok(rx)
}

/// One connection: a task per bidirectional stream until the connection ends.
async fn serve_connection(incoming: quinn::Incoming) {
    let Ok(conn) = incoming.await else { return };
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let _ = serve_stream(send, recv).await;
        });
    }
}

/// One `ant-quic/1` operation.
async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    let mut op = [0u8; 1];
    recv.read_exact(&mut op).await?;
    match op[0] {
        b'D' => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            quinn_bulk::send_bytes(&mut send, u64::from_be_bytes(len)).await?;
            send.finish()?;
            // The client's FIN (or anything it sent after the header).
            drain(&mut recv, None).await?;
        }
        b'U' => {
            let n = drain(&mut recv, None).await?;
            send.write_all(&n.to_be_bytes()).await?;
            send.finish()?;
        }
        b'E' => {
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                send.write_chunk(chunk.bytes).await?;
            }
            send.finish()?;
        }
        _ => {
            let _ = recv.stop(ERR_UNKNOWN_OP.into());
            let _ = send.reset(ERR_UNKNOWN_OP.into());
        }
    }
    Ok(())
}

/// `ant-quic-perf client --impl quinn`.
/// A quinn client for the server of `info`, pinning its certificate or peer ID.
pub fn client_config(info: &ServerInfo) -> Result<quinn::ClientConfig> {
    let pin = match (&info.cert_der_hex, &info.peer_id) {
        (Some(hex), _) => {
            tls::Pin::Certificate(hex::decode(hex).context("the server line's cert_der_hex is not hexadecimal")?.into())
        }
        (None, Some(id)) => tls::Pin::PeerId(id.parse().context("the server line's peer_id")?),
        (None, None) => bail!("the server line has neither cert_der_hex nor peer_id to pin"),
    };
    let crypto = QuicClientConfig::try_from(tls::pinned_client(pin)?).context("quinn client TLS config")?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

pub fn run(args: &ClientArgs) -> Result<LoadResult> {
    let info = args.server_info()?;
    let mut config = client_config(&info)?;
    let mut transport = quinn::TransportConfig::default();
    if args.workload == Workload::Idle {
        transport.keep_alive_interval(Some(KEEP_ALIVE));
    }
    config.transport_config(Arc::new(transport));
    let (cipher, _kx) = tls::load_negotiated()?;

    let local = SocketAddr::new(
        match info.addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        },
        0,
    );
    let socket = bind(local)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let args = args.clone();
    runtime(args.cores)?.block_on(async move {
        let client = Client { endpoint: endpoint(socket, None)?, config, server: info.addr };
        let measured = tokio::time::timeout(timeout, workload(&client, &args))
            .await
            .map_err(|_| anyhow!("{:?} did not finish within --timeout {timeout:?}", args.workload))??;
        client.endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_WAIT, client.endpoint.wait_idle()).await;
        let Measured { seconds, tally, connections } = measured;
        let per_second = if seconds > 0.0 { tally.completed as f64 / seconds } else { 0.0 };
        Ok(LoadResult {
            implementation: load::Implementation::Quinn.name().into(),
            workload: args.workload,
            connections,
            cores: args.cores,
            seconds,
            bytes: tally.bytes,
            gbps: crate::harness::BulkResult::gbps(tally.bytes, seconds),
            completed: tally.completed,
            per_second,
            errors: tally.errors,
            latency_us: load::Latency::of(&tally.hist),
            cipher,
            backend: Some("quinn-udp".into()),
            first_error: tally.first_error,
        })
    })
}

/// A tokio runtime: current-thread for one core, else multi-thread with `cores` workers.
fn runtime(cores: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if cores <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all().build().context("building the tokio runtime")
}

/// A UDP socket on `addr` with quinn `perf`'s buffer sizes.
fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).context("UDP socket")?;
    socket.set_send_buffer_size(SOCKET_BUFFER).context("send buffer size")?;
    socket.set_recv_buffer_size(SOCKET_BUFFER).context("receive buffer size")?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    Ok(socket.into())
}

/// An endpoint on `socket` (inside a runtime).
fn endpoint(socket: std::net::UdpSocket, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, Arc::new(quinn::TokioRuntime))
        .context("quinn endpoint")
}

#[derive(Clone)]
struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
}

impl Client {
    /// A new connection, established (full handshake).
    async fn connect(&self) -> Result<quinn::Connection> {
        let connecting = self.endpoint.connect_with(self.config.clone(), self.server, tls::SERVER_NAME)?;
        Ok(connecting.await?)
    }
}

/// What a workload measured.
struct Measured {
    seconds: f64,
    tally: Tally,
    connections: usize,
}

/// Completed operations, their latencies, errors.
struct Tally {
    hist: Histogram<u64>,
    completed: u64,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self { hist: load::latency_histogram()?, completed: 0, errors: 0, bytes: 0, first_error: None })
    }

    fn ok(&mut self, latency: Duration, bytes: u64) {
        load::record(&mut self.hist, latency);
        self.completed += 1;
        self.bytes += bytes;
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    /// Records a task's outcome.
    fn task<T>(&mut self, r: Result<Result<T>, JoinError>) -> Option<T> {
        match r {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.error(e);
                None
            }
            Err(e) => {
                self.error(e);
                None
            }
        }
    }

    fn line(&self) -> String {
        format!("completed {}, errors {}, bytes {}", self.completed, self.errors, self.bytes)
    }
}

/// The next finished task of `set`, printing progress while waiting.
async fn join_next<T: 'static>(
    set: &mut JoinSet<T>,
    progress: &mut Progress,
    what: impl Fn() -> String,
) -> Option<Result<T, JoinError>> {
    loop {
        match tokio::time::timeout(Duration::from_millis(250), set.join_next()).await {
            Ok(r) => {
                progress.tick(&what);
                return r;
            }
            Err(_) => progress.tick(&what),
        }
    }
}

async fn workload(client: &Client, args: &ClientArgs) -> Result<Measured> {
    match args.workload {
        Workload::Bulk => bulk(client, args).await,
        Workload::Rr => rr(client, args).await,
        Workload::Handshakes => handshakes(client, args).await,
        Workload::Idle => idle(client, args).await,
    }
}

/// Establishes `n` connections, at most `in_flight` handshakes at a time; records each
/// handshake (or its failure) in `tally`.
async fn establish(
    client: &Client,
    n: usize,
    in_flight: usize,
    tally: &mut Tally,
    progress: &mut Progress,
) -> Vec<quinn::Connection> {
    let mut set = JoinSet::new();
    let mut conns = Vec::with_capacity(n);
    let mut started = 0;
    loop {
        while started < n && set.len() < in_flight {
            let client = client.clone();
            set.spawn(async move {
                let t = Instant::now();
                let conn = client.connect().await?;
                Ok((conn, t.elapsed()))
            });
            started += 1;
        }
        let established = conns.len();
        let Some(r) = join_next(&mut set, progress, || format!("established {established} of {n}")).await else {
            break;
        };
        if let Some((conn, t)) = tally.task(r) {
            tally.ok(t, 0);
            conns.push(conn);
        }
    }
    conns
}

async fn bulk(client: &Client, args: &ClientArgs) -> Result<Measured> {
    let mut progress = Progress::new();
    let mut setup = Tally::new()?;
    let conns = establish(client, args.connections, SETUP_IN_FLIGHT, &mut setup, &mut progress).await;
    let mut tally = Tally::new()?;
    tally.errors = setup.errors;
    tally.first_error = setup.first_error;

    let moved = Arc::new(AtomicU64::new(0));
    let (bytes, upload) = (args.bytes, args.upload);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for conn in &conns {
        let (conn, moved) = (conn.clone(), moved.clone());
        set.spawn(async move { transfer(&conn, bytes, upload, &moved).await });
    }
    let mut last = start;
    while let Some(r) =
        join_next(&mut set, &mut progress, || format!("{} MB moved", moved.load(Ordering::Relaxed) / 1_000_000)).await
    {
        if let Some(end) = tally.task(r) {
            tally.ok(end.saturating_duration_since(start), bytes);
            last = last.max(end);
        }
    }
    let seconds = last.saturating_duration_since(start).as_secs_f64();
    close_all(&conns);
    Ok(Measured { seconds, tally, connections: args.connections })
}

/// One bulk transfer on a new stream of `conn`; returns when the last byte (download) or the
/// server's byte count (upload) was read.
async fn transfer(conn: &quinn::Connection, bytes: u64, upload: bool, moved: &AtomicU64) -> Result<Instant> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
    if upload {
        send.write_all(b"U").await.context("writing the request")?;
        quinn_bulk::send_bytes(&mut send, bytes).await?;
        send.finish()?;
        let answer = recv.read_to_end(8).await.context("reading the byte count")?;
        let end = Instant::now();
        let count = <[u8; 8]>::try_from(answer.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| anyhow!("the server answered {} bytes instead of a count", answer.len()))?;
        if count != bytes {
            bail!("the server counted {count} bytes, {bytes} were sent");
        }
        moved.fetch_add(bytes, Ordering::Relaxed);
        Ok(end)
    } else {
        send.write_all(&download_request(bytes)).await.context("writing the request")?;
        send.finish()?;
        let got = drain(&mut recv, Some(moved)).await?;
        let end = Instant::now();
        if got != bytes {
            bail!("received {got} bytes, asked for {bytes}");
        }
        Ok(end)
    }
}

/// `D` and the length, u64 big-endian.
fn download_request(bytes: u64) -> [u8; 9] {
    let mut req = [b'D'; 9];
    req[1..].copy_from_slice(&bytes.to_be_bytes());
    req
}

async fn rr(client: &Client, args: &ClientArgs) -> Result<Measured> {
    let mut progress = Progress::new();
    let mut tally = Tally::new()?;
    let conns = establish(client, args.connections, SETUP_IN_FLIGHT, &mut tally, &mut progress).await;
    // The handshakes were set-up, not the measured operations.
    tally.hist.reset();
    tally.completed = 0;
    if conns.is_empty() {
        return Ok(Measured { seconds: args.seconds, tally, connections: args.connections });
    }

    // Requests are due at t0 + i / rate. A thread of its own wakes on time (tokio's timer has a
    // granularity of 1 ms, several request intervals at these rates) and hands each due request
    // to the runtime, which never waits for a response before issuing the next.
    let rate = args.rate as f64;
    let total = (args.seconds * rate).floor() as u64;
    let due = move |i: u64| Duration::from_secs_f64(i as f64 / rate);
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    std::thread::Builder::new()
        .name("rr-pacer".into())
        .spawn(move || {
            crate::load::fine_timer_slack();
            for i in 0..total {
                let at = t0 + due(i);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send(i).is_err() {
                    break;
                }
            }
        })
        .context("starting the pacer thread")?;

    let request = download_request(args.response_bytes);
    let expected = args.response_bytes;
    let mut set: JoinSet<Result<Duration>> = JoinSet::new();
    let record = |tally: &mut Tally, r: Result<Result<Duration>, JoinError>| {
        if let Some(latency) = tally.task(r) {
            tally.ok(latency, expected);
        }
    };
    loop {
        tokio::select! {
            i = rx.recv() => match i {
                Some(i) => {
                    let conn = conns[(i % conns.len() as u64) as usize].clone();
                    let due_at = t0 + due(i);
                    set.spawn(async move {
                        let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
                        send.write_all(&request).await.context("writing the request")?;
                        send.finish()?;
                        let got = drain(&mut recv, None).await?;
                        let latency = due_at.elapsed();
                        if got != expected {
                            bail!("received {got} bytes, asked for {expected}");
                        }
                        Ok(latency)
                    });
                }
                None => break,
            },
            Some(r) = set.join_next(), if !set.is_empty() => record(&mut tally, r),
        }
        progress.tick(|| format!("{}, in flight {}", tally.line(), set.len()));
    }
    let deadline = tokio::time::Instant::from_std(t0 + due(total) + RR_GRACE);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(r)) => record(&mut tally, r),
            Ok(None) => break,
            Err(_) => {
                let left = set.len();
                for _ in 0..left {
                    tally.error(format!("{left} request(s) unanswered {RR_GRACE:?} after the last was due"));
                }
                set.abort_all();
                break;
            }
        }
    }
    close_all(&conns);
    Ok(Measured { seconds: args.seconds, tally, connections: args.connections })
}

async fn handshakes(client: &Client, args: &ClientArgs) -> Result<Measured> {
    let mut progress = Progress::new();
    let mut tally = Tally::new()?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration>>();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, tx) = (client.clone(), tx.clone());
        workers.spawn(async move {
            while Instant::now() < end {
                let t = Instant::now();
                let outcome = client.connect().await.map(|conn| {
                    let took = t.elapsed();
                    conn.close(0u32.into(), b"");
                    took
                });
                if tx.send(outcome).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok(took) => tally.ok(took, 0),
            Err(e) => tally.error(e),
        }
        progress.tick(|| tally.line());
    }
    let seconds = start.elapsed().as_secs_f64();
    while workers.join_next().await.is_some() {}
    Ok(Measured { seconds, tally, connections: args.concurrency })
}

async fn idle(client: &Client, args: &ClientArgs) -> Result<Measured> {
    let mut progress = Progress::new();
    let mut tally = Tally::new()?;
    let start = Instant::now();
    let conns = establish(client, args.connections, args.concurrency, &mut tally, &mut progress).await;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
    }
    let hold_end = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < hold_end {
        let left = hold_end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        progress.tick(|| format!("holding {} connection(s)", conns.len()));
    }
    for conn in &conns {
        if let Some(reason) = conn.close_reason() {
            tally.error(format!("a connection ended while held: {reason}"));
        }
    }
    close_all(&conns);
    Ok(Measured { seconds, tally, connections: args.connections })
}

fn close_all(conns: &[quinn::Connection]) {
    for conn in conns {
        conn.close(0u32.into(), b"done");
    }
}

/// Reads a stream to its end, 32 chunks at a time; returns the byte count.
async fn drain(recv: &mut quinn::RecvStream, moved: Option<&AtomicU64>) -> Result<u64> {
    let mut bufs: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
    let mut total = 0u64;
    while let Some(n) = recv.read_chunks(&mut bufs).await.context("reading the stream")? {
        let got = bufs.iter().take(n).map(|b| b.len() as u64).sum::<u64>();
        total += got;
        if let Some(moved) = moved {
            moved.fetch_add(got, Ordering::Relaxed);
        }
    }
    Ok(total)
}
