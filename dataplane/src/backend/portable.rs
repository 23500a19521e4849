//! The portable backend: recvmmsg/sendmsg with GSO and GRO through quinn-udp, readiness from
//! poll(2). Used where io_uring is unavailable, and on request.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use quinn_udp::{RecvMeta as UdpRecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

use super::{Backend, BackendKind, BackendParams, OutBatch, RecvMeta, SendRefused};
use crate::stats::{bump, CoreStats};

/// recvmmsg calls per loop turn at most.
const MAX_RECV_CALLS_PER_TURN: usize = 16;
/// Largest buffer one GRO receive can fill.
const RECV_BUF_SIZE: usize = 64 * 1024;
/// Buffers kept for reuse by senders.
const SPARE_BUFFERS: usize = 8;

/// recvmmsg/sendmsg backend.
#[derive(Debug)]
pub struct PortableBackend {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    wake_fd: RawFd,
    stats: Arc<CoreStats>,
    recv_storage: Vec<u8>,
    recv_meta: Vec<UdpRecvMeta>,
    spare: Vec<Vec<u8>>,
    /// GSO was refused by the kernel once: send one datagram per call from then on.
    gso_refused: bool,
    /// A send hit a full socket buffer: `wait` also waits for writability.
    send_blocked: bool,
}

impl PortableBackend {
    /// Take over the core's socket.
    pub fn open(params: BackendParams<'_>) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&params.socket))?;
        Ok(Self {
            socket: params.socket,
            state,
            wake_fd: params.wake_fd,
            stats: Arc::clone(params.stats),
            recv_storage: vec![0; RECV_BUF_SIZE * BATCH_SIZE],
            recv_meta: vec![UdpRecvMeta::default(); BATCH_SIZE],
            spare: Vec::new(),
            gso_refused: false,
            send_blocked: false,
        })
    }

    fn send_one(&mut self, batch: &OutBatch, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: batch.destination,
            ecn: batch.ecn.map(to_udp_ecn),
            contents,
            segment_size,
            src_ip: batch.src_ip,
        };
        self.state.try_send(UdpSockRef::from(&self.socket), &transmit)
    }

    /// Keep `buf` for [`Backend::take_buffer`] (a few at most).
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

impl PortableBackend {
    /// What [`Backend::wait`] polls the socket for: readability, and writability after a send
    /// hit a full buffer. For a backend that polls it with descriptors of its own.
    pub(crate) fn socket_pollfd(&self) -> libc::pollfd {
        let events = if self.send_blocked { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
        libc::pollfd { fd: self.socket.as_raw_fd(), events, revents: 0 }
    }

    /// The events poll(2) returned for [`PortableBackend::socket_pollfd`].
    pub(crate) fn socket_polled(&mut self, revents: libc::c_short) {
        if revents & libc::POLLOUT != 0 {
            self.send_blocked = false;
        }
    }
}

impl Backend for PortableBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Portable
    }

    fn max_gso_segments(&self) -> usize {
        if self.gso_refused {
            1
        } else {
            self.state.max_gso_segments().clamp(1, crate::MAX_GSO_SEGMENTS)
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut fds = [self.socket_pollfd(), crate::sys::poll::readable(self.wake_fd)];
        crate::sys::poll::poll(&mut fds, timeout)?;
        self.socket_polled(fds[0].revents);
        Ok(())
    }

    fn recv(&mut self, sink: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()> {
        // Bounded per loop turn: under a flood the core still gets to send, fire timers and take
        // commands (poll(2) is level-triggered, so what is left wakes the next turn at once).
        for _ in 0..MAX_RECV_CALLS_PER_TURN {
            let mut slices: Vec<IoSliceMut<'_>> =
                self.recv_storage.chunks_mut(RECV_BUF_SIZE).map(IoSliceMut::new).collect();
            let received = match self.state.recv(UdpSockRef::from(&self.socket), &mut slices, &mut self.recv_meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors from earlier sends surface here (e.g. ECONNREFUSED); they are not
                // fatal for an unconnected socket.
                Err(e) if is_transient_recv_error(&e) => continue,
                Err(e) => return Err(e),
            };
            for (meta, buf) in self.recv_meta.iter().zip(slices.iter()).take(received) {
                let stride = if meta.stride == 0 { meta.len } else { meta.stride };
                let segments = if stride == 0 { 1 } else { meta.len.div_ceil(stride) };
                self.stats.rx_batch.record(segments);
                let Some(data) = buf.get(..meta.len) else { continue };
                sink(
                    RecvMeta {
                        remote: crate::address::unmapped(meta.addr),
                        len: meta.len,
                        stride,
                        ecn: meta.ecn.map(from_udp_ecn),
                        local_ip: meta.dst_ip,
                    },
                    // recvmmsg fills the same slices every turn: QUIC gets a copy.
                    BytesMut::from(data),
                );
            }
        }
        Ok(())
    }

    fn send(&mut self, batch: OutBatch) -> Result<(), SendRefused> {
        let segments = batch.segments();
        let segment_size = (segments > 1 && !self.gso_refused).then_some(batch.segment_size);
        match self.send_one(&batch, &batch.buf, segment_size) {
            Ok(()) => {
                self.stats.tx_batch.record(segments);
                bump(&self.stats.tx_datagrams, segments as u64);
                bump(&self.stats.tx_bytes, batch.buf.len() as u64);
                self.recycle(batch.buf);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.send_blocked = true;
                Err(SendRefused::WouldBlock(batch))
            }
            Err(e) if segment_size.is_some() && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                // The device or kernel refuses segmentation offload: resend every datagram on its
                // own and never use GSO on this socket again.
                tracing::info!(error = %e, "kernel refused UDP GSO; sending one datagram per call from now on");
                self.gso_refused = true;
                bump(&self.stats.gso_fallbacks, 1);
                let mut sent = 0;
                for (i, chunk) in batch.buf.chunks(batch.segment_size).enumerate() {
                    match self.send_one(&batch, chunk, None) {
                        Ok(()) => {
                            sent += 1;
                            bump(&self.stats.tx_bytes, chunk.len() as u64);
                            self.stats.tx_batch.record(1);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Hand back what was not sent yet.
                            self.send_blocked = true;
                            bump(&self.stats.tx_datagrams, sent);
                            let rest = batch.buf.get(i * batch.segment_size..).unwrap_or_default().to_vec();
                            return Err(SendRefused::WouldBlock(OutBatch { buf: rest, ..batch }));
                        }
                        Err(e) => self.stats.send_failed(&e, batch.destination),
                    }
                }
                bump(&self.stats.tx_datagrams, sent);
                self.recycle(batch.buf);
                Ok(())
            }
            Err(e) => {
                self.stats.send_failed(&e, batch.destination);
                self.recycle(batch.buf);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sends_in_flight(&self) -> usize {
        // Each send is one system call that the kernel has finished with when it returns.
        0
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }
}

/// Receive errors that only report an earlier ICMP message and leave the socket usable.
pub(crate) fn is_transient_recv_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EMSGSIZE | libc::ECONNRESET)
    )
}

fn to_udp_ecn(ecn: quinn_proto::EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match ecn {
        quinn_proto::EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        quinn_proto::EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        quinn_proto::EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}

fn from_udp_ecn(ecn: quinn_udp::EcnCodepoint) -> quinn_proto::EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => quinn_proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => quinn_proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => quinn_proto::EcnCodepoint::Ce,
    }
}
