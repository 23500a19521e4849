//! The per-core UDP sockets: one per core, all bound to the listen address with `SO_REUSEPORT`,
//! and the reuseport steering programs attached to their group.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::socket::attach_reuseport_program;

/// Socket buffer size asked for; the kernel caps it at `net.core.{r,w}mem_max`.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Times a port picked for port 0 is picked again when something took it before the group did.
const PORT_PICKS: usize = 8;

/// Bind `count` sockets to `addr` with `SO_REUSEPORT`. With port 0 a free port is picked and every
/// socket binds it. A port something else holds is refused (`AddrInUse`).
pub fn bind_reuseport_group(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    if addr.port() != 0 {
        refuse_if_in_use(addr)?;
        return bind_group_at(addr, count);
    }
    // With port 0 and SO_REUSEPORT the kernel may hand out a port that another reuseport socket
    // of the same user already holds (the two would then share its datagrams). An exclusive bind
    // picks a port nobody holds; the group then binds it. Between the two another socket can take
    // the port (any ephemeral bind on the host): then pick again.
    bind_group_picking(count, || exclusive_bind(addr))
}

/// Bind `count` sockets to `addr` with `SO_REUSEPORT`, joining the reuseport group already there
/// (a takeover: the sockets go to the end of the group). The kernel refuses (`AddrInUse`) when the
/// sockets there belong to another user or lack `SO_REUSEPORT`.
pub fn join_reuseport_group(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    bind_group_at(addr, count)
}

/// Bind a group of `count` at the address `pick` returns, picking again while it is taken.
fn bind_group_picking(count: usize, mut pick: impl FnMut() -> io::Result<SocketAddr>) -> io::Result<Vec<UdpSocket>> {
    let mut picks = 1;
    loop {
        let picked = pick()?;
        match refuse_if_in_use(picked).and_then(|()| bind_group_at(picked, count)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && picks < PORT_PICKS => picks += 1,
            result => return result,
        }
    }
}

/// Bind `count` reuseport sockets to `addr`, which names a port.
fn bind_group_at(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4 too on a wildcard IPv6 address, as users expect of "[::]:9000".
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        // Larger buffers absorb bursts between loop turns; failure only means smaller ones.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.bind(&addr.into())?;
        sockets.push(UdpSocket::from(socket));
    }
    Ok(sockets)
}

/// `SO_REUSEPORT` would let a second node silently share the port and steal half its packets: a
/// plain bind first tells whether anything already listens there.
fn refuse_if_in_use(addr: SocketAddr) -> io::Result<()> {
    exclusive_bind(addr).map(drop)
}

/// Bind `addr` without `SO_REUSEPORT` (so nothing else may hold it) and report the bound address.
fn exclusive_bind(addr: SocketAddr) -> io::Result<SocketAddr> {
    let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        probe.set_only_v6(false)?;
    }
    probe.bind(&addr.into())?;
    probe.local_addr()?.as_socket().ok_or_else(|| io::Error::other("bound socket has no IP address"))
}

/// Steer every datagram of a reuseport group to the socket at `index` (a classic BPF program
/// returning a constant). Used to force datagrams onto a chosen core, e.g. in tests of the
/// hand-off path.
pub fn steer_group_to(socket: &UdpSocket, index: u32) -> io::Result<()> {
    let program = [libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: index }];
    attach_reuseport_program(socket, &program)
}

/// Steer each datagram of `socket`'s reuseport group to the generation and core named in its
/// destination connection ID, by `table` ([`crate::steering`]). Fails on kernels without
/// `SO_ATTACH_REUSEPORT_CBPF` (before 4.5); the kernel's hash then keeps choosing.
pub fn steer_group(socket: &UdpSocket, table: &crate::steering::SteeringTable) -> io::Result<()> {
    let program =
        crate::steering::steering_program(table).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    attach_reuseport_program(socket, &program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with port 0, SO_REUSEPORT sockets were handed ports other reuseport sockets of
    /// the same user held (seen as ~5 % collisions over 3000 binds), so two nodes shared a port.
    #[test]
    fn port_zero_groups_never_share_a_port() {
        // 2 000 sockets: more than the usual soft limit of 1 024 open files.
        let limit = crate::sys::process::raise_open_files_limit().unwrap();
        assert!(limit >= 2_100, "this test opens 2 000 sockets; the hard limit of open files is {limit} (ulimit -Hn)");
        let groups: Vec<Vec<UdpSocket>> =
            (0..1000).map(|_| bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 2).unwrap()).collect();
        let mut ports: Vec<u16> = groups.iter().map(|g| g[0].local_addr().unwrap().port()).collect();
        for group in &groups {
            assert_eq!(group[0].local_addr().unwrap(), group[1].local_addr().unwrap(), "a group shares one port");
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), groups.len(), "two groups were given the same port");
    }

    /// Regression: another socket could take the port picked for port 0 before the group bound it,
    /// and the node failed to start with "Address already in use" (seen once in a parallel test run).
    #[test]
    fn a_picked_port_taken_in_between_is_picked_again() {
        let thief = UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = thief.local_addr().unwrap();
        // The first pick is a port the thief took after it was picked; the second is free.
        let mut first = true;
        let pick = || {
            if std::mem::take(&mut first) {
                Ok(taken)
            } else {
                exclusive_bind("127.0.0.1:0".parse().unwrap())
            }
        };
        let group = bind_group_picking(2, pick).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, taken.port());
        assert_eq!(group[1].local_addr().unwrap().port(), port);
    }

    #[test]
    fn a_picked_port_is_given_up_after_a_few_tries() {
        let thief = UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = thief.local_addr().unwrap();
        let mut tries = 0;
        let err = bind_group_picking(1, || {
            tries += 1;
            Ok(taken)
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(tries, PORT_PICKS);
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = bind_reuseport_group(holder.local_addr().unwrap(), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    /// The socket each of `packets` reaches (its index in `group`), sent from one plain socket.
    fn receivers(group: &[UdpSocket], packets: &[Vec<u8>]) -> Vec<usize> {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = group[0].local_addr().unwrap();
        let mut buf = [0u8; 2048];
        packets
            .iter()
            .map(|packet| {
                sender.send_to(packet, to).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    for (index, socket) in group.iter().enumerate() {
                        if let Ok((n, _)) = socket.recv_from(&mut buf) {
                            assert_eq!(&buf[..n], &packet[..]);
                            return index;
                        }
                    }
                    assert!(std::time::Instant::now() < deadline, "datagram never arrived");
                    std::thread::yield_now();
                }
            })
            .collect()
    }

    use crate::steering::{GenerationSockets, SteeringTable};

    /// A short-header packet to an ID of `generation`'s `core`.
    fn short_header(generation: u16, core: u8) -> Vec<u8> {
        let mut packet = vec![0x40, core];
        packet.extend_from_slice(&generation.to_be_bytes());
        packet.extend_from_slice(&[7u8; 30]);
        packet
    }

    /// A QUIC v1 long-header packet of `kind` (0 Initial, 2 Handshake) to a DCID of `len` bytes
    /// naming `generation`'s `core`.
    fn long_header(kind: u8, len: u8, generation: u16, core: u8) -> Vec<u8> {
        let mut packet = vec![0xc0 | (kind << 4), 0, 0, 0, 1, len, core];
        packet.extend_from_slice(&generation.to_be_bytes());
        packet.extend_from_slice(&[9u8; 40]);
        packet
    }

    /// The index the program returns is the socket's place in bind order, i.e. its core.
    #[test]
    fn cid_steering_reaches_the_socket_bound_in_that_place() {
        let group = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        steer_group(&group[0], &SteeringTable::single(1, 3)).unwrap();
        let cores = [0u8, 1, 2, 2, 1, 0, 4];
        let packets: Vec<Vec<u8>> = cores.iter().map(|&core| short_header(1, core)).collect();
        assert_eq!(receivers(&group, &packets), vec![0, 1, 2, 2, 1, 0, 1]);
        let handshakes: Vec<Vec<u8>> = cores.iter().map(|&core| long_header(2, 10, 1, core)).collect();
        assert_eq!(receivers(&group, &handshakes), vec![0, 1, 2, 2, 1, 0, 1]);
        // Datagrams the program leaves to the hash (control datagrams, a client's first
        // Initials) still arrive, and all from one source reach the same socket.
        let mut hashed: Vec<Vec<u8>> = (0..8).map(|i| vec![0x21, i, 0, 0, 0, 0, 0, 0, 0, 0]).collect();
        hashed.extend((0..3).map(|core| long_header(0, 8, 1, core)));
        let reached = receivers(&group, &hashed);
        assert!(reached.iter().all(|&r| r == reached[0]), "hashed datagrams were spread: {reached:?}");
    }

    /// When a socket leaves the group the kernel moves the last one into its place
    /// (`reuseport_detach_sock`), so indices stop matching cores: the hand-off path covers it.
    #[test]
    fn a_closed_socket_is_replaced_by_the_last_one() {
        let mut group = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        steer_group(&group[0], &SteeringTable::single(1, 3)).unwrap();
        drop(group.remove(0));
        // Now group[0] is core 1's socket and group[1] core 2's; the kernel's array is
        // [core 2, core 1]. Byte 0 % 3 = 0 picks core 2's socket; byte 2 is beyond the two
        // sockets left and falls back to the hash.
        assert_eq!(receivers(&group, &[short_header(1, 0), short_header(1, 1)]), vec![1, 0]);
        let hashed = receivers(&group, &[short_header(1, 2)]);
        assert_eq!(hashed.len(), 1);
    }

    /// A takeover relies on this: sockets that join a group go to its end, behind the sockets
    /// already there, whose indices do not move.
    #[test]
    fn joining_sockets_go_to_the_end_of_the_group() {
        let old = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = old[0].local_addr().unwrap();
        assert_eq!(bind_reuseport_group(addr, 1).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let new = join_reuseport_group(addr, 3).unwrap();
        let table = SteeringTable {
            generations: vec![GenerationSockets::contiguous(4, 0, 2), GenerationSockets::contiguous(5, 2, 3)],
            hash_new_connections: false,
        };
        steer_group(&new[0], &table).unwrap();
        let all: Vec<UdpSocket> = old.into_iter().chain(new).collect();
        let packets =
            [short_header(4, 0), short_header(4, 1), short_header(5, 0), short_header(5, 1), short_header(5, 2)];
        assert_eq!(receivers(&all, &packets), vec![0, 1, 2, 3, 4]);
        // A client's first Initials and control datagrams reach only the new sockets.
        let new_connections: Vec<Vec<u8>> = (0..40u8).map(|b| long_header(0, 8, u16::from(b), b)).collect();
        assert!(receivers(&all, &new_connections).iter().all(|&r| r >= 2));
    }
}
