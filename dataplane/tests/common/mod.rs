//! What the data-plane integration tests share: a self-signed server and a client that trusts
//! it, counters summed over cores, bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::quinn_proto::{ClientConfig, ServerConfig};
use ant_quic_dataplane::stats::CoreStats;
use ant_quic_dataplane::NodeHandle;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub mod in_netns;
pub mod veth;

/// The longest any wait in these tests lasts before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A server certificate for `name`, and a client that trusts exactly it.
pub fn tls(name: &str) -> (Arc<ServerConfig>, ClientConfig) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let server = ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    (Arc::new(server), client)
}

/// `counter` summed over the node's cores.
pub fn total(node: &NodeHandle, counter: impl Fn(&CoreStats) -> u64) -> u64 {
    node.all_stats().map(counter).sum()
}

/// The byte at `offset` of a test transfer: not periodic over a packet, so misplaced data shows.
pub fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8 ^ (offset >> 13) as u8
}

/// Poll `done` until it holds; fail with `what` at the deadline.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[allow(unused_imports)] // each test binary uses a part of them
pub use veth::{mac, run};
