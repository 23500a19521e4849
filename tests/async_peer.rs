//! `Endpoint::connect_peer` on loopback: a bootstrap node started in this process and two async
//! endpoints registered with it (one given its bootstrap by a configuration file). One reaches the other by peer ID, the other accepts; 4 MiB go
//! each way, checked by SHA-256; each side knows the other's peer ID. A `connect_peer` dropped
//! before it finishes leaves no connection open, and the next one works. An unknown peer ID, a
//! bootstrap that never answers (at the peer timeout) and an endpoint without bootstraps fail
//! with their own error. (Punched and relayed paths between
//! NATs: tests/natlab_async.rs.)

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic::endpoint::{Connection, Endpoint, Error, PathKind};
use ant_quic::identity::PeerId;
use ant_quic::node::{start_server, NodeOptions, Server};
use common::{random_bytes, sha256_hex, TempDir};
use smol::future::{or, zip};
use smol::Timer;

const ALPN: &[u8] = b"peer-test";
const TEST_LIMIT: Duration = Duration::from_secs(60);
const TRANSFER: usize = 4 << 20;

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    or(future, async {
        Timer::after(TEST_LIMIT).await;
        panic!("test took longer than {TEST_LIMIT:?}");
    })
    .await
}

/// A one-core bootstrap node on loopback, stopped when dropped.
struct Bootstrap(Option<Server>);

impl Bootstrap {
    fn start() -> Self {
        let options = NodeOptions { listen: "127.0.0.1:0".parse().unwrap(), cores: Some(1), ..NodeOptions::default() };
        Self(Some(start_server(&options).unwrap()))
    }

    /// `PEER_ID@ADDRESS`, as `--bootstrap` takes it.
    fn pinned(&self) -> String {
        let server = self.0.as_ref().unwrap();
        format!("{}@{}", server.identity.peer_id(), server.node.local_addr())
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            let Server { node, mut nat, .. } = server;
            nat.stop();
            node.shutdown();
            let _ = node.join();
        }
    }
}

fn peer(bootstrap: &Bootstrap) -> Endpoint {
    Endpoint::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .alpn(ALPN)
        .bootstrap(&bootstrap.pinned())
        .peer_timeout(Duration::from_secs(10))
        .bind()
        .unwrap()
}

/// Send `data` on a new stream of `conn` and read what the other side sends back on it.
async fn exchange(conn: &Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let (written, read) = zip(
        async {
            send.write_all(data).await.unwrap();
            send.finish().await.unwrap();
        },
        recv.read_to_end(2 * TRANSFER),
    )
    .await;
    let () = written;
    read.unwrap()
}

/// Take the stream the other side opens, send `data` back on it, and return what it sent.
async fn answer(conn: &Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let (received, ()) = zip(recv.read_to_end(2 * TRANSFER), async {
        send.write_all(data).await.unwrap();
        send.finish().await.unwrap();
    })
    .await;
    received.unwrap()
}

/// An endpoint whose bootstrap comes from `[node] bootstrap` of a configuration file.
fn peer_from_config(bootstrap: &Bootstrap, dir: &TempDir) -> Endpoint {
    let text = format!("[node]\nlisten = \"127.0.0.1:0\"\nbootstrap = [\"{}\"]\n", bootstrap.pinned());
    let path = dir.path().join("ant-quic.toml");
    let overrides = ant_quic::config::Overrides::default();
    let loaded = ant_quic::config::load_text(Some((&path, &text)), Vec::new(), &overrides).unwrap();
    Endpoint::builder().config(&loaded.config).unwrap().alpn(ALPN).bind().unwrap()
}

#[test]
fn a_peer_is_reached_by_its_id_and_bytes_go_both_ways() {
    let bootstrap = Bootstrap::start();
    let dir = TempDir::new("async-peer-config").unwrap();
    let (a, b) = (peer(&bootstrap), peer_from_config(&bootstrap, &dir));
    smol::block_on(bounded(async {
        let (seen_a, seen_b) = zip(a.registered(), b.registered()).await;
        // No NAT on loopback: the bootstrap sees the endpoints' own addresses.
        assert_eq!(seen_a.unwrap(), a.local_addr());
        assert_eq!(seen_b.unwrap(), b.local_addr());
        assert_eq!(a.observed_address(), Some(a.local_addr()));

        let (dialed, accepted) = zip(a.connect_peer(b.local_peer_id()), b.accept()).await;
        let (dialed, accepted) = (dialed.unwrap(), accepted.expect("b closed"));
        assert_eq!(dialed.remote_peer_id(), Some(b.local_peer_id()));
        assert_eq!(accepted.remote_peer_id(), Some(a.local_peer_id()));
        assert_eq!(dialed.alpn(), Some(ALPN), "the connection carries the application's protocol");
        assert_eq!(accepted.alpn(), Some(ALPN));
        assert_eq!(dialed.path().kind, PathKind::Direct);
        assert_eq!(dialed.remote_address(), b.local_addr());

        let (from_a, from_b) = (random_bytes(TRANSFER).unwrap(), random_bytes(TRANSFER).unwrap());
        let (at_a, at_b) = zip(exchange(&dialed, &from_a), answer(&accepted, &from_b)).await;
        assert_eq!(sha256_hex(&at_b), sha256_hex(&from_a), "a's bytes arrive intact at b");
        assert_eq!(sha256_hex(&at_a), sha256_hex(&from_b), "b's bytes arrive intact at a");
    }));
}

#[test]
fn an_unknown_peer_id_and_a_missing_bootstrap_are_clear_errors() {
    let bootstrap = Bootstrap::start();
    let a = peer(&bootstrap);
    smol::block_on(bounded(async {
        a.registered().await.unwrap();
        let stranger = PeerId([0x42; 32]);
        let started = Instant::now();
        let error = a.connect_peer(stranger).await.expect_err("an unknown peer was reached");
        let line = error.to_string();
        eprintln!("{line}");
        assert!(matches!(&error, Error::PeerUnreachable { peer, .. } if *peer == stranger), "{line}");
        assert!(line.contains(&stranger.to_string()) && !line.contains('\n'), "{line}");
        // The bootstrap says so: no need to wait for the timeout.
        assert!(started.elapsed() < Duration::from_secs(8), "took {:?}: {line}", started.elapsed());

        let alone = Endpoint::builder().listen("127.0.0.1:0".parse().unwrap()).alpn(ALPN).bind().unwrap();
        assert!(matches!(alone.connect_peer(a.local_peer_id()).await, Err(Error::NoBootstrap)));
        assert!(matches!(alone.registered().await, Err(Error::NoBootstrap)));
        assert_eq!(alone.observed_address(), None);
    }));
    // A bootstrap that never answers: the attempt ends at the endpoint's peer timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let lonely = Endpoint::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .alpn(ALPN)
        .bootstrap(&silent.local_addr().unwrap().to_string())
        .peer_timeout(Duration::from_secs(2))
        .bind()
        .unwrap();
    let started = Instant::now();
    let error = smol::block_on(bounded(lonely.connect_peer(PeerId([0x43; 32])))).expect_err("reached through nobody");
    let waited = started.elapsed();
    assert!(matches!(error, Error::PeerUnreachable { .. }) && error.to_string().contains("within 2 s"), "{error}");
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(5), "gave up after {waited:?}");
    let bad = Endpoint::builder().alpn(ALPN).bootstrap("nonsense").bind().expect_err("a bad bootstrap was taken");
    assert!(bad.to_string().contains("'nonsense' is not HOST:PORT"), "{bad}");
}

/// Echo every bidirectional stream of `conn` until it ends.
async fn echo(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let data = recv.read_to_end(TRANSFER).await.unwrap_or_default();
        let _ = send.write_all(&data).await;
        let _ = send.finish().await;
    }
}

#[test]
fn a_dropped_connect_peer_leaves_no_connection_behind() {
    let bootstrap = Bootstrap::start();
    let (a, b) = (peer(&bootstrap), peer(&bootstrap));
    smol::block_on(bounded(async {
        let (seen_a, seen_b) = zip(a.registered(), b.registered()).await;
        seen_a.unwrap();
        seen_b.unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (accepting, count) = (b.clone(), Arc::clone(&accepted));
        let server = smol::spawn(async move {
            while let Some(conn) = accepting.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                smol::spawn(echo(conn)).detach();
            }
        });
        // Given up long before the traversal can finish; it finishes without a taker.
        let gave_up = or(async { Some(a.connect_peer(b.local_peer_id()).await) }, async {
            Timer::after(Duration::from_millis(1)).await;
            None
        })
        .await;
        assert!(gave_up.is_none(), "connected within 1 ms");
        let deadline = Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the abandoned attempt made no connection");
        // Nothing left open on a: the connection nobody took was closed.
        a.wait_idle().await;

        // Asked again: a connection that works.
        let conn = a.connect_peer(b.local_peer_id()).await.unwrap();
        let data = random_bytes(64 * 1024).unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().await.unwrap();
        assert_eq!(recv.read_to_end(TRANSFER).await.unwrap(), data);
        drop(server);
    }));
}
