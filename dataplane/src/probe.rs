//! Probes that tell which socket sits at which index of the reuseport group.
//!
//! The steering program ([`crate::steering`]) indexes the group's sockets, and the kernel moves
//! sockets around when one leaves (`docs/takeover.md`). The newest process therefore checks the
//! layout it steers by: for each index it sends a probe datagram to the port, the program delivers
//! it to the socket at that index, and whichever core of whichever process reads it answers with
//! its generation and core. Probes and answers carry a tag under the connection-ID key, which
//! every process sharing the port holds and nobody else: a forged probe gets no answer.
//!
//! ```text
//! probe:  0x23 | index (2) | nonce (8) | tag (8)                              19 bytes
//! answer: 0x23 | index (2) | nonce (8) | generation (2) | core (1) | tag (8)  22 bytes
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::cid::{fill_random, CidKey, Generation};

/// First byte of probes and their answers.
pub const PROBE_MARKER: u8 = 0x23;
/// Length of a probe (what the steering program recognises).
pub const PROBE_LEN: usize = 19;
/// Length of an answer.
pub const ANSWER_LEN: usize = 22;
const TAG_LEN: usize = 8;

/// Who answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketOwner {
    /// The generation of the process that read the probe.
    pub generation: Generation,
    /// Its core.
    pub core: u8,
}

/// A probe for `index`.
pub fn probe(key: &CidKey, index: u16, nonce: [u8; 8]) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[0] = PROBE_MARKER;
    out[1..3].copy_from_slice(&index.to_be_bytes());
    out[3..11].copy_from_slice(&nonce);
    let tag = key.tag(&out[..PROBE_LEN - TAG_LEN]);
    out[PROBE_LEN - TAG_LEN..].copy_from_slice(&tag);
    out
}

/// The answer a core gives to `datagram`, if it is a genuine probe.
pub fn answer(key: &CidKey, datagram: &[u8], owner: SocketOwner) -> Option<[u8; ANSWER_LEN]> {
    if datagram.len() != PROBE_LEN || datagram.first() != Some(&PROBE_MARKER) {
        return None;
    }
    let (body, tag) = datagram.split_at(PROBE_LEN - TAG_LEN);
    if key.tag(body) != tag {
        return None;
    }
    let mut out = [0u8; ANSWER_LEN];
    out[..PROBE_LEN - TAG_LEN].copy_from_slice(body);
    out[11..13].copy_from_slice(&owner.generation.to_be_bytes());
    out[13] = owner.core;
    let tag = key.tag(&out[..ANSWER_LEN - TAG_LEN]);
    out[ANSWER_LEN - TAG_LEN..].copy_from_slice(&tag);
    Some(out)
}

/// The index, nonce and owner in a genuine answer.
fn read_answer(key: &CidKey, datagram: &[u8]) -> Option<(u16, [u8; 8], SocketOwner)> {
    if datagram.len() != ANSWER_LEN || datagram.first() != Some(&PROBE_MARKER) {
        return None;
    }
    let (body, tag) = datagram.split_at(ANSWER_LEN - TAG_LEN);
    if key.tag(body) != tag {
        return None;
    }
    let index = u16::from_be_bytes([body[1], body[2]]);
    let nonce = <[u8; 8]>::try_from(&body[3..11]).ok()?;
    let generation = Generation::from_be_bytes([body[11], body[12]]);
    Some((index, nonce, SocketOwner { generation, core: body[13] }))
}

/// Where to send probes for a group bound to `listen`: the address itself, or the loopback
/// address of its family when it is a wildcard.
pub fn probe_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Probe indices `0..count` of the group at `target`: for each, who read it (`None`: no answer
/// within `limit`, e.g. a socket that is closing). Each unanswered probe is sent again every
/// 50 ms until `limit`.
pub fn probe_group(
    target: SocketAddr,
    key: &CidKey,
    count: u16,
    limit: Duration,
) -> io::Result<Vec<Option<SocketOwner>>> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    let mut nonces = HashMap::with_capacity(usize::from(count));
    for index in 0..count {
        let mut nonce = [0u8; 8];
        fill_random(&mut nonce);
        nonces.insert(index, nonce);
    }
    let mut found: Vec<Option<SocketOwner>> = vec![None; usize::from(count)];
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 64];
    loop {
        for (index, owner) in found.iter().enumerate() {
            let Ok(index) = u16::try_from(index) else { continue };
            if let (None, Some(nonce)) = (owner, nonces.get(&index)) {
                // A probe lost to a full buffer or a signal is sent again next round.
                if let Err(e) = socket.send_to(&probe(key, index, *nonce), target) {
                    if !matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                        return Err(e);
                    }
                }
            }
        }
        let round_end = (Instant::now() + Duration::from_millis(50)).min(deadline);
        while let Some(wait) = round_end.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) {
            socket.set_read_timeout(Some(wait))?;
            let len = match socket.recv_from(&mut buf) {
                Ok((len, _)) => len,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                // A signal (the process's own, or a debugger's) cuts the wait short: wait on.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let Some((index, nonce, owner)) = buf.get(..len).and_then(|d| read_answer(key, d)) else { continue };
            if nonces.get(&index) == Some(&nonce) {
                if let Some(slot) = found.get_mut(usize::from(index)) {
                    *slot = Some(owner);
                }
            }
        }
        if found.iter().all(Option::is_some) || Instant::now() >= deadline {
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_genuine_probe_is_answered_and_the_answer_read() {
        let key = CidKey::random();
        let probe = probe(&key, 300, [7; 8]);
        let owner = SocketOwner { generation: 9, core: 3 };
        let answer = answer(&key, &probe, owner).unwrap();
        assert_eq!(read_answer(&key, &answer), Some((300, [7; 8], owner)));
    }

    #[test]
    fn forged_or_damaged_probes_get_no_answer() {
        let key = CidKey::random();
        let owner = SocketOwner { generation: 1, core: 0 };
        let genuine = probe(&key, 1, [1; 8]);
        assert!(answer(&CidKey::random(), &genuine, owner).is_none(), "another key");
        for at in 0..PROBE_LEN {
            let mut damaged = genuine;
            damaged[at] ^= 1;
            assert!(answer(&key, &damaged, owner).is_none(), "byte {at} flipped");
        }
        assert!(answer(&key, &genuine[..PROBE_LEN - 1], owner).is_none());
        let answer = answer(&key, &genuine, owner).unwrap();
        assert!(read_answer(&CidKey::random(), &answer).is_none());
        assert!(super::answer(&key, &answer, owner).is_none(), "an answer is no probe");
    }

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(probe_target("0.0.0.0:9000".parse().unwrap()), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(probe_target("[::]:9000".parse().unwrap()), "[::1]:9000".parse().unwrap());
        assert_eq!(probe_target("192.0.2.7:9000".parse().unwrap()), "192.0.2.7:9000".parse().unwrap());
    }
}
