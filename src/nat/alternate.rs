//! A bootstrap's alternate addresses (RFC 5780 §4.3 in spirit): UDP sockets beside the node's
//! port that answer mapping discovery datagrams with the address each came from, so that a peer
//! registered with this one bootstrap can tell whether its NAT maps endpoint-independently. The
//! answer ([`Probe::answer_discover`]) is stateless and never longer than the question; a thread
//! per socket answers, at most [`MAX_ANSWERS_PER_SECOND`].

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_control::nat::{NatMetrics, Probe};

use crate::Error;

/// Answers per second and socket at most: enough for thousands of peers registering at once,
/// little CPU for someone who sends discovers from forged addresses (each answer is one datagram
/// no longer than the one that asked).
pub const MAX_ANSWERS_PER_SECOND: u32 = 10_000;
/// How often a waiting thread looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Where the alternate address is and what to do when it cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlternateOptions {
    /// The port; 0: any free one.
    pub port: u16,
    /// Another IP of this host to answer on as well (the same port).
    pub ip: Option<IpAddr>,
    /// Fail the start when the port cannot be bound (it was configured); otherwise warn and run
    /// without (it was the default).
    pub required: bool,
}

/// The running alternate addresses.
#[derive(Debug)]
pub(crate) struct Alternates {
    /// What the coordinator tells registering peers (the unspecified IP: the one they reached).
    pub(crate) announced: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Alternates {
    /// Binds the alternate address(es) beside `listen`; `join`: a takeover, whose predecessor
    /// holds them (the sockets join its `SO_REUSEPORT` group and either process answers).
    pub(crate) fn start(
        options: &AlternateOptions,
        listen: SocketAddr,
        join: bool,
        metrics: &Arc<NatMetrics>,
    ) -> Result<Self, Error> {
        let mut alternates = Self { announced: Vec::new(), stop: Arc::default(), threads: Vec::new() };
        let primary = SocketAddr::new(listen.ip(), options.port);
        let socket = match bind(primary, join) {
            Ok(socket) => socket,
            Err(source) if !options.required => {
                tracing::warn!(
                    address = %primary, %source,
                    "cannot bind the alternate port: peers with only this bootstrap cannot tell their NAT mapping (set [nat] alternate_port)"
                );
                return Ok(alternates);
            }
            Err(source) => {
                let context =
                    format!("cannot bind the alternate UDP port {primary} ([nat] alternate_port; 0 turns it off)");
                return Err(Error::Io { context, source });
            }
        };
        let port = socket.local_addr().map_err(|source| Error::Io { context: "alternate port".into(), source })?.port();
        let mut sockets = vec![socket];
        if let Some(ip) = options.ip {
            let address = SocketAddr::new(ip, port);
            let socket = bind(address, join).map_err(|source| Error::Io {
                context: format!("cannot bind the alternate address {address} ([nat] alternate_ip)"),
                source,
            })?;
            sockets.push(socket);
        }
        for socket in sockets {
            let local = socket.local_addr().map_err(|source| Error::Io { context: "alternate port".into(), source })?;
            alternates.announced.push(local);
            let stop = Arc::clone(&alternates.stop);
            let metrics = Arc::clone(metrics);
            let thread = std::thread::Builder::new()
                .name("ant-quic-alt".into())
                .spawn(move || answer(&socket, &stop, &metrics))
                .map_err(|source| Error::Io { context: "starting the alternate port's thread".into(), source })?;
            alternates.threads.push(thread);
            tracing::info!(%local, "answering mapping discovery on the alternate address");
        }
        Ok(alternates)
    }

    /// Stops answering; returns when the threads are gone.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Alternates {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking socket on `address`, alone there unless `join`.
fn bind(address: SocketAddr, join: bool) -> std::io::Result<UdpSocket> {
    let mut group = if join {
        ant_quic_dataplane::socket::join_reuseport_group(address, 1)?
    } else {
        ant_quic_dataplane::socket::bind_reuseport_group(address, 1)?
    };
    let socket = group.pop().ok_or_else(|| std::io::Error::other("no socket bound"))?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    Ok(socket)
}

/// Answers discovers on `socket` until `stop`.
fn answer(socket: &UdpSocket, stop: &AtomicBool, metrics: &NatMetrics) {
    let mut buffer = [0u8; 1500];
    let mut window = Instant::now();
    let mut answered = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // An ICMP error from an earlier answer's destination, and the like: not fatal.
                tracing::debug!(%error, "alternate port: receive failed");
                continue;
            }
        };
        let Some(datagram) = buffer.get(..len) else { continue };
        let Some(reply) = Probe::answer_discover(datagram, ant_quic_dataplane::address::unmapped(from)) else {
            continue;
        };
        if window.elapsed() >= Duration::from_secs(1) {
            window = Instant::now();
            answered = 0;
        }
        if answered >= MAX_ANSWERS_PER_SECOND {
            metrics.discover(false);
            continue;
        }
        answered += 1;
        match socket.send_to(&reply, from) {
            Ok(_) => metrics.discover(true),
            Err(error) => tracing::debug!(%from, %error, "alternate port: answer not sent"),
        }
    }
}
