//! The minimal forwarder of `relay-rate`: one thread that receives with GRO and sends each
//! batch on unchanged with GSO, what a relay at its simplest costs.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use serde::Serialize;

/// The minimal forwarder's counters after a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwarderCounters {
    /// Datagrams received.
    pub received: u64,
    /// Receive calls that returned data.
    pub receives: u64,
    /// Datagrams sent on.
    pub sent: u64,
    /// Sends the kernel refused (their datagrams were dropped).
    pub send_errors: u64,
}

pub(super) struct Forwarder {
    pub(super) address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<ForwarderCounters>>,
}

impl Forwarder {
    /// A thread that receives with GRO and sends every batch on to `to` with GSO, unchanged;
    /// `place` runs first on that thread (to pin it).
    pub(super) fn start(to: SocketAddr, place: impl FnOnce() + Send + 'static) -> Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the forwarder")?;
        let state = UdpSocketState::new((&socket).into()).context("forwarder socket state")?;
        // As large as the relay node's own buffers would be allowed to be here.
        let _ = state.set_recv_buffer_size((&socket).into(), 16 << 20);
        let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let address = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new().name("relay-rate-fwd".into()).spawn(move || {
            place();
            forward_loop(&socket, &state, to, &flag)
        })?;
        Ok(Self { address, stop, thread })
    }

    pub(super) fn stop(self) -> Result<ForwarderCounters> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().map_err(|_| anyhow!("forwarder thread panicked"))?
    }
}

fn forward_loop(
    socket: &UdpSocket,
    state: &UdpSocketState,
    to: SocketAddr,
    stop: &AtomicBool,
) -> Result<ForwarderCounters> {
    let mut storage = vec![0u8; 64 * 1500];
    let mut meta = [RecvMeta::default()];
    let mut counters = ForwarderCounters::default();
    // Bounded: the session's longest run is 30 s, plus the receiver's 5 s.
    let give_up = Instant::now() + Duration::from_secs(40);
    while !stop.load(Ordering::Acquire) && Instant::now() < give_up {
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let n = match state.recv(socket.into(), &mut bufs, &mut meta) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(anyhow!("forwarder receive failed: {e}")),
        };
        for m in meta.iter().take(n) {
            let stride = m.stride.max(1);
            let datagrams = m.len.div_ceil(stride) as u64;
            counters.receives += 1;
            counters.received += datagrams;
            let Some(contents) = storage.get(..m.len) else { continue };
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: (m.len > stride).then_some(stride),
                src_ip: None,
            };
            match state.try_send(socket.into(), &transmit) {
                Ok(()) => counters.sent += datagrams,
                Err(_) => counters.send_errors += 1,
            }
        }
    }
    Ok(counters)
}
