//! `on_readable` once per stream and turn, not once per packet: quinn-proto reports every STREAM
//! frame it takes in, and a core takes in a whole batch of datagrams (GRO, io_uring) before it
//! drives the connection, so all but the first report of a stream in one drive say nothing new.
//! Two uploads on one connection over loopback, every byte checked; the server's application
//! must have been called far fewer times than it received datagrams (one call per datagram, as
//! before the change, costs ~750 000 calls per GiB).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use ant_quic_dataplane::quinn_proto::StreamId;
use ant_quic_dataplane::stats::read;
use ant_quic_dataplane::{Application, ConnRef, ConnectRequest, Node, NodeConfig, ReadOutcome};
use common::{pattern, tls, total, DEADLINE};

/// Bytes per upload.
const SIZE: u64 = 16 << 20;
/// Uploads on the one connection, sent side by side.
const STREAMS: usize = 2;

/// Checks every byte of each stream; reports (bytes, bad bytes) of each at its end.
struct Checker {
    streams: HashMap<StreamId, (u64, u64)>,
    calls: Arc<AtomicU64>,
    done: mpsc::Sender<(u64, u64)>,
}

impl Application for Checker {
    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (count, bad) = self.streams.entry(stream).or_default();
        let outcome = conn.read(stream, &mut |chunk| {
            for &byte in chunk.iter() {
                *bad += u64::from(byte != pattern(*count));
                *count += 1;
            }
        });
        if let Ok(ReadOutcome::Finished) = outcome {
            let _ = self.done.send((*count, *bad));
        }
    }
}

/// Opens `STREAMS` streams and writes `SIZE` bytes of the pattern to each, as fast as flow
/// control lets it.
struct Uploader {
    sent: HashMap<StreamId, u64>,
}

impl Uploader {
    fn pump(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let Some(sent) = self.sent.get_mut(&stream) else { return };
        let mut chunk = vec![0u8; 64 * 1024];
        while *sent < SIZE {
            let len = (SIZE - *sent).min(chunk.len() as u64) as usize;
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern(*sent + i as u64);
            }
            let written = conn.write(stream, &chunk[..len]).unwrap();
            if written == 0 {
                return;
            }
            *sent += written as u64;
        }
        conn.finish(stream).unwrap();
        self.sent.remove(&stream);
    }
}

impl Application for Uploader {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        for _ in 0..STREAMS {
            let stream = conn.open_uni().unwrap();
            self.sent.insert(stream, 0);
        }
        let streams: Vec<StreamId> = self.sent.keys().copied().collect();
        for stream in streams {
            self.pump(conn, stream);
        }
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        self.pump(conn, stream);
    }
}

#[test]
fn a_core_calls_on_readable_once_per_stream_and_batch_not_per_packet() {
    let (server_tls, client_tls) = tls("readable.test");
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let calls = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let server_apps = {
        let calls = Arc::clone(&calls);
        Arc::new(move |_core: usize| {
            let done = done_tx.clone();
            Box::new(Checker { streams: HashMap::new(), calls: Arc::clone(&calls), done }) as Box<dyn Application>
        })
    };
    let mut server_config = NodeConfig::new(localhost, Some(server_tls));
    server_config.cores = Some(1);
    let server = Node::start(server_config, server_apps).unwrap();
    let mut client_config = NodeConfig::new(localhost, None);
    client_config.cores = Some(1);
    let client_apps = Arc::new(|_core: usize| Box::new(Uploader { sent: HashMap::new() }) as Box<dyn Application>);
    let client = Node::start(client_config, client_apps).unwrap();
    client
        .connect(
            ConnectRequest {
                remote: server.local_addr(),
                server_name: "readable.test".into(),
                config: client_tls,
                tag: 0,
            },
            Some(0),
        )
        .unwrap();

    for _ in 0..STREAMS {
        let (count, bad) = done_rx.recv_timeout(DEADLINE).expect("an upload did not arrive in time");
        assert_eq!((count, bad), (SIZE, 0), "an upload arrived short or changed");
    }
    let datagrams = total(&server, |s| read(&s.rx_datagrams));
    let calls = calls.load(Ordering::Relaxed);
    eprintln!("{datagrams} datagrams received, on_readable called {calls} times");
    assert!(
        calls * 4 <= datagrams,
        "on_readable was called {calls} times for {datagrams} datagrams: once per packet, not per batch"
    );
    client.shutdown_now();
    server.shutdown_now();
    client.join().unwrap();
    server.join().unwrap();
}
