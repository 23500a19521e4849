//! The raw UDP ceiling over loopback: one flow of 1200-byte datagrams from a sender thread that
//! uses GSO (UDP_SEGMENT, as many segments per `sendmsg` as fit in one 64 KiB UDP send, at most
//! 64) to a receiver thread that uses GRO. No QUIC, no crypto: what the kernel's loopback path
//! delivers to one receiving socket. The figure is measured at the receiver.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use quinn_udp::UdpSocketState;
use serde::{Deserialize, Serialize};

use crate::udp_flow::{gso_transmit, receive_until_quiet, send_for};

/// Datagram payload size.
pub const DATAGRAM: usize = 1200;
/// Most UDP payload bytes one send may carry (the UDP length field, less the IPv4 and UDP headers).
const MAX_UDP_SEND: usize = 65_535 - 20 - 8;

/// What `udp-ceiling` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingResult {
    /// Always "udp".
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Delivered Gbit/s at the receiver (payload bytes, 10^9 bits per second).
    pub gbps: f64,
    /// Payload bytes the receiver got.
    pub bytes_received: u64,
    /// Payload bytes the sender handed to the kernel.
    pub bytes_sent: u64,
    /// From the first to the last datagram the receiver got.
    pub seconds: f64,
    /// Receive calls that returned data (bytes_received / receives: bytes per call, GRO at work).
    pub receives: u64,
    /// Datagram payload size.
    pub datagram: usize,
    /// Datagrams per GSO send.
    pub gso_segments: usize,
    /// Datagrams the receive socket may coalesce (1: no GRO).
    pub gro_segments: usize,
}

/// Sends for `duration`, receives until the flow stops, reports the receiver's rate.
pub fn run(duration: Duration) -> Result<CeilingResult> {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the receiver")?;
    let rx_state = UdpSocketState::new((&rx).into()).context("receiver socket state")?;
    // A large receive buffer so the receiver, not the buffer, is what limits delivery.
    let _ = rx_state.set_recv_buffer_size((&rx).into(), 16 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let dest = rx.local_addr()?;
    let gro_segments = rx_state.gro_segments();

    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the sender")?;
    let tx_state = UdpSocketState::new((&tx).into()).context("sender socket state")?;
    let gso_segments = tx_state.max_gso_segments().clamp(1, 64.min(MAX_UDP_SEND / DATAGRAM));

    let sending = Arc::new(AtomicBool::new(true));
    let sender_flag = sending.clone();
    let sender = thread::Builder::new()
        .name("udp-sender".into())
        .spawn(move || send_loop(&tx, &tx_state, dest, gso_segments, duration, &sender_flag))?;
    let receiver = thread::Builder::new()
        .name("udp-receiver".into())
        .spawn(move || recv_loop(&rx, &rx_state, duration, &sending))?;

    let bytes_sent = sender.join().map_err(|_| anyhow!("sender thread panicked"))??;
    let (bytes_received, seconds, receives) = receiver.join().map_err(|_| anyhow!("receiver thread panicked"))??;
    Ok(CeilingResult {
        implementation: "udp".into(),
        gbps: crate::harness::BulkResult::gbps(bytes_received, seconds),
        bytes_received,
        bytes_sent,
        seconds,
        receives,
        datagram: DATAGRAM,
        gso_segments,
        gro_segments,
    })
}

fn send_loop(
    socket: &UdpSocket,
    state: &UdpSocketState,
    dest: SocketAddr,
    segments: usize,
    duration: Duration,
    sending: &AtomicBool,
) -> Result<u64> {
    let buf = vec![0xA5u8; DATAGRAM * segments];
    let transmit = gso_transmit(dest, &buf, DATAGRAM);
    let accepted = send_for(socket, state, &transmit, duration, |_, _| false);
    sending.store(false, Ordering::Release);
    Ok(accepted? * buf.len() as u64)
}

/// Returns (bytes received, seconds from the first to the last datagram, receive calls).
fn recv_loop(
    socket: &UdpSocket,
    state: &UdpSocketState,
    duration: Duration,
    sending: &AtomicBool,
) -> Result<(u64, f64, u64)> {
    let mut received = 0u64;
    let mut receives = 0u64;
    let seconds = receive_until_quiet(socket, state, duration, sending, |meta, _| {
        receives += 1;
        received += meta.iter().map(|m| m.len as u64).sum::<u64>();
    })?;
    Ok((received, seconds, receives))
}
