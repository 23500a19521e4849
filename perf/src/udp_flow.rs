//! One UDP flow over loopback, as `udp-ceiling` and `relay-rate` drive it: the GSO sender loop
//! and the GRO receiver loop.

use std::{
    io::{self, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// One send of `contents` to `destination`: datagrams of `datagram` bytes, as one GSO send when
/// `contents` holds more than one.
pub fn gso_transmit(destination: SocketAddr, contents: &[u8], datagram: usize) -> Transmit<'_> {
    Transmit {
        destination,
        ecn: None,
        contents,
        segment_size: (contents.len() > datagram).then_some(datagram),
        src_ip: None,
    }
}

/// Sends `transmit` again and again for `duration`, as fast as the kernel takes it. Before each
/// send, `hold(elapsed, accepted)` may wait and return `true` to skip this turn (pacing). Returns
/// the sends the kernel accepted.
pub fn send_for(
    socket: &UdpSocket,
    state: &UdpSocketState,
    transmit: &Transmit<'_>,
    duration: Duration,
    mut hold: impl FnMut(Duration, u64) -> bool,
) -> Result<u64> {
    let start = Instant::now();
    let mut accepted = 0u64;
    let mut errors = 0u64;
    // Bounded in time, and in count: even at 100 Gbit/s, 60 s is under 2^24 sends.
    for _ in 0..(1u64 << 26) {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        if hold(elapsed, accepted) {
            continue;
        }
        match state.try_send(socket.into(), transmit) {
            Ok(()) => accepted += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::yield_now(),
            // Loopback answers a send to a closed port with ECONNREFUSED on the next call; the
            // other end may not be up yet or gone already. Count, and give up if it persists.
            Err(e) => {
                errors += 1;
                if errors > 1000 {
                    return Err(anyhow!("sendmsg keeps failing: {e}"));
                }
            }
        }
    }
    Ok(accepted)
}

/// Receives until the sender has stopped (`sending` is false) and the socket has been quiet for
/// one read timeout, or at most `duration` + 5 s. Hands every receive's metadata and buffer to
/// `on_receive`. Returns the seconds from the first to the last receive.
pub fn receive_until_quiet(
    socket: &UdpSocket,
    state: &UdpSocketState,
    duration: Duration,
    sending: &AtomicBool,
    mut on_receive: impl FnMut(&[RecvMeta], &[u8]),
) -> Result<f64> {
    // One GRO super-datagram per call: at most 64 segments of at most 1500 bytes.
    let mut storage = vec![0u8; 64 * 1500];
    let mut meta = [RecvMeta::default()];
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let give_up = Instant::now() + duration + Duration::from_secs(5);
    while Instant::now() < give_up {
        let mut bufs = [IoSliceMut::new(&mut storage)];
        match state.recv(socket.into(), &mut bufs, &mut meta) {
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                on_receive(meta.get(..n).unwrap_or(&meta), &storage);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if !sending.load(Ordering::Acquire) {
                    break;
                }
            }
            Err(e) => return Err(anyhow!("receive failed: {e}")),
        }
    }
    Ok(first.map_or(0.0, |f| last.duration_since(f).as_secs_f64()))
}
