//! The async API (`ant_quic::endpoint`) between two endpoints over loopback, under tokio (both
//! runtimes) and smol: echo, a 16 MB transfer with a slow reader (backpressure, bounded memory),
//! futures dropped mid-way (no byte lost), a dropped connection closing cleanly, and a GET from
//! aioquic's hq-interop server.

mod common;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic::endpoint::{Connection, Endpoint, Error, PathKind, STREAM_BUDGET};
use ant_quic::quinn_proto::ConnectionError;
use ant_quic::tls::ServerAuth;
use common::{aioquic_python, interop_script, left, random_bytes, sha256_hex, Process, TempDir};
use smol::future::{or, zip};
use smol::Timer;

const ALPN: &[u8] = b"async-test";
/// quinn-proto's default stream receive window, which the endpoints use.
const STREAM_WINDOW: usize = 1_250_000;
/// Every test's bound; a hang fails rather than blocks the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn server() -> Endpoint {
    Endpoint::builder().listen("127.0.0.1:0".parse().unwrap()).alpn(ALPN).bind().unwrap()
}

fn client() -> Endpoint {
    Endpoint::builder().listen("127.0.0.1:0".parse().unwrap()).alpn(ALPN).accept(false).bind().unwrap()
}

/// `future`, or a panic after [`TEST_LIMIT`] (runtime-agnostic: smol's timer has its own thread).
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    or(future, async {
        Timer::after(TEST_LIMIT).await;
        panic!("test took longer than {TEST_LIMIT:?}");
    })
    .await
}

/// Connect a client to a server; both sides' connections.
async fn connected(server: &Endpoint, client: &Endpoint) -> (Connection, Connection) {
    let auth = ServerAuth::PeerId(server.local_peer_id());
    let (dialed, accepted) = zip(client.connect(server.local_addr(), auth), server.accept()).await;
    (dialed.unwrap(), accepted.expect("the server endpoint closed"))
}

/// Echo every bidirectional stream of `conn` back until the peer closes.
async fn echo_streams(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let data = recv.read_to_end(64 << 20).await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().await.unwrap();
    }
}

/// Three streams echoed through a server, with what the client knows of the connection.
async fn echo_round() {
    let (server, client) = (server(), client());
    let (conn, accepted) = connected(&server, &client).await;
    assert_eq!(conn.remote_peer_id(), Some(server.local_peer_id()));
    assert_eq!(accepted.remote_peer_id(), Some(client.local_peer_id()), "the client presents its identity");
    assert_eq!(conn.alpn(), Some(ALPN));
    assert_eq!(accepted.alpn(), Some(ALPN));
    assert_eq!(conn.path().kind, PathKind::Direct);
    assert_eq!(conn.path().remote, server.local_addr());
    let echoing = echo_streams(accepted);
    let talking = async {
        for round in 0..3u8 {
            let message = vec![round; 100_000 * usize::from(round + 1)];
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&message).await.unwrap();
            send.finish().await.unwrap();
            let echoed = recv.read_to_end(1 << 20).await.unwrap();
            assert!(
                echoed == message,
                "round {round}: {} bytes came back of {}, or others",
                echoed.len(),
                message.len()
            );
        }
        assert!(conn.rtt() > Duration::ZERO);
        let stats = conn.stats().await.unwrap();
        assert!(stats.udp_tx.bytes >= 600_000, "{stats:?}");
        conn.close(0, b"done");
    };
    bounded(zip(echoing, talking)).await;
}

#[test]
fn echo_under_tokio_multi_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(echo_round());
}

#[test]
fn echo_under_tokio_current_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(echo_round());
}

#[test]
fn echo_under_smol() {
    smol::block_on(echo_round());
}

/// 16 MB through one stream whose reader sleeps first: while it sleeps the writer stalls, with
/// no more accepted than the reader's stream window and the two per-stream budgets; then
/// everything arrives, SHA-256 equal.
#[test]
fn slow_reader_stalls_the_writer_and_16_mb_arrive_intact() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = random_bytes(16 << 20).unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let writing = {
            let (payload, written) = (payload.clone(), Arc::clone(&written));
            tokio::spawn(async move {
                let mut send = conn.open_uni().await.unwrap();
                let mut at = 0;
                while at < payload.len() {
                    let end = payload.len().min(at + 100_000);
                    at += send.write(&payload[at..end]).await.unwrap();
                    written.store(at, Ordering::SeqCst);
                }
                send.finish().await.unwrap();
                conn.closed().await
            })
        };
        let mut recv = accepted.accept_uni().await.unwrap();
        Timer::after(Duration::from_millis(700)).await;
        let stalled_at = written.load(Ordering::SeqCst);
        Timer::after(Duration::from_millis(500)).await;
        let bound = STREAM_WINDOW + 2 * STREAM_BUDGET;
        let later = written.load(Ordering::SeqCst);
        assert!(later <= bound, "the writer got {later} bytes accepted while the reader slept (bound {bound})");
        assert_eq!(later, stalled_at, "the writer kept going while the reader slept");
        assert!(later >= STREAM_WINDOW / 2, "the writer stalled early, at {later} bytes");
        let started = Instant::now();
        let received = recv.read_to_end(32 << 20).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(received.len(), payload.len());
        assert_eq!(sha256_hex(&received), sha256_hex(&payload));
        eprintln!(
            "stalled at {stalled_at} bytes; then 16 MiB in {elapsed:?} ({:.0} Mbit/s)",
            received.len() as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
        );
        accepted.close(0, b"");
        let end = writing.await.unwrap();
        assert!(end.is_clean_close(), "{end}");
    }));
}

/// 4 MiB written as one `Bytes` with `write_chunk` and read back with `read_chunk` of at most
/// 1000 bytes: every chunk within the bound and not empty, the bytes equal, then the end.
#[test]
fn chunks_in_and_out_without_copies_arrive_intact() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = bytes::Bytes::from(random_bytes(4 << 20).unwrap());
        let writing = {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut send = conn.open_uni().await.unwrap();
                send.write_chunk(payload).await.unwrap();
                send.finish().await.unwrap();
                conn.closed().await
            })
        };
        let mut recv = accepted.accept_uni().await.unwrap();
        let mut received = Vec::with_capacity(payload.len());
        while let Some(chunk) = recv.read_chunk(1000).await.unwrap() {
            assert!(!chunk.is_empty() && chunk.len() <= 1000, "a chunk of {} bytes", chunk.len());
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received.len(), payload.len());
        assert_eq!(sha256_hex(&received), sha256_hex(&payload));
        assert_eq!(recv.read_chunk(1000).await.unwrap(), None, "the end is read once more as the end");
        accepted.close(0, b"");
        let end = writing.await.unwrap();
        assert!(end.is_clean_close(), "{end}");
    }));
}

/// 4 MiB read back with `read_chunks` into 8 slots: every call fills 1 to 8 of them with
/// chunks that are not empty, the bytes equal, then the end; no slots, no chunk.
#[test]
fn read_chunks_fills_slots_with_what_is_there() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = bytes::Bytes::from(random_bytes(4 << 20).unwrap());
        let mut send = conn.open_uni().await.unwrap();
        let writing = async {
            send.write_chunk(payload.clone()).await.unwrap();
            send.finish().await.unwrap();
        };
        let reading = async {
            let mut recv = accepted.accept_uni().await.unwrap();
            assert_eq!(recv.read_chunks(&mut []).await.unwrap(), Some(0), "no slots to fill");
            let mut slots: [bytes::Bytes; 8] = Default::default();
            let (mut received, mut calls, mut most) = (Vec::new(), 0, 0);
            while let Some(filled) = recv.read_chunks(&mut slots).await.unwrap() {
                assert!((1..=8).contains(&filled), "{filled} slots filled");
                for chunk in &slots[..filled] {
                    assert!(!chunk.is_empty(), "an empty chunk");
                    received.extend_from_slice(chunk);
                }
                (calls, most) = (calls + 1, most.max(filled));
            }
            assert_eq!(recv.read_chunks(&mut slots).await.unwrap(), None, "the end is read once more as the end");
            eprintln!("{calls} calls, at most {most} chunks in one");
            received
        };
        let ((), received) = zip(writing, reading).await;
        assert_eq!(received.len(), payload.len());
        assert_eq!(sha256_hex(&received), sha256_hex(&payload));
    }));
}

/// Three chunks written with `write_all_chunks`, each call raced against a short timer and
/// resumed with the same slice: what arrives is the three in order, exactly once, and the
/// chunks are empty at the end.
#[test]
fn write_all_chunks_resumes_where_a_dropped_call_left_off() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = bytes::Bytes::from(random_bytes((4 << 20) + 17).unwrap());
        let mut send = conn.open_uni().await.unwrap();
        let writing = async {
            let mut chunks = [payload.slice(..1 << 20), payload.slice(1 << 20..4 << 20), payload.slice(4 << 20..)];
            let mut dropped = 0;
            loop {
                let tick = async {
                    Timer::after(Duration::from_micros(100)).await;
                    None
                };
                match or(async { Some(send.write_all_chunks(&mut chunks).await) }, tick).await {
                    Some(written) => break written.unwrap(),
                    None => dropped += 1,
                }
            }
            assert!(chunks.iter().all(|chunk| chunk.is_empty()), "a chunk not emptied");
            send.finish().await.unwrap();
            dropped
        };
        let reading = async { accepted.accept_uni().await.unwrap().read_to_end(8 << 20).await.unwrap() };
        let (dropped, received) = zip(writing, reading).await;
        assert!(dropped > 0, "no call was dropped: the test proves nothing");
        assert_eq!(received.len(), payload.len());
        assert_eq!(sha256_hex(&received), sha256_hex(&payload));
        eprintln!("{dropped} calls dropped while pending");
    }));
}

/// Every `write` and `read` raced against a short timer, so that many are dropped while
/// pending: the bytes that arrive are exactly those sent.
#[test]
fn dropped_read_and_write_futures_lose_no_byte() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = random_bytes(4 << 20).unwrap();
        let (mut send, _) = conn.open_bi().await.unwrap();
        let tick = || async {
            Timer::after(Duration::from_micros(100)).await;
            None
        };
        let writing = async {
            let (mut at, mut dropped) = (0, 0);
            while at < payload.len() {
                match or(async { Some(send.write(&payload[at..]).await) }, tick()).await {
                    Some(written) => at += written.unwrap(),
                    None => dropped += 1,
                }
            }
            send.finish().await.unwrap();
            dropped
        };
        let reading = async {
            let (_, mut recv) = accepted.accept_bi().await.unwrap();
            let (mut received, mut dropped, mut buf) = (Vec::new(), 0, vec![0u8; 50_000]);
            loop {
                match or(async { Some(recv.read(&mut buf).await) }, tick()).await {
                    Some(Ok(0)) => break,
                    Some(read) => received.extend_from_slice(&buf[..read.unwrap()]),
                    None => dropped += 1,
                }
            }
            (received, dropped)
        };
        let (writes_dropped, (received, reads_dropped)) = zip(writing, reading).await;
        assert!(writes_dropped > 0 && reads_dropped > 0, "no future was dropped: the test proves nothing");
        assert_eq!(received.len(), payload.len());
        assert_eq!(sha256_hex(&received), sha256_hex(&payload));
        eprintln!("{writes_dropped} writes and {reads_dropped} reads dropped while pending");
    }));
}

/// Dropping every handle of a connection closes it, and the peer sees a clean close (code 0).
#[test]
fn dropping_a_connection_closes_it_cleanly() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        drop((conn, send, _recv));
        match accepted.closed().await {
            Error::ConnectionLost(ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(close.error_code, 0u32.into(), "{close:?}");
            }
            other => panic!("the peer saw {other} rather than a clean close"),
        }
        client.close(0, b"");
        client.wait_idle().await;
    }));
}

/// A GET over hq-interop (HTTP/0.9) from aioquic's server: the async API against another QUIC stack.
#[test]
fn get_from_aioquic_hq_interop() {
    let dir = TempDir::new("async-api-aioquic").unwrap();
    let www = dir.subdir("www").unwrap();
    let payload = random_bytes(3 << 20).unwrap();
    std::fs::write(www.join("payload.bin"), &payload).unwrap();
    let python = aioquic_python().unwrap();
    let deadline = Instant::now() + TEST_LIMIT;
    let mut command = Command::new(python);
    command.arg(interop_script("hq_server.py")).args(["--host", "127.0.0.1", "--port", "0", "--root"]);
    command.arg(&www).args(["--max-seconds", &TEST_LIMIT.as_secs().to_string()]);
    let mut server = Process::spawn("hq_server", &mut command, dir.path()).unwrap();
    let port = server
        .stdout_line(left(deadline), |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let received = runtime.block_on(bounded(async {
        let endpoint = Endpoint::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .alpn(ant_quic::tls::ALPN_HQ_INTEROP)
            .accept(false)
            .bind()
            .unwrap();
        let conn = endpoint.connect(([127, 0, 0, 1], port).into(), ServerAuth::Insecure).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET /payload.bin\r\n").await.unwrap();
        send.finish().await.unwrap();
        let received = recv.read_to_end(16 << 20).await.unwrap();
        conn.close(0, b"");
        received
    }));
    assert_eq!(received.len(), payload.len());
    assert_eq!(sha256_hex(&received), sha256_hex(&payload));
}

/// The streams through the `futures-io` traits (what smol, async-std and futures adapters use).
#[test]
fn futures_io_traits_under_smol() {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = random_bytes(2 << 20).unwrap();
        let echoing = echo_streams(accepted);
        let talking = async {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let (_, echoed) = zip(
                async {
                    AsyncWriteExt::write_all(&mut send, &payload).await.unwrap();
                    AsyncWriteExt::flush(&mut send).await.unwrap();
                    AsyncWriteExt::close(&mut send).await.unwrap();
                },
                async {
                    let mut echoed = Vec::new();
                    AsyncReadExt::read_to_end(&mut recv, &mut echoed).await.unwrap();
                    echoed
                },
            )
            .await;
            assert_eq!(sha256_hex(&echoed), sha256_hex(&payload));
            conn.close(0, b"");
        };
        zip(echoing, talking).await;
    }));
}

/// The streams through tokio's `AsyncRead`/`AsyncWrite` (feature `tokio`).
#[cfg(feature = "tokio")]
#[test]
fn tokio_io_traits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let payload = random_bytes(2 << 20).unwrap();
        let echoing = tokio::spawn(echo_streams(accepted));
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let writing = {
            let payload = payload.clone();
            tokio::spawn(async move {
                AsyncWriteExt::write_all(&mut send, &payload).await.unwrap();
                AsyncWriteExt::shutdown(&mut send).await.unwrap();
            })
        };
        let mut echoed = Vec::new();
        AsyncReadExt::read_to_end(&mut recv, &mut echoed).await.unwrap();
        writing.await.unwrap();
        assert_eq!(sha256_hex(&echoed), sha256_hex(&payload));
        conn.close(0, b"");
        echoing.await.unwrap();
    }));
}

/// Unreliable datagrams both ways; then a closed endpoint accepts nothing and goes idle.
#[test]
fn datagrams_and_endpoint_close() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let max = conn.max_datagram_size().expect("the peer takes datagrams");
        assert!(max >= 1000, "{max}");
        // Loopback loses nothing in practice; a few tries cover a dropped one.
        for round in 0..3u8 {
            let sent = vec![round; 1000];
            conn.send_datagram(sent.clone().into()).unwrap();
            let received = or(async { Some(accepted.read_datagram().await.unwrap()) }, async {
                Timer::after(Duration::from_secs(2)).await;
                None
            })
            .await;
            assert_eq!(received.as_deref(), Some(&sent[..]), "round {round}");
            accepted.send_datagram(vec![round; 10].into()).unwrap();
            assert_eq!(&conn.read_datagram().await.unwrap()[..], &[round; 10][..]);
        }
        assert!(matches!(conn.send_datagram(vec![0; 70_000].into()), Err(Error::DatagramTooLarge { .. })));
        assert!(client.accept().await.is_none(), "a client-only endpoint accepted a connection");
        server.close(0, b"maintenance");
        assert!(server.accept().await.is_none());
        let reason = conn.closed().await;
        assert!(reason.to_string().contains("maintenance") || reason.is_clean_close(), "{reason}");
        server.wait_idle().await;
        client.wait_idle().await;
    }));
}

/// Eight connections between two-core endpoints at once, and 150 streams opened on one of them
/// before the server takes any: more than the accept queue holds, so the core keeps the rest
/// unread in QUIC and hands them over as the queue empties. Every stream arrives intact.
#[test]
fn many_connections_and_streams_on_two_cores() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bounded(async {
        let server = Endpoint::builder().listen("127.0.0.1:0".parse().unwrap()).alpn(ALPN).cores(2).bind().unwrap();
        let client = Endpoint::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .alpn(ALPN)
            .cores(2)
            .accept(false)
            .bind()
            .unwrap();
        let serving = {
            let server = server.clone();
            tokio::spawn(async move {
                while let Some(conn) = server.accept().await {
                    tokio::spawn(echo_streams(conn));
                }
            })
        };
        let mut clients = Vec::new();
        for index in 0..8u8 {
            let (client, addr, peer) = (client.clone(), server.local_addr(), server.local_peer_id());
            clients.push(tokio::spawn(async move {
                let conn = client.connect(addr, ServerAuth::PeerId(peer)).await.unwrap();
                let message = vec![index; 50_000];
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&message).await.unwrap();
                send.finish().await.unwrap();
                assert!(recv.read_to_end(1 << 20).await.unwrap() == message, "connection {index}");
                conn.close(0, b"");
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
        server.close(0, b"");
        serving.await.unwrap();
        // Streams the server takes only once all are sent.
        let (server, client) = (self::server(), self::client());
        let (conn, accepted) = connected(&server, &client).await;
        for index in 0..150u32 {
            let mut send = conn.open_uni().await.unwrap();
            send.write_all(&index.to_be_bytes()).await.unwrap();
            send.finish().await.unwrap();
        }
        Timer::after(Duration::from_millis(200)).await;
        let mut seen = Vec::new();
        for _ in 0..150 {
            let mut recv = accepted.accept_uni().await.unwrap();
            let bytes = recv.read_to_end(4).await.unwrap();
            seen.push(u32::from_be_bytes(bytes.try_into().unwrap()));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..150).collect::<Vec<_>>());
    }));
}

/// STOP_SENDING and RESET_STREAM reach the other side with their codes.
#[test]
fn stop_and_reset_reach_the_peer_with_their_codes() {
    smol::block_on(bounded(async {
        let (server, client) = (server(), client());
        let (conn, accepted) = connected(&server, &client).await;
        let (mut send, _) = conn.open_bi().await.unwrap();
        send.write_all(b"first").await.unwrap();
        let (_, mut recv) = accepted.accept_bi().await.unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(recv.read(&mut buf).await.unwrap(), 5);
        recv.stop(5).await.unwrap();
        assert!(matches!(recv.read(&mut buf).await, Err(Error::ClosedStream)));
        let stopped = loop {
            match send.write(&[0u8; 10_000]).await {
                Ok(_) => Timer::after(Duration::from_millis(5)).await,
                Err(error) => break error,
            };
        };
        assert!(matches!(stopped, Error::Stopped(code) if code == 5u32.into()), "{stopped}");

        let (mut send, _) = conn.open_bi().await.unwrap();
        send.write_all(b"partial").await.unwrap();
        let (_, mut recv) = accepted.accept_bi().await.unwrap();
        assert_eq!(recv.read(&mut buf).await.unwrap(), 5);
        send.reset(9).await.unwrap();
        let reset = loop {
            match recv.read(&mut buf).await {
                Ok(0) => panic!("a reset stream ended cleanly"),
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        assert!(matches!(reset, Error::Reset(code) if code == 9u32.into()), "{reset}");
        assert!(matches!(send.write(b"x").await, Err(Error::ClosedStream)));
    }));
}

/// An endpoint built from a node's configuration file takes its listen address, cores, backend
/// and data directory (the identity the node itself would use).
#[test]
fn endpoint_from_a_config_file() {
    let dir = TempDir::new("async-api-config").unwrap();
    let data = dir.subdir("data").unwrap();
    let text = format!(
        "[node]\nlisten = \"127.0.0.1:0\"\ncores = 2\nbackend = \"portable\"\ndata_dir = \"{}\"\n",
        data.display()
    );
    let path = dir.path().join("ant-quic.toml");
    let loaded =
        ant_quic::config::load_text(Some((&path, &text)), Vec::new(), &ant_quic::config::Overrides::default()).unwrap();
    let server = Endpoint::builder().config(&loaded.config).unwrap().alpn(ALPN).bind().unwrap();
    let identity = ant_quic::identity::Identity::load_or_create(&data).unwrap();
    assert_eq!(server.local_peer_id(), identity.peer_id());
    assert!(server.local_addr().ip().is_loopback());
    smol::block_on(bounded(async {
        let client = client();
        let (conn, _accepted) = connected(&server, &client).await;
        assert_eq!(conn.remote_peer_id(), Some(identity.peer_id()));
    }));
}

/// `connect` and `open_bi` futures dropped after their first poll (the request is with the
/// core, the answer not yet back): the core undoes them. The connections are closed, the
/// streams end empty, and the next real ones work.
#[test]
fn dropped_connect_and_open_futures_are_undone() {
    use smol::future::poll_once;
    smol::block_on(bounded(async {
        let (server, client, other) = (server(), client(), self::server());
        let auth = ServerAuth::PeerId(other.local_peer_id());
        for _ in 0..5 {
            assert!(poll_once(client.connect(other.local_addr(), auth)).await.is_none());
        }
        // Long enough for the handshakes (milliseconds on loopback): each connection is up,
        // and then closed by its core, as nobody waits for it.
        Timer::after(Duration::from_millis(500)).await;
        let idle = or(
            async {
                client.wait_idle().await;
                true
            },
            async {
                Timer::after(Duration::from_secs(5)).await;
                false
            },
        );
        assert!(idle.await, "connections whose connect future was dropped stay open");
        let (conn, accepted) = connected(&server, &client).await;

        // An open may also complete at its first poll (a stream the core opened ahead):
        // dropping what it returned ends that stream as an abandoned open's is ended.
        for _ in 0..10 {
            drop(poll_once(conn.open_bi()).await);
        }
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"real").await.unwrap();
        send.finish().await.unwrap();
        let mut empty = 0;
        loop {
            let (mut reply, mut request) = accepted.accept_bi().await.unwrap();
            let body = request.read_to_end(100).await.unwrap();
            if body.is_empty() {
                empty += 1;
                continue;
            }
            assert_eq!(body, b"real");
            reply.write_all(b"answer").await.unwrap();
            reply.finish().await.unwrap();
            break;
        }
        assert!(empty <= 10, "{empty} empty streams from 10 abandoned opens");
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"answer");
    }));
}
