//! Connection IDs that name the core owning the connection.
//!
//! Layout of the 8-byte IDs this node issues:
//!
//! ```text
//! byte 0      owning core index
//! bytes 1..5  random
//! bytes 5..8  keyed check over bytes 0..5 (tells our IDs from a client's random ones)
//! ```
//!
//! Any core can then find a datagram's owner from its destination connection ID without shared
//! state (as QUIC-LB, draft-ietf-quic-load-balancers, encodes a server ID in plaintext). Client-
//! chosen IDs in Initial and 0-RTT packets fail the check and stay on the core that received them,
//! which then owns the new connection.
//!
//! Steering: on a node with more than one core a reuseport BPF program ([`crate::steering`]) has
//! the kernel deliver short-header packets and Handshake packets to the socket of the core in byte
//! 0 of their DCID, so they arrive where their connection lives even when the peer's address
//! changes (NAT rebinding, migration) or the node opened the connection itself (every connection
//! to one server then shares one 4-tuple). Everything else (Initial and 0-RTT, whose DCID the
//! client picked, Retry, version negotiation, control and relay datagrams) is left to the
//! kernel's 4-tuple hash, which is also all there is when the program cannot be attached (kernels
//! before 4.5, `NodeConfig::cid_steering` off). Whatever lands on the wrong core is handed to its
//! owner by [`route`] and a queue, so steering saves work and is never needed for correctness.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, EndpointConfig, InvalidCid};

/// Length of every connection ID this node issues.
pub const CID_LEN: usize = 8;
const CHECK_LEN: usize = 3;
const BODY_LEN: usize = CID_LEN - CHECK_LEN;

/// The node-wide secret behind the check bytes. Cheap to clone; every core gets a copy.
#[derive(Clone, Debug)]
pub struct CidKey(std::collections::hash_map::RandomState);

impl CidKey {
    /// A fresh random key.
    pub fn random() -> Self {
        Self(std::collections::hash_map::RandomState::new())
    }

    fn check(&self, body: &[u8]) -> [u8; CHECK_LEN] {
        let mut hasher = self.0.build_hasher();
        hasher.write(body);
        let sum = hasher.finish().to_le_bytes();
        [sum[0], sum[1], sum[2]]
    }

    /// The core that issued `cid`, if this node issued it (false positives: one in 2^24).
    pub fn owner(&self, cid: &[u8]) -> Option<usize> {
        if cid.len() != CID_LEN {
            return None;
        }
        let (body, check) = cid.split_at(BODY_LEN);
        (self.check(body) == check).then(|| usize::from(body[0]))
    }
}

/// Make `config` the endpoint settings of core `core`: connection IDs tagged with the core under
/// `key`, and the QUIC fixed bit kept. Peers must keep it set (RFC 9287 §3: we do not advertise
/// grease_quic_bit), so first bytes with both high bits clear stay free for relay frames and
/// control datagrams on the same socket.
pub fn configure_core_endpoint(config: &mut EndpointConfig, core: u8, key: &CidKey) {
    let key = key.clone();
    config.cid_generator(move || Box::new(CoreCidGenerator::new(core, key.clone())));
    config.grease_quic_bit(false);
}

/// Issues connection IDs for one core.
#[derive(Debug)]
pub struct CoreCidGenerator {
    core: u8,
    key: CidKey,
    lifetime: Option<Duration>,
}

impl CoreCidGenerator {
    /// A generator for `core` (at most 256 cores).
    pub fn new(core: u8, key: CidKey) -> Self {
        Self { core, key, lifetime: None }
    }
}

impl ConnectionIdGenerator for CoreCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = self.core;
        fill_random(&mut bytes[1..BODY_LEN]);
        let check = self.key.check(&bytes[..BODY_LEN]);
        bytes[BODY_LEN..].copy_from_slice(&check);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.key.owner(cid) {
            Some(_) => Ok(()),
            None => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

fn fill_random(out: &mut [u8]) {
    // Each RandomState is keyed from per-thread OS randomness (and never repeats its keys), so
    // its empty hash is an unpredictable 64-bit value. IDs need unlinkability, not key secrecy.
    let bytes = std::collections::hash_map::RandomState::new().build_hasher().finish().to_le_bytes();
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b;
    }
}

/// Where a datagram must be handled, from its first bytes (RFC 9000 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This node issued the destination connection ID on the given core.
    Core(usize),
    /// Not ours (a client's Initial or 0-RTT, or garbage): the receiving core handles it.
    Local,
}

/// Decide which core owns a datagram.
pub fn route(key: &CidKey, datagram: &[u8]) -> Route {
    let Some(&first) = datagram.first() else { return Route::Local };
    let dcid = if first & 0x80 != 0 {
        // Long header: version (4 bytes), then DCID length and DCID (RFC 9000 §17.2).
        let Some(&len) = datagram.get(5) else { return Route::Local };
        datagram.get(6..6 + usize::from(len))
    } else {
        // Short header: the DCID follows the first byte, with the length we chose.
        datagram.get(1..1 + CID_LEN)
    };
    match dcid.and_then(|cid| key.owner(cid)) {
        Some(core) => Route::Core(core),
        None => Route::Local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_name_their_core() {
        let key = CidKey::random();
        for core in [0u8, 1, 7, 255] {
            let mut generator = CoreCidGenerator::new(core, key.clone());
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert_eq!(key.owner(&cid), Some(usize::from(core)));
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0u8; 30]);
            assert_eq!(route(&key, &short), Route::Core(usize::from(core)));
        }
    }

    #[test]
    fn ids_are_distinct() {
        let mut generator = CoreCidGenerator::new(3, CidKey::random());
        let a = generator.generate_cid();
        let b = generator.generate_cid();
        assert_ne!(a, b);
    }

    #[test]
    fn foreign_ids_stay_local() {
        let key = CidKey::random();
        let other = CidKey::random();
        let cid = CoreCidGenerator::new(1, other).generate_cid();
        assert_eq!(key.owner(&cid), None);
        // A client's Initial: long header with its own 8-byte DCID.
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&cid);
        assert_eq!(route(&key, &initial), Route::Local);
        assert_eq!(route(&key, &[]), Route::Local);
        assert_eq!(route(&key, &[0xc0, 0, 0]), Route::Local);
        assert_eq!(route(&key, &[0xc0, 0, 0, 0, 1, 200, 1]), Route::Local);
    }

    #[test]
    fn long_header_with_our_id_routes_to_owner() {
        let key = CidKey::random();
        let cid = CoreCidGenerator::new(2, key.clone()).generate_cid();
        let mut handshake = vec![0xe0, 0, 0, 0, 1, 8];
        handshake.extend_from_slice(&cid);
        assert_eq!(route(&key, &handshake), Route::Core(2));
    }
}
