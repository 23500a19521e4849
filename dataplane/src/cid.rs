//! Connection IDs that name the process generation and the core owning the connection.
//!
//! Layout of the 10-byte IDs this node issues:
//!
//! ```text
//! byte 0      owning core index
//! bytes 1..3  generation of the process that issued it (big-endian; see below)
//! bytes 3..7  random
//! bytes 7..10 keyed check over bytes 0..7 (tells our IDs from a client's random ones)
//! ```
//!
//! Any core can then find a datagram's owner from its destination connection ID without shared
//! state (as QUIC-LB, draft-ietf-quic-load-balancers, encodes a server ID in plaintext). Client-
//! chosen IDs in Initial and 0-RTT packets fail the check and stay on the core that received them,
//! which then owns the new connection.
//!
//! Generations: during a takeover (`docs/takeover.md`) two processes share the UDP port. Each
//! has its own generation number, and the check key is handed from the old process to the new
//! one, so each tells the other's IDs from garbage: a datagram whose ID names another generation
//! is counted and dropped, never fed to the endpoint.
//!
//! Steering: a reuseport BPF program ([`crate::steering`]) has the kernel deliver short-header and
//! Handshake packets to the socket of the generation and core in their DCID, so they arrive where
//! their connection lives even when the peer's address changes (NAT rebinding, migration) or the
//! node opened the connection itself (every connection to one server then shares one 4-tuple).
//! Everything else (Initial and 0-RTT, whose DCID the client picked, Retry, version negotiation,
//! control and relay datagrams) goes to the newest generation, by the kernel's 4-tuple hash when
//! only one process holds the port. Whatever lands on the wrong core of the right process is
//! handed to its owner by [`route`] and a queue, so steering saves work and is never needed for
//! correctness within one process.

use std::hash::Hasher;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, EndpointConfig, InvalidCid};
use siphasher::sip::SipHasher13;

/// Length of every connection ID this node issues.
pub const CID_LEN: usize = 10;
/// Offset of the generation in an ID (two bytes, big-endian).
pub const GENERATION_OFFSET: usize = 1;
const CHECK_LEN: usize = 3;
const BODY_LEN: usize = CID_LEN - CHECK_LEN;

/// The number that tells the processes sharing a port apart (never 0). A node started on a free
/// port is generation 1; a process that takes the port over is its predecessor's plus one.
pub type Generation = u16;

/// The generation after `generation` (skipping 0).
pub fn next_generation(generation: Generation) -> Generation {
    generation.checked_add(1).unwrap_or(1)
}

/// The node-wide secret behind the check bytes (a SipHash key). Cheap to clone; every core gets a
/// copy, and a taking-over process gets its predecessor's.
#[derive(Clone, PartialEq, Eq)]
pub struct CidKey([u8; 16]);

impl std::fmt::Debug for CidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CidKey(..)")
    }
}

impl CidKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut key = [0u8; 16];
        fill_random(&mut key);
        Self(key)
    }

    /// The key as bytes, to hand to a successor.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A key handed over by a predecessor.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    fn hash(&self, data: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_key(&self.0);
        hasher.write(data);
        hasher.finish()
    }

    fn check(&self, body: &[u8]) -> [u8; CHECK_LEN] {
        let sum = self.hash(body).to_le_bytes();
        [sum[0], sum[1], sum[2]]
    }

    /// An 8-byte tag over `data` (the takeover probes, [`crate::probe`]).
    pub fn tag(&self, data: &[u8]) -> [u8; 8] {
        self.hash(data).to_le_bytes()
    }

    /// The generation and core that issued `cid`, if a process holding this key issued it
    /// (false positives: one in 2^24).
    pub fn owner(&self, cid: &[u8]) -> Option<CidOwner> {
        if cid.len() != CID_LEN {
            return None;
        }
        let (body, check) = cid.split_at(BODY_LEN);
        if self.check(body) != check {
            return None;
        }
        let generation = Generation::from_be_bytes([body[GENERATION_OFFSET], body[GENERATION_OFFSET + 1]]);
        Some(CidOwner { generation, core: usize::from(body[0]) })
    }
}

/// Who issued a connection ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidOwner {
    /// The issuing process's generation.
    pub generation: Generation,
    /// The core in that process.
    pub core: usize,
}

/// Make `config` the endpoint settings of core `core` of generation `generation`: connection IDs
/// tagged with both under `key`, and the QUIC fixed bit kept. Peers must keep it set (RFC 9287
/// §3: we do not advertise grease_quic_bit), so first bytes with both high bits clear stay free
/// for relay frames and control datagrams on the same socket.
pub fn configure_core_endpoint(config: &mut EndpointConfig, core: u8, generation: Generation, key: &CidKey) {
    let key = key.clone();
    config.cid_generator(move || Box::new(CoreCidGenerator::new(core, generation, key.clone())));
    config.grease_quic_bit(false);
}

/// Issues connection IDs for one core.
#[derive(Debug)]
pub struct CoreCidGenerator {
    core: u8,
    generation: Generation,
    key: CidKey,
    lifetime: Option<Duration>,
}

impl CoreCidGenerator {
    /// A generator for `core` (at most 256 cores) of process generation `generation`.
    pub fn new(core: u8, generation: Generation, key: CidKey) -> Self {
        Self { core, generation, key, lifetime: None }
    }
}

impl ConnectionIdGenerator for CoreCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = self.core;
        bytes[GENERATION_OFFSET..GENERATION_OFFSET + 2].copy_from_slice(&self.generation.to_be_bytes());
        fill_random(&mut bytes[GENERATION_OFFSET + 2..BODY_LEN]);
        let check = self.key.check(&bytes[..BODY_LEN]);
        bytes[BODY_LEN..].copy_from_slice(&check);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.key.owner(cid) {
            Some(owner) if owner.generation == self.generation => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

/// Fill `out` with unpredictable bytes.
pub fn fill_random(out: &mut [u8]) {
    use std::hash::BuildHasher;
    // Each RandomState is keyed from per-thread OS randomness (and never repeats its keys), so
    // its empty hash is an unpredictable 64-bit value.
    for chunk in out.chunks_mut(8) {
        let bytes = std::collections::hash_map::RandomState::new().build_hasher().finish().to_le_bytes();
        for (o, b) in chunk.iter_mut().zip(bytes) {
            *o = b;
        }
    }
}

/// Where a datagram must be handled, from its first bytes (RFC 9000 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This process issued the destination connection ID on the given core.
    Core(usize),
    /// Another process sharing the port (a predecessor or successor in a takeover) issued it.
    OtherGeneration(Generation),
    /// Not ours (a client's Initial or 0-RTT, or garbage): the receiving core handles it.
    Local,
}

/// Decide which core owns a datagram received by a process of generation `generation`.
pub fn route(key: &CidKey, generation: Generation, datagram: &[u8]) -> Route {
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
        Some(owner) if owner.generation == generation => Route::Core(owner.core),
        Some(owner) => Route::OtherGeneration(owner.generation),
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
            let mut generator = CoreCidGenerator::new(core, 3, key.clone());
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert_eq!(key.owner(&cid), Some(CidOwner { generation: 3, core: usize::from(core) }));
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0u8; 30]);
            assert_eq!(route(&key, 3, &short), Route::Core(usize::from(core)));
            assert_eq!(route(&key, 4, &short), Route::OtherGeneration(3), "a successor sees its predecessor's IDs");
        }
    }

    #[test]
    fn ids_are_distinct() {
        let mut generator = CoreCidGenerator::new(3, 1, CidKey::random());
        let a = generator.generate_cid();
        let b = generator.generate_cid();
        assert_ne!(a, b);
    }

    #[test]
    fn foreign_ids_stay_local() {
        let key = CidKey::random();
        let other = CidKey::random();
        let cid = CoreCidGenerator::new(1, 1, other).generate_cid();
        assert_eq!(key.owner(&cid), None);
        // A client's Initial: long header with its own 8-byte DCID.
        let mut initial = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        initial.extend_from_slice(&cid);
        assert_eq!(route(&key, 1, &initial), Route::Local);
        assert_eq!(route(&key, 1, &[]), Route::Local);
        assert_eq!(route(&key, 1, &[0xc0, 0, 0]), Route::Local);
        assert_eq!(route(&key, 1, &[0xc0, 0, 0, 0, 1, 200, 1]), Route::Local);
    }

    #[test]
    fn long_header_with_our_id_routes_to_owner() {
        let key = CidKey::random();
        let cid = CoreCidGenerator::new(2, 7, key.clone()).generate_cid();
        let mut handshake = vec![0xe0, 0, 0, 0, 1, CID_LEN as u8];
        handshake.extend_from_slice(&cid);
        assert_eq!(route(&key, 7, &handshake), Route::Core(2));
    }

    #[test]
    fn a_handed_over_key_checks_the_same_ids() {
        let key = CidKey::random();
        let cid = CoreCidGenerator::new(1, 5, key.clone()).generate_cid();
        let successor = CidKey::from_bytes(key.to_bytes());
        assert_eq!(successor.owner(&cid), Some(CidOwner { generation: 5, core: 1 }));
        let generator = CoreCidGenerator::new(0, 6, successor);
        assert!(generator.validate(&cid).is_err(), "another generation's ID is not this endpoint's");
    }
}
