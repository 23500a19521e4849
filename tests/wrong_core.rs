//! A datagram that the kernel delivers to a core which does not own its connection is handed to
//! the owner through a queue, and the transfer completes.
//!
//! The client node runs two cores and opens its connection on core 1, while a reuseport BPF
//! program steers every datagram the node receives to core 0's socket: every packet from the
//! server takes the hand-off path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ant_quic::client::{BulkApp, BulkPayload};
use ant_quic::dataplane::{Application, BackendKind, Node, NodeConfig};
use ant_quic::node::{connect_request, start_server, NodeOptions};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};

struct Idle;
impl Application for Idle {}

fn transfer_through_wrong_core(backend: BackendKind) {
    let server = start_server(&NodeOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        cores: Some(1),
        backend: Some(backend),
        ..NodeOptions::default()
    })
    .unwrap();

    let (tx, rx) = mpsc::channel();
    let data = ant_quic::protocol::filler();
    let app = Mutex::new(Some(BulkApp::new(BulkPayload::Upload { data, repeat: 160, hash: true }, true, tx)));
    let mut config = NodeConfig::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), None);
    config.cores = Some(2);
    config.backend = Some(backend);
    config.steer_all_to_core = Some(0);
    let client = Node::start(
        config,
        Arc::new(move |core: usize| -> Box<dyn Application> {
            match if core == 1 { app.lock().unwrap().take() } else { None } {
                Some(app) => Box::new(app),
                None => Box::new(Idle),
            }
        }),
    )
    .unwrap();
    let request =
        connect_request(server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()), &[ALPN_ANT_QUIC], 7)
            .unwrap();
    client.connect(request, Some(1)).unwrap();

    let outcome = rx.recv_timeout(Duration::from_secs(60)).expect("transfer did not finish");
    let stats = client.stats();
    client.shutdown();
    server.node.shutdown();
    client.join().unwrap();
    server.node.join().unwrap();

    assert_eq!(outcome.error, None);
    assert_eq!(outcome.remote_count, Some(outcome.bytes));
    assert_eq!(outcome.remote_sha256, Some(outcome.local_sha256), "payload differs at the two ends");
    let out = stats[0].handoffs_out.load(Ordering::Relaxed);
    let into = stats[1].handoffs_in.load(Ordering::Relaxed);
    assert!(out > 10, "core 0 handed over only {out} datagrams");
    assert_eq!(out, into, "datagrams lost between cores");
    assert_eq!(stats[0].drops_handoff_full.load(Ordering::Relaxed), 0);
    assert!(stats.iter().all(|s| s.tx_errors.load(Ordering::Relaxed) == 0), "UDP sends failed");
    // The kernel delivers (almost) nothing to core 1's own socket any more.
    assert!(stats[1].rx_datagrams.load(Ordering::Relaxed) < out / 10);
}

#[test]
fn wrong_core_portable() {
    transfer_through_wrong_core(BackendKind::Portable);
}

#[test]
fn wrong_core_io_uring() {
    transfer_through_wrong_core(BackendKind::IoUring);
}
