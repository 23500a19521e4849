//! When the kernel refuses UDP GSO, both backends resend every datagram of the batch on its own,
//! lose none, and turn GSO off for good.
//!
//! Two real refusals are used:
//! - `SO_NO_CHECK` on the sending socket: `udp_send_skb` refuses GSO without UDP checksums
//!   (`EINVAL`) while plain datagrams still go out. Works on any kernel, without privileges.
//! - A device without checksum offload: two network namespaces of our own joined by a veth pair,
//!   `ethtool -K v0 tx off` on the sending end. Before Linux 6.11 `sendmsg` with `UDP_SEGMENT`
//!   then fails with `EIO`; 6.11 added a software-checksum fallback and accepts the batch, so there
//!   the test only checks that every datagram arrives once. (Loopback cannot be used: its checksum
//!   offload is fixed on, and traffic between two local addresses never leaves `lo`.) Needs root,
//!   `ip` (iproute2) and `ethtool`: without them the test fails under `CI=true` and is skipped
//!   elsewhere (tests/common/prerequisite.rs), as the io_uring tests are without io_uring.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The test drives the kernel directly (setns into its namespaces, SO_NO_CHECK on a socket), which
// the production code never does, so those two calls stay here rather than in `sys`.
#![allow(unsafe_code)]

#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::backend::portable::PortableBackend;
use ant_quic_dataplane::backend::uring::{self, UringBackend};
use ant_quic_dataplane::backend::{Backend, BackendParams, OutBatch, SendRefused};
use ant_quic_dataplane::stats::{read, CoreStats};
use ant_quic_dataplane::sys::poll::Waker;
use ant_quic_dataplane::sys::process::current_uid;

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);

/// Two network namespaces joined by a veth pair whose sending end has no checksum offload.
/// Both are deleted when the guard drops, whatever happened.
struct Netns {
    sender: String,
    receiver: String,
}

impl Netns {
    /// Needs root, `ip` and `ethtool` ([`netns_here`]).
    fn create(tag: &str) -> Self {
        let sender = format!("aq-gso-{}-{tag}", std::process::id());
        let receiver = format!("{sender}-peer");
        run("ip", &["netns", "add", &sender]);
        let mut ns = Self { sender, receiver: String::new() };
        run("ip", &["netns", "add", &receiver]);
        ns.receiver = receiver;
        let (s, r) = (ns.sender.as_str(), ns.receiver.as_str());
        run("ip", &["-n", s, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", r]);
        run("ip", &["-n", s, "addr", "add", &format!("{SENDER_IP}/24"), "dev", "v0"]);
        run("ip", &["-n", r, "addr", "add", &format!("{RECEIVER_IP}/24"), "dev", "v1"]);
        run("ip", &["-n", s, "link", "set", "v0", "up"]);
        run("ip", &["-n", r, "link", "set", "v1", "up"]);
        run("ip", &["netns", "exec", s, "ethtool", "-K", "v0", "tx", "off"]);
        ns
    }

    /// Move the calling thread (only it) into namespace `name`.
    fn enter(name: &str) {
        let file = File::open(format!("/var/run/netns/{name}")).unwrap();
        // SAFETY: `file` is an open namespace file for the duration of the call; CLONE_NEWNET
        // changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.sender, &self.receiver] {
            if !name.is_empty() {
                let _ = Command::new("ip").args(["netns", "delete", name.as_str()]).status();
            }
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).stdout(Stdio::null()).status().unwrap_or_else(|e| {
        panic!("cannot run {program} (install iproute2 and ethtool): {e}");
    });
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// Open a backend on `socket` (the test checked that it can run here).
type Open<B> = fn(BackendParams<'_>) -> B;

/// Whether io_uring runs here; see `prerequisite::require`.
fn uring_here() -> bool {
    prerequisite::require_ok(uring::probe(), "io_uring").unwrap()
}

/// Whether namespaces with a veth pair can be made here: root, `ip`, `ethtool`.
fn netns_here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test creates network namespaces)").unwrap()
        && prerequisite::require(
            prerequisite::installed("ip").is_some() && prerequisite::installed("ethtool").is_some(),
            "`ip` and `ethtool` (Debian packages iproute2 and ethtool; scripts/test.sh installs them)",
        )
        .unwrap()
}

/// How the test makes the kernel refuse GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `SO_NO_CHECK` on the sending socket, over loopback: always refused (`EINVAL`).
    NoUdpChecksum,
    /// A veth device without checksum offload: refused (`EIO`) before Linux 6.11 only.
    NoChecksumOffload,
}

fn open_portable(params: BackendParams<'_>) -> PortableBackend {
    PortableBackend::open(params).unwrap()
}

fn open_uring(params: BackendParams<'_>) -> UringBackend {
    UringBackend::open(params).unwrap_or_else(|e| panic!("open: {e}"))
}

/// Send one 10-datagram GSO batch through the backend and check that all 10 arrive exactly once
/// and intact; when the kernel refused GSO, that GSO is off afterwards and the fallback counted.
fn send_batch_expecting_refusal<B: Backend>(
    tag: &str,
    refusal: Refusal,
    open: Open<B>,
    socket: UdpSocket,
    receiver: UdpSocket,
) {
    socket.set_nonblocking(true).unwrap();
    let from = socket.local_addr().unwrap();
    receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let stats = Arc::new(CoreStats::default());
    let waker = Waker::new().unwrap();
    let mut backend = open(BackendParams { socket, wake_fd: waker.fd(), stats: &stats });
    assert!(backend.max_gso_segments() > 1, "{tag}: GSO must look available before the kernel refuses it");

    let lens = [1100, 1100, 1100, 1100, 1100, 1100, 1100, 1100, 1100, 450];
    let datagrams: Vec<Vec<u8>> =
        lens.iter().enumerate().map(|(i, &len)| (0..len).map(|j| (i * 7 + j) as u8).collect()).collect();
    let mut batch = OutBatch {
        destination: receiver.local_addr().unwrap(),
        ecn: None,
        src_ip: None,
        segment_size: 1100,
        buf: datagrams.concat(),
    };
    let start = Instant::now();
    loop {
        match backend.send(batch) {
            Ok(()) => break,
            Err(SendRefused::WouldBlock(b)) => {
                assert!(start.elapsed() < Duration::from_secs(10));
                batch = b;
                backend.wait(Some(Duration::from_millis(10))).unwrap();
            }
        }
    }
    while read(&stats.tx_datagrams) < 10 {
        assert!(start.elapsed() < Duration::from_secs(10), "{tag}: the datagrams were never all sent");
        backend.flush().unwrap();
        backend.wait(Some(Duration::from_millis(10))).unwrap();
        backend.recv(&mut |_, _| {}).unwrap();
    }

    let mut buf = [0u8; 2000];
    for (i, want) in datagrams.iter().enumerate() {
        let (n, source) = receiver.recv_from(&mut buf).unwrap_or_else(|e| panic!("{tag}: datagram {i}: {e}"));
        assert_eq!(source, from);
        assert_eq!(&buf[..n], &want[..], "{tag}: datagram {i}");
    }
    receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(receiver.recv_from(&mut buf).is_err(), "{tag}: a datagram arrived twice");
    assert_eq!(read(&stats.tx_errors), 0, "{tag}");
    assert_eq!(read(&stats.tx_bytes), 10_350, "{tag}");
    let refused = read(&stats.gso_fallbacks) > 0;
    if refusal == Refusal::NoChecksumOffload && !refused {
        eprintln!("NOTE {tag}: this kernel (6.11+) checksums GSO in software; nothing was refused");
        assert!(backend.max_gso_segments() > 1, "{tag}: GSO stays on when the kernel accepted it");
        return;
    }
    assert_eq!(read(&stats.gso_fallbacks), 1, "{tag}: one batch refused and resent");
    assert_eq!(backend.max_gso_segments(), 1, "{tag}: GSO stays off after the refusal");
    assert_eq!(stats.tx_batch.multi(), 0, "{tag}: every datagram went out on its own");
}

fn without_udp_checksum<B: Backend>(tag: &str, open: Open<B>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    send_batch_expecting_refusal(tag, Refusal::NoUdpChecksum, open, socket, receiver);
}

fn through_device_without_checksum_offload<B: Backend + 'static>(tag: &'static str, open: Open<B>) {
    let ns = Netns::create(tag);
    let thread = std::thread::spawn(move || {
        // Sockets stay in the namespace they were created in; only this thread moves.
        Netns::enter(&ns.receiver);
        let receiver = UdpSocket::bind(SocketAddr::from((RECEIVER_IP, 0))).unwrap();
        Netns::enter(&ns.sender);
        let socket = UdpSocket::bind(SocketAddr::from((SENDER_IP, 0))).unwrap();
        send_batch_expecting_refusal(tag, Refusal::NoChecksumOffload, open, socket, receiver);
        // The namespaces are deleted here, when `ns` drops, also if an assertion failed.
        drop(ns);
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn portable_resends_each_datagram_when_gso_refused_without_udp_checksum() {
    without_udp_checksum("portable", open_portable);
}

#[test]
fn uring_resends_each_datagram_when_gso_refused_without_udp_checksum() {
    if uring_here() {
        without_udp_checksum("uring", open_uring);
    }
}

#[test]
fn portable_loses_nothing_through_device_without_checksum_offload() {
    if netns_here() {
        through_device_without_checksum_offload("portable", open_portable);
    }
}

#[test]
fn uring_loses_nothing_through_device_without_checksum_offload() {
    if netns_here() && uring_here() {
        through_device_without_checksum_offload("uring", open_uring);
    }
}
