//! Many UDP sockets waited on with one poll(2): the extra sockets of a NAT traversal many-probe
//! round (each gets a NAT mapping of its own; `docs/nat-traversal.md`, "Many-probe rounds") and
//! the two ends of the bridge that carries a connection from the winning one to the node socket.
//!
//! Off the cores' hot path: one helper thread owns a set, waits on it (and on a [`Waker`] for its
//! commands), drains what arrived and sends. Sockets keep their index for the set's lifetime, also
//! after others were closed, so that an index can name a socket in a protocol (a probe
//! transaction).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::backend::portable::is_transient_recv_error;
use crate::sys::poll::{poll, readable, Waker};

/// A datagram one socket of a [`MultiSocket`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Index of the socket in the set.
    pub socket: usize,
    /// Where the datagram came from.
    pub source: SocketAddr,
}

/// A set of non-blocking UDP sockets with stable indices (see the module documentation).
#[derive(Debug)]
pub struct MultiSocket {
    sockets: Vec<Option<UdpSocket>>,
    /// Indices that poll(2) reported readable at the last [`MultiSocket::wait`].
    ready: Vec<usize>,
}

impl MultiSocket {
    /// Up to `count` UDP sockets bound to `ip` on ephemeral ports. Opening stops early (and the set
    /// is smaller) when the system refuses more, such as at the process's descriptor limit; it
    /// fails only when not even one socket opens.
    pub fn open(ip: IpAddr, count: usize) -> io::Result<Self> {
        let mut sockets = Vec::with_capacity(count);
        let mut first_error = None;
        for _ in 0..count {
            match UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(socket) => sockets.push(Some(socket)),
                Err(error) => {
                    first_error = Some(error);
                    break;
                }
            }
        }
        match first_error {
            Some(error) if sockets.is_empty() => Err(error),
            _ => Ok(Self { sockets, ready: Vec::new() }),
        }
    }

    /// A set of `sockets` (made non-blocking), indexed in the order given.
    pub fn from_sockets(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        for socket in &sockets {
            socket.set_nonblocking(true)?;
        }
        Ok(Self { sockets: sockets.into_iter().map(Some).collect(), ready: Vec::new() })
    }

    /// Indices handed out (open or closed since).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether the set never had a socket.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sockets still open.
    pub fn open_count(&self) -> usize {
        self.sockets.iter().flatten().count()
    }

    /// Whether socket `index` is open.
    pub fn is_open(&self, index: usize) -> bool {
        self.sockets.get(index).is_some_and(Option::is_some)
    }

    /// The local address of socket `index`.
    pub fn local_addr(&self, index: usize) -> io::Result<SocketAddr> {
        self.socket(index)?.local_addr()
    }

    /// Send `payload` from socket `index` to `to`.
    pub fn send_to(&self, index: usize, payload: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket(index)?.send_to(payload, to)
    }

    /// Send `payload` from every open socket to `to`; returns how many sent it (a full buffer or
    /// an unreachable destination only costs that socket's datagram).
    pub fn send_all(&self, payload: &[u8], to: SocketAddr) -> usize {
        self.sockets.iter().flatten().filter(|s| s.send_to(payload, to).is_ok()).count()
    }

    /// Take socket `index` out of the set (its index is not reused).
    pub fn take(&mut self, index: usize) -> Option<UdpSocket> {
        self.ready.retain(|&i| i != index);
        self.sockets.get_mut(index).and_then(Option::take)
    }

    /// Close every socket but `index`.
    pub fn close_all_but(&mut self, index: usize) {
        for (i, slot) in self.sockets.iter_mut().enumerate() {
            if i != index {
                *slot = None;
            }
        }
        self.ready.retain(|&i| i == index);
    }

    /// Wait up to `timeout` until a socket is readable or `wake` is signalled (drained then).
    /// Returns whether `wake` was signalled. Interrupted waits return early, as timeouts do.
    pub fn wait(&mut self, timeout: Duration, wake: Option<&Waker>) -> io::Result<bool> {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.sockets.len() + 1);
        let mut indices: Vec<usize> = Vec::with_capacity(self.sockets.len());
        for (index, socket) in self.sockets.iter().enumerate() {
            if let Some(socket) = socket {
                fds.push(readable(socket.as_raw_fd()));
                indices.push(index);
            }
        }
        if let Some(waker) = wake {
            fds.push(readable(waker.fd()));
        }
        let result = poll(&mut fds, Some(timeout));
        self.ready.clear();
        result?;
        let ready = |fd: &libc::pollfd| fd.revents & (libc::POLLIN | libc::POLLERR) != 0;
        self.ready.extend(indices.iter().zip(&fds).filter(|(_, fd)| ready(fd)).map(|(index, _)| *index));
        let woken = wake.is_some() && fds.last().is_some_and(ready);
        if let Some(waker) = wake.filter(|_| woken) {
            waker.drain();
        }
        Ok(woken)
    }

    /// Receive what the sockets reported readable at the last [`MultiSocket::wait`] had, at most
    /// `max` datagrams in all; `sink` gets each with the bytes that fit in `buf`. Returns how many
    /// were received. Errors that only report an earlier ICMP message are skipped.
    pub fn recv(&mut self, buf: &mut [u8], max: usize, mut sink: impl FnMut(Received, &[u8])) -> usize {
        let mut received = 0;
        let ready = std::mem::take(&mut self.ready);
        for &index in &ready {
            let Some(Some(socket)) = self.sockets.get(index) else { continue };
            // Bounded per socket too (errors included), so that one busy socket cannot starve the
            // others or keep the loop going.
            for _ in 0..max {
                if received >= max {
                    break;
                }
                match socket.recv_from(buf) {
                    Ok((len, source)) => {
                        received += 1;
                        sink(Received { socket: index, source }, buf.get(..len).unwrap_or_default());
                    }
                    Err(error) if is_transient_recv_error(&error) => continue,
                    Err(_) => break,
                }
            }
        }
        received
    }

    /// The indices poll(2) reported readable at the last [`MultiSocket::wait`], for a caller that
    /// receives with [`MultiSocket::recv_from`] (to send from the set while it receives).
    pub fn take_ready(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.ready)
    }

    /// Receive one datagram on socket `index` without waiting (`WouldBlock` when none is there).
    pub fn recv_from(&self, index: usize, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket(index)?.recv_from(buf)
    }

    fn socket(&self, index: usize) -> io::Result<&UdpSocket> {
        match self.sockets.get(index) {
            Some(Some(socket)) => Ok(socket),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such socket in the set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Instant;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn received(set: &mut MultiSocket) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            set.wait(Duration::from_millis(100), None).unwrap();
            let mut buf = [0u8; 2048];
            let n = set.recv(&mut buf, 64, |r, bytes| out.push((r.socket, r.source, bytes.to_vec())));
            if n == 0 && !out.is_empty() {
                break;
            }
        }
        out.sort();
        out
    }

    #[test]
    fn datagrams_are_reported_with_their_socket_and_source() {
        let mut set = MultiSocket::open(LOOPBACK, 8).unwrap();
        assert_eq!((set.len(), set.open_count()), (8, 8));
        let ports: HashSet<u16> = (0..8).map(|i| set.local_addr(i).unwrap().port()).collect();
        assert_eq!(ports.len(), 8, "each socket has its own port");
        let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let from = peer.local_addr().unwrap();
        peer.send_to(b"three", set.local_addr(3).unwrap()).unwrap();
        peer.send_to(b"five", set.local_addr(5).unwrap()).unwrap();
        peer.send_to(b"five again", set.local_addr(5).unwrap()).unwrap();
        let got = received(&mut set);
        assert_eq!(got, [(3, from, b"three".to_vec()), (5, from, b"five".to_vec()), (5, from, b"five again".to_vec())]);
    }

    #[test]
    fn send_all_sends_once_from_every_open_socket() {
        let mut set = MultiSocket::open(LOOPBACK, 16).unwrap();
        let taken = set.take(2).unwrap().local_addr().unwrap();
        assert!(set.take(2).is_none(), "taken once");
        let sink = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(set.send_all(b"hello", sink.local_addr().unwrap()), 15);
        let mut sources = HashSet::new();
        let mut buf = [0u8; 64];
        for _ in 0..15 {
            let (len, source) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"hello");
            sources.insert(source);
        }
        assert_eq!(sources.len(), 15, "one datagram from each socket");
        assert!(!sources.contains(&taken), "not from the socket taken out");
        assert!(set.local_addr(2).is_err() && set.send_to(2, b"x", sink.local_addr().unwrap()).is_err());
    }

    #[test]
    fn close_all_but_keeps_one_socket_and_its_index() {
        let mut set = MultiSocket::open(LOOPBACK, 4).unwrap();
        let kept = set.local_addr(2).unwrap();
        set.close_all_but(2);
        assert_eq!((set.len(), set.open_count()), (4, 1));
        assert!(set.is_open(2) && !set.is_open(0));
        assert_eq!(set.local_addr(2).unwrap(), kept);
        let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        peer.send_to(b"still here", kept).unwrap();
        assert_eq!(received(&mut set), [(2, peer.local_addr().unwrap(), b"still here".to_vec())]);
    }

    #[test]
    fn wait_times_out_and_wakes() {
        let mut set = MultiSocket::open(LOOPBACK, 2).unwrap();
        let started = Instant::now();
        assert!(!set.wait(Duration::from_millis(50), None).unwrap());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(45) && waited < Duration::from_secs(2), "{waited:?}");
        let mut buf = [0u8; 16];
        assert_eq!(set.recv(&mut buf, 10, |_, _| panic!("nothing arrived")), 0);

        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let remote = std::sync::Arc::clone(&waker);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.wake();
        });
        let started = Instant::now();
        assert!(set.wait(Duration::from_secs(5), Some(&waker)).unwrap(), "the waker ends the wait");
        assert!(started.elapsed() < Duration::from_secs(4));
        thread.join().unwrap();
        assert!(!set.wait(Duration::from_millis(1), Some(&waker)).unwrap(), "the wake-up was drained");
    }

    #[test]
    fn bridge_sets_take_given_sockets() {
        let a = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let b = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut set = MultiSocket::from_sockets(vec![a, b]).unwrap();
        set.send_to(0, b"a to b", b_addr).unwrap();
        assert_eq!(received(&mut set), [(1, a_addr, b"a to b".to_vec())]);
    }
}
